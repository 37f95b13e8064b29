"""``atomwatch broker-cluster up|down``: a clustered MQTT broker (NATS servers with MQTT and
JetStream) on loopback, left running in the background, for trying agents and controllers with
several ``--broker`` URLs on one machine. The work lives in :mod:`atomwatch.lab.broker_cluster`;
this module only parses and reports. A production cluster: deploy/nats/.

The work directory is ``--dir``, else ``~/.cache/atomwatch/broker-cluster``: config files, the
nodes' JetStream data (kept between ``down`` and ``up``), logs and pid files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def default_dir() -> Path:
    return Path.home() / ".cache" / "atomwatch" / "broker-cluster"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    u = sub.add_parser("up", help="start the nodes in the background; print the broker URLs as --broker takes them")
    u.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    u.add_argument("--dir", type=Path, help=f"work directory (default {default_dir()})")
    u.add_argument(
        "--base-port",
        type=int,
        metavar="P",
        help="node i listens for MQTT on P+i (NATS clients P+100+i, routes P+200+i, monitor P+300+i); "
        "default: free ports",
    )
    u.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the cluster (default 60)")
    d = sub.add_parser("down", help="stop the nodes `up` started in --dir")
    d.add_argument("--dir", type=Path, help=f"work directory (default {default_dir()})")


def run(args: argparse.Namespace) -> int:
    from atomwatch.lab.broker_cluster import ClusterError, ClusterUsageError, NatsCluster, running_pids, stop_from_dir

    cmd = args.cluster_command
    if cmd is None:
        print("atomwatch broker-cluster: say up or down (atomwatch broker-cluster --help)", file=sys.stderr)
        return 2
    workdir = args.dir or default_dir()
    try:
        if cmd == "up":
            if args.nodes < 1:
                print(f"atomwatch broker-cluster up: --nodes {args.nodes}: must be 1 or more", file=sys.stderr)
                return 2
            if running := running_pids(workdir):
                print(
                    f"atomwatch broker-cluster up: a cluster runs in {workdir} already (pids "
                    f"{', '.join(map(str, running))}); `atomwatch broker-cluster down --dir {workdir}` first",
                    file=sys.stderr,
                )
                return 1
            cluster = NatsCluster(args.nodes, workdir, args.base_port)
            cluster.start(timeout=args.timeout)
            print(
                f"broker cluster of {args.nodes} nodes ready in {cluster.startup_seconds:.1f} s "
                f"(nats-server {cluster.version}); work directory {workdir}",
                file=sys.stderr,
            )
            print(cluster.broker_arg)
            return 0
        stopped = stop_from_dir(workdir)
        print(f"stopped {len(stopped)} node(s) in {workdir}" if stopped else f"nothing ran in {workdir}")
        return 0
    except ClusterError as e:
        print(f"atomwatch broker-cluster {cmd}: {e}", file=sys.stderr)
        return 2 if isinstance(e, ClusterUsageError) else 1

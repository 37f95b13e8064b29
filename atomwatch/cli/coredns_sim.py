"""``atomwatch coredns-sim``: run the CoreDNS SIMULATOR (``serve``) or record a labelled dataset
from it (``record``). The simulator itself lives in :mod:`atomwatch.lab.coredns_sim`; nothing here talks to a
real CoreDNS.

    atomwatch coredns-sim serve --listen 127.0.0.1:9153 [--anomaly CLASS --at MIN --for MIN] [--speed X]
    atomwatch coredns-sim record --minutes 60 --out DIR [--seed N] [--tick S] [--event CLASS@AT+FOR]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from atomwatch.lab.coredns_sim import CLASSES, FORMATS

    sub = parser.add_subparsers(dest="sim_command", metavar="ACTION")
    classes = ", ".join(f"{k} (label {v})" for k, v in CLASSES.items())

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same counters")
        p.add_argument(
            "--format", choices=FORMATS, default="1.11", help="CoreDNS metric names of this era (default 1.11)"
        )
        p.add_argument("--base-qps", type=float, default=200.0, help="mean normal query rate, per simulated second")
        p.add_argument(
            "--day-minutes",
            type=float,
            default=120.0,
            help="simulated minutes of one compressed daily rhythm (default 120)",
        )

    s = sub.add_parser("serve", help="serve simulated CoreDNS /metrics on a loopback port")
    s.add_argument("--listen", default="127.0.0.1:9153", help="HOST:PORT, loopback only (port 0: any free port)")
    s.add_argument("--anomaly", action="append", default=[], metavar="CLASS", help=f"inject a class: {classes}")
    s.add_argument("--at", action="append", type=float, default=[], metavar="MIN", help="simulated minute it starts")
    s.add_argument(
        "--for", dest="for_", action="append", type=float, default=[], metavar="MIN", help="its duration in minutes"
    )
    s.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    s.add_argument("--duration", type=float, default=None, help="stop after this many wall seconds")
    common(s)

    r = sub.add_parser("record", help="write a labelled recording (values.csv, labels.csv, scenario.json, README.md)")
    r.add_argument("--minutes", type=float, required=True, help="simulated minutes to record")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--tick", type=float, default=10.0, help="seconds per row, simulated (default 10)")
    r.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="CLASS@AT+FOR",
        help="an anomaly at simulated minute AT for FOR minutes (repeatable); default: every class once",
    )
    r.add_argument("--name", default="coredns-sim", help="instance name, the <vm> of the columns (default coredns-sim)")
    common(r)


def _config(args: argparse.Namespace):  # -> SimConfig
    from atomwatch.lab.coredns_sim import SimConfig

    return SimConfig(seed=args.seed, base_qps=args.base_qps, day_seconds=args.day_minutes * 60.0, format=args.format)


def _serve(args: argparse.Namespace) -> int:
    from atomwatch.lab.coredns_sim import CorednsSimulator, Event, SimulatorServer

    if not (len(args.anomaly) == len(args.at) == len(args.for_)):
        print("coredns-sim serve: give --at MIN and --for MIN once for every --anomaly", file=sys.stderr)
        return 2
    events = [Event(k, at * 60.0, dur * 60.0) for k, at, dur in zip(args.anomaly, args.at, args.for_)]
    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        print(
            f"coredns-sim serve: --listen {args.listen!r}: expected HOST:PORT with a port in 0-65535", file=sys.stderr
        )
        return 2
    server = SimulatorServer(CorednsSimulator(_config(args), events), host, int(port_text), speed=args.speed).start()
    print(
        f"CoreDNS SIMULATOR (not a real CoreDNS) serving {server.url}  format {args.format}, seed {args.seed}, "
        f"speed {args.speed:g}x; ground truth at http://{server.host}:{server.port}/truth",
        flush=True,
    )
    for e in events:
        print(
            f"  {e.klass} (label {e.label}) from simulated minute {e.start / 60:g} for {e.duration / 60:g} min",
            flush=True,
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(args.duration)
    server.stop()
    return 0


def _record(args: argparse.Namespace) -> int:
    from atomwatch.lab.coredns_sim import parse_event, record

    events = [parse_event(e) for e in args.event] if args.event else None
    rec = record(
        args.out, args.minutes, seed=args.seed, tick=args.tick, events=events, config=_config(args), name=args.name
    )
    print(
        json.dumps(
            {
                "out": str(rec.out),
                "rows": rec.rows,
                "columns": len(rec.columns),
                "events": [
                    {"class": e.klass, "start_min": e.start / 60, "for_min": e.duration / 60} for e in rec.events
                ],
                "simulator": True,
            }
        )
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from atomwatch.lab.coredns_sim import SimulatorError

    try:
        if args.sim_command == "serve":
            return _serve(args)
        if args.sim_command == "record":
            return _record(args)
    except SimulatorError as e:
        print(f"coredns-sim {args.sim_command}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"coredns-sim {args.sim_command}: {e}", file=sys.stderr)
        return 1
    print("coredns-sim: give an action, serve or record (see --help)", file=sys.stderr)
    return 2

"""``atomwatch lab``: build and run the libvirt test bed (subcommands build, up, down, status,
scenarios, record, workload, run). The work lives in the :mod:`lab` package; this module only parses and reports.

The lab's work directory is ``--dir``, else ``$ATOMWATCH_LAB_DIR``, else
``/var/lib/atomwatch-lab`` for root and ``~/.cache/atomwatch/lab`` otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")

    def common(sp: argparse.ArgumentParser, uri: bool = True) -> None:
        sp.add_argument("--dir", type=Path, help="the lab's work directory (see `atomwatch lab --help`)")
        if uri:
            sp.add_argument("--uri", default="qemu:///system", help="libvirt URI (default qemu:///system)")

    b = sub.add_parser("build", help="assemble the guest image (kernel + busybox initramfs)")
    b.add_argument("--kernel-deb", type=Path, help="a Debian linux-image-*.deb (default: apt-get download one)")
    b.add_argument("--out", type=Path, help="where to write the image (default: the lab's work directory)")

    u = sub.add_parser("up", help="create the lab network and boot the guests")
    u.add_argument("--guests", type=int, default=3, help="number of guests (default 3)")
    u.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="nice value of the guests' QEMU threads (default -10: host load stays out of the guests)",
    )
    common(u)

    d = sub.add_parser("down", help="remove every guest, link, namespace and process the lab made")
    common(d)

    s = sub.add_parser("status", help="show the image, the network and the guests as JSON")
    common(s)

    r = sub.add_parser("record", help="run a scenario and write a labelled recording")
    r.add_argument("--scenario", required=True, help="scenario name (`atomwatch lab scenarios` lists them)")
    r.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument("--tick", type=float, default=2.0, help="seconds between rows (default 2)")
    r.add_argument(
        "--day",
        type=int,
        default=None,
        metavar="SECONDS",
        help="length of the normal work's compressed day (default: the whole run)",
    )
    common(r)

    sc = sub.add_parser("scenarios", help="list the scenarios")
    sc.add_argument("--json", action="store_true")

    w = sub.add_parser("workload", help="start or stop a workload in a running guest (for demos)")
    w.add_argument("action", choices=["start", "stop", "list"])
    w.add_argument("--guest", type=int, required=True, help="guest number (1 = awlab-guest1)")
    w.add_argument("name", nargs="?", help="normal, cryptominer, ddos-bot, leaker or exfil")
    common(w)

    rn = sub.add_parser(
        "run",
        help="run a scenario on the live lab while a local agent watches it (with an embedded broker and "
        "controller, as `atomwatch up`, unless --broker names an external broker)",
    )
    rn.add_argument("--scenario", required=True, help="scenario name (see `atomwatch lab scenarios`)")
    rn.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    rn.add_argument("--tick", type=float, default=2.0, help="the agent's tick in seconds (default 2)")
    rn.add_argument("--broker", metavar="URL", help="stream to this broker with an agent only")
    rn.add_argument("--site", help="site name (default: default)")
    common(rn)
    p.set_defaults(_lab_parser=p)


def _workdir(args: argparse.Namespace) -> Path:
    from atomwatch.lab.paths import default_dir

    return getattr(args, "dir", None) or default_dir()


def run(args: argparse.Namespace) -> int:
    from atomwatch.lab.build import BuildError
    from atomwatch.lab.domains import LabError
    from atomwatch.lab.network import NetworkError

    cmd = args.lab_command
    if cmd is None:
        args._lab_parser.print_help()
        return 2
    try:
        return _dispatch(cmd, args)
    except (BuildError, LabError, NetworkError, ValueError) as e:
        print(f"atomwatch lab {cmd}: {e}", file=sys.stderr)
        return 2


def _dispatch(cmd: str, args: argparse.Namespace) -> int:
    if cmd == "build":
        from atomwatch.lab.build import build

        out = args.out or _workdir(args)
        image = build(args.kernel_deb, out)
        print(f"guest image in {out}: kernel {image.kernel_release}, initrd sha256 {image.info['initrd_sha256'][:16]}")
        return 0
    if cmd == "up":
        from atomwatch.lab import testbed

        state = testbed.up(_workdir(args), args.guests, args.uri, nice=args.nice)
        print(json.dumps(state, indent=2))
        return 0
    if cmd == "down":
        from atomwatch.lab import testbed

        removed = testbed.down(_workdir(args), args.uri)
        print("removed: " + (", ".join(removed) if removed else "nothing (the lab was down)"))
        return 0
    if cmd == "status":
        from atomwatch.lab import testbed

        print(json.dumps(testbed.status(_workdir(args), args.uri), indent=2, default=str))
        return 0
    if cmd == "scenarios":
        from atomwatch.lab.scenarios import SCENARIOS

        if args.json:
            print(json.dumps({n: s.to_dict() for n, s in SCENARIOS.items()}, indent=2))
        else:
            for n, s in SCENARIOS.items():
                print(f"{n:18} {s.description}")
        return 0
    if cmd == "record":
        from atomwatch.lab import scenarios
        from atomwatch.lab.record import record

        summary = record(
            scenarios.get(args.scenario),
            args.minutes,
            args.out,
            tick=args.tick,
            workdir=_workdir(args),
            uri=args.uri,
            day_seconds=args.day,
        )
        print(json.dumps(summary, indent=2))
        return 0
    if cmd == "workload":
        from atomwatch.lab import domains, testbed, workloads

        conn = domains.connect(args.uri)
        dom = testbed.guest_domains(conn, args.guest)[-1]
        if args.action == "list":
            print(" ".join(workloads.running(dom)) or "(none)")
            return 0
        if not args.name:
            raise ValueError(f"lab workload {args.action}: name a workload ({', '.join(workloads.WORKLOADS)})")
        if args.action == "start":
            workloads.start(dom, args.name, None)
        else:
            workloads.stop(dom, args.name)
        print(f"{dom.name()}: {args.action} {args.name}")
        return 0
    if cmd == "run":
        return _run_scenario(args)
    raise ValueError(f"unknown lab subcommand {cmd!r}")


def _run_scenario(args: argparse.Namespace) -> int:
    """Drive the scenario's schedule in a thread while ``atomwatch up`` (or ``agent``) runs here."""
    import importlib
    import threading

    from atomwatch.cli import COMMANDS, build_parser
    from atomwatch.lab import scenarios, testbed
    from atomwatch.lab.domains import connect
    from atomwatch.lab.driver import ScenarioDriver
    from atomwatch.lab.paths import PREFIX

    scenario = scenarios.get(args.scenario)
    if not args.minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    testbed.up(_workdir(args), scenario.guests, args.uri)
    conn = connect(args.uri)
    driver = ScenarioDriver(scenario, args.minutes, testbed.guest_domains(conn, scenario.guests))
    driver.setup()
    command = "agent" if args.broker else "up"
    argv = [
        command,
        "--tick",
        str(args.tick),
        "--duration",
        str(args.minutes * 60.0),
        "--set",
        f"libvirt.uri={args.uri}",
        "--set",
        f"libvirt.domains=^{PREFIX}-guest\\d+$",
        # the lab's guests are ours: consent to terminating their processes
        "--set",
        "introspection.terminate=on",
    ]
    if command == "up":
        argv.append("--no-replay")
    else:
        argv += ["--broker", args.broker]
    if args.site:
        argv += ["--site", args.site]
    inner = build_parser(command).parse_args(argv)
    stop = threading.Event()
    thread = driver.run_in_thread(stop)
    try:
        return int(importlib.import_module(COMMANDS[command][0]).run(inner) or 0)
    finally:
        stop.set()
        thread.join(5)
        driver.finish()
        conn.close()
        print(json.dumps({"scenario": scenario.name, "events": driver.done}, indent=2))

"""``atomwatch secure init / add-host``: the CA, certificates, keys, Mosquitto configuration and
ACL of a secured site (see ``docs/security.md``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from atomwatch.config import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="secure_command", metavar="SUBCOMMAND")
    i = sub.add_parser(
        "init",
        help="write a CA, broker/controller/agent certificates, mosquitto.conf and its ACL into DIR",
        description="Write DIR/ca.crt, DIR/ca.key (keep offline), DIR/broker/, DIR/controller/, "
        "DIR/agents/HOST/ and DIR/README.md (which file goes where).",
    )
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--site", required=True, help="the site name of every topic")
    i.add_argument(
        "--host", dest="hosts", action="append", default=[], metavar="HOST", help="a hypervisor (repeatable)"
    )
    i.add_argument(
        "--broker-host",
        dest="broker_hosts",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name clients use for the broker (repeatable; default localhost and 127.0.0.1 if no name or IP)",
    )
    i.add_argument(
        "--broker-ip", dest="broker_ips", action="append", default=[], metavar="IP", help="an IP of the broker"
    )
    i.add_argument("--broker-port", type=int, default=8883, help="the TLS listener's port (default 8883)")
    i.add_argument(
        "--broker-dir",
        metavar="PATH",
        help="where broker/ will be on the broker machine, for mosquitto.conf's paths (default: DIR/broker)",
    )
    i.add_argument(
        "--controller-host",
        dest="controller_hosts",
        action="append",
        default=[],
        metavar="NAME",
        help="a name or IP of the controller's HTTP API, besides localhost and 127.0.0.1 (repeatable)",
    )
    i.add_argument("--force", action="store_true", help="replace DIR's existing CA and every key")
    a = sub.add_parser(
        "add-host", help="issue one more agent's certificate with DIR's CA", description="Write DIR/agents/HOST/."
    )
    a.add_argument("dir", metavar="DIR")
    a.add_argument("host", metavar="HOST")


def run(args: argparse.Namespace) -> int:
    from atomwatch import pki

    root = Path(args.dir)
    if args.secure_command == "init":
        import ipaddress

        for ip in args.broker_ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(f"--broker-ip {ip!r}: not an IP address (names go to --broker-host)") from None
        spec = pki.Site(
            site=args.site,
            hosts=args.hosts,
            broker_names=[*args.broker_hosts, *args.broker_ips],
            broker_port=args.broker_port,
            controller_names=args.controller_hosts,
            broker_dir=args.broker_dir,
        )
        files = pki.init(root, spec, force=args.force)
        for f in files:
            print(f)
        print(f"\n{root}/README.md says which file goes to which machine; keep {root}/ca.key offline.", file=sys.stderr)
        return 0
    if args.secure_command == "add-host":
        folder = pki.add_host(root, args.host)
        for f in sorted(folder.iterdir()):
            print(f)
        s = pki.settings(root)
        if s:
            print(
                "\non the hypervisor: " + pki.agent_command(s["site"], s["broker"], s["broker_port"], args.host),
                file=sys.stderr,
            )
        return 0
    print("atomwatch secure: give a SUBCOMMAND: init or add-host (see --help)", file=sys.stderr)
    return 2

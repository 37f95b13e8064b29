"""The ``atomwatch`` command: one subcommand a module of this package (or of a plugin).

Each command module has ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only
when its subcommand runs, so ``atomwatch --help`` needs nothing beyond the core install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from atomwatch import __version__
from atomwatch.config import ConfigError

#: subcommand → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("atomwatch.cli.up", "run broker, controller and a local agent in one process"),
    "agent": ("atomwatch.cli.agent", "run the agent of this hypervisor"),
    "controller": ("atomwatch.cli.controller", "run a controller"),
    "plugins": ("atomwatch.cli.plugins", "list loaded plugins and the hooks they implement"),
    "track": ("atomwatch.cli.track", "compare tracking policies on a CSV trace"),
    "detect": ("atomwatch.cli.detect", "run a detector over a CSV trace or recording"),
    "alarms": ("atomwatch.cli.alarms", "list alarms of a controller"),
    "alarm": ("atomwatch.cli.alarm", "show one alarm with its findings and audit trail"),
    "verdict": ("atomwatch.cli.verdict", "give the operator's verdict on an alarm"),
    "plot": ("atomwatch.cli.plot", "plot a detector's score against its threshold to PNG"),
    "lab": ("atomwatch.cli.lab", "build and run the libvirt test bed (guests, workloads, attacks)"),
    "coredns-sim": ("atomwatch.cli.coredns_sim", "the CoreDNS metrics simulator (serve, record)"),
    "train": ("atomwatch.plugins.deep.train", "train a deep detector model on recordings"),
    "evaluate": ("atomwatch.plugins.deep.evaluate", "evaluate a model (or compare detectors) on recordings"),
    "retrain": ("atomwatch.plugins.deep.retrain", "retrain a model from the operator's verdicts"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomwatch",
        description="Watch VMs and DNS servers: track, detect, explain, act.",
    )
    parser.add_argument("--version", action="version", version=f"atomwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Find the subcommand first so that only its module is imported.
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
        if args.command not in ("up", "agent", "controller", "lab")
        else [logging.INFO, logging.DEBUG, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except ConfigError as e:
        print(f"atomwatch {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

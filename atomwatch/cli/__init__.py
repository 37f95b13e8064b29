"""The ``atomwatch`` command: one built-in subcommand a module of this package, plus the
subcommands plugins add through the ``register_commands`` hook (the deep plugin's ``train``,
``evaluate``, ``retrain``).

Each built-in module has ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only
when its subcommand runs. This package sits on top of every layer and may import any of them;
nothing imports it but ``python -m atomwatch`` and the console script.

Output to a closed pipe (``atomwatch detect … | head -2``) ends every subcommand quietly with exit
status 141 (128 + SIGPIPE, what the shell reports for a writer whose reader went away), handled
once here in :func:`main`, not per subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import sys
from pathlib import Path

from atomwatch import __version__
from atomwatch.alarm import Alarm
from atomwatch.config import ConfigError
from atomwatch.subcommands import Subcommand

from . import _logging

log = logging.getLogger(__name__)

#: the exit status when stdout's reader went away: 128 + SIGPIPE, as the shell reports it
CLOSED_PIPE_STATUS = 141

#: built-in subcommand → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("atomwatch.cli.up", "run broker, controller and a local agent in one process"),
    "agent": ("atomwatch.cli.agent", "run the agent of this hypervisor"),
    "controller": ("atomwatch.cli.controller", "run a controller"),
    "plugins": ("atomwatch.cli.plugins", "list plugins: detectors, collectors, orchestrators and their options"),
    "config": ("atomwatch.cli.config", "check a configuration file without starting anything (config check)"),
    "track": ("atomwatch.cli.track", "compare tracking policies on a CSV trace"),
    "detect": ("atomwatch.cli.detect", "run a detector over a CSV trace or recording"),
    "alarms": ("atomwatch.cli.alarms", "list alarms of a controller"),
    "alarm": ("atomwatch.cli.alarm", "show one alarm with its findings and audit trail"),
    "verdict": ("atomwatch.cli.verdict", "give the operator's verdict on an alarm"),
    "plot": ("atomwatch.cli.plot", "plot a detector's score against its threshold to PNG"),
    "lab": ("atomwatch.cli.lab", "build and run the libvirt test bed (guests, workloads, attacks)"),
    "coredns-sim": ("atomwatch.cli.coredns_sim", "the CoreDNS metrics simulator (serve, record)"),
    "broker-cluster": ("atomwatch.cli.broker_cluster", "start or stop a clustered MQTT broker (NATS) on loopback"),
    "symbols": ("atomwatch.cli.symbols", "build a Volatility symbol table from a kernel's BTF (symbols build)"),
    "secure": ("atomwatch.cli.secure", "make a site's CA, certificates, keys and Mosquitto ACL (init, add-host)"),
}


def plugin_subcommands() -> dict[str, Subcommand]:
    """The subcommands installed plugins add (``register_commands``), by name; a name that is a
    built-in's or an earlier plugin's is refused and logged."""
    from atomwatch.pluginmanager import call_safely, get_plugin_manager

    pm = get_plugin_manager(plugins_dir=os.environ.get("ATOMWATCH_PLUGINS_DIR") or None)
    out: dict[str, Subcommand] = {}
    for plugin, commands in call_safely(pm, "register_commands"):
        for cmd in commands or []:
            if not isinstance(cmd, Subcommand):
                log.error("plugin %s registered %r as a subcommand, not an atomwatch.Subcommand: ignored", plugin, cmd)
            elif cmd.name in COMMANDS or cmd.name in out:
                log.error("plugin %s registers subcommand %r, which exists already: ignored", plugin, cmd.name)
            else:
                out[cmd.name] = cmd
    return out


def build_parser(only: str | None = None, extra: dict[str, Subcommand] | None = None) -> argparse.ArgumentParser:
    """The parser; only subcommand ``only`` gets its arguments (its module is imported)."""
    parser = argparse.ArgumentParser(
        prog="atomwatch",
        description="Watch VMs and DNS servers: track, detect, explain, act.",
    )
    parser.add_argument("--version", action="version", version=f"atomwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    _add_log_arguments(parser, argparse.SUPPRESS)
    # the same two options after the subcommand too (``atomwatch controller --log-format json``)
    common = argparse.ArgumentParser(add_help=False)
    _add_log_arguments(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if name == only:
            importlib.import_module(module).add_arguments(p)
    for name, cmd in (extra or {}).items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, parents=[common])
        if name == only:
            cmd.add_arguments(p)
    return parser


def _find_command(argv: list[str]) -> str | None:
    """The first word of ``argv`` that is neither an option nor the value of one."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--log-level", "--log-format"):
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def _add_log_arguments(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument(
        "--log-level",
        choices=_logging.LEVELS,
        default=default,
        help="log this level and above (default: info for up, agent, controller and lab; warning for the others)",
    )
    p.add_argument(
        "--log-format",
        choices=_logging.FORMATS,
        default=default,
        help="text lines, or one JSON object per line (ts, level, logger, message, event fields) (default text)",
    )


class _Context:
    """What a plugin's subcommand may ask of the command line (:class:`atomwatch.SubcommandContext`)."""

    def read_alarms(self, db: str | None = None) -> list[Alarm]:
        from atomwatch.controller.alarms import AlarmStore
        from atomwatch.controller.config import default_db

        path = db or default_db()
        if path != ":memory:" and not Path(path).exists():
            raise ConfigError(f"--db {path}: no such alarms file")
        store = AlarmStore(path, readonly=True)
        try:
            return store.list(limit=1_000_000, load_rows=True)
        finally:
            store.shutdown()


def _stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone away."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except OSError:
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit finds nothing to
    fail on (else it prints 'Exception ignored … BrokenPipeError')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit status. Output to a closed pipe ends it quietly (141)."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return status
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket or another pipe of the subcommand broke: that is its own error
    _silence_stdout()
    return CLOSED_PIPE_STATUS


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Find the subcommand first so that only its module is imported; plugins are loaded only for
    # a subcommand that is not built in, or to list theirs in the help.
    command = _find_command(argv)
    try:
        extra = plugin_subcommands() if command not in COMMANDS else {}
    except ConfigError as e:  # a plugin that cannot load as written
        print(f"atomwatch: {e}", file=sys.stderr)
        return 2
    parser = build_parser(command if command in COMMANDS or command in extra else None, extra)
    tail: list[str] = []
    if "--" in argv:  # the options after "--" go whole to a subcommand that takes them (config check)
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if tail:
        if not hasattr(args, "role_args"):
            parser.error(f"unrecognized arguments: -- {' '.join(tail)}")
        args.role_args = tail
    if not args.command:
        parser.print_help()
        return 2
    _logging.configure(args.command, args.verbose, getattr(args, "log_level", None), getattr(args, "log_format", None))
    try:
        if args.command in extra:
            return int(extra[args.command].run(args, _Context()) or 0)
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except ConfigError as e:  # one line per problem (a configuration file may have several)
        for line in str(e).splitlines() or [""]:
            print(f"atomwatch {args.command}: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

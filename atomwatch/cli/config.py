"""``atomwatch config check FILE --role agent|controller``: check a configuration file, start nothing.

The file goes through the role's own path: the role's command-line parser with ``--config FILE``
and nothing else, :func:`atomwatch.cli._common.options`, the role's ``build_config`` (broker
address and its TLS files, keys, every top-level value) and the plugins' declared options
(:func:`atomwatch.check_options`), exactly as ``atomwatch agent --config FILE`` or ``atomwatch
controller --config FILE`` would before connecting. The environment counts as it would for that
command (``ATOMWATCH_BROKER``, ``ATOMWATCH_CONTROLLER_KEY``, …). A problem is one line on stderr
and exit status 2; a good file prints a summary and exits 0. Nothing is connected to, opened for
writing or started (no broker, no alarms file, no collector).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from atomwatch.config import ConfigError

#: role → its command module (whose add_arguments and build_config are used)
ROLES = {"agent": "atomwatch.cli.agent", "controller": "atomwatch.cli.controller"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="check FILE as the configuration of a role, without starting anything",
        description="Build the role's configuration from FILE exactly as `atomwatch ROLE --config FILE` "
        "would, and report the first problem (exit status 2) or a summary (exit status 0).",
    )
    check.add_argument("file", metavar="FILE", help="the TOML file (as given to --config)")
    check.add_argument("--role", required=True, choices=sorted(ROLES), help="which command reads the file")
    check.add_argument("--plugins-dir", metavar="DIR", help="also load every *.py plugin file of DIR")


def check(path: str, role: str, plugins_dir: str | None = None) -> dict[str, Any]:
    """The configuration ``atomwatch ROLE --config PATH`` would run with, summarised; raises
    :class:`ConfigError` for the first problem."""
    from ._common import options, plugin_manager

    module = importlib.import_module(ROLES[role])
    parser = argparse.ArgumentParser(prog=f"atomwatch {role}")
    module.add_arguments(parser)
    argv = ["--config", path] + (["--plugins-dir", plugins_dir] if plugins_dir else [])
    args = parser.parse_args(argv)
    file_config, plugin_opts = options(args)
    try:
        config = module.build_config(args, file_config, plugin_opts)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a value of the wrong type that build_config does not name yet
        raise ConfigError(f"--config {path}: {type(e).__name__}: {e}") from None
    try:
        plugin_manager(args, plugin_opts)  # loads the plugins, then checks every declared option table
    except FileNotFoundError as e:  # --plugins-dir
        raise ConfigError(str(e)) from None
    summary: dict[str, Any] = {
        "file": path,
        "role": role,
        "broker": str(config.broker),
        "tick": config.tick,
        "plugin_tables": sorted(plugin_opts),
    }
    if role == "agent":
        summary.update(site=config.site, host=config.host, controller_keys=len(config.controller_keys))
    else:
        summary.update(
            sites=config.sites,
            detectors=config.detectors or "every detector loaded",
            db=config.db,
            http=config.http,
            signing_key=config.signing_key is not None,
        )
    return summary


def run(args: argparse.Namespace) -> int:
    summary = check(args.file, args.role, args.plugins_dir)
    where = f"site {summary['site']}, host {summary['host']}" if args.role == "agent" else f"sites {summary['sites']}"
    print(
        f"{args.file}: a valid {args.role} configuration ({where}, broker {summary['broker']}, "
        f"tick {summary['tick']:g} s, plugin tables: {', '.join(summary['plugin_tables']) or 'none'})"
    )
    if args.role == "agent" and not summary["controller_keys"]:
        print("note: no controller_key: this agent will refuse every command", file=sys.stderr)
    if args.role == "controller" and not summary["signing_key"]:
        print("note: no signing_key: commands go unsigned and every agent refuses them", file=sys.stderr)
    return 0

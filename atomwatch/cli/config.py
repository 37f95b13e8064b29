"""``atomwatch config check FILE --role agent|controller``: check a configuration file, start nothing.

The file goes through the role's own path: the role's command-line parser with ``--config FILE``
(and the role's options given after ``--``, as in a systemd unit's ``ExecStart``), the role's
environment variables (``ATOMWATCH_TICK``, ``ATOMWATCH_BROKER``, … exactly as the role reads them),
the role's ``build_config`` (broker address and its TLS files, keys, every top-level value) and
the loaded plugins' declared options, as ``atomwatch agent --config FILE`` or ``atomwatch
controller --config FILE`` would before connecting. Every problem of the keys, values and plugin
tables is reported at once, a line each, exit status 2; then the role's own checks of the values
together (the first one that fails); a good file prints a summary (``--json``: one object) and
exits 0. Nothing is connected to, opened for writing or started (no broker, no alarms file, no
collector).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from atomwatch.config import ConfigError

#: role → its command module (whose add_arguments, KEYS and build_config are used)
ROLES = {"agent": "atomwatch.cli.agent", "controller": "atomwatch.cli.controller"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="check FILE as the configuration of a role, without starting anything",
        description="Build the role's configuration from FILE (and the environment, and the role's options "
        "after --) exactly as `atomwatch ROLE --config FILE` would, and report every problem (exit status 2) "
        "or a summary (exit status 0).",
    )
    check.add_argument("file", metavar="FILE", help="the TOML file (as given to --config)")
    check.add_argument("--role", required=True, choices=sorted(ROLES), help="which command reads the file")
    check.add_argument("--plugins-dir", metavar="DIR", help="also load every *.py plugin file of DIR")
    check.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    # the role's options after "--" (atomwatch.cli.main hands them over: argparse 3.11 mishandles
    # "--" below a subcommand)
    check.set_defaults(role_args=[])
    check.epilog = "Options of the role's command line may follow after --, e.g. -- --tick 5s --site eu1."


def check(path: str, role: str, plugins_dir: str | None = None, role_args: list[str] | None = None) -> dict[str, Any]:
    """The configuration ``atomwatch ROLE --config PATH [ROLE_ARGS]`` would run with, summarised;
    raises :class:`ConfigError` with every problem of the file's keys, values and plugin tables
    (a line each), else the first problem of the role's own checks."""
    from atomwatch.config import load_file, plain_deltas, plugin_options
    from atomwatch.settings import resolve, unknown_keys

    from ._common import plugin_manager

    module = importlib.import_module(ROLES[role])
    parser = argparse.ArgumentParser(prog=f"atomwatch {role}", exit_on_error=False)
    module.add_arguments(parser)
    argv = ["--config", path] + (["--plugins-dir", plugins_dir] if plugins_dir else []) + list(role_args or [])
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ConfigError(f"the options after --: {e}") from None
    if unknown:
        raise ConfigError(f"the options after --: not options of atomwatch {role}: {' '.join(unknown)}")
    file_config = load_file(path)  # not TOML: nothing more to check
    problems = unknown_keys(file_config, path, [k.name for k in module.KEYS], role)
    try:
        plugin_opts = plugin_options(file_config, args.settings, path=path)
    except ConfigError as e:
        problems.append(str(e))
        plugin_opts = {}
    values: dict[str, Any] = {}
    try:
        values = resolve(module.KEYS, args, file_config, path)
    except ConfigError as e:
        problems += str(e).splitlines()
    pm = None
    try:
        pm = plugin_manager(args, plugin_opts, file_config)  # loads the plugins, then checks every table
    except ConfigError as e:
        problems += str(e).splitlines()
    except FileNotFoundError as e:  # --plugins-dir
        problems.append(str(e))
    if pm is not None and values.get("detectors"):
        problems += _unknown_detectors(pm, module, args, file_config, path, values["detectors"])
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        config = module.build_config(args, file_config, plugin_opts)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a value of the wrong type that build_config does not name yet
        raise ConfigError(f"--config {path}: {type(e).__name__}: {e}") from None
    summary: dict[str, Any] = {
        "file": path,
        "role": role,
        "broker": str(config.broker),
        "tick": config.tick,
        "duration": config.duration,
        "plugin_tables": sorted(plugin_opts),
    }
    if role == "agent":
        summary.update(
            site=config.site,
            host=config.host,
            controller_keys=len(config.controller_keys),
            deltas=plain_deltas(config.deltas),
        )
    else:
        summary.update(
            sites=config.sites,
            detectors=config.detectors or "every detector loaded",
            alarm_rows=config.alarm_rows,
            db=config.db,
            http=config.http,
            signing_key=config.signing_key is not None,
        )
    return summary


def _unknown_detectors(pm, module, args, file_config, path, names) -> list[str]:
    """The controller's refusal of a detector name no plugin registers, with the key's source."""
    from atomwatch.detectors import detector_factories
    from atomwatch.options import did_you_mean
    from atomwatch.settings import source

    factories = detector_factories(pm)
    (key,) = [k for k in module.KEYS if k.name == "detectors"]
    found = source(key, args, file_config, path)
    where = found[1] if found else "detectors"
    return [
        f"{where}: {name!r} is no loaded detector{did_you_mean(name, factories)}; loaded: {', '.join(sorted(factories))}"
        for name in names
        if name not in factories
    ]


def run(args: argparse.Namespace) -> int:
    summary = check(args.file, args.role, args.plugins_dir, args.role_args)
    if args.json:
        print(json.dumps(summary))
        return 0
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

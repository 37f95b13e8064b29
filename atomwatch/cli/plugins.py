"""``atomwatch plugins``: the loaded plugins, what each is (collector, detector, orchestrator, …),
the detectors and subcommands it registers, and every option it declares with its default.

The options come from the dataclasses plugins declare with ``atomwatch.declare_options`` (an option
table belongs to the plugin whose module declared it); the detectors from ``register_detectors``.
Collectors are made by the agent from its configuration, so a collector plugin is listed with
its options, not with collector instances.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import add_plugin_arguments, plugin_manager, role_keys
from ._common import options as file_options

#: hook → what a plugin implementing it is
KINDS = {
    "register_collectors": "collector",
    "register_agent_commands": "agent commands",
    "register_detectors": "detector",
    "anomaly_detected": "orchestrator",
    "alarm_opened": "orchestrator",
    "alarm_updated": "orchestrator",
    "verdict_given": "orchestrator",
    "register_commands": "subcommands",
}

#: long type descriptions (as error messages word them) → the short word the table prints
_SHORT = {
    "a boolean (true/false, yes/no, on/off, 1/0)": "boolean",
    "a duration such as 300, '5min' or '6h'": "duration",
    "a list of names or a comma-separated string": "names",
    "an integer": "integer",
    "a number": "number",
    "a string": "string",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plugin_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--hooks", action="store_true", help="list the hook specifications with their documentation")


def _module_name(plugin: Any) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__module__


def _summary(plugin: Any) -> str:
    doc = (getattr(plugin, "__doc__", None) or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ").replace("``", "") if doc else ""


def describe(pm: Any) -> list[dict[str, Any]]:
    """One entry per loaded plugin: name, source, hooks, kinds, summary, detectors, subcommands and
    option tables (table name → :func:`atomwatch.options.describe_options`)."""
    from atomwatch.options import declared_options, describe_options
    from atomwatch.pluginmanager import call_safely

    detectors: dict[str, list[dict[str, str]]] = {}
    for plugin, factories in call_safely(pm, "register_detectors"):
        for f in factories or []:
            name = getattr(f, "name", None)
            if isinstance(name, str) and name:
                detectors.setdefault(plugin, []).append({"name": name, "description": getattr(f, "description", "")})
    commands: dict[str, list[dict[str, str]]] = {}
    for plugin, subs in call_safely(pm, "register_commands"):
        for cmd in subs or []:
            if hasattr(cmd, "name"):
                commands.setdefault(plugin, []).append({"name": cmd.name, "help": getattr(cmd, "help", "")})
    tables = declared_options()
    out = []
    for entry in pm.describe():
        plugin = pm.get_plugin(entry["name"])
        module = _module_name(plugin)
        options = {
            table: describe_options(cls)
            for table, cls in sorted(tables.items())
            if cls.__module__ == module or cls.__module__.startswith(module + ".")
        }
        out.append(
            dict(
                entry,
                kinds=sorted({KINDS[h] for h in entry["hooks"] if h in KINDS}),
                summary=_summary(plugin),
                detectors=detectors.get(entry["name"], []),
                subcommands=commands.get(entry["name"], []),
                options=options,
            )
        )
    return out


def _option_line(o: dict[str, Any]) -> str:
    kind = o["type"]
    for long, short in _SHORT.items():
        kind = kind.replace(long, short)
    if o["rules"]:
        kind += f", {o['rules']}"
    default = "(required)" if o["required"] else json.dumps(o["default"], ensure_ascii=False)
    line = f"      {o['name']} = {default}  [{kind}]"
    return line + (f"  {o['help']}" if o["help"] else "")


def run(args: argparse.Namespace) -> int:
    file_config, plugin_opts = file_options(args, role_keys(), "plugins")  # --config and --set are checked
    pm = plugin_manager(args, plugin_opts, file_config)
    if args.hooks:
        from atomwatch.pluginmanager import hook_docs

        docs = hook_docs(pm)
        if args.json:
            print(json.dumps(docs, indent=2))
        else:
            for name, doc in sorted(docs.items()):
                print(f"{name}\n    " + doc.replace("\n", "\n    ") + "\n")
        return 0
    plugins = describe(pm)
    errors = [e.__dict__ for e in pm.load_errors]
    if args.json:
        print(json.dumps({"plugins": plugins, "errors": errors}, indent=2, ensure_ascii=False))
        return 0
    for p in plugins:
        print(f"{p['name']:<24} {', '.join(p['kinds']) or '(no hooks)'}: {', '.join(p['hooks']) or '-'}")
        print(f"{'':<24} from {p['source']}")
        if p["summary"]:
            print(f"  {p['summary']}")
        for d in p["detectors"]:
            print(f"  detector {d['name']}: {d['description']}")
        for c in p["subcommands"]:
            print(f"  subcommand atomwatch {c['name']}: {c['help']}")
        shown: dict[str, str] = {}  # the options printed so far → their table (ae, cnn, siamese share theirs)
        for table, options in p["options"].items():
            key = json.dumps(options)
            if key in shown:
                print(f"    options [plugins.{table}]: the same as [plugins.{shown[key]}]")
                continue
            shown[key] = table
            print(f"    options [plugins.{table}] (--set {table}.OPTION=VALUE):")
            for o in options:
                print(_option_line(o))
        print()
    for e in errors:
        print(f"{e['name']:<24} NOT LOADED: {e['error']}\n{'':<24} from {e['source']}")
    return 0

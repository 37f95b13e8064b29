"""``atomwatch plugins``: the loaded plugins and the hooks each implements."""

from __future__ import annotations

import argparse
import json

from ._common import add_plugin_arguments, plugin_manager


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plugin_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--hooks", action="store_true", help="list the hook specifications with their documentation")


def run(args: argparse.Namespace) -> int:
    pm = plugin_manager(args)
    if args.hooks:
        from atomwatch.pluginmanager import hook_docs

        docs = hook_docs(pm)
        if args.json:
            print(json.dumps(docs, indent=2))
        else:
            for name, doc in sorted(docs.items()):
                print(f"{name}\n    " + doc.replace("\n", "\n    ") + "\n")
        return 0
    plugins = pm.describe()
    errors = [e.__dict__ for e in pm.load_errors]
    if args.json:
        print(json.dumps({"plugins": plugins, "errors": errors}, indent=2))
        return 0
    for p in plugins:
        print(f"{p['name']:<24} {', '.join(p['hooks']) or '(no hooks)'}\n{'':<24} from {p['source']}")
    for e in errors:
        print(f"{e['name']:<24} NOT LOADED: {e['error']}\n{'':<24} from {e['source']}")
    return 0

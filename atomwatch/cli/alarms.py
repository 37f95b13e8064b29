"""``atomwatch alarms``: the alarms of a controller, newest first."""

from __future__ import annotations

import argparse
import json
import time

from ._api import ApiError, add_controller_argument, call, fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_controller_argument(p)
    p.add_argument("--state", choices=["open", "malicious", "closed"], help="only alarms in this state")
    p.add_argument("--scope", help="only alarms of this scope (SITE/HOST)")


def run(args: argparse.Namespace) -> int:
    query = "&".join(f"{k}={v}" for k, v in (("state", args.state), ("scope", args.scope)) if v)
    try:
        alarms = call(args, "GET", "/api/alarms" + (f"?{query}" if query else ""))["alarms"]
    except ApiError as e:
        return fail("alarms", e)
    if args.json:
        print(json.dumps(alarms, indent=2))
        return 0
    if not alarms:
        print("no alarms")
    for a in alarms:
        blamed = ", ".join(f"{b['column']} {b.get('direction', '')}".strip() for b in a["blame"][:4])
        opened = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["opened_at"]))
        print(
            f"#{a['id']:<5} {a['state']:<9} {opened}  {a['scope']:<24} {a['detector']:<10} level {a['level']:<4}"
            f" score {a['score']:.4g} > {a['threshold']:.4g}  {blamed}"
        )
    return 0

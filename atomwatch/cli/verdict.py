"""``atomwatch verdict ID normal|malicious``: the operator's decision on an alarm.

*normal*: the alarm's rows join the detector's normal model, which refits; the alarm closes as a
workload change. *malicious*: the orchestrators act (e.g. terminate the suspect process: ``--pid``
picks which one, by default the top suspect of the findings).
"""

from __future__ import annotations

import argparse
import getpass
import json

from ._api import ApiError, add_controller_argument, call, fail
from .alarm import show


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int, help="the alarm's number")
    p.add_argument("verdict", choices=["normal", "malicious"])
    p.add_argument("--actor", default=None, help="who gives the verdict (default: the user name)")
    p.add_argument("--pid", type=int, help="with malicious: the suspect process to act on")
    p.add_argument("--reason", help="a note for the audit trail")
    add_controller_argument(p)


def run(args: argparse.Namespace) -> int:
    body = {"verdict": args.verdict, "actor": args.actor or getpass.getuser()}
    if args.pid is not None:
        body["pid"] = args.pid
    if args.reason:
        body["reason"] = args.reason
    try:
        a = call(args, "POST", f"/api/alarms/{args.id}/verdict", body)
    except ApiError as e:
        return fail("verdict", e)
    if args.json:
        print(json.dumps(a, indent=2))
    else:
        show(a)
    return 0

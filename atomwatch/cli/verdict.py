"""``atomwatch verdict ID normal|malicious``: the operator's decision on an alarm.

*normal*: the alarm's rows join the detector's normal model, which refits; the alarm closes as a
workload change. *malicious*: the orchestrators act (e.g. terminate the suspect process: ``--pid``
picks which one, by default the top suspect of the findings).

The verdict is given in the name of the API token (``$ATOMWATCH_API_TOKEN``, ``--token-file`` or
this user's local tokens file): that name is the actor in the alarm's audit trail.
"""

from __future__ import annotations

import argparse
import json

from ._api import ApiError, add_controller_argument, call, fail
from .alarm import show


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int, help="the alarm's number")
    p.add_argument("verdict", choices=["normal", "malicious"])
    p.add_argument(
        "--actor",
        default=None,
        help="who gives the verdict: the audit trail always shows the token's name; "
        "an --actor that differs from it is refused",
    )
    p.add_argument("--pid", type=int, help="with malicious: the suspect process to act on")
    p.add_argument("--reason", help="a note for the audit trail")
    add_controller_argument(p)


def run(args: argparse.Namespace) -> int:
    body: dict = {"verdict": args.verdict}
    if args.actor:
        body["actor"] = args.actor
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

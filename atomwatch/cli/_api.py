"""A small client of the controller's HTTP API for the operator commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT = "http://127.0.0.1:8470"


def add_controller_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--controller", metavar="URL", help=f"the controller's HTTP API (default: $ATOMWATCH_CONTROLLER or {DEFAULT})"
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON")


class ApiError(Exception):
    pass


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    base = (args.controller or os.environ.get("ATOMWATCH_CONTROLLER") or DEFAULT).rstrip("/")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=150) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", e.reason)
        except Exception:
            msg = e.reason
        raise ApiError(msg) from None
    except urllib.error.URLError as e:
        raise ApiError(f"cannot reach the controller at {base}: {e.reason}") from None


def fail(command: str, e: Exception) -> int:
    print(f"atomwatch {command}: {e}", file=sys.stderr)
    return 1

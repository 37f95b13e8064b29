"""A small client of the controller's HTTP API for the operator commands.

The token (``Authorization: Bearer``) comes from ``$ATOMWATCH_API_TOKEN``, else ``--token-file``,
else the local user's tokens file (the one ``atomwatch up``/``controller`` create); an
``https://`` controller is verified against ``--ca FILE`` (or ``$ATOMWATCH_API_CA``), else the
system's certificate authorities.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from atomwatch.apitokens import client_token
from atomwatch.config import ConfigError

log = logging.getLogger(__name__)

DEFAULT = "http://127.0.0.1:8470"


def add_controller_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--controller", metavar="URL", help=f"the controller's HTTP API (default: $ATOMWATCH_CONTROLLER or {DEFAULT})"
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="a file holding just the API token, used when $ATOMWATCH_API_TOKEN is not set "
        "(default: the first token of this user's ~/.local/state/atomwatch/api-tokens)",
    )
    p.add_argument(
        "--ca", metavar="FILE", help="PEM CA certificate(s) to verify an https:// controller ($ATOMWATCH_API_CA)"
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON")


class ApiError(Exception):
    """The API's answer was an error; ``status`` is its HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _tls(args: argparse.Namespace, base: str) -> ssl.SSLContext | None:
    if urlparse(base).scheme != "https":
        return None
    ca = getattr(args, "ca", None) or os.environ.get("ATOMWATCH_API_CA")
    flag = "--ca" if getattr(args, "ca", None) else "$ATOMWATCH_API_CA"
    try:
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {ca}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{flag} {ca}: not a usable PEM CA certificate ({e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    base = (args.controller or os.environ.get("ATOMWATCH_CONTROLLER") or DEFAULT).rstrip("/")
    if urlparse(base).scheme not in ("http", "https"):
        raise ConfigError(f"--controller {base}: expected http://HOST:PORT or https://HOST:PORT")
    token, source = client_token(getattr(args, "token_file", None))
    ctx = _tls(args, base)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
        host = urlparse(base).hostname or ""
        if ctx is None and host not in ("localhost", "::1") and not host.startswith("127."):
            log.warning("sending the API token to %s over plain HTTP: anyone on the path can read it", base)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=150, context=ctx) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", e.reason)
        except Exception:
            msg = e.reason
        if e.code == 401 and token:
            msg = f"the controller at {base} refused the API token from {source} (401: {msg})"
        elif e.code == 401:
            msg = (
                f"the controller at {base} needs an API token (401): {source}; set $ATOMWATCH_API_TOKEN or --token-file"
            )
        raise ApiError(msg, e.code) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise ApiError(
                f"cannot verify the certificate of {base} ({e.reason.verify_message}): pass its CA with --ca FILE"
            ) from None
        raise ApiError(f"cannot reach the controller at {base}: {e.reason}") from None
    except (OSError, ValueError) as e:
        raise ApiError(f"cannot talk to the controller at {base}: {e}") from None


def fail(command: str, e: Exception) -> int:
    """Print the one-line error; exit status 2 for a refused token (401), else 1."""
    print(f"atomwatch {command}: {e}", file=sys.stderr)
    return 2 if getattr(e, "status", None) == 401 else 1

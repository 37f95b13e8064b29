"""How the ``atomwatch`` command logs: the level (``--log-level``, ``-v``) and the format
(``--log-format text|json``) of the lines on stderr.

What lives here: :func:`configure` and :class:`JsonFormatter` (one JSON object per line: ``ts``,
``level``, ``logger``, ``message``, any structured fields a log call passed with ``extra=`` —
the controller's alarm events carry ``event`` and ``alarm`` — and ``exception`` when there is
one). What does not: what is logged (each module's own logger).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: the attributes every LogRecord has; any other attribute came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, for log collectors (journald, Loki, jq)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def default_level(command: str | None, verbose: int) -> int:
    """Without ``--log-level``: the long-running commands log INFO (``-v``: DEBUG), the others
    WARNING (``-v``: INFO, ``-vv``: DEBUG)."""
    if command in ("up", "agent", "controller", "lab"):
        return logging.DEBUG if verbose else logging.INFO
    return [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]


def configure(command: str | None, verbose: int = 0, level: str | None = None, fmt: str | None = None) -> None:
    """Set up the root logger: one handler on stderr at ``level`` (a name of :data:`LEVELS`,
    else :func:`default_level`) in ``fmt`` (:data:`FORMATS`, default text). Like
    :func:`logging.basicConfig`, it does nothing when the root logger has a handler already (a
    program embedding :func:`atomwatch.cli.main`, pytest)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()) if level else default_level(command, verbose))

"""The controller's HTTP API and Prometheus ``/metrics`` (stdlib HTTP server in one thread).

Routes (JSON unless said otherwise)::

    GET  /api/health                      {"ok": true, "connected": …}
    GET  /api/alarms[?state=open&scope=…] the alarms, newest first
    GET  /api/alarms/<id>                 one alarm with its findings and audit trail
    POST /api/alarms/<id>/verdict         {"verdict": "normal"|"malicious", "actor": "…", …}
    GET  /api/scopes                      every scope with its detectors' current score/threshold
    GET  /metrics                         Prometheus text format

Errors answer ``{"error": "…"}`` with 400 (bad request), 404 (unknown alarm or route) or 409
(a verdict on an alarm that is not open). Bind to loopback unless a reverse proxy authenticates
operators: the API has no authentication of its own.

What lives here: the routes and the server thread, serving an :class:`ApiBackend` (the few parts
of the controller they need, not the controller). What does not: the metrics themselves
(:mod:`.metrics`), what a verdict does (:mod:`.verdicts`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from atomwatch.alarm import Alarm
from atomwatch.config import ConfigError

from .alarms import AlarmError, AlarmNotFound, AlarmStateError
from .metrics import MetricsSource, render_metrics

log = logging.getLogger(__name__)

_ALARM = re.compile(r"^/api/alarms/(\d+)$")
_VERDICT = re.compile(r"^/api/alarms/(\d+)/verdict$")


class ApiBackend(MetricsSource, Protocol):
    """What the API serves (the controller has all of it): the metrics' sources, whether the
    broker is connected, the event loop verdicts run on, and the verdict itself."""

    connected: asyncio.Event
    loop: asyncio.AbstractEventLoop | None

    def give_verdict(
        self, alarm_id: int, verdict: str, actor: str, params: dict[str, Any] | None = None
    ) -> Coroutine[Any, Any, Alarm]: ...


class _Handler(BaseHTTPRequestHandler):
    controller: ApiBackend
    server_version = "atomwatch"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, default=str, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        c = self.controller
        try:
            if url.path == "/metrics":
                self._send(200, render_metrics(c), "text/plain; version=0.0.4; charset=utf-8")
            elif url.path == "/api/health":
                self._send(200, {"ok": True, "connected": c.connected.is_set(), "rows": c.rows_handled})
            elif url.path == "/api/alarms":
                q = parse_qs(url.query)
                alarms = c.alarms.list(state=q.get("state", [None])[0], scope=q.get("scope", [None])[0])
                self._send(200, {"alarms": [summary(a) for a in alarms]})
            elif m := _ALARM.match(url.path):
                alarm_id = int(m.group(1))
                alarm = c.alarms.get(alarm_id)
                self._send(200, alarm.to_dict(audit=c.alarms.audit(alarm_id)))
            elif url.path == "/api/scopes":
                self._send(200, {"scopes": scopes(c)})
            else:
                self._send(404, {"error": f"no route GET {url.path}"})
        except AlarmError as e:
            self._send(_status(e), {"error": str(e)})
        except Exception as e:  # never let one request kill the server thread
            log.exception("GET %s failed", self.path)
            self._send(500, {"error": f"{type(e).__name__}: {e}"})

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        m = _VERDICT.match(url.path)
        if not m:
            self._send(404, {"error": f"no route POST {url.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length <= 1 << 20 else None
        except (ValueError, json.JSONDecodeError) as e:
            self._send(400, {"error": f"the body is not JSON: {e}"})
            return
        if not isinstance(body, dict):
            self._send(400, {"error": 'the body must be a JSON object {"verdict": …, "actor": …}'})
            return
        verdict, actor = body.pop("verdict", None), body.pop("actor", None)
        if not isinstance(verdict, str) or not isinstance(actor, str) or not actor:
            self._send(400, {"error": 'needs "verdict" (normal or malicious) and "actor" (who gives it)'})
            return
        c = self.controller
        assert c.loop is not None
        fut = asyncio.run_coroutine_threadsafe(c.give_verdict(int(m.group(1)), verdict, actor, body), c.loop)
        try:
            alarm = fut.result(timeout=120)
        except AlarmError as e:
            self._send(_status(e), {"error": str(e)})
            return
        except Exception as e:
            log.exception("verdict on alarm %s failed", m.group(1))
            self._send(500, {"error": f"{type(e).__name__}: {e}"})
            return
        self._send(200, alarm.to_dict(audit=c.alarms.audit(alarm.id)))


def _status(e: AlarmError) -> int:
    return 404 if isinstance(e, AlarmNotFound) else 409 if isinstance(e, AlarmStateError) else 400


def summary(alarm: Any) -> dict[str, Any]:
    d = alarm.to_dict()
    d.pop("rows")
    d["findings"] = len(alarm.findings)
    return d


def scopes(c: ApiBackend) -> list[dict[str, Any]]:
    out = []
    for scope, st in sorted(c.scope_status.items()):
        site, _, host = scope.partition("/")
        h = c.ingest.hosts.get((site, host))
        out.append({"scope": scope, "alive": bool(h and h.alive), "series": len(h.keys) if h else 0, **st})
    return out


class ApiServer:
    def __init__(self, controller: ApiBackend, address: tuple[str, int]):
        handler = type("Handler", (_Handler,), {"controller": controller})
        try:
            self.server = ThreadingHTTPServer(address, handler)
        except OSError as e:
            raise ConfigError(
                f"--http {address[0]}:{address[1]}: cannot listen ({e.strerror}); choose another HOST:PORT or 'off'"
            ) from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self.thread.start()
        log.info("HTTP API and /metrics on %s", self.url)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

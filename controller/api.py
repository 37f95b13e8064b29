"""The controller's HTTP API and Prometheus ``/metrics`` (stdlib HTTP server, a thread per request).

Routes (JSON unless said otherwise)::

    GET  /api/health                      {"ok": true, "connected": …}                 open
    GET  /api/alarms[?state=open&scope=…] the alarms, newest first                      token
    GET  /api/alarms/<id>                 one alarm with its findings and audit trail   token
    POST /api/alarms/<id>/verdict         {"verdict": "normal"|"malicious", …}          token
    GET  /api/scopes                      every scope with its detectors' score/threshold  token
    GET  /metrics                         Prometheus text format                        open
    GET  /, /ui/app.js, /ui/app.css       the page of alarms (static; it calls the routes
                                          above with the token the operator pastes)     open

Security (``docs/security.md``): every route but ``/api/health`` and ``/metrics`` needs
``Authorization: Bearer TOKEN`` with a token of the tokens file (:mod:`atomwatch.apitokens`,
re-read when it changes; by default the local user's file); the token's name is the verdict's
actor (a body ``actor`` that differs is refused). A verdict must be ``Content-Type:
application/json`` (415), at most :data:`MAX_BODY` bytes (413); a request whose ``Origin`` is not
the API's own is refused (403), as is, on a loopback-only server, a ``Host`` that is not a
loopback name (DNS rebinding). With ``cert``/``key`` it serves HTTPS (TLS >= 1.2). Every answer
carries ``X-Content-Type-Options: nosniff`` and ``Cache-Control: no-store``; the page's files
also a Content-Security-Policy that allows only its own script, style and API (no inline script,
no other origin, no framing) and ``Referrer-Policy: no-referrer``.

Errors answer ``{"error": "…"}`` with 400 (bad request), 401 (no or wrong token, with
``WWW-Authenticate: Bearer``), 403, 404 (unknown alarm or route), 409 (a verdict on an alarm that
is not open), 413, 415, or 503 (the tokens file became unusable: every request is refused; or the
alarms file cannot be read).

What lives here: the routes, the checks and the server thread, serving an :class:`ApiBackend`
(the few parts of the controller they need, not the controller). What does not: the tokens
(:mod:`atomwatch.apitokens`), the metrics themselves (:mod:`.metrics`), what a verdict does
(:mod:`.verdicts`), the page's files (``controller/ui/``: HTML, CSS and JavaScript, no build step).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from atomwatch.alarm import Alarm
from atomwatch.apitokens import TokenFile, ensure_local_tokens
from atomwatch.config import ConfigError

from .alarms import AlarmError, AlarmNotFound, AlarmStateError, AlarmStoreUnavailable
from .config import is_loopback
from .metrics import MetricsSource, render_metrics

log = logging.getLogger(__name__)

_ALARM = re.compile(r"^/api/alarms/(\d+)$")
_VERDICT = re.compile(r"^/api/alarms/(\d+)/verdict$")
#: largest verdict body accepted (413 beyond)
MAX_BODY = 64 * 1024
#: largest unread body read and dropped before an error answer (beyond, the connection is closed)
MAX_DRAIN = 1 << 20
#: the page's files: path → (file under controller/ui/, Content-Type)
PAGE = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}
#: what the page may load and where it may connect: itself only (no inline script or style, no
#: other origin, never inside a frame: a framed verdict button could be clickjacked)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_page_cache: dict[str, bytes] = {}


def page_file(name: str) -> bytes:
    """A file of the page (read once from the installed package)."""
    if name not in _page_cache:
        _page_cache[name] = (resources.files("atomwatch.controller") / "ui" / name).read_bytes()
    return _page_cache[name]


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
    tokens: TokenFile
    scheme: str = "http"
    #: loopback-only server: a Host header naming anything else is refused (DNS rebinding)
    loopback_only: bool = True
    server_version = "atomwatch"
    timeout = 30  # seconds a client may take per read: a stalled client only holds its own thread

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(
        self, status: int, body: Any, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, default=str, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    # ------------------------------------------------------------------ the checks

    def _host_refused(self) -> str | None:
        """Why the Host header is refused (loopback servers answer only loopback names), or None."""
        if not self.loopback_only:
            return None
        host = self.headers.get("Host")
        if host is None:
            return None  # HTTP/1.0 clients may omit it; a browser always sends it
        name = urlparse(f"//{host}").hostname or ""
        if is_loopback(name) or name.endswith(".localhost"):
            return None
        return f"Host {host!r} is not this API's (it listens on loopback only)"

    def _origin_refused(self) -> str | None:
        """Why the Origin header is refused (present and not this API's own origin), or None."""
        origin = self.headers.get("Origin")
        if origin is None:
            return None
        host = self.headers.get("Host") or ""
        if host and origin.rstrip("/").lower() == f"{self.scheme}://{host}".lower():
            return None
        return f"cross-origin request from {origin!r} refused"

    def _authenticate(self, length: int = 0) -> str | None:
        """The token's name; else answer 401 (or 503 when the tokens file is unusable) and None.
        ``length``: the unread body to drop first."""
        auth = self.headers.get("Authorization") or ""
        scheme, _, token = auth.strip().partition(" ")
        name = self.tokens.check(token.strip()) if scheme.lower() == "bearer" else None
        if name is not None:
            return name
        if length:
            self._drain(length)
        if not self.tokens.usable:
            self._send(503, {"error": "the controller's API tokens file is unusable: see the controller's log"})
            return None
        why = "no Authorization header" if not auth else "wrong token" if scheme.lower() == "bearer" else "not Bearer"
        log.warning("HTTP API: %s %s from %s refused: %s", self.command, urlparse(self.path).path, self.peer, why)
        challenge = 'Bearer realm="atomwatch"' + (', error="invalid_token"' if auth else "")
        self._send(
            401,
            {"error": f"authentication required ({why}): send 'Authorization: Bearer TOKEN'"},
            headers={"WWW-Authenticate": challenge},
        )
        return None

    @property
    def peer(self) -> str:
        host, port = self.client_address[:2]
        return f"{host}:{port}"

    def _refuse_early(self) -> bool:
        """Host and Origin checks of a protected route; True when refused (answered 403)."""
        why = self._host_refused() or self._origin_refused()
        if why:
            log.warning("HTTP API: %s %s from %s refused: %s", self.command, urlparse(self.path).path, self.peer, why)
            self._send(403, {"error": why})
            return True
        return False

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        c = self.controller
        try:
            if url.path == "/metrics":
                self._send(200, render_metrics(c), "text/plain; version=0.0.4; charset=utf-8")
                return
            if url.path in PAGE:
                name, ctype = PAGE[url.path]
                self._send(200, page_file(name), ctype, headers=PAGE_HEADERS)
                return
            if url.path == "/api/health":
                self._send(200, {"ok": True, "connected": c.connected.is_set(), "rows": c.rows_handled})
                return
            if not (url.path in ("/api/alarms", "/api/scopes") or _ALARM.match(url.path)):
                self._send(404, {"error": f"no route GET {url.path}"})
                return
            if self._refuse_early() or self._authenticate() is None:
                return
            if url.path == "/api/alarms":
                q = parse_qs(url.query)
                alarms = c.alarms.list(state=q.get("state", [None])[0], scope=q.get("scope", [None])[0])
                self._send(200, {"alarms": [summary(a) for a in alarms]})
            elif m := _ALARM.match(url.path):
                alarm_id = int(m.group(1))
                alarm = c.alarms.get(alarm_id)
                self._send(200, alarm.to_dict(audit=c.alarms.audit(alarm_id)))
            else:
                self._send(200, {"scopes": scopes(c)})
        except AlarmError as e:
            self._send(_status(e), {"error": str(e)})
        except Exception as e:  # never let one request kill the server thread
            log.exception("GET %s failed", self.path)
            self._send(500, {"error": f"{type(e).__name__}: {e}"})

    def _drain(self, length: int) -> None:
        """Read and drop up to MAX_DRAIN bytes of an unread body before an error answer, so the
        client reads the answer rather than a reset connection."""
        self.close_connection = True
        left = min(length, MAX_DRAIN)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _refuse_post(self, length: int, status: int, error: str, headers: dict[str, str] | None = None) -> None:
        self._drain(length)
        self._send(status, {"error": error}, headers=headers)

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send(400, {"error": "Content-Length is not a number of bytes"})
            return
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(411, {"error": "send the body with a Content-Length, not Transfer-Encoding"})
            return
        m = _VERDICT.match(url.path)
        if not m:
            return self._refuse_post(length, 404, f"no route POST {url.path}")
        why = self._host_refused() or self._origin_refused()
        if why:
            log.warning("HTTP API: POST %s from %s refused: %s", url.path, self.peer, why)
            return self._refuse_post(length, 403, why)
        actor = self._authenticate(length)
        if actor is None:
            return
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return self._refuse_post(
                length, 415, f"Content-Type must be application/json, got {self.headers.get('Content-Type')!r}"
            )
        if length > MAX_BODY:
            return self._refuse_post(length, 413, f"the body is {length} bytes; at most {MAX_BODY}")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            self._send(400, {"error": f"the body is not JSON: {e}"})
            return
        if not isinstance(body, dict):
            self._send(400, {"error": 'the body must be a JSON object {"verdict": "normal"|"malicious", …}'})
            return
        verdict, claimed = body.pop("verdict", None), body.pop("actor", None)
        if verdict not in ("normal", "malicious"):
            self._send(400, {"error": f'"verdict" must be "normal" or "malicious", got {verdict!r}'})
            return
        if claimed is not None and claimed != actor:
            self._send(
                400,
                {
                    "error": f'"actor" {claimed!r} is not the token\'s name {actor!r}: the actor is always the name '
                    "of the token (leave actor out)"
                },
            )
            return
        c = self.controller
        assert c.loop is not None
        log.info("HTTP API: verdict %s on alarm %s by %s from %s", verdict, m.group(1), actor, self.peer)
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
    if isinstance(e, AlarmStoreUnavailable):
        return 503
    return 404 if isinstance(e, AlarmNotFound) else 409 if isinstance(e, AlarmStateError) else 400


def summary(alarm: Any) -> dict[str, Any]:
    """The alarm without its rows (which are not even read) and with its number of findings."""
    d = {k: getattr(alarm, k) for k in alarm.__dataclass_fields__ if k != "rows"}
    d["findings"] = len(alarm.findings)
    return d


def scopes(c: ApiBackend) -> list[dict[str, Any]]:
    out = []
    for scope, st in sorted(c.scope_status.items()):
        site, _, host = scope.partition("/")
        h = c.ingest.hosts.get((site, host))
        out.append({"scope": scope, "alive": bool(h and h.alive), "series": len(h.keys) if h else 0, **st})
    return out


class _Server(ThreadingHTTPServer):
    """Threads per request; with TLS, each connection's handshake runs in its own thread (a slow
    or plain-text client never stalls the accept loop)."""

    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            return super().finish_request(request, client_address)
        request.settimeout(_Handler.timeout)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log.debug("TLS handshake with %s failed: %s", client_address[0], e)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _Server6(_Server):
    address_family = socket.AF_INET6


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context (TLS >= 1.2) from PEM files; ConfigError naming the file at fault."""
    for flag, path, marker in (("--http-cert", cert, "CERTIFICATE"), ("--http-key", key, "PRIVATE KEY")):
        try:
            text = Path(path).read_text(encoding="ascii", errors="replace")
        except OSError as e:
            raise ConfigError(f"{flag} {path}: cannot read it ({e.strerror})") from None
        if f"-----BEGIN {marker}" not in text and not (marker == "PRIVATE KEY" and "PRIVATE KEY-----" in text):
            raise ConfigError(f"{flag} {path}: no PEM {marker.lower()} in it")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ConfigError(
            f"--http-cert {cert} / --http-key {key}: cannot use them ({e.reason or e}; does the key match the certificate?)"
        ) from None
    return ctx


class ApiServer:
    def __init__(
        self,
        controller: ApiBackend,
        address: tuple[str, int],
        tokens: str | Path | None = None,
        cert: str | None = None,
        key: str | None = None,
    ):
        """``tokens``: the tokens file (None: the local user's, created when missing);
        ``cert``/``key``: serve HTTPS."""
        path = Path(tokens) if tokens else ensure_local_tokens()
        self.tokens = TokenFile(path, "--http-tokens" if tokens else "the local API tokens file")
        self.tokens_path = path
        ctx = tls_context(cert, key) if cert and key else None
        attrs = {
            "controller": controller,
            "tokens": self.tokens,
            "scheme": "https" if ctx else "http",
            "loopback_only": is_loopback(address[0]),
        }
        handler = type("Handler", (_Handler,), attrs)
        cls = _Server6 if ":" in address[0] else _Server
        try:
            self.server = cls(address, handler)
        except OSError as e:
            raise ConfigError(
                f"--http {address[0]}:{address[1]}: cannot listen ({e.strerror}); choose another HOST:PORT or 'off'"
            ) from None
        self.server.ssl_context = ctx
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.server.ssl_context else 'http'}://{host}:{port}"

    def start(self) -> None:
        self.thread.start()
        log.info(
            "HTTP API and /metrics on %s; API tokens: %s (%s)",
            self.url,
            self.tokens_path,
            ", ".join(self.tokens.names()),
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""The agent's optional Prometheus endpoint: ``--metrics [HOST:]PORT`` (off by default; a bare port
listens on 127.0.0.1). Plain HTTP, ``GET /metrics`` only (404 for another path, 501 for another
method), in the text exposition format: whether the broker is connected, the messages dropped and
the commands refused by reason, the unexpected exceptions by where and type, what was published.

What lives here: the metrics, read from the agent at scrape time, and the small server. It is the
stdlib's threaded ``http.server`` rather than an asyncio server: the stdlib parses and bounds the
request line and headers, and a scrape is answered even while the event loop is busy in a long
tick, which is when one most wants to see it (the thread only reads counters and a flag). What does
not: the counters themselves (:class:`~atomwatch.agent.runtime.Agent`); TLS and tokens (the
endpoint shows counts only; to expose it beyond the host, put it behind a proxy that has them).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from atomwatch.config import ConfigError, is_loopback
from atomwatch.mqtt import Faults

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsSource(Protocol):
    """What the metrics are read from (the agent has all of it)."""

    connected: asyncio.Event
    stats: Mapping[str, int]
    refused: Mapping[str, int]
    dropped: Mapping[str, int]
    faults: Faults
    backlog: Any


def _by_label(name: str, text: str, label: str, counts: Mapping[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=[label])
    for key, n in list(counts.items()):
        family.add_metric([str(key)], n)
    return family


class _AgentCollector:
    def __init__(self, agent: MetricsSource):
        self.agent = agent

    def collect(self):
        a = self.agent
        yield GaugeMetricFamily(
            "atomwatch_connected", "1 while connected to the MQTT broker, else 0", value=int(a.connected.is_set())
        )
        yield _by_label(
            "atomwatch_messages_dropped", "Messages received, counted and dropped, by reason", "reason", a.dropped
        )
        yield _by_label("atomwatch_commands_refused", "Commands refused, by reason", "reason", a.refused)
        errors = CounterMetricFamily(
            "atomwatch_unexpected_errors",
            "Unexpected exceptions on a receive path, by where and exception type (the first of each is logged)",
            labels=["where", "type"],
        )
        for (where, kind), n in list(a.faults.counts.items()):
            errors.add_metric([where, kind], n)
        yield errors
        published = CounterMetricFamily("atomwatch_messages_published", "Messages published, by kind", labels=["kind"])
        published.add_metric(["birth"], a.stats.get("births", 0))
        published.add_metric(["data"], a.stats.get("data", 0))
        published.add_metric(["history"], a.stats.get("history", 0))
        yield published
        b = a.backlog
        yield GaugeMetricFamily(
            "atomwatch_backlog_frames", "Ticks kept while the broker is unreachable, not sent yet", value=len(b)
        )
        yield GaugeMetricFamily("atomwatch_backlog_bytes", "Bytes the kept ticks are charged", value=b.bytes)
        yield CounterMetricFamily(
            "atomwatch_backlog_dropped_frames",
            "Kept ticks dropped, oldest first, to stay within --backlog-frames/--backlog-bytes (samples lost)",
            value=b.dropped,
        )
        yield CounterMetricFamily(
            "atomwatch_backlog_sent_frames", "Kept ticks sent as history once the broker was back", value=b.frames_sent
        )
        yield CounterMetricFamily(
            "atomwatch_publish_failed", "Publications that failed or timed out", value=a.stats.get("publish_failed", 0)
        )


def render_metrics(agent: MetricsSource) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AgentCollector(agent))
    return generate_latest(registry)


class _Handler(BaseHTTPRequestHandler):
    agent: MetricsSource
    #: seconds a client may take to send its request (a silent one holds a thread no longer)
    timeout = 10
    server_version = "atomwatch-agent"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if urlsplit(self.path).path != "/metrics":
            self._answer(404, b"only /metrics is served here\n", "text/plain; charset=utf-8")
            return
        try:
            body = render_metrics(self.agent)
        except Exception as e:  # a scrape must never take the agent down
            log.exception("rendering the metrics failed")
            self._answer(500, f"metrics failed: {type(e).__name__}\n".encode(), "text/plain; charset=utf-8")
            return
        self._answer(200, body, CONTENT_TYPE)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        log.debug("metrics %s: %s", self.client_address[0], format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``GET /metrics`` of one agent on ``address`` (port 0: any free port; see :attr:`address`)."""

    def __init__(self, agent: MetricsSource, address: tuple[str, int]):
        handler = type("Handler", (_Handler,), {"agent": agent})
        cls = _Server6 if ":" in address[0] else _Server
        try:
            self.server = cls(address, handler)
        except OSError as e:
            raise ConfigError(
                f"--metrics {address[0]}:{address[1]}: cannot listen ({e.strerror}); choose another [HOST:]PORT"
            ) from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="agent-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def start(self) -> None:
        self.thread.start()
        host = self.address[0]
        if is_loopback(host):
            log.info("Prometheus metrics on %s", self.url)
        else:
            log.warning("Prometheus metrics on %s: plain HTTP without a token, reachable beyond this host", self.url)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

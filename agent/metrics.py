"""The agent's optional Prometheus endpoint: ``--metrics [HOST:]PORT`` (off by default; a bare port
listens on 127.0.0.1). Plain HTTP, ``GET /metrics`` only (404 for another path, 501 for another
method), in the text exposition format. Every series of the agent carries ``site`` and ``host``
labels (one agent, one host): whether the broker is connected, ticks and how long each phase of a
tick took (collect, track, publish), the values sampled and those the tracking rule sent or held
back (the savings), stale series and VMs, collector errors by collector and kind, the
store-and-forward backlog (``atomwatch_backlog_*``), the messages dropped and the commands
refused by reason, the unexpected exceptions by where and type, what was published; then
``atomwatch_build_info`` and the process' own metrics.

What lives here: the metrics, read from the agent at scrape time, the tick phase timer
(:class:`PhaseTimes`) and the small server. It is the stdlib's threaded ``http.server`` rather than
an asyncio server: the stdlib parses and bounds the request line and headers, and a scrape is
answered even while the event loop is busy in a long tick, which is when one most wants to see it
(the thread only reads counters and a flag). What does not: the counters themselves
(:class:`~atomwatch.agent.runtime.Agent`); TLS and tokens (the endpoint shows counts only; to
expose it beyond the host, put it behind a proxy that has them); what each series is for
(``docs/operations.md``).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import socket
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from atomwatch.config import ConfigError, is_loopback
from atomwatch.exposition import CONTENT_TYPE, build_info, guarded, render
from atomwatch.mqtt import Faults

log = logging.getLogger(__name__)

#: upper bounds (seconds) of the tick phase histogram's buckets: a phase of a 10 s tick spans
#: sub-millisecond tracking to a collector near its budget
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_FAILED: set[str] = set()


class PhaseTimes:
    """A histogram of seconds per phase (cumulative buckets, sum, count), written by the event
    loop and read by the metrics thread: a reader may see one observation half-counted, never a
    broken structure."""

    def __init__(self, phases: Iterable[str], buckets: tuple[float, ...] = TICK_BUCKETS):
        self.buckets = buckets
        self.counts = {p: [0] * (len(buckets) + 1) for p in phases}
        self.sums = dict.fromkeys(self.counts, 0.0)

    def observe(self, phase: str, seconds: float) -> None:
        self.counts[phase][bisect.bisect_left(self.buckets, seconds)] += 1
        self.sums[phase] += seconds

    def family(self, name: str, text: str, names: list[str], values: list[str]) -> HistogramMetricFamily:
        """The histogram, one per phase, with labels ``names`` (their ``values``) and ``phase``."""
        family = HistogramMetricFamily(name, text, labels=[*names, "phase"])
        for phase, counts in self.counts.items():
            counts = list(counts)
            cumulative, running = [], 0
            for bound, n in zip((*[str(b) for b in self.buckets], "+Inf"), counts):
                running += n
                cumulative.append((bound, running))
            family.add_metric([*values, phase], cumulative, self.sums[phase])
        return family


class MetricsSource(Protocol):
    """What the metrics are read from (the agent has all of it)."""

    config: Any
    connected: asyncio.Event
    controller_heard: bool
    stats: Mapping[str, int]
    refused: Mapping[str, int]
    dropped: Mapping[str, int]
    faults: Faults
    backlog: Any
    sampler: Any
    table: Any
    ticks: int
    stale_series: int
    stale_vms: int
    tick_times: PhaseTimes


class _AgentCollector:
    def __init__(self, agent: MetricsSource):
        self.agent = agent
        self.names = ["site", "host"]
        self.labels = [str(agent.config.site), str(agent.config.host)]

    def collect(self):
        yield build_info("agent")
        yield from guarded((self._health, self._ticks, self._messages, self._backlog), _FAILED)

    def gauge(self, name: str, text: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, text, labels=self.names)
        family.add_metric(self.labels, value)
        return family

    def counter(self, name: str, text: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, text, labels=self.names)
        family.add_metric(self.labels, value)
        return family

    def by(self, name: str, text: str, labels: str | tuple[str, ...], counts: Mapping[Any, int]) -> CounterMetricFamily:
        """A counter by one label (``counts`` keyed by its value) or several (keyed by tuples)."""
        several = isinstance(labels, tuple)
        family = CounterMetricFamily(name, text, labels=[*self.names, *(labels if several else (labels,))])
        for key, n in list(counts.items()):
            family.add_metric([*self.labels, *(map(str, key) if several else (str(key),))], n)
        return family

    def _health(self):
        a = self.agent
        yield self.gauge(
            "atomwatch_connected", "1 while connected to the MQTT broker, else 0", int(a.connected.is_set())
        )
        yield self.gauge(
            "atomwatch_controller_heard",
            "1 while a controller's state on this connection says online (live ticks go out), else 0 (ticks are kept)",
            int(a.controller_heard),
        )
        yield self.by(
            "atomwatch_unexpected_errors",
            "Unexpected exceptions on a receive path, by where and exception type (the first of each is logged)",
            ("where", "type"),
            a.faults.counts,
        )
        yield self.by(
            "atomwatch_collector_errors",
            "Ticks a collector gave nothing (its series stale), by collector and kind: raised, not-a-reading, over-budget",
            ("collector", "kind"),
            a.sampler.failures,
        )
        yield from self.counts_of_collectors()

    def counts_of_collectors(self):
        a = self.agent
        hung = {
            getattr(slot.collector, "name", "?"): slot.collector.hung_ticks
            for slot in a.sampler.slots
            if isinstance(getattr(slot.collector, "hung_ticks", None), int)
        }
        yield self.by(
            "atomwatch_hung_vm_ticks",
            "VM-ticks whose series a collector gave stale because the VM's hypervisor process did not answer "
            "(a hung domain; the collector's other VMs were read), by collector",
            "collector",
            hung,
        )

    def _ticks(self):
        a = self.agent
        yield self.counter("atomwatch_ticks", "Ticks run (collect, track, publish)", a.ticks)
        yield a.tick_times.family(
            "atomwatch_tick_duration_seconds",
            "Seconds a phase of a tick took: collect, track, publish",
            self.names,
            self.labels,
        )
        yield self.gauge("atomwatch_series", "Series the agent samples now", int(a.table.active.sum()))
        yield self.counter(
            "atomwatch_values_sampled",
            "Readable values sampled (one per series and tick)",
            a.stats.get("values_sampled", 0),
        )
        yield self.counter(
            "atomwatch_values_sent",
            "Values the tracking rule sent (they left their feasible interval); published live or kept in the backlog",
            a.stats.get("values_tracked", 0),
        )
        yield self.counter(
            "atomwatch_values_suppressed",
            "Values the tracking rule held back (within Δ of what the controller has): the savings",
            a.stats.get("values_suppressed", 0),
        )
        yield self.gauge("atomwatch_stale_series", "Series whose last reading was stale (unreadable)", a.stale_series)
        yield self.gauge("atomwatch_stale_vms", "VMs (domains) with at least one stale series", a.stale_vms)

    def _messages(self):
        a = self.agent
        yield self.by(
            "atomwatch_messages_dropped", "Messages received, counted and dropped, by reason", "reason", a.dropped
        )
        yield self.by("atomwatch_commands_refused", "Commands refused, by reason", "reason", a.refused)
        yield self.by(
            "atomwatch_messages_published",
            "Messages published, by kind",
            "kind",
            {"birth": a.stats.get("births", 0), "data": a.stats.get("data", 0), "history": a.stats.get("history", 0)},
        )
        yield self.counter(
            "atomwatch_publish_failed", "Publications that failed or timed out", a.stats.get("publish_failed", 0)
        )

    def _backlog(self):
        b = self.agent.backlog
        yield self.gauge(
            "atomwatch_backlog_frames", "Ticks kept while no controller can hear the agent, not sent yet", len(b)
        )
        yield self.gauge("atomwatch_backlog_bytes", "Bytes the kept ticks are charged", b.bytes)
        yield self.counter(
            "atomwatch_backlog_dropped_frames",
            "Kept ticks dropped, oldest first, to stay within --backlog-frames/--backlog-bytes (samples lost)",
            b.dropped,
        )
        yield self.counter(
            "atomwatch_backlog_sent_frames", "Kept ticks sent as history once the broker was back", b.frames_sent
        )


def render_metrics(agent: MetricsSource) -> bytes:
    """The text exposition of the agent's metrics (and its process')."""
    return render(_AgentCollector(agent))


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

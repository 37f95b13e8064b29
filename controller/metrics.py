"""The controller's own Prometheus metrics, read from its state at scrape time.

Per scope and detector: the last score and threshold (for PCA-SPE, SPE and Q_α); alarms by state;
whether the alarms file takes writes, anomalies waiting in memory for it and rows lost; messages
ingested by kind, values ingested, messages dropped by reason; rows handed to detectors; whether
the broker is connected (``atomwatch_connected``, 1/0) and the unexpected exceptions of the
receive paths by where and type (``atomwatch_unexpected_errors``); refusals by resource limit and
the columns a scope leaves out of its rows (``docs/limits.md``); the tick loop's timing (ticks run
and skipped, lateness, duration, each row's delay from its newest sample: :mod:`.timing`,
``docs/scale.md``). Nothing here reads the alarms
file: /metrics answers whatever state it is in.

What lives here: the collector and :func:`render_metrics`, reading a :class:`MetricsSource` (the
few parts of the controller they need, not the controller). What does not: serving them (the
HTTP API, :mod:`.api`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from atomwatch.handles import ScopeStatus
from atomwatch.mqtt import Faults

from .alarms import AlarmStore
from .commands import AgentCommands
from .history import History
from .ingest import Ingest
from .scopes import ScopeRows
from .timing import Histogram, TickTiming


class MetricsSource(Protocol):
    """What the metrics are read from (the controller has all of it)."""

    scope_status: Mapping[str, ScopeStatus]
    alarms: AlarmStore
    ingest: Ingest
    rows_handled: int
    rows_late: int
    history: History
    connected: asyncio.Event
    faults: Faults
    scope_rows: ScopeRows
    commands: AgentCommands
    timing: TickTiming


class _ControllerCollector:
    def __init__(self, controller: MetricsSource):
        self.c = controller

    def collect(self):
        c = self.c
        yield GaugeMetricFamily(
            "atomwatch_connected", "1 while connected to the MQTT broker, else 0", value=int(c.connected.is_set())
        )
        yield unexpected_errors(c.faults)
        score = GaugeMetricFamily(
            "atomwatch_detector_score",
            "Last score of a detector on a scope (PCA-SPE: SPE)",
            labels=["scope", "detector"],
        )
        thr = GaugeMetricFamily(
            "atomwatch_detector_threshold",
            "Threshold of a detector on a scope (PCA-SPE: Q_alpha)",
            labels=["scope", "detector"],
        )
        for scope, st in list(c.scope_status.items()):
            for name, s in st.get("detectors", {}).items():
                v = s.get("score", s.get("spe"))
                t = s.get("threshold", s.get("q_alpha"))
                if isinstance(v, (int, float)):
                    score.add_metric([scope, name], float(v))
                if isinstance(t, (int, float)):
                    thr.add_metric([scope, name], float(t))
        yield score
        yield thr
        alarms = GaugeMetricFamily("atomwatch_alarms", "Alarms by state", labels=["state"])
        for state, n in c.alarms.counts().items():
            alarms.add_metric([state], n)
        yield alarms
        store = c.alarms.status()
        yield GaugeMetricFamily(
            "atomwatch_alarm_store_ok", "1 while the alarms file takes writes, else 0", value=1 if store["ok"] else 0
        )
        yield GaugeMetricFamily(
            "atomwatch_alarm_store_pending",
            "Anomalies recorded in memory and not written to the alarms file yet",
            value=store["pending"],
        )
        yield CounterMetricFamily(
            "atomwatch_alarm_rows_lost",
            "Abnormal rows dropped in memory while the alarms file could not be written",
            value=store["rows_lost"],
        )
        msgs = CounterMetricFamily("atomwatch_messages_ingested", "MQTT messages ingested, by kind", labels=["kind"])
        for kind, n in list(c.ingest.messages.items()):
            msgs.add_metric([kind], n)
        yield msgs
        dropped = CounterMetricFamily(
            "atomwatch_messages_dropped", "Messages counted and dropped, by reason", labels=["reason"]
        )
        for reason, n in list(c.ingest.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield CounterMetricFamily(
            "atomwatch_values_ingested", "Tracked values received", value=c.ingest.values_ingested
        )
        yield CounterMetricFamily("atomwatch_rows", "Rows handed to detectors", value=c.rows_handled)
        yield CounterMetricFamily(
            "atomwatch_late_rows", "Rows rebuilt from agents' history (ticks of an outage)", value=c.rows_late
        )
        skipped = CounterMetricFamily(
            "atomwatch_history_frames_skipped",
            "History frames not made into rows: repeated, or their tick came live",
            labels=["reason"],
        )
        for reason, n in list(c.history.skipped.items()):
            skipped.add_metric([reason], n)
        yield skipped
        yield CounterMetricFamily(
            "atomwatch_held_rows_dropped",
            "Live rows dropped while waiting behind a host's history (more than 10,000 waiting)",
            value=c.history.held_dropped,
        )
        hosts = GaugeMetricFamily("atomwatch_series", "Series known per host", labels=["scope", "alive"])
        for (site, host), h in list(c.ingest.hosts.items()):
            hosts.add_metric([f"{site}/{host}", "1" if h.alive else "0"], len(h.keys))
        yield hosts
        yield from _limits(c)
        yield from _timing(c.timing)


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


def _timing(t: TickTiming):
    """Whether the controller keeps up (docs/scale.md)."""
    yield CounterMetricFamily("atomwatch_ticks", "Detection ticks run", value=t.ticks)
    yield CounterMetricFamily(
        "atomwatch_ticks_skipped", "Detection ticks not run because the one before ran past them", value=t.skipped
    )
    yield _histogram(
        "atomwatch_tick_lateness_seconds", "How late the tick loop started each detection tick", t.lateness
    )
    yield _histogram(
        "atomwatch_tick_duration_seconds", "Seconds from a tick's start to its rows through the detectors", t.duration
    )
    yield _histogram(
        "atomwatch_row_delay_seconds",
        "Per row: seconds from the agent's timestamp of the host's newest data to the row through the detectors "
        "(publish to detection, the wait for the tick included; assumes synchronised clocks)",
        t.row_delay,
    )


def _limits(c: MetricsSource):
    """What the resource limits refused (docs/limits.md), by the option that sets the limit."""
    refusals = CounterMetricFamily(
        "atomwatch_limit_refusals",
        "Things refused or cut by a resource limit, by the option: births (max_series_per_host), rows cut "
        "(max_columns_per_scope), commands (max_pending_commands, max_pending_commands_per_host)",
        labels=["limit"],
    )
    refusals.add_metric(["max_series_per_host"], c.ingest.dropped.get("too-many-series", 0))
    refusals.add_metric(["max_columns_per_scope"], sum(list(c.scope_rows.capped_rows.values())))
    for option in ("max_pending_commands", "max_pending_commands_per_host"):
        refusals.add_metric([option], c.commands.refused.get(option, 0))
    yield refusals
    left_out = GaugeMetricFamily(
        "atomwatch_scope_columns_left_out",
        "Columns left out of a scope's last row by max_columns_per_scope",
        labels=["scope"],
    )
    for scope, n in list(c.scope_rows.left_out.items()):
        left_out.add_metric([scope], n)
    yield left_out


def unexpected_errors(faults: Faults) -> CounterMetricFamily:
    """The counts of a :class:`Faults`."""
    family = CounterMetricFamily(
        "atomwatch_unexpected_errors",
        "Unexpected exceptions on a receive path, by where and exception type (the first of each is logged)",
        labels=["where", "type"],
    )
    for (where, kind), n in list(faults.counts.items()):
        family.add_metric([where, kind], n)
    return family


def render_metrics(controller: MetricsSource) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ControllerCollector(controller))
    return generate_latest(registry)

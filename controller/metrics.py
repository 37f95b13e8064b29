"""The controller's own Prometheus metrics, read from its state at scrape time.

Labels follow Prometheus' conventions: a scope is ``site`` and ``host`` (two labels), counters end
in ``_total``, times are seconds. Per scope: ``atomwatch_scope_up`` (1 while its host's values are
current: agent alive, synced, heard within 1.5 ticks), the series it has, the time of its last
message; per scope and detector the last score and threshold, and for PCA-SPE
``atomwatch_spe``/``atomwatch_q_alpha``. Alarms by state, and one series per blamed column of a
live (open or malicious) alarm with ``vm`` and ``metric`` labels, at most ``metrics_blame_limit``
of them (most blamed first; the rest counted), never a label per alarm id. Then whether the alarms
file takes writes, what waits for it and rows lost; messages ingested by kind, values ingested,
messages dropped by reason; rows handed to detectors; whether the broker is connected
(``atomwatch_connected``); per site whether this controller is the active one
(``atomwatch_controller_active``, hot standby), its role changes and the anomalies a standby
holds; unexpected exceptions of the receive paths by where and type; refusals
by resource limit (``docs/limits.md``); the tick loop's timing (ticks run and skipped, lateness,
duration, each row's delay from its newest sample: :mod:`.timing`, ``docs/scale.md``);
``atomwatch_build_info`` and the process' own metrics.
Nothing here reads the alarms file: /metrics answers whatever state it is in, and a part that
fails is left out of the scrape, not the whole scrape.

What lives here: the collector and :func:`render_metrics`, reading a :class:`MetricsSource` (the
few parts of the controller they need, not the controller). What does not: serving them (the
HTTP API, :mod:`.api`); what each series is for (``docs/operations.md``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sized
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from atomwatch.exposition import build_info, guarded, render
from atomwatch.handles import ScopeStatus
from atomwatch.mqtt import Faults

from .alarms import AlarmStore
from .commands import AgentCommands
from .election import Election
from .history import History
from .ingest import Ingest
from .scopes import ScopeRows
from .timing import Histogram, TickTiming

#: blamed-column series on /metrics when the source has no configuration saying otherwise
BLAME_LIMIT = 50
#: sections of the collector that failed once in this process (the first failure is logged in full)
_FAILED: set[str] = set()


class MetricsSource(Protocol):
    """What the metrics are read from (the controller has all of it)."""

    config: Any
    scope_status: Mapping[str, ScopeStatus]
    alarms: AlarmStore
    ingest: Ingest
    rows_handled: int
    rows_late: int
    history: History
    connected: asyncio.Event
    faults: Faults
    election: Election
    held: Sized
    scope_rows: ScopeRows
    commands: AgentCommands
    timing: TickTiming


def _site_host(scope: str) -> list[str]:
    site, _, host = scope.partition("/")
    return [site, host]


def _number(status: Mapping[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = status.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


class _ControllerCollector:
    def __init__(self, controller: MetricsSource):
        self.c = controller

    def collect(self):
        yield from guarded(
            (
                self._process,
                self._roles,
                self._scopes,
                self._detectors,
                self._alarms,
                self._ingest,
                self._limits,
                self._timing,
            ),
            _FAILED,
        )

    def _process(self):
        yield build_info("controller")
        yield GaugeMetricFamily(
            "atomwatch_connected", "1 while connected to the MQTT broker, else 0", value=int(self.c.connected.is_set())
        )
        yield unexpected_errors(self.c.faults)

    def _roles(self):
        active = GaugeMetricFamily(
            "atomwatch_controller_active",
            "1 on a site this controller acts on (records alarms, sends commands), 0 where it is a standby",
            labels=["site"],
        )
        for site in self.c.election.sites:
            active.add_metric([site], int(self.c.election.is_active(site)))
        yield active
        yield CounterMetricFamily(
            "atomwatch_controller_role_changes",
            "takeovers and step-downs of this controller",
            value=self.c.election.changes,
        )
        yield GaugeMetricFamily(
            "atomwatch_standby_held_anomalies",
            "anomalies a standby found lately, recorded if it takes over",
            value=len(self.c.held),
        )

    def _scopes(self):
        up = GaugeMetricFamily(
            "atomwatch_scope_up",
            "1 while a host's values are current (agent alive, synced, heard within 1.5 of its ticks), else 0",
            labels=["site", "host"],
        )
        series = GaugeMetricFamily(
            "atomwatch_scope_series", "Series a host's last birth announced", labels=["site", "host"]
        )
        seen = GaugeMetricFamily(
            "atomwatch_scope_last_message_timestamp_seconds",
            "When the host's last birth or data message arrived (Unix time)",
            labels=["site", "host"],
        )
        for (site, host), h in list(self.c.ingest.hosts.items()):
            up.add_metric([site, host], 1 if h.is_live() else 0)
            series.add_metric([site, host], len(h.keys))
            if h.last_seen:
                seen.add_metric([site, host], h.last_seen)
        yield up
        yield series
        yield seen

    def _detectors(self):
        score = GaugeMetricFamily(
            "atomwatch_detector_score",
            "Last score of a detector on a scope (PCA-SPE: SPE)",
            labels=["site", "host", "detector"],
        )
        thr = GaugeMetricFamily(
            "atomwatch_detector_threshold",
            "Threshold of a detector on a scope (PCA-SPE: Q_alpha, or its tail threshold)",
            labels=["site", "host", "detector"],
        )
        spe = GaugeMetricFamily(
            "atomwatch_spe", "PCA-SPE's last squared prediction error on a scope", labels=["site", "host"]
        )
        q_alpha = GaugeMetricFamily(
            "atomwatch_q_alpha", "PCA-SPE's threshold Q_alpha on a scope (Jackson-Mudholkar)", labels=["site", "host"]
        )
        for scope, st in list(self.c.scope_status.items()):
            labels = _site_host(scope)
            for name, s in st.get("detectors", {}).items():
                v = _number(s, "score", "spe")
                t = _number(s, "threshold", "q_alpha")
                if v is not None:
                    score.add_metric([*labels, name], v)
                if t is not None:
                    thr.add_metric([*labels, name], t)
                if (v := _number(s, "spe")) is not None:
                    spe.add_metric(labels, v)
                if (t := _number(s, "q_alpha")) is not None:
                    q_alpha.add_metric(labels, t)
        yield from (score, thr, spe, q_alpha)

    def _alarms(self):
        c = self.c
        alarms = GaugeMetricFamily("atomwatch_alarms", "Alarms by state", labels=["state"])
        for state, n in c.alarms.counts().items():
            alarms.add_metric([state], n)
        yield alarms
        limit = getattr(getattr(c, "config", None), "metrics_blame_limit", BLAME_LIMIT)
        blamed = GaugeMetricFamily(
            "atomwatch_alarm_blamed_rows",
            "Abnormal rows of a live (open or malicious) alarm that blamed a column (VM and metric); "
            "at most metrics_blame_limit series, most blamed first",
            labels=["site", "host", "detector", "vm", "metric"],
        )
        live = GaugeMetricFamily(
            "atomwatch_alarm_live_rows",
            "Abnormal rows (level) of the live alarm of a scope and detector",
            labels=["site", "host", "detector", "state"],
        )
        since = GaugeMetricFamily(
            "atomwatch_alarm_live_opened_timestamp_seconds",
            "When the live alarm of a scope and detector opened (Unix time)",
            labels=["site", "host", "detector"],
        )
        columns: dict[tuple[str, ...], float] = {}
        for a in c.alarms.live():
            labels = [a.site, a.host, a.detector]
            live.add_metric([*labels, a.state], a.level)
            since.add_metric(labels, a.opened_at)
            for b in a.blame:
                key = (*labels, str(b.get("vm_name") or b.get("vm_uuid") or "?"), str(b.get("metric") or "?"))
                columns[key] = max(columns.get(key, 0), float(b.get("rows", 1)))
        ranked = sorted(columns.items(), key=lambda kv: -kv[1])
        for key, n in ranked[:limit]:
            blamed.add_metric(list(key), n)
        yield blamed
        yield GaugeMetricFamily(
            "atomwatch_alarm_blamed_columns_left_out",
            "Blamed columns of live alarms not shown as series, beyond metrics_blame_limit",
            value=max(0, len(ranked) - limit),
        )
        yield live
        yield since
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

    def _ingest(self):
        c = self.c
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

    def _limits(self):
        yield from _limits(self.c)

    def _timing(self):
        yield from _timing(self.c.timing)


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
        labels=["site", "host"],
    )
    for scope, n in list(c.scope_rows.left_out.items()):
        left_out.add_metric(_site_host(scope), n)
    yield left_out


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


def _timing(t: TickTiming):
    """Whether the controller keeps up (docs/scale.md)."""
    yield CounterMetricFamily("atomwatch_detection_ticks", "Detection ticks run", value=t.ticks)
    yield CounterMetricFamily(
        "atomwatch_detection_ticks_skipped",
        "Detection ticks not run because the one before ran past them",
        value=t.skipped,
    )
    yield _histogram(
        "atomwatch_detection_tick_lateness_seconds", "How late the tick loop started each detection tick", t.lateness
    )
    yield _histogram(
        "atomwatch_detection_tick_duration_seconds",
        "Seconds from a tick's start to its rows through the detectors",
        t.duration,
    )
    yield _histogram(
        "atomwatch_row_delay_seconds",
        "Per row: seconds from the agent's timestamp of the host's newest data to the row through the detectors "
        "(publish to detection, the wait for the tick included; assumes synchronised clocks)",
        t.row_delay,
    )


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
    """The text exposition of the controller's metrics (and its process')."""
    return render(_ControllerCollector(controller))

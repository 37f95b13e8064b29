"""The Precog detector plugin: memory-leak warnings from memory utilisation alone.

Registers two detector factories through ``register_detectors``:

* ``precog`` (default) — the reference algorithm plus a guard learnt from the fitted history: a
  trend counts only if it rose more than the history ever rose within the same span *and* took
  memory above the history's highest level, both by three noise scales plus ``margin`` (so a daily
  rhythm, a GC sawtooth or a refill after a release is not a leak); see ``docs/precog.md``;
* ``precog-reference`` — the reference algorithm exactly (``plugins/precog_core.py``).

Each watched column (by default every column whose metric is ``MemoryUtilization``) gets its own
state: the first ``fit_duration`` (or ``fit_rows`` rows) of its values is the history ``fit`` learns
from; after that every row is one online prediction on the series seen since. NaN is ignored;
values above ``limit`` are rejected and counted (the reference refuses them); a column that
disappears is forgotten after ``forget``. Options arrive from ``--set precog.KEY=VALUE``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from atomwatch.config import ConfigError
from atomwatch.types import Anomaly, Blame, Row, SeriesKey

from . import core

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("MemoryUtilization",)
DEFAULT_ROW_STEP = 600.0  # seconds per row when Row.ts counts rows (the reference's sample data)

#: option name → (reference parameter it sets, kind)
_PARAMS = {
    "resampling_time_resolution": ("resample", "duration"),
    "smoothing_window": ("smoothing", "duration"),
    "req_trend_duration": ("min_trend", "duration"),
    "req_trend_r2": ("r2", "float"),
    "limit": ("limit", "float"),
    "critical_time": ("critical", "duration"),
    "min_value": ("min_value", "float"),
    "min_separation_duration": ("min_separation", "duration"),
    "top_max_n_values": ("top_n", "int"),
    "use_max_values_as_filter": ("max_filter", "bool"),
}
_OWN = {"metrics", "step", "fit_duration", "fit_rows", "max_history", "forget", "margin"}


@dataclass
class Settings:
    params: core.PrecogParams
    metrics: tuple[str, ...] | None  # None = every column
    step: float | None  # seconds per Row.ts unit when it counts rows; None = decide from the rows
    fit_duration: float
    fit_rows: int | None
    max_history: float  # 0 = keep the whole online series
    forget: float
    margin: float


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"precog option {name}={value!r}: expected true or false")


def _number(value: Any, name: str, kind: str) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        out = int(value) if kind == "int" else float(value)
        if kind == "int" and float(value) != out:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"precog option {name}={value!r}: expected {'an integer' if kind == 'int' else 'a number'}") from None
    if kind == "float" and not math.isfinite(out):
        raise ConfigError(f"precog option {name}={value!r}: must be finite")
    return out


def parse_options(options: Mapping[str, Any], detector: str) -> Settings:
    """Validate ``--set <detector>.KEY=VALUE`` options; unknown keys and bad values are errors."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(_PARAMS) - _OWN)
    if unknown:
        raise ConfigError(f"{detector}: unknown option(s) {unknown}; known: {sorted(set(_PARAMS) | _OWN)}")
    changes: dict[str, Any] = {}
    for name, (attr, kind) in _PARAMS.items():
        if name not in options:
            continue
        value = options[name]
        try:
            if kind == "duration":
                changes[attr] = core.parse_duration(value, f"{detector}.{name}")
            elif kind == "bool":
                changes[attr] = _bool(value, name)
            else:
                changes[attr] = _number(value, name, kind)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    try:
        params = core.PrecogParams(**changes)
    except ValueError as e:
        raise ConfigError(f"{detector}: {e}") from None
    raw_metrics = options.get("metrics", list(DEFAULT_METRICS))
    if isinstance(raw_metrics, str):
        names = [m.strip() for m in raw_metrics.split(",") if m.strip()]
    elif isinstance(raw_metrics, (list, tuple)) and all(isinstance(m, str) for m in raw_metrics):
        names = [m.strip() for m in raw_metrics if m.strip()]
    else:
        raise ConfigError(f"{detector}.metrics={raw_metrics!r}: expected a list or comma list of metric names, or *")
    if not names:
        raise ConfigError(f"{detector}.metrics: names no metric (use * for every column)")
    metrics = None if "*" in names else tuple(names)
    step_raw = options.get("step", "auto")
    step: float | None = None
    if not (isinstance(step_raw, str) and step_raw.strip().lower() == "auto"):
        try:
            step = core.parse_duration(step_raw, f"{detector}.step")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if step <= 0:
            raise ConfigError(f"{detector}.step={step_raw!r}: must be positive (seconds per row)")
    fit_rows = options.get("fit_rows")
    if fit_rows is not None:
        fit_rows = _number(fit_rows, "fit_rows", "int")
        if fit_rows < 0:
            raise ConfigError(f"{detector}.fit_rows={fit_rows}: must be 0 (no history) or more")
    try:
        fit_duration = core.parse_duration(options.get("fit_duration", "2d"), f"{detector}.fit_duration")
        max_history = core.parse_duration(options.get("max_history", 0), f"{detector}.max_history")
        forget = core.parse_duration(options.get("forget", "1d"), f"{detector}.forget")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if max_history and max_history < 2 * params.critical:
        raise ConfigError(f"{detector}.max_history: keep at least twice critical_time ({2 * params.critical:g} s), or 0")
    margin = _number(options.get("margin", 0.0), "margin", "float")
    return Settings(params, metrics, step, fit_duration, fit_rows, max_history, forget, margin)


@dataclass
class ColumnState:
    """One watched series: its history (until fitted), its model and its online series."""

    key: SeriesKey
    params: core.PrecogParams
    hist_t: list[float] = field(default_factory=list)
    hist_v: list[float] = field(default_factory=list)
    model: core.Model | None = None
    guard: core.RiseEnvelope | None = None
    series: core.OnlineSeries | None = None
    rows: int = 0
    rejected: int = 0
    last_seen: float = -math.inf
    last: core.Decision | None = None
    alarms: int = 0


class PrecogDetector:
    """One Precog instance for one scope; see the module docstring."""

    def __init__(self, name: str, scope: str, settings: Settings, improved: bool) -> None:
        self.name = name
        self.scope = scope
        self.settings = settings
        self.improved = improved
        self.columns: dict[SeriesKey, ColumnState] = {}
        self.errors = 0
        self._unit: float | None = settings.step  # seconds per Row.ts unit (rows mode)
        self._rows_mode: bool | None = None if settings.step is None else True

    # -- time --------------------------------------------------------------------------------

    def _seconds(self, row: Row) -> float:
        if self._rows_mode is None:
            # Offline traces without a timestamp column count rows in Row.ts (ts == index). Row 0
            # at ts 0 is time 0 either way, so the choice waits for a later row.
            if float(row.ts) == 0.0 and row.index == 0:
                return 0.0
            self._rows_mode = float(row.ts) == float(row.index)
            self._unit = DEFAULT_ROW_STEP if self._rows_mode else 1.0
        return float(row.ts) * (self._unit or 1.0)

    def _to_ts(self, seconds: float) -> float:
        return seconds / (self._unit or 1.0)

    # -- rows --------------------------------------------------------------------------------

    def _watched(self, key: SeriesKey) -> bool:
        metrics = self.settings.metrics
        return metrics is None or key.metric in metrics

    def update(self, row: Row) -> list[Anomaly] | None:
        if not math.isfinite(float(row.ts)):
            self.errors += 1
            return None
        t = self._seconds(row)
        out: list[Anomaly] = []
        for j, key in enumerate(row.columns):
            if not self._watched(key):
                continue
            try:
                v = float(row.values[j])
            except (TypeError, ValueError, IndexError):
                self.errors += 1
                continue
            if math.isnan(v):
                continue
            state = self.columns.get(key)
            if state is None:
                state = self.columns[key] = ColumnState(key, self.settings.params)
            try:
                anomaly = self._step(state, row, t, v)
            except Exception:  # one bad series never stops the others
                self.errors += 1
                log.exception("%s: column %s failed at row %s", self.name, key.column, row.index)
                continue
            if anomaly is not None:
                out.append(anomaly)
        self._forget(t)
        return out or None

    def _forget(self, t: float) -> None:
        horizon = self.settings.forget
        if not horizon:
            return
        gone = [k for k, s in self.columns.items() if t - s.last_seen > horizon]
        for k in gone:
            del self.columns[k]

    def _step(self, state: ColumnState, row: Row, t: float, v: float) -> Anomaly | None:
        p = state.params
        state.last_seen = t
        if v > p.limit or v < 0:
            state.rejected += 1  # the reference refuses values above the limit
            return None
        state.rows += 1
        if state.series is None:
            if self._still_history(state, t):
                state.hist_t.append(t)
                state.hist_v.append(v)
                return None
            self._fit(state)
            state.series = core.OnlineSeries(p)
        state.series.add(t, v)
        self._trim(state)
        decision = state.series.evaluate(state.model, state.guard)  # type: ignore[arg-type]
        state.last = decision
        if not decision.alarm:
            return None
        state.alarms += 1
        return self._anomaly(state, row, decision)

    def _still_history(self, state: ColumnState, t: float) -> bool:
        s = self.settings
        if s.fit_rows is not None:
            return len(state.hist_v) < s.fit_rows
        if not s.fit_duration:
            return False
        return not state.hist_t or t - state.hist_t[0] < s.fit_duration

    def _fit(self, state: ColumnState) -> None:
        p = state.params
        model = core.fit(np.array(state.hist_t), np.array(state.hist_v), p, envelope=self.improved)
        if model.envelope is not None:
            model.envelope.margin = self.settings.margin
        state.model = model
        state.guard = model.envelope if self.improved else None

    def _trim(self, state: ColumnState) -> None:
        keep = self.settings.max_history
        series = state.series
        if not keep or series is None:
            return
        span = series.n * state.params.resample
        if span > keep * 1.25:  # rebuild rarely: drop the oldest fifth
            state.series = series.trimmed(int(keep / state.params.resample))

    # -- output --------------------------------------------------------------------------------

    def _anomaly(self, state: ColumnState, row: Row, d: core.Decision) -> Anomaly:
        p = state.params
        tr = d.trend
        assert tr is not None and state.series is not None
        b0 = state.series.bin0 or 0
        start_s = (b0 + tr.start) * p.resample
        stop_s = (b0 + tr.stop) * p.resample
        exit_s = tr.exit_s
        left = str(timedelta(seconds=int(exit_s)))
        details: dict[str, Any] = {
            "label": f"may exceed limit soon (about {left} left)",
            "mode": "improved" if self.improved else "reference",
            "slope_pct_per_min": tr.slope,
            "slope_pct_per_hour": tr.slope * 60,
            "r2": tr.r2,
            "window_start": self._to_ts(start_s),
            "window_end": self._to_ts(stop_s),
            "window_duration_s": stop_s - start_s,
            "time_to_limit_s": exit_s,
            "limit_at": self._to_ts(stop_s + exit_s),
            "limit": p.limit,
            "current": tr.current,
        }
        if not self._rows_mode:
            details["window_start_iso"] = _iso(start_s)
            details["limit_at_iso"] = _iso(stop_s + exit_s)
        score = p.critical / exit_s if exit_s > 0 else math.inf
        blame = Blame(column=state.key, direction="up", score=score, details=dict(details))
        return Anomaly(detector=self.name, scope=self.scope, index=row.index, ts=row.ts, score=score,
                       threshold=1.0, blame=[blame], details={"vm": state.key.vm_name, **details})

    def status(self) -> dict[str, Any]:
        cols = {}
        for key, s in self.columns.items():
            cols[key.column] = {
                "phase": "predicting" if s.series is not None else "history",
                "rows": s.rows,
                "rejected_above_limit": s.rejected,
                "history_points": len(s.hist_v),
                "bins": s.series.n if s.series is not None else 0,
                "dropped_out_of_order": s.series.dropped if s.series is not None else 0,
                "model": s.model.to_dict() if s.model is not None else None,
                "alarm": bool(s.last and s.last.alarm),
                "reason": s.last.reason if s.last else "",
                "alarms": s.alarms,
            }
        return {"detector": self.name, "columns": cols, "errors": self.errors}

    def accept_normal(self, rows: list[Row]) -> None:
        """The operator calls these rows normal: add them to each column's history and refit."""
        for row in rows:
            t = self._seconds(row)
            for j, key in enumerate(row.columns):
                state = self.columns.get(key)
                if state is None or state.model is None:
                    continue
                v = float(row.values[j])
                if math.isnan(v) or v > state.params.limit or v < 0:
                    continue
                state.hist_t.append(t)
                state.hist_v.append(v)
        for state in self.columns.values():
            if state.model is not None and state.hist_v:
                order = np.argsort(np.array(state.hist_t), kind="stable")
                state.hist_t = [state.hist_t[i] for i in order]
                state.hist_v = [state.hist_v[i] for i in order]
                self._fit(state)


def _iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return ""


class PrecogFactory:
    """Makes one detector per scope; ``improved`` selects the default mode or the reference."""

    def __init__(self, name: str, improved: bool) -> None:
        self.name = name
        self.improved = improved
        self.description = (
            "Precog memory-leak warning on MemoryUtilization, guarded against daily rhythm, GC sawtooth and refills"
            if improved else
            "Precog memory-leak warning on MemoryUtilization, exactly as the reference implementation computes it"
        )

    def create(self, scope: str, options: Mapping[str, Any]) -> PrecogDetector:
        return PrecogDetector(self.name, scope, parse_options(options, self.name), self.improved)

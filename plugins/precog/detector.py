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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import atomwatch
from atomwatch import Duration, Range
from atomwatch.lazy import lazy_import
from atomwatch.series import columns_seen
from atomwatch.types import Anomaly, Blame, Row, SeriesKey

from . import core

# numpy loads on first use, not when the plugin loads (every command that lists plugins imports this)
np = lazy_import("numpy", globals(), "np")
statefile = lazy_import(f"{__package__}.state", globals(), "statefile")

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("MemoryUtilization",)
DEFAULT_ROW_STEP = 600.0  # seconds per row when Row.ts counts rows (the reference's sample data)


@atomwatch.declare_options("precog", "precog-reference")
@dataclass(frozen=True)
class PrecogOptions:
    """The options of both detectors (``--set precog.KEY=VALUE``), read by
    :func:`atomwatch.parse_options`. The first ten are the reference's parameters under its own
    names (durations in seconds, or text such as ``'5min'``, ``'6h'``, ``'7d'``)."""

    resampling_time_resolution: Annotated[float, Duration, Range(ge=1)] = 300.0
    smoothing_window: Annotated[float, Duration, Range(gt=0)] = 3600.0
    req_trend_duration: Annotated[float, Duration, Range(gt=0)] = 6 * 3600.0
    req_trend_r2: Annotated[float, Range(gt=0, lt=1)] = 0.8
    limit: Annotated[float, Range(gt=0)] = 100.0
    critical_time: Annotated[float, Duration, Range(gt=0)] = 7 * 86400.0
    min_value: float = 40.0
    min_separation_duration: Annotated[float, Duration, Range(gt=0)] = 6 * 3600.0
    top_max_n_values: Annotated[int, Range(ge=1)] = 10
    use_max_values_as_filter: bool = True
    #: metric names of the watched columns; * for every column
    metrics: tuple[str, ...] = DEFAULT_METRICS
    #: seconds per Row.ts unit when it counts rows, or auto (decide from the rows)
    step: Annotated[float, Duration, Range(gt=0)] | Literal["auto"] = "auto"
    fit_duration: Annotated[float, Duration] = 2 * 86400.0
    fit_rows: Annotated[int, Range(ge=0)] | None = None
    max_history: Annotated[float, Duration] = 0.0
    forget: Annotated[float, Duration] = 86400.0
    margin: float = 0.0
    #: keep each scope's columns (history, model, online series) in this folder across restarts
    #: (docs/precog.md); unset: not kept
    state_dir: str | None = None
    state_max_age: Annotated[float, Duration, Range(gt=0)] = 7 * 86400.0  # a state saved longer ago is not used
    save_every: Annotated[int, Range(ge=1)] = 360  # with state_dir: rows between two saves

    def __post_init__(self) -> None:
        if not self.metrics:
            raise atomwatch.OptionError("metrics", self.metrics, "at least one metric name (or * for every column)")
        if self.max_history and self.max_history < 2 * self.critical_time:
            raise atomwatch.OptionError(
                "max_history", self.max_history, f"0 or at least twice critical_time ({2 * self.critical_time:g} s)"
            )


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
    state_dir: str | None = None
    state_max_age: float = 7 * 86400.0
    save_every: int = 360


def parse_options(options: Mapping[str, Any], detector: str) -> Settings:
    """Validate ``--set <detector>.KEY=VALUE`` options; unknown keys and bad values are errors."""
    o = atomwatch.parse_options(detector, PrecogOptions, options)
    params = core.PrecogParams(
        resample=o.resampling_time_resolution,
        smoothing=o.smoothing_window,
        min_trend=o.req_trend_duration,
        r2=o.req_trend_r2,
        limit=o.limit,
        critical=o.critical_time,
        min_value=o.min_value,
        min_separation=o.min_separation_duration,
        top_n=o.top_max_n_values,
        max_filter=o.use_max_values_as_filter,
    )
    metrics = None if "*" in o.metrics else o.metrics
    step = None if o.step == "auto" else float(o.step)
    return Settings(
        params,
        metrics,
        step,
        o.fit_duration,
        o.fit_rows,
        o.max_history,
        o.forget,
        o.margin,
        o.state_dir,
        o.state_max_age,
        o.save_every,
    )


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
        self._said_unwatched = False  # the "no column matches metrics" warning, once per scope
        # state_dir: the file, whether it is still to be read (at the first row), what was taken
        # back from it, rows since the last save
        self.state_path = statefile.path_for(settings.state_dir, name, scope) if settings.state_dir else None
        self._restore_pending = self.state_path is not None
        self.restored: dict[str, Any] | None = None
        self._rows_since_save = 0
        self.save_failures = 0
        self._check_restored = False  # at the first row after a restore: columns saved after it

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
        if self._restore_pending:
            self._restore()
        try:
            return self._update(row)
        finally:
            if self.state_path is not None:
                self._maybe_save()

    def _update(self, row: Row) -> list[Anomaly] | None:
        t = self._seconds(row)
        if self._check_restored:
            self._drop_later_than(t)
        out: list[Anomaly] = []
        watched = False
        for j, key in enumerate(row.columns):
            if not self._watched(key):
                continue
            watched = True
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
        if not watched and row.columns and not self._said_unwatched:
            self._said_unwatched = True
            metrics = self.settings.metrics or ()
            log.warning(
                "%s scope %r: no column's metric is %s (option %s.metrics), so it watches nothing; the columns "
                "it saw: %s",
                self.name,
                self.scope,
                " or ".join(metrics),
                self.name,
                columns_seen(row.columns, metrics),
            )
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

    # -- state kept across restarts (state_dir) ----------------------------------------------

    def _restore(self) -> None:
        """Take the columns back from the scope's file (at the first row): each one's history,
        its model fitted again from it, its online series rebuilt from its bins. A file that cannot
        be used is said once and the detector starts cold; columns not heard of for ``forget``
        are dropped at the first row as always."""
        self._restore_pending = False
        path = self.state_path
        assert path is not None
        try:
            saved = statefile.load(path, self.scope, self.settings.state_max_age, self.settings.params.resample)
            if saved is not None and saved.rows_mode is not None and self._unit not in (None, saved.unit):
                raise statefile.StateError(
                    f"{path}: saved with step = {saved.unit:g} s, this detector has {self._unit:g}"
                )
        except statefile.StateError as e:
            log.warning("%s on %s: the saved state is not used, starting cold: %s", self.name, self.scope, e)
            return
        if saved is None:
            return
        if saved.rows_mode is not None:
            self._rows_mode, self._unit = saved.rows_mode, saved.unit
        p = self.settings.params
        for c in saved.columns:
            col = ColumnState(c.key, p, hist_t=c.hist_t.tolist(), hist_v=c.hist_v.tolist())
            col.rows, col.rejected, col.alarms, col.last_seen = c.rows, c.rejected, c.alarms, c.last_seen
            try:
                if c.predicting:
                    self._fit(col)
                    col.series = core.OnlineSeries.rebuilt(p, c.bin0, c.r, c.cur_bin, c.cur_vals, c.last_raw, c.dropped)
            except Exception as e:  # one column that cannot be rebuilt starts cold, not the scope
                self.errors += 1
                log.warning("%s on %s: column %s of %s starts cold: %s", self.name, self.scope, c.key.column, path, e)
                continue
            self.columns[c.key] = col
        self._check_restored = True
        predicting = sum(c.series is not None for c in self.columns.values())
        self.restored = {
            "columns": len(self.columns),
            "predicting": predicting,
            "saved_at": saved.saved_at,
            "file": str(path),
        }
        log.info(
            "%s on %s: %d columns taken back from %s (%d predicting, saved %.0f s ago)",
            self.name,
            self.scope,
            len(self.columns),
            path,
            predicting,
            time.time() - saved.saved_at,
        )

    def _drop_later_than(self, t: float) -> None:
        """Restored columns last seen after the first row's time (a state of a later run, or a
        clock set back) would drop every point as out of order: they start cold instead."""
        self._check_restored = False
        later = [k for k, c in self.columns.items() if c.last_seen > t]
        for k in later:
            del self.columns[k]
        if later:
            log.warning(
                "%s on %s: %d columns of %s were last seen after this row's time (%s), they start cold",
                self.name,
                self.scope,
                len(later),
                self.state_path,
                ", ".join(k.column for k in later[:5]),
            )

    def _maybe_save(self) -> None:
        """Every ``save_every`` rows, write every column. A failure is counted, said at the first
        and every 100th, and never fails the row."""
        self._rows_since_save += 1
        if self._rows_since_save < self.settings.save_every or not self.columns:
            return
        self._rows_since_save = 0
        assert self.state_path is not None
        res = self.settings.params.resample
        try:
            cols = []
            for key, c in self.columns.items():
                if self.settings.fit_rows is None:  # (fit_rows counts the history's raw points)
                    hist_t, hist_v = statefile.compress_history(c.hist_t, c.hist_v, res)
                else:
                    hist_t, hist_v = np.array(c.hist_t, dtype=np.float64), np.array(c.hist_v, dtype=np.float64)
                counters = (c.rows, c.rejected, c.alarms, c.last_seen)
                cols.append(statefile.SavedColumn.of(key, hist_t, hist_v, c.series, *counters))
            saved = statefile.Saved(
                self._rows_mode, self._unit if self._rows_mode is not None else None, cols, time.time()
            )
            statefile.save(self.state_path, self.scope, saved)
        except (OSError, ValueError) as e:
            self.save_failures += 1
            if self.save_failures % 100 == 1:
                log.warning(
                    "%s on %s: cannot save the state to %s (%d failures so far): %s",
                    self.name,
                    self.scope,
                    self.state_path,
                    self.save_failures,
                    e,
                )

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
        return Anomaly(
            detector=self.name,
            scope=self.scope,
            index=row.index,
            ts=row.ts,
            score=score,
            threshold=1.0,
            blame=[blame],
            details={"vm": state.key.vm_name, **details},
        )

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
        out: dict[str, Any] = {"detector": self.name, "columns": cols, "errors": self.errors}
        if self.state_path is not None:
            out["state"] = {
                "file": str(self.state_path),
                "restored": self.restored,
                "save_failures": self.save_failures,
            }
        return out

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
            if improved
            else "Precog memory-leak warning on MemoryUtilization, exactly as the reference implementation computes it"
        )

    def create(self, scope: str, options: Mapping[str, Any]) -> PrecogDetector:
        return PrecogDetector(self.name, scope, parse_options(options, self.name), self.improved)

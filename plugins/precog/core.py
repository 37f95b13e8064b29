"""Precog's arithmetic: the reference algorithm as a full (vectorised) pass and as an online state.

Precog (Jindal et al., ICSOC 2020 workshops) finds memory leaks from memory utilisation alone:
resample to 5-minute medians, smooth with a trailing 1-hour median, cut the series at change points
(modified z-score of the absolute first differences, thinned to 6 h apart), fit a line to every
window from a change point to *now*, and report a leak when a window of at least 6 h is a good line
(R² > 0.8) that reaches the limit within 7 days, is at least as strong as the trends seen in the
fitted history, and the current level is above the history's plateau (the "max filter").
``/work/shared/reference/precog-algorithm.md`` is the specification followed here, line by line.

What lives here:

* :class:`PrecogParams` — every parameter of the reference with its default (durations in seconds);
* :func:`preprocess`, :func:`change_points`, :func:`fit`, :func:`predict` — the full recomputation,
  vectorised with numpy (the baseline of ``benchmarks/precog.py`` and what ``fit`` runs once);
* :class:`OnlineSeries` — the same decisions maintained incrementally: closed 5-minute bins, their
  smoothed values, prefix sums for the regressions, the sorted absolute differences (for the median
  and MAD) and the thinned change-point chain are kept; a tick only redoes the open bin and what
  depends on it;
* :class:`RiseEnvelope` — the guard of the improved mode: the largest rise the fitted history ever
  made within each time span (see ``docs/precog.md``).

Time is in seconds; a series lives on the grid of resample bins ``floor(t / resample)``; positions
are bin offsets from the first bin. The regression's x is in minutes as in the reference.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from atomwatch.lazy import lazy_import

# numpy loads on first use, not when the plugin loads (every command that lists plugins imports this)
np = lazy_import("numpy", globals(), "np")

Z_FACTOR = 0.6745  # modified z-score factor (hard-coded in the reference)
Z_THRESHOLD = 3.5  # modified z-score threshold (hard-coded in the reference)
_NEAR = 1e-9  # relative closeness at which a window's statistics are recomputed directly


@dataclass(frozen=True)
class PrecogParams:
    """The reference's parameters (``Precog.__init__`` defaults); durations in seconds."""

    resample: float = 300.0  # resampling_time_resolution '5min'
    smoothing: float = 3600.0  # smoothing_window '1h'
    min_trend: float = 6 * 3600.0  # req_trend_duration '6h'
    r2: float = 0.8  # req_trend_r2 (strict '>')
    limit: float = 100.0
    critical: float = 7 * 86400.0  # critical_time '7d'
    min_value: float = 40.0
    min_separation: float = 6 * 3600.0  # min_separation_duration '6h'
    top_n: int = 10  # top_max_n_values
    max_filter: bool = True  # use_max_values_as_filter
    max_filter_value: float = 95.0  # the filter's hard-coded absolute level

    def __post_init__(self) -> None:
        if not self.resample >= 1:
            raise ValueError(f"resampling_time_resolution: {self.resample:g} s must be at least 1 s")
        for name, value in (
            ("smoothing_window", self.smoothing),
            ("req_trend_duration", self.min_trend),
            ("min_separation_duration", self.min_separation),
            ("critical_time", self.critical),
        ):
            if not value > 0:
                raise ValueError(f"{name}: {value:g} s must be positive")
        if not 0 < self.r2 < 1:
            raise ValueError(f"req_trend_r2: {self.r2} must lie in (0, 1)")
        if self.top_n < 1:
            raise ValueError(f"top_max_n_values: {self.top_n} must be at least 1")
        if not self.limit > 0:
            raise ValueError(f"limit: {self.limit} must be positive")

    # Durations as whole bins on the resample grid (comparisons of the reference are on timestamps
    # that all lie on this grid, so these are exact).
    @property
    def smooth_bins(self) -> int:
        """Points of the trailing window (t - smoothing, t]."""
        return max(1, math.ceil(round(self.smoothing / self.resample, 9)))

    @property
    def sep_bins(self) -> int:
        return math.ceil(round(self.min_separation / self.resample, 9))

    @property
    def trend_bins(self) -> int:
        return math.ceil(round(self.min_trend / self.resample, 9))

    @property
    def minutes_per_bin(self) -> float:
        """The regression's x step. The reference uses whole minutes before the window's end
        (``-floor(dt / 1 min)``), which on a grid of whole minutes is exactly this; for a finer grid
        (lab-scale runs) x is kept in exact fractional minutes instead of floored."""
        return self.resample / 60.0


# --------------------------------------------------------------------------- pre-processing


def bin_medians(t: np.ndarray, v: np.ndarray, resample: float) -> tuple[np.ndarray, np.ndarray]:
    """(bin numbers, median per bin) of the non-NaN points; bins are ``floor(t / resample)``."""
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    ok = ~np.isnan(v) & ~np.isnan(t)
    t, v = t[ok], v[ok]
    if t.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    b = np.floor(t / resample).astype(np.int64)
    order = np.lexsort((v, b))
    b, v = b[order], v[order]
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    counts = np.diff(np.r_[starts, b.size])
    lo = v[starts + (counts - 1) // 2]
    hi = v[starts + counts // 2]
    med = np.where(counts % 2 == 1, lo, (lo + hi) / 2)
    return b[starts], med


def rolling_median(r: np.ndarray, w: int) -> np.ndarray:
    """Trailing median over ``w`` points, fewer at the start (``min_periods=1``)."""
    n = r.size
    out = np.empty(n)
    head = min(n, w - 1)
    for k in range(head):
        out[k] = np.median(r[: k + 1])
    if n >= w:
        out[w - 1 :] = np.median(np.lib.stride_tricks.sliding_window_view(r, w), axis=1)
    return out


def preprocess(t: np.ndarray, v: np.ndarray, p: PrecogParams) -> tuple[int, np.ndarray]:
    """First bin number and the smoothed series on the full grid (the reference's ``pre_process``)."""
    bins, med = bin_medians(t, v, p.resample)
    if bins.size == 0:
        return 0, np.zeros(0)
    grid = np.arange(bins[0], bins[-1] + 1)
    r = np.interp(grid.astype(np.float64), bins.astype(np.float64), med)
    return int(bins[0]), rolling_median(r, p.smooth_bins)


# --------------------------------------------------------------------------- change points


def _flags(d: np.ndarray, med: float, mad: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        m = Z_FACTOR * (d - med) / mad
    return np.abs(m) > Z_THRESHOLD


def flag_one(d: float, med: float, mad: float) -> bool:
    """:func:`_flags` for one value, with numpy's division semantics (MAD 0 flags every d != med)."""
    if mad == 0:
        return d != med
    return abs(Z_FACTOR * (d - med) / mad) > Z_THRESHOLD


def thin(candidates: Iterable[int], sep: int, start: list[int] | None = None) -> list[int]:
    """Greedy left-to-right thinning: keep a candidate only ``sep`` bins after the last kept one."""
    kept = list(start) if start else []
    for c in candidates:
        if not kept or c - kept[-1] >= sep:
            kept.append(int(c))
    return kept


def thin_sorted(positions: np.ndarray, sep: int, kept: list[int]) -> list[int]:
    """:func:`thin` on sorted positions after ``kept[-1]``, jumping with binary search."""
    last = kept[-1]
    while True:
        i = int(np.searchsorted(positions, last + sep, "left"))
        if i >= positions.size:
            return kept
        last = int(positions[i])
        kept.append(last)


def change_points(s: np.ndarray, p: PrecogParams) -> list[int]:
    """The reference's change points: ``[0, c_1 … c_m, n-1]`` plus ``n-1`` once more."""
    n = s.size
    if n == 0:
        return []
    d = np.abs(np.diff(s))
    flagged = np.zeros(0, np.int64)
    if d.size:
        med = float(np.median(d))
        mad = float(np.median(np.abs(d - med)))
        flagged = np.flatnonzero(_flags(d, med, mad))
    cand = np.union1d(flagged, [0, n - 1])
    kept = thin_sorted(cand[1:], p.sep_bins, [int(cand[0])]) if cand.size > 1 else [int(cand[0])]
    return kept + [n - 1]


# --------------------------------------------------------------------------- regression


@dataclass
class Trend:
    """One fitted window: positions ``start..stop`` (inclusive) of a series whose first bin is ``bin0``."""

    start: int
    stop: int
    slope: float  # percent per minute
    r2: float
    current: float  # smoothed value at ``stop``
    exit_s: float  # seconds until the line reaches the limit (inf if never)

    def duration(self, p: PrecogParams) -> float:
        return (self.stop - self.start) * p.resample


def exit_seconds(current: float, slope: float, limit: float) -> float:
    """``calc_exit_time``: whole seconds until ``limit`` at ``slope`` %/min; inf if not rising."""
    if not slope > 0:
        return math.inf
    return float(int((limit - current) / slope * 60))


class PrefixSums:
    """Growable prefix sums of a series (extended precision) for O(1) window regressions."""

    def __init__(self, capacity: int = 1024) -> None:
        self.n = 0
        self.offset: float | None = None  # subtracted from y to keep the sums small
        self._y = np.zeros(capacity + 1, np.longdouble)
        self._yy = np.zeros(capacity + 1, np.longdouble)
        self._ky = np.zeros(capacity + 1, np.longdouble)
        self._chg = np.zeros(capacity + 1, np.int64)  # how many k <= i have s[k] != s[k-1]
        self.last: float | None = None  # the last value added

    def extend(self, values: np.ndarray) -> None:
        m = values.size
        if m == 0:
            return
        if self.offset is None:
            self.offset = float(values[0])
        need = self.n + m + 1
        if need > self._y.size:
            cap = max(need, 2 * self._y.size)
            for name in ("_y", "_yy", "_ky", "_chg"):
                old = getattr(self, name)
                new = np.zeros(cap, old.dtype)
                new[: self.n + 1] = old[: self.n + 1]
                setattr(self, name, new)
        y = values.astype(np.longdouble) - np.longdouble(self.offset)
        k = np.arange(self.n, self.n + m, dtype=np.longdouble)
        a = self.n
        # one addition after another from the sum so far: m values added at once give the sums
        # that adding them one by one gives (a series rebuilt from its bins is the same series)
        for name, add in (("_y", y), ("_yy", y * y), ("_ky", k * y)):
            buf = getattr(self, name)
            buf[a + 1 : a + m + 1] = np.cumsum(np.concatenate(([buf[a]], add)))[1:]
        prev = np.empty(m)
        prev[0] = values[0] if self.last is None else self.last
        prev[1:] = values[:-1]
        self._chg[a + 1 : a + m + 1] = self._chg[a] + np.cumsum(values != prev)
        self.last = float(values[-1])
        self.n += m

    def window_sums(self, starts: np.ndarray, end: np.ndarray | int) -> tuple[np.ndarray, ...]:
        """Σy, Σy², Σky and the count of steps s[k] != s[k-1] inside, over positions
        ``starts[i]..end-1`` (``end`` <= n, a number or one per start)."""
        e = np.broadcast_to(np.asarray(end, np.int64), np.shape(starts))
        inner = np.minimum(np.asarray(starts) + 1, e)
        return (
            self._y[e] - self._y[starts],
            self._yy[e] - self._yy[starts],
            self._ky[e] - self._ky[starts],
            self._chg[e] - self._chg[inner],
        )


def regress(
    starts: np.ndarray, stop: int, sums: PrefixSums, tail: np.ndarray, p: PrecogParams, values: SeriesView
) -> tuple[np.ndarray, np.ndarray]:
    """Slope (%/min) and R² of every window ``starts[i]..stop`` (inclusive) at once.

    Positions below ``sums.n`` come from the prefix sums, the rest from ``tail`` (the values at
    positions ``sums.n..stop``; ``stop = sums.n + tail.size - 1``).
    """
    starts = np.asarray(starts, np.int64)
    f = sums.n
    a = np.minimum(starts, f)
    if f:
        sy, syy, sky, chg = sums.window_sums(a, f)
    else:
        sy = syy = sky = np.zeros(starts.size, np.longdouble)
        chg = np.zeros(starts.size, np.int64)
    if tail.size:
        off = np.longdouble(sums.offset if sums.offset is not None else tail[0])
        t = tail.size
        cy = [np.longdouble(0)] * (t + 1)  # suffix sums over tail[j:]
        cyy = [np.longdouble(0)] * (t + 1)
        cky = [np.longdouble(0)] * (t + 1)
        steps = [0] * (t + 1)  # steps at tail indices >= j
        prev = sums.last
        vals = [float(x) for x in tail]
        for j in range(t - 1, -1, -1):
            y = np.longdouble(vals[j]) - off
            cy[j] = cy[j + 1] + y
            cyy[j] = cyy[j + 1] + y * y
            cky[j] = cky[j + 1] + np.longdouble(f + j) * y
            before = vals[j - 1] if j else prev
            steps[j] = steps[j + 1] + (before is not None and vals[j] != before)
        ts_ = np.maximum(starts, f) - f
        sy = sy + np.array(cy, np.longdouble)[ts_]
        syy = syy + np.array(cyy, np.longdouble)[ts_]
        sky = sky + np.array(cky, np.longdouble)[ts_]
        # the step at tail index j (positions f+j-1 → f+j) is inside when start < f + j
        chg = chg + np.array(steps, np.int64)[np.minimum(np.maximum(starts - f + 1, 0), t)]
    off = sums.offset if sums.offset is not None else (float(tail[0]) if tail.size else 0.0)
    return window_stats(starts, np.full(starts.size, stop), sy, syy, sky, chg, p, values, off)


def window_stats(
    starts: np.ndarray,
    stops: np.ndarray,
    sy: np.ndarray,
    syy: np.ndarray,
    sky: np.ndarray,
    chg: np.ndarray,
    p: PrecogParams,
    values: SeriesView,
    offset: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slope, R² and the fitted value at the window's end from window sums (y less ``offset``,
    x = position). All-equal windows (no step inside) get slope 0 and R² 1, as a least-squares fit and ``r2_score`` give; windows whose R² lands
    within 1e-9 of the threshold are recomputed directly from their values."""
    m = (stops - starts + 1).astype(np.longdouble)
    sk = (starts + stops).astype(np.longdouble) * m / 2
    sxx = m * (m * m - 1) / 12
    with np.errstate(divide="ignore", invalid="ignore"):
        sxy = sky - sk * sy / m
        syy_c = syy - sy * sy / m
        slope_bin = sxy / sxx
        r2 = np.where(syy_c > 0, (sxy * sxy) / (sxx * syy_c), 0.0)
    const = chg == 0
    slope = np.where(const, 0.0, (slope_bin / np.longdouble(p.minutes_per_bin)).astype(np.float64))
    r2 = np.where(const, 1.0, np.clip(r2.astype(np.float64), 0.0, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        end = (sy / m + (slope_bin * (stops - sk / m))).astype(np.float64) + offset
    end = np.where(const | (m <= 1), (sy / m).astype(np.float64) + offset, end)
    near = ~const & (np.abs(r2 - p.r2) <= _NEAR) & (m > 1)
    for i in np.flatnonzero(near):
        slope[i], r2[i], end[i] = direct_fit(values.window(int(starts[i]), int(stops[i])), p)
    return slope, r2, end


def direct_fit(y: np.ndarray, p: PrecogParams) -> tuple[float, float, float]:
    """Least squares and R² of one window from its values (two-pass, for near-threshold cases)."""
    if y.size < 2 or np.all(y == y[0]):
        return 0.0, 1.0, float(y[-1])
    x = np.arange(y.size, dtype=np.float64) * p.minutes_per_bin
    xc = x - x.mean()
    yc = y - y.mean()
    slope = float((xc * yc).sum() / (xc * xc).sum())
    resid = yc - slope * xc
    ss_tot = float((yc * yc).sum())
    r2 = 1.0 - float((resid * resid).sum()) / ss_tot if ss_tot > 0 else 0.0
    return slope, r2, float(y.mean() + slope * xc[-1])


class SeriesView:
    """Values of a series by position, split into a final part and a provisional tail."""

    def __init__(self, final: np.ndarray, tail: np.ndarray) -> None:
        self.final, self.tail = final, tail

    def window(self, a: int, b: int) -> np.ndarray:
        f = self.final.size
        return np.concatenate((self.final[a : min(b + 1, f)], self.tail[max(a - f, 0) : b + 1 - f]))


# --------------------------------------------------------------------------- fit and predict


@dataclass
class Model:
    """What ``fit`` learns from history: the critical trends normal for this VM and the plateau."""

    trends: list[Trend] = field(default_factory=list)
    max_slope: float = 0.0
    max_duration: float = 0.0  # seconds; fit() sets it to at least min_trend
    train_ref: float = -math.inf  # median of the top-N smoothed history values (max filter)
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))  # smoothed history
    envelope: RiseEnvelope | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trends": len(self.trends),
            "max_training_slope": self.max_slope,
            "max_training_duration_s": self.max_duration,
            "train_ref": self.train_ref,
            "history_bins": int(self.history.size),
        }
        if self.envelope is not None:
            out.update(
                guard_level=self.envelope.level,
                guard_noise=self.envelope.noise,
                guard_allowance=self.envelope.allowance,
            )
        return out


def fit(t: np.ndarray, v: np.ndarray, p: PrecogParams, envelope: bool = False) -> Model:
    """The reference's ``fit`` on history (seconds, values); ``envelope`` also learns the rise envelope."""
    _, s = preprocess(t, v, p)
    model = Model(max_duration=p.min_trend, history=s)
    n = s.size
    if n == 0:
        return model
    if p.max_filter:
        top = np.sort(s)[-p.top_n :]
        model.train_ref = float(np.median(top))
    if envelope:
        model.envelope = RiseEnvelope.learn(s)
    cps = change_points(s, p)
    sums = PrefixSums(n)
    sums.extend(s)
    view = SeriesView(s, np.zeros(0))
    k = len(cps)
    ii, jj = np.triu_indices(k, 1)
    a_pos = np.array(cps, np.int64)[ii]
    b_pos = np.array(cps, np.int64)[jj]
    sy, syy, sky, chg = sums.window_sums(a_pos, b_pos + 1)
    slopes, r2s, _ = window_stats(a_pos, b_pos, sy, syy, sky, chg, p, view, float(sums.offset or 0.0))
    ok = (b_pos - a_pos >= 1) & (b_pos - a_pos >= p.trend_bins) & (r2s > p.r2)
    for i in range(k - 1):
        best: Trend | None = None
        for q in np.flatnonzero(ok & (ii == i)):
            a, b = int(a_pos[q]), int(b_pos[q])
            sl, rr = float(slopes[q]), float(r2s[q])
            tr = Trend(a, b, sl, rr, float(s[b]), exit_seconds(float(s[b]), sl, p.limit))
            if best is None:
                if sl > 0:
                    best = tr
            elif rr >= best.r2 and tr.duration(p) >= best.duration(p) and sl >= best.slope:
                best = tr
        if best is not None and best.exit_s <= p.critical and best.stop < n - 1:
            model.max_duration = max(model.max_duration, best.duration(p))
            model.max_slope = max(model.max_slope, best.slope)
            model.trends.append(best)
    return model


@dataclass
class Decision:
    """The outcome of one prediction."""

    alarm: bool
    trend: Trend | None = None  # the winning window (set when a trend qualified, even if filtered)
    reason: str = ""  # why there is no alarm: 'below-min-value', 'no-trend', 'max-filter', 'envelope'
    cps: list[int] = field(default_factory=list)
    n: int = 0


def decide(
    s_last: float,
    n: int,
    cps: list[int],
    slope: np.ndarray,
    r2: np.ndarray,
    ends: np.ndarray,
    starts: np.ndarray,
    model: Model,
    p: PrecogParams,
    segment_top: np.ndarray,
    guard: RiseEnvelope | None = None,
) -> Decision:
    """The reference's window loop over precomputed window statistics (``starts`` = ``cps[:-1]``).

    ``segment_top`` are the values of the final change-point segment (for the max filter).
    ``guard`` (improved mode) rejects windows whose fitted rise does not exceed the history's.
    """
    stop = n - 1
    best: Trend | None = None
    best_slope, best_dur = 0.0, 0.0
    rejected_by_guard = False
    # windows that are trends (long enough, R² above the threshold) and rising: the rest cannot win
    span = stop - starts
    with np.errstate(divide="ignore", invalid="ignore"):
        candidates = np.flatnonzero((span >= 1) & (span >= p.trend_bins) & (r2 > p.r2) & (slope > 0))
    for idx in candidates[::-1]:
        a = int(starts[idx])
        sl = float(slope[idx])
        ex = exit_seconds(s_last, sl, p.limit)
        if ex > p.critical:
            continue
        dur = (stop - a) * p.resample
        if guard is not None and not guard.exceeded(
            float(ends[idx]) - sl * (stop - a) * p.minutes_per_bin, float(ends[idx]), stop - a, s_last
        ):
            rejected_by_guard = True
            continue
        tr = Trend(a, stop, sl, float(r2[idx]), s_last, ex)
        if sl >= model.max_slope and dur >= model.max_duration:
            best, best_slope, best_dur = tr, sl, dur
            continue
        for tt in model.trends:
            if sl >= tt.slope and dur >= tt.duration(p) and sl >= best_slope and dur >= best_dur:
                best, best_slope, best_dur = tr, sl, dur
    if best is None:
        return Decision(False, None, "envelope" if rejected_by_guard else "no-trend", cps, n)
    if p.max_filter:
        top = np.sort(segment_top)[-p.top_n :]
        if top.size and float(top[0]) < p.max_filter_value and float(top[0]) < model.train_ref:
            return Decision(False, best, "max-filter", cps, n)
    return Decision(True, best, "", cps, n)


def predict(t: np.ndarray, v: np.ndarray, model: Model, p: PrecogParams, guard: RiseEnvelope | None = None) -> Decision:
    """The full recomputation of the reference's ``predict`` on a whole series (the baseline)."""
    v = np.asarray(v, np.float64)
    ok = ~np.isnan(v)
    if not ok.any():
        return Decision(False, reason="empty")
    if v[ok][-1] < p.min_value:
        return Decision(False, reason="below-min-value")
    _, s = preprocess(t, v, p)
    n = s.size
    cps = change_points(s, p)
    starts = np.array(cps[:-1], np.int64)
    sums = PrefixSums(n)
    sums.extend(s)
    slope, r2, ends = regress(starts, n - 1, sums, np.zeros(0), p, SeriesView(s, np.zeros(0)))
    seg = s[cps[-2] :] if len(cps) >= 2 else s[-1:]
    return decide(float(s[-1]), n, cps, slope, r2, ends, starts, model, p, seg, guard)


# --------------------------------------------------------------------------- the improved guard


@dataclass
class RiseEnvelope:
    """What normal looks like to the improved mode, learnt from the fitted (smoothed) history.

    ``rise[D]`` is the largest rise the history made within D bins, ``max_t s[t+D] - s[t]``, made
    non-decreasing in D; ``level`` is the highest smoothed level of the history. A trend is a leak
    only if its fitted rise over its window exceeds ``rise[window]`` (a daily rhythm, a GC
    sawtooth or a refill after a release rose as much in normal times) and it has carried memory
    above ``level`` (it is not a return to a level seen before). Spans beyond the history use the
    last value of ``rise``.
    """

    rise: np.ndarray  # rise[D] for D = 0..L bins
    level: float = -math.inf  # highest smoothed level of the history
    noise: float = 0.0  # robust noise scale of the smoothed history (percentage points)
    margin: float = 0.0  # extra percentage points required of both (the ``margin`` option)

    #: how many noise scales a live rise or level must clear the history's extremes by: a longer
    #: live series sees larger extremes of the same noise than the history did
    NOISE_SCALES = 3.0

    @classmethod
    def learn(cls, s: np.ndarray, max_lag: int = 2016, margin: float = 0.0) -> RiseEnvelope:
        n = s.size
        if n == 0:
            return cls(np.zeros(1), margin=margin)
        lags = min(n - 1, max_lag)
        rise = np.zeros(lags + 1)
        for d in range(1, lags + 1):
            rise[d] = float(np.max(s[d:] - s[:-d]))
        noise = 0.0
        if n > 2:  # 1.4826 MAD of first differences, / sqrt 2 for the differencing
            d1 = np.diff(s)
            noise = float(1.4826 * np.median(np.abs(d1 - np.median(d1))) / math.sqrt(2))
        return cls(np.maximum.accumulate(np.maximum(rise, 0.0)), float(np.max(s)), noise, margin)

    @property
    def allowance(self) -> float:
        return self.NOISE_SCALES * self.noise + self.margin

    def limit(self, span: int) -> float:
        return float(self.rise[min(span, self.rise.size - 1)]) + self.allowance

    def exceeded(self, start: float, end: float, span: int, current: float) -> bool:
        """Whether a fitted line from ``start`` to ``end`` over ``span`` bins, ending at the smoothed
        level ``current``, is beyond normal."""
        return end - start > self.limit(span) and current > self.level + self.allowance


# --------------------------------------------------------------------------- online


class _SortedDiffs:
    """The final absolute differences, sorted by value with their positions."""

    def __init__(self) -> None:
        self.vals = np.zeros(0)
        self.pos = np.zeros(0, np.int64)

    def insert(self, value: float, position: int) -> int:
        r = int(np.searchsorted(self.vals, value, "right"))
        self.vals = np.insert(self.vals, r, value)
        self.pos = np.insert(self.pos, r, position)
        return r


def _kth_union(main_at, m_size: int, extra: list[float], ranks: list[int]) -> list[float]:
    """Values at ``ranks`` of the sorted union of a sorted sequence (``main_at(lo, hi)`` returns its
    ranks lo..hi-1) and a few extra values."""
    lo = max(0, min(ranks) - len(extra))
    hi = min(m_size, max(ranks) + 1)
    merged = sorted(list(main_at(lo, hi)) + extra)
    return [merged[r - lo] for r in ranks]


def _dist_window(a: np.ndarray, med: float, lo: int, hi: int) -> list[float]:
    """Ranks lo..hi-1 of the sorted |a - med| for sorted ``a`` (two monotone runs merged lazily)."""
    p = int(np.searchsorted(a, med, "left"))
    n_l, n_r = p, a.size - p

    def left(i: int) -> float:  # i-th smallest distance on the left
        return float(med - a[p - 1 - i])

    def right(j: int) -> float:
        return float(a[p + j] - med)

    # how many of the first `lo` come from the left run
    s = lo
    i_lo, i_hi = max(0, s - n_r), min(s, n_l)
    while i_lo < i_hi:
        i = (i_lo + i_hi) // 2
        j = s - i
        if j > 0 and i < n_l and right(j - 1) > left(i):
            i_lo = i + 1
        else:
            i_hi = i
    i, j = i_lo, s - i_lo
    out = []
    for _ in range(hi - lo):
        if i < n_l and (j >= n_r or left(i) <= right(j)):
            out.append(left(i))
            i += 1
        else:
            out.append(right(j))
            j += 1
    return out


def _median_of(main_at, m_size: int, extra: list[float]) -> float:
    n = m_size + len(extra)
    if n % 2:
        return _kth_union(main_at, m_size, extra, [n // 2])[0]
    a, b = _kth_union(main_at, m_size, extra, [n // 2 - 1, n // 2])
    return float((np.float64(a) + np.float64(b)) / 2)


class OnlineSeries:
    """One monitored series, pre-processed and cut into change points incrementally.

    ``add(t, v)`` takes one raw point; ``evaluate(model)`` gives the reference decision for the
    series seen so far, equal to :func:`predict` on the same points. Closed bins are final: their
    medians, smoothed values, prefix sums, sorted differences and the change-point chain over them
    are kept. Only the open bin (and interpolated bins before it) is recomputed at a tick.
    """

    def __init__(self, p: PrecogParams) -> None:
        self.p = p
        self.bin0: int | None = None
        self.r = np.zeros(0)  # final resampled values
        self.s = np.zeros(0)  # final smoothed values (same length)
        self._r_buf = np.zeros(256)
        self._s_buf = np.zeros(256)
        self.f = 0  # number of final bins
        self.cur_bin: int | None = None
        self.cur_vals: list[float] = []
        self.last_raw = math.nan
        self.sums = PrefixSums()
        self.diffs = _SortedDiffs()
        self.flag = np.zeros(256, bool)  # by final diff position
        self.n_left = 0  # flagged ranks [0, n_left) of diffs.vals on the low side
        self.n_right = 0  # flagged ranks [size - n_right, size) on the high side
        self.chain: list[int] = []  # thinned candidates over final diff positions (starts with 0)
        self.dropped = 0  # points out of time order
        self._pending: list[int] = []  # final difference positions added since the last evaluation
        self._cache_key: tuple | None = None
        self._cache: tuple | None = None  # window statistics of the current smoothed series

    # -- input -----------------------------------------------------------------------------

    def add(self, t: float, v: float) -> None:
        b = math.floor(t / self.p.resample)
        if self.cur_bin is None:
            self.bin0 = self.cur_bin = b
            self.cur_vals = [v]
        elif b < self.cur_bin:
            self.dropped += 1
            return
        elif b == self.cur_bin:
            bisect.insort(self.cur_vals, v)
        else:
            self._close(self._cur_median())
            self.cur_bin = b
            self.cur_vals = [v]
        self.last_raw = v

    @property
    def n(self) -> int:
        """Number of bins of the series (final + provisional)."""
        return 0 if self.cur_bin is None else self.cur_bin - self.bin0 + 1  # type: ignore[operator]

    def _cur_median(self) -> float:
        c = self.cur_vals
        k = len(c)
        return c[k // 2] if k % 2 else float((np.float64(c[k // 2 - 1]) + np.float64(c[k // 2])) / 2)

    def _tail_r(self, med: float) -> np.ndarray:
        """Resampled values of the bins after the last final one up to the open bin."""
        gap = self.cur_bin - self.bin0 - self.f  # type: ignore[operator]
        if self.f == 0:
            return np.array([med])
        x0 = float(self.bin0 + self.f - 1)  # type: ignore[operator]
        grid = np.arange(self.bin0 + self.f, self.cur_bin + 1, dtype=np.float64)  # type: ignore[operator]
        assert grid.size == gap + 1
        return np.interp(grid, [x0, float(self.cur_bin)], [float(self.r[self.f - 1]), med])  # type: ignore[arg-type]

    def _smooth_tail(self, r_tail: np.ndarray) -> np.ndarray:
        w = self.p.smooth_bins
        f = self.f
        ctx = np.concatenate((self._r_buf[max(0, f - (w - 1)) : f], r_tail))
        base = max(0, f - (w - 1))
        out = np.empty(r_tail.size)
        for j in range(r_tail.size):
            k = f + j
            lo = max(0, k - w + 1)
            out[j] = np.median(ctx[lo - base : k - base + 1])
        return out

    def _grow(self, need: int) -> None:
        if need <= self._r_buf.size:
            return
        cap = max(need, 2 * self._r_buf.size)
        for name in ("_r_buf", "_s_buf"):
            old = getattr(self, name)
            new = np.zeros(cap)
            new[: self.f] = old[: self.f]
            setattr(self, name, new)

    def _close(self, med: float) -> None:
        """The open bin is complete: its bins (gap + itself) become final."""
        r_new = self._tail_r(med)
        s_new = self._smooth_tail(r_new)
        f0 = self.f
        self._grow(f0 + r_new.size)
        self._r_buf[f0 : f0 + r_new.size] = r_new
        self._s_buf[f0 : f0 + s_new.size] = s_new
        self.f = f0 + r_new.size
        self.r = self._r_buf[: self.f]
        self.s = self._s_buf[: self.f]
        self.sums.extend(s_new)
        # new final differences: positions f0-1 .. f-2
        prev = self._s_buf[f0 - 1] if f0 else None
        seq = s_new if prev is None else np.concatenate(([prev], s_new))
        new_d = np.abs(np.diff(seq))
        first_pos = f0 - 1 if f0 else 0
        if self.flag.size < self.f:
            grown = np.zeros(max(self.f, 2 * self.flag.size), bool)
            grown[: self.flag.size] = self.flag
            self.flag = grown
        for j, dv in enumerate(new_d):
            pos = first_pos + j
            size_old = self.diffs.vals.size
            r = self.diffs.insert(float(dv), pos)
            if r < self.n_left:
                self.n_left += 1
            if r > size_old - self.n_right:
                self.n_right += 1
            self.flag[pos] = False
            self._pending.append(pos)

    # -- the decision ----------------------------------------------------------------------

    def snapshot(self) -> tuple[np.ndarray, list[int]]:
        """(the full smoothed series, its change points) as the reference computes them now."""
        if self.cur_bin is None:
            return np.zeros(0), []
        s_tail = self._smooth_tail(self._tail_r(self._cur_median()))
        cps, _ = self._change_points(s_tail)
        return np.r_[self.s, s_tail], cps

    def _change_points(self, s_tail: np.ndarray) -> tuple[list[int], np.ndarray]:
        p = self.p
        f = self.f
        n = f + s_tail.size
        seq = np.concatenate((self.s[-1:], s_tail)) if f else s_tail
        tail_d = np.abs(np.diff(seq))  # positions f-1 .. n-2
        tail_pos = np.arange(f - 1 if f else 0, n - 1)
        vals = self.diffs.vals
        m = vals.size
        extra = [float(x) for x in tail_d]
        tail_flag = np.zeros(tail_d.size, bool)
        if m + len(extra):
            med = _median_of(lambda lo, hi: vals[lo:hi], m, extra)
            mad = _median_of(lambda lo, hi: _dist_window(vals, med, lo, hi), m, [abs(x - med) for x in extra])
            tail_flag = _flags(tail_d, med, mad)
            self._reclassify(med, mad)
        # chain over final positions, then the tail, then the end
        kept = list(self.chain) if self.chain else [0]
        tail_cands = tail_pos[tail_flag]
        kept = thin(tail_cands[tail_cands > kept[-1]], p.sep_bins, kept)
        if n - 1 > 0 and n - 1 - kept[-1] >= p.sep_bins:
            kept.append(n - 1)
        return kept + [n - 1], tail_d

    def _reclassify(self, med: float, mad: float) -> None:
        """Bring the flags of the final differences to the current median/MAD and repair the chain."""
        vals, pos = self.diffs.vals, self.diffs.pos
        m = vals.size
        if m == 0:
            self.chain = [0]
            return

        def flagged(i: int) -> bool:
            return flag_one(float(vals[i]), med, mad)

        # low side: flagged ranks form a prefix [0, L); high side a suffix [m - R, m)
        lo, hi = 0, m
        while lo < hi:  # first rank not flagged from the left (scan limited to values < med)
            mid = (lo + hi) // 2
            if vals[mid] < med and flagged(mid):
                lo = mid + 1
            else:
                hi = mid
        new_left = lo
        lo, hi = 0, m
        while lo < hi:  # first rank flagged on the right
            mid = (lo + hi) // 2
            if vals[mid] > med and flagged(mid):
                hi = mid
            else:
                lo = mid + 1
        new_right = m - lo
        changed: list[int] = []
        for a, b in (
            (min(self.n_left, new_left), max(self.n_left, new_left)),
            (m - max(self.n_right, new_right), m - min(self.n_right, new_right)),
        ):
            for rank in range(a, b):
                q = int(pos[rank])
                want = rank < new_left or rank >= m - new_right
                if self.flag[q] != want:
                    self.flag[q] = want
                    changed.append(q)
        for q in self._pending:
            rank_flag = flag_one(abs(float(self.s[q + 1]) - float(self.s[q])), med, mad)
            if self.flag[q] != rank_flag:
                self.flag[q] = rank_flag
            changed.append(q)
        self._pending = []
        self.n_left, self.n_right = new_left, new_right
        if not changed and self.chain:
            return
        first = min(changed) if changed else 0
        chain = [c for c in self.chain if c < first] or [0]
        if not self.chain:
            chain = [0]
        start = chain[-1]
        flagged_pos = np.flatnonzero(self.flag[start + 1 : self.f - 1]) + start + 1
        self.chain = thin_sorted(flagged_pos, self.p.sep_bins, chain)

    def trimmed(self, keep_bins: int) -> OnlineSeries:
        """A new series holding only the last ``keep_bins`` closed bins and the open bin."""
        first = max(0, self.f - keep_bins)
        return OnlineSeries.rebuilt(
            self.p,
            self.bin0 + first,
            self.r[first:],
            self.cur_bin,
            self.cur_vals,
            self.last_raw,
            self.dropped,  # type: ignore[operator,arg-type]
        )

    @classmethod
    def rebuilt(
        cls,
        p: PrecogParams,
        bin0: int,
        r: Iterable[float],
        cur_bin: int,
        cur_vals: Iterable[float],
        last_raw: float = math.nan,
        dropped: int = 0,
    ) -> OnlineSeries:
        """A series of the closed bins ``r`` from ``bin0`` and the open bin ``cur_bin``'s points, as
        adding them would leave it: the smoothed values, sums and sorted differences computed from
        ``r`` at once, the change-point chain at the first evaluation."""
        out = cls(p)
        r = np.asarray(r, dtype=np.float64)
        f = r.size
        out.bin0 = bin0 if f else cur_bin
        if f:  # what closing the bins one by one computes, at once
            out._grow(f)
            out._r_buf[:f], out._s_buf[:f] = r, rolling_median(r, p.smooth_bins)
            out.f, out.r, out.s = f, out._r_buf[:f], out._s_buf[:f]
            out.sums.extend(out.s)
            d = np.abs(np.diff(out.s))
            order = np.argsort(d, kind="stable")
            out.diffs.vals, out.diffs.pos = d[order], order.astype(np.int64)
            out.flag = np.zeros(max(f, out.flag.size), bool)
            out._pending = list(range(d.size))  # flagged at the first evaluation
        out.cur_bin, out.cur_vals = cur_bin, sorted(float(v) for v in cur_vals)
        out.last_raw, out.dropped = last_raw, dropped
        return out

    def evaluate(self, model: Model, guard: RiseEnvelope | None = None) -> Decision:
        """The reference decision on the series seen so far (the raw last value gates it);
        with ``guard``, the improved mode's decision."""
        p = self.p
        if self.cur_bin is None:
            return Decision(False, reason="empty")
        if self.last_raw < p.min_value:
            return Decision(False, reason="below-min-value")
        med = self._cur_median()
        key = (self.f, self.cur_bin, med)
        if key != self._cache_key or self._cache is None:
            s_tail = self._smooth_tail(self._tail_r(med))
            cps, _ = self._change_points(s_tail)
            n = self.f + s_tail.size
            starts = np.array(cps[:-1], np.int64)
            # windows start..n-1: final positions from the prefix sums, the tail directly
            slope, r2, ends = regress(starts, n - 1, self.sums, s_tail, p, SeriesView(self.s, s_tail))
            a = cps[-2] if len(cps) >= 2 else n - 1
            seg = SeriesView(self.s, s_tail).window(a, n - 1)
            self._cache = (float(s_tail[-1]), n, cps, slope, r2, ends, starts, seg, {})
            self._cache_key = key
        s_last, n, cps, slope, r2, ends, starts, seg, decided = self._cache
        # the smoothed series has not changed since the last tick: reuse what was decided on it
        which = (id(model), id(guard))
        if which not in decided:
            decided[which] = decide(s_last, n, cps, slope, r2, ends, starts, model, p, seg, guard)
        return decided[which]

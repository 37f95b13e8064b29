"""The ``pca-spe`` detector: ATOM's PCA monitoring with SPE and Q_α, one instance per scope.

What lives here: the options (:class:`PcaSpeOptions`), the detector's life over a stream of rows
(warm-up, the normal window M, the abnormal rows A, column-set changes, stale cells, quiet
columns), the mapping of identification results to :class:`atomwatch.Blame`, the operator's
*normal* verdict (``accept_normal``), ``status()``, ``deltas_from_mu``, and when M is written
and taken back (``state_dir``). What does not: the formulas (:mod:`.model`), the per-tick
kernels (:mod:`.kernels`) and the state file itself (:mod:`.state`). What it does where the paper
is silent (warm-up, A, stale cells, quiet columns, column changes, threshold, cost):
``docs/pca.md``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import atomwatch
from atomwatch import Anomaly, Blame, Range, Row, SeriesKey
from atomwatch.lazy import lazy_import

# numpy loads on first use, not when the plugin loads (every command that lists plugins imports this)
np = lazy_import("numpy", globals(), "np")

# numba (the kernels) and scipy (the model's formulas) load when a detector first needs them, not
# when the plugin loads: every command that lists plugins imports this module
kernels = lazy_import(f"{__package__}.kernels", globals(), "kernels")
pm = lazy_import(f"{__package__}.model", globals(), "pm")
state = lazy_import(f"{__package__}.state", globals(), "state")

log = logging.getLogger(__name__)

NAME = "pca-spe"
UNATTENDED_KEPT = 8  # re-baselined episodes whose earlier window is kept for a malicious verdict
CANDIDATES = 5  # columns past identification's step 1 but not abnormal, named in an anomaly's details
#: smooth > 0: a row's score counts at most this much (one row cannot hold the level up for long)
RATIO_CAP = 1e6


@atomwatch.declare_options(NAME)
@dataclass(frozen=True)
class PcaSpeOptions:
    """Options of one pca-spe detector (``--set pca-spe.KEY=VALUE``), read by
    :func:`atomwatch.parse_options`."""

    t: Annotated[int, Range(ge=3)] = 720  # window length (normal rows)
    cpv: Annotated[float, Range(gt=0, lt=1)] = 0.90  # cumulative percent variance for k
    alpha: Annotated[float, Range(gt=0, lt=0.5)] = 0.002  # false-alarm rate of Q_α
    b1: Annotated[float, Range(ge=0)] = 2.0  # identification step 1 threshold on rd_j
    b2: Annotated[float, Range(ge=0)] = 3.0  # identification step 2 threshold on stddev_j
    min_rows: int | None = None  # rows before detecting (default max(30, 2·d), at most t)
    min_std: Annotated[float, Range(gt=0)] = 1e-6  # absolute std floor when standardising
    rel_std: Annotated[float, Range(ge=0)] = 1e-3  # std floor as a fraction of |avg_j|
    delta_noise: Annotated[float, Range(ge=0)] = (
        1.0  # a column's noise level as a multiple of its tracking error Δ (0: ignore Δ)
    )
    confirm: Annotated[int, Range(ge=1)] = (
        1  # consecutive abnormal rows before anomalies are reported (rows join A from the first)
    )
    stale_limit: Annotated[int, Range(ge=1)] = 6  # consecutive NaN rows after which a column counts as gone
    refresh_every: Annotated[int, Range(ge=1)] = 720  # exact recomputation of the window statistics every N updates
    solver: Literal["subspace", "eigh"] = (
        "subspace"  # "subspace" (warm-started top-k, verified, eigh fallback) or "eigh" (full, every fit)
    )
    full_every: Annotated[int, Range(ge=1)] = 100  # with solver=subspace, a full eigh at least every N fits
    rebaseline_after: Annotated[int, Range(ge=0)] = (
        360  # abnormal rows of one episode with no verdict after which M is rebuilt from its latest rows (0: never)
    )
    threshold: Literal["q-alpha", "quantile", "pot"] = (
        "q-alpha"  # SPE threshold: the paper's Q_α, or read off the window's own SPE at α (quantile, pot)
    )
    tail_level: Annotated[float, Range(gt=0, lt=1)] = 0.9  # with threshold=pot, the quantile the tail is fitted over
    quiet_rule: Literal["band", "seen", "off"] = (
        "seen"  # quiet columns (out of the PCA): alarm when one leaves its band; "seen": its band
        # widened to the values it held in episodes that ended without a malicious verdict; "off"
    )
    reference: Literal["fixed", "sliding"] = (
        "fixed"  # once M holds t rows it moves only by a re-baseline or a normal verdict; "sliding": every normal row
    )
    refit_growth: Annotated[float, Range(ge=0, le=1)] = (
        0.05  # reference=fixed: while M fills, refit when it grew by this fraction since the last fit (0: every row)
    )
    smooth: Annotated[float, Range(ge=0, lt=1)] = (
        0.0  # EWMA weight of log(1 + SPE/threshold): abnormal while the smoothed ratio is over 1 (0: each row alone)
    )
    state_dir: str | None = None  # keep each scope's M in this folder across restarts (docs/pca.md); unset: not kept
    state_max_age: Annotated[float, Range(gt=0)] = 86400.0  # seconds: an M saved longer ago is not taken back
    save_every: Annotated[int, Range(ge=1)] = 60  # with state_dir: rows between two saves of M (when it changed)

    def __post_init__(self) -> None:
        if self.min_rows is not None and not 3 <= self.min_rows <= self.t:
            raise atomwatch.OptionError("min_rows", self.min_rows, f"in [3, t={self.t}]")
        if self.threshold == "pot" and self.alpha >= 1 - self.tail_level:
            raise atomwatch.OptionError(
                "tail_level", self.tail_level, f"below 1 − alpha = {1 - self.alpha:g} (the tail must reach α)"
            )
        if 0 < self.rebaseline_after < max(self.confirm, 3):
            raise atomwatch.OptionError(
                "rebaseline_after", self.rebaseline_after, f"0 (never) or at least max(3, confirm={self.confirm})"
            )

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> PcaSpeOptions:
        return atomwatch.parse_options(NAME, cls, options)

    def rows_needed(self, d: int) -> int:
        return self.min_rows if self.min_rows is not None else min(self.t, max(30, 2 * d))


class _Window:
    """The window M of one column set, with its current model (fitted lazily)."""

    def __init__(
        self, columns: tuple[SeriesKey, ...], opts: PcaSpeOptions, stats: pm.WindowStats | None = None
    ) -> None:
        self.columns = columns
        self.index = {c: j for j, c in enumerate(columns)}
        self.names = tuple(c.column for c in columns)  # for status(), after every row
        self.opts = opts
        self.stats = stats or pm.WindowStats(len(columns), opts.t)
        self.top = pm.TopEigen(full_every=opts.full_every) if opts.solver == "subspace" else None
        self.need = opts.rows_needed(len(columns))
        self.deltas = np.full(len(columns), np.nan)  # each column's tracking error Δ (NaN = unknown)
        # quiet_rule=seen: each column's range over the episodes that ended (NaN: none yet)
        self.seen_lo = np.full(len(columns), np.nan)
        self.seen_hi = np.full(len(columns), np.nan)
        self._fit: _Model | None = None
        self._fit_rows = 0  # rows in M when the model was last fitted

    @property
    def ready(self) -> bool:
        return self.stats.n >= self.need

    def add(self, x: np.ndarray) -> None:
        self.stats.add(x)
        if self.stats.updates >= self.opts.refresh_every:
            self.stats.refresh()
        if not self._filling_keeps_fit():
            self._fit = None

    def _filling_keeps_fit(self) -> bool:
        """A fixed reference filling up keeps its model until M has grown by ``refit_growth``
        since the fit (the model of n rows and of 1.05·n rows differ far less than either
        differs from the truth); it is refitted exactly when M is full."""
        s, growth = self.stats, self.opts.refit_growth
        return (
            self._fit is not None
            and growth > 0
            and self.opts.reference == "fixed"
            and s.n < s.capacity
            and s.n < self._fit_rows * (1.0 + growth)
        )

    def set_deltas(self, deltas: np.ndarray) -> None:
        """Follow the columns' tracking errors (in this window's column order): a changed Δ
        changes the noise levels and the model."""
        if not np.array_equal(deltas, self.deltas, equal_nan=True):
            self.deltas = deltas
            self._fit = None

    def noise(self) -> np.ndarray:
        """Each column's noise level: max(min_std, rel_std·|avg|, delta_noise·Δ)."""
        base = pm.std_floor(self.stats.mean, self.opts.min_std, self.opts.rel_std)
        return np.fmax(base, self.opts.delta_noise * np.where(self.deltas > 0, self.deltas, np.nan))

    def model(self) -> _Model:
        if self._fit is None:
            s = self.stats
            m, scale = s.comoment, 1.0 / max(s.n - 1, 1)  # the covariance is m·scale
            noise = self.noise()
            active, quiet = pm.split_quiet(np.sqrt(np.maximum(m.diagonal() * scale, 0.0)), noise)
            fit = None
            if len(active):
                sub = m if not len(quiet) else m.take(active, 0).take(active, 1)
                mean = s.mean if not len(quiet) else s.mean[active]
                fit = pm.fit(
                    s.n,
                    mean,
                    sub,
                    cpv=self.opts.cpv,
                    alpha=self.opts.alpha,
                    min_std=self.opts.min_std,
                    rel_std=self.opts.rel_std,
                    top=self.top,
                    cov_scale=scale,
                )
            if len(quiet):
                rows = s.rows()[:, quiet]
                lo, hi = rows.min(axis=0), rows.max(axis=0)
                if self.opts.quiet_rule == "seen":  # (fmin/fmax: NaN, nothing seen, leaves the window's)
                    lo, hi = np.fmin(lo, self.seen_lo[quiet]), np.fmax(hi, self.seen_hi[quiet])
                q = pm.QuietColumns(quiet, lo, hi, noise[quiet], self.opts.quiet_rule != "off")
            else:
                q = pm.QuietColumns(quiet, np.zeros(0), np.zeros(0), np.zeros(0))
            self._fit = _Model(fit, active, q, *self._threshold(fit, active))
            self._fit_rows = s.n
        return self._fit

    def _threshold(self, fit: pm.PcaFit | None, active: np.ndarray) -> tuple[float, str]:
        """(SPE threshold, the rule that gave it): Q_α, or with ``threshold`` quantile/pot the
        one read off the SPE of the window's own rows under this model (Q_α where the tail
        gives none, or the model is degenerate)."""
        if fit is None:
            return math.inf, "none"
        rule = self.opts.threshold
        if rule == "q-alpha" or not math.isfinite(fit.q_alpha):
            return fit.q_alpha, "q-alpha"
        x = (self.stats.rows()[:, active] - fit.mean) / fit.std
        r = x - (x @ fit.p1) @ fit.p1.T
        thr = pm.tail_threshold(np.einsum("ij,ij->i", r, r), self.opts.alpha, rule, self.opts.tail_level)
        if thr is None or not thr > 0:
            return fit.q_alpha, "q-alpha"
        return thr, rule

    def learn_seen(self, rows: Sequence[np.ndarray]) -> None:
        """quiet_rule=seen: widen each column's seen range to an ended episode's values."""
        if not rows:
            return
        a = np.array(rows)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (a column unknown in every row: NaN)
            lo, hi = np.nanmin(a, axis=0), np.nanmax(a, axis=0)
        self.seen_lo, self.seen_hi = np.fmin(self.seen_lo, lo), np.fmax(self.seen_hi, hi)
        self._fit = None

    def carry_seen(self, other: _Window) -> None:
        """Take ``other``'s seen ranges for the columns both windows hold."""
        self.set_seen(other.columns, other.seen_lo, other.seen_hi)

    def set_seen(self, columns: tuple[SeriesKey, ...], lo: np.ndarray, hi: np.ndarray) -> None:
        """Seen ranges given over ``columns`` (NaN for this window's columns not among them)."""
        where = {c: i for i, c in enumerate(columns)}
        for c, j in self.index.items():
            i = where.get(c)
            self.seen_lo[j], self.seen_hi[j] = (lo[i], hi[i]) if i is not None else (np.nan, np.nan)
        self._fit = None

    def restricted(self, columns: tuple[SeriesKey, ...]) -> _Window:
        keep = np.array([self.index[c] for c in columns], dtype=np.intp)
        out = _Window(columns, self.opts, self.stats.restricted(keep) if self.stats.n else None)
        out.carry_seen(self)
        return out


@dataclass
class _Model:
    """A window's model: the PCA over its active columns (None when every column is quiet) and
    the quiet columns watched on their own."""

    fit: pm.PcaFit | None
    active: np.ndarray  # window column indices the PCA covers, in its order
    quiet: pm.QuietColumns
    threshold: float = math.inf  # the SPE threshold (option ``threshold``: Q_α or the window's tail)
    rule: str = "q-alpha"  # the rule that gave it (q-alpha also where a tail rule fell back)

    def spe(self, z: np.ndarray) -> tuple[float, float, np.ndarray | None]:
        """(SPE, threshold, standardised active row with stale cells filled) of a raw window row."""
        if self.fit is None:
            return 0.0, math.inf, None
        x = self.fit.fill_missing(self.fit.standardise(z[self.active]))
        return self.fit.spe(x), self.threshold, x


class _Episode:
    """A: the current run of consecutive abnormal rows (its last ``cap`` rows, raw, in the
    window's column order, with their row indices), and what identification and the quiet rule
    need over it, kept for one model as rows join and leave (:meth:`fold`): a row costs the
    same at the 1st and the 700th row of an episode (``docs/pca.md``, *Cost*)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.rows: deque[np.ndarray] = deque()
        self.index: deque[int] = deque()
        self.run_length = 0  # consecutive abnormal rows so far (A keeps the last cap of them)
        self.start: int | None = None  # the row index the run began at
        self._first = 0  # sequence number of rows[0] (a row's number counts the rows of the run before it)
        self._folded = 0  # rows numbered below this are in the sums
        self._model: _Model | None = None  # the model the sums are for
        self.ident: pm.RunningIdentification | None = None  # (None when the model has no PCA)
        self.quiet: pm.RunningQuietExcess | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, index: int, z: np.ndarray) -> None:
        if self.start is None:
            self.start = index
        self.rows.append(z)
        self.index.append(index)
        self.run_length += 1
        if len(self.rows) > self.cap:  # the paper's A spans at most the last t instants
            old = self.rows.popleft()
            self.index.popleft()
            if self._first < self._folded and self._model is not None:
                if self.ident is not None:
                    self.ident.remove(old[self._model.active])
                if self.quiet is not None:
                    self.quiet.remove(self._first)
            self._first += 1

    def fold(self, model: _Model) -> None:
        """Bring the sums up to date with every row of A under ``model``; a model other than
        the one they were kept for (the window's noise levels changed mid-episode) starts them
        again from A's rows."""
        if model is not self._model:
            self._model = model
            self.ident = pm.RunningIdentification(model.fit) if model.fit is not None else None
            self.quiet = pm.RunningQuietExcess(model.quiet)
            self._folded = self._first
        end = self._first + len(self.rows)
        for seq in range(self._folded, end):
            z = self.rows[seq - end]  # (counted from the end: the rows not yet folded are the newest)
            if self.ident is not None:
                self.ident.add(z[model.active])
            self.quiet.add(seq, z)
        self._folded = end


class PcaSpeDetector:
    """One scope's PCA-SPE detector (see the module docstring for its behaviour)."""

    name = NAME

    def __init__(self, scope: str, options: Mapping[str, Any] | None = None) -> None:
        self.scope = scope
        self.opts = PcaSpeOptions.parse(options)
        self.win: _Window | None = None
        self.pending: _Window | None = None  # a new column set warming up
        self.episode = _Episode(self.opts.t)  # A (raw, columns of self.win): at most t rows
        self.last_episode: tuple[tuple[SeriesKey, ...], list[np.ndarray]] | None = None
        self.nan_run: dict[SeriesKey, int] = {}  # stale columns only: consecutive NaN rows
        #: the read-only Δ array last applied, and to which window (the next row's is likely the same)
        self._deltas_seen: tuple[Any, Any] = (None, None)
        #: (row columns, window columns, where each window column is in the row), of the last row
        self._at: tuple[tuple[SeriesKey, ...], tuple[SeriesKey, ...], np.ndarray] | None = None
        self.last_spe: float | None = None
        self.last_q: float | None = None  # the Q_α of the model the last scored row was judged by
        self.last_threshold: float | None = None  # the threshold it was compared with (Q_α or the tail's)
        self.last_index: int | None = None
        self.last_score: float | None = None  # the last scored row's score (see _score), for ranking
        self.level = 0.0  # smooth > 0: the EWMA of log(1 + SPE/threshold), back to 0 when M or A is replaced
        self.smoothed_over = False  # smooth > 0: the last scored row was abnormal by the smoothed ratio
        self.rows_seen = 0
        self.anomalies = 0
        self.column_changes = 0
        # the unattended policy (docs/pca.md): episodes learnt without a verdict, by their first
        # row index, with the window as it was before (restored by a malicious verdict)
        self.unattended: dict[int, _Window] = {}
        self.rebaselines = 0
        self.hold = False  # a malicious verdict stops re-baselining until a normal row is seen
        # quiet_rule=seen: the seen ranges as they were before each ended episode learnt into them
        # (by its first row index; restored by a malicious verdict)
        self.seen_before: dict[int, tuple[tuple[SeriesKey, ...], Any, Any]] = {}
        # state_dir: M's file, whether it is still to be read (at the first row), what was taken
        # back from it, rows since the last save and the M then saved
        self.state_path = state.path_for(self.opts.state_dir, scope) if self.opts.state_dir else None
        self._restore_pending = self.state_path is not None
        self.restored: dict[str, Any] | None = None
        self._rows_since_save = 0
        self._saved_version: tuple | None = None
        self.save_failures = 0

    # -- the stream ---------------------------------------------------------------------------

    def update(self, row: Row) -> Anomaly | None:
        result = self._update(row)
        if self.state_path is not None:
            self._maybe_save()
        return result

    def _update(self, row: Row) -> Anomaly | None:
        values = np.asarray(row.values, dtype=np.float64).reshape(-1)
        if len(values) != len(row.columns):
            raise ValueError(
                f"{NAME} scope {self.scope!r} row {row.index}: {len(values)} values for {len(row.columns)} columns"
            )
        self.rows_seen += 1
        self.last_index = row.index
        cols = self._effective_columns(row.columns, values)
        if not cols:
            return None
        if self._restore_pending:
            self._restore(cols)
        self._follow_columns(cols)
        win = self.win
        assert win is not None
        at = self._positions(row.columns, win.columns)
        z = values[at]
        if (
            row.deltas is not None
            and self.opts.delta_noise > 0
            and not (row.deltas is self._deltas_seen[0] and win is self._deltas_seen[1])
        ):
            deltas = np.asarray(row.deltas, dtype=np.float64).reshape(-1)
            if len(deltas) != len(row.columns):
                raise ValueError(
                    f"{NAME} scope {self.scope!r} row {row.index}: {len(deltas)} deltas for {len(row.columns)} columns"
                )
            win.set_deltas(deltas[at])  # (a pending window gets its Δ once it is the window)
            if isinstance(row.deltas, np.ndarray) and not row.deltas.flags.writeable:
                self._deltas_seen = (row.deltas, win)  # a controller's shared Δ: this object cannot change
        result = self._score(row, win, z)
        if self.pending is not None and result is None and self.episode.run_length == 0:
            # a new column set warms up on the rows the current model finds normal
            zp = values[self._positions(row.columns, self.pending.columns, keep=False)]
            if np.isfinite(zp).all():
                self.pending.add(zp)
            if self.pending.ready:
                self._switch_to_pending()
        return result

    def _score(self, row: Row, win: _Window, z: np.ndarray) -> Anomaly | None:
        finite = np.isfinite(z)
        if not win.ready:
            if finite.all():
                win.add(z)
            return None
        model = win.model()
        spe, q, x = model.spe(z)
        breach = model.quiet.breaches(z).any()
        self.last_spe, self.last_threshold = spe, q
        # the row's score against its rule(s): SPE over the threshold, and where a quiet column
        # left its band, 1 + its distance out in noise levels, the noise level taken at least
        # rel_std × the row's own value (any breach outranks SPE's near misses; docs/pca.md)
        score = spe / q if q > 0 and math.isfinite(q) else 0.0
        if breach:
            score = max(score, 1.0 + model.quiet.ranking_excess(z, self.opts.rel_std))
        over = spe > q
        report = over or breach
        if self.opts.smooth > 0:  # the score's EWMA in log units decides what is reported (docs/pca.md)
            seen = min(score, RATIO_CAP) if score >= 0 else 0.0  # (a NaN must not stick in the level)
            self.level += self.opts.smooth * (math.log1p(seen) - self.level)
            score = math.expm1(self.level)
            self.smoothed_over = score > 1.0
            report = self.smoothed_over or breach
        self.last_score = score
        self.last_q = model.fit.q_alpha if model.fit is not None else math.inf
        if over or report:  # abnormal: the row joins A (and never M), reported or not
            self.episode.append(row.index, z.copy())
            self._fold_episode(model)
            rebaseline = self.episode.run_length == self.opts.rebaseline_after and not self.hold
            if self.episode.run_length < self.opts.confirm or not (report or rebaseline):
                return None
            self.anomalies += 1
            anomaly = self._anomaly(row, win, model, x, spe, [c for c, ok in zip(win.columns, finite) if not ok])
            if rebaseline:
                note = self._rebaseline(win)
                if note is not None:
                    anomaly.details["audit"] = note
            return anomaly
        self.hold = False
        if len(self.episode):
            self.last_episode = (win.columns, list(self.episode.rows))
            self._learn_seen(win, self.episode)
            self.episode = _Episode(self.opts.t)
        if finite.all() and (win.stats.n < win.stats.capacity or self.opts.reference == "sliding"):
            win.add(z)
        return None

    # -- M kept across restarts (state_dir) --------------------------------------------------------

    def _restore(self, cols: tuple[SeriesKey, ...]) -> None:
        """Take M back from its file (at the first row with columns): the rows as saved, the seen
        ranges; the column set is then followed as after any change. A file that cannot be used
        is said once and the detector starts cold."""
        self._restore_pending = False
        path = self.state_path
        assert path is not None
        try:
            saved = state.load(path, self.scope, self.opts.state_max_age)
        except state.StateError as e:
            log.warning("%s on %s: the saved window is not used, starting cold: %s", NAME, self.scope, e)
            return
        if saved is None:
            return
        if not set(saved.columns) & set(cols):
            log.warning(
                "%s on %s: the saved window (%s) has no column of the current rows, starting cold",
                NAME,
                self.scope,
                path,
            )
            return
        win = _Window(saved.columns, self.opts, pm.WindowStats.of_rows(saved.rows, self.opts.t))
        win.seen_lo, win.seen_hi = saved.seen_lo.copy(), saved.seen_hi.copy()
        self.win = win
        self.restored = {"rows": win.stats.n, "saved_at": saved.saved_at, "file": str(path)}
        log.info(
            "%s on %s: window M taken back from %s (%d rows, saved %.0f s ago)",
            NAME,
            self.scope,
            path,
            win.stats.n,
            time.time() - saved.saved_at,
        )

    def _m_version(self, win: _Window) -> tuple:
        s = win.stats
        return (id(win), s.n, s.start, s.updates, s.refreshes, win.seen_lo.tobytes(), win.seen_hi.tobytes())

    def _maybe_save(self) -> None:
        """Every ``save_every`` rows, write M if it changed since the last save (a full fixed
        reference changes only by a re-baseline or a verdict). A failure is counted, said at the
        first and every 100th, and never fails the row."""
        win = self.win
        if win is None or not win.ready:
            return
        self._rows_since_save += 1
        if self._rows_since_save < self.opts.save_every:
            return
        self._rows_since_save = 0
        version = self._m_version(win)
        if version == self._saved_version:
            return
        assert self.state_path is not None
        try:
            saved = state.Saved(win.columns, win.stats.rows(), win.seen_lo, win.seen_hi, time.time())
            state.save(self.state_path, self.scope, saved)
            self._saved_version = version
        except OSError as e:
            self.save_failures += 1
            if self.save_failures % 100 == 1:
                log.warning(
                    "%s on %s: cannot save the window to %s (%d failures so far): %s",
                    NAME,
                    self.scope,
                    self.state_path,
                    self.save_failures,
                    e,
                )

    def _restart(self) -> None:
        """A and the last episode cleared, the smoothed level back to 0: M or the column set was
        replaced, or a verdict came (not when an episode simply ends: the level has fallen then)."""
        self.episode, self.last_episode = _Episode(self.opts.t), None
        self.level, self.smoothed_over = 0.0, False

    def _positions(
        self, columns: tuple[SeriesKey, ...], wanted: tuple[SeriesKey, ...], keep: bool = True
    ) -> np.ndarray:
        """Where each of ``wanted`` is in a row of ``columns``: worked out again only when either
        tuple is another object (a controller hands the same tuple row after row)."""
        known = self._at
        if known is not None and known[0] is columns and known[1] is wanted:
            return known[2]
        lookup = {c: j for j, c in enumerate(columns)}
        at = np.array([lookup[c] for c in wanted], dtype=np.intp)
        if keep:
            self._at = (columns, wanted, at)
        return at

    def _effective_columns(self, columns: tuple[SeriesKey, ...], values: np.ndarray) -> tuple[SeriesKey, ...]:
        """The row's columns less those stale for ``stale_limit`` rows in a row (``nan_run``
        holds the current run of each stale column; none: every column was read)."""
        nan = np.isnan(values)
        if not self.nan_run and not nan.any():
            return columns
        old = self.nan_run
        runs = {c: old.get(c, 0) + 1 for c, bad in zip(columns, nan.tolist()) if bad}
        self.nan_run = runs
        limit = self.opts.stale_limit
        if all(n < limit for n in runs.values()):
            return columns
        return tuple(c for c in columns if runs.get(c, 0) < limit)

    def _follow_columns(self, cols: tuple[SeriesKey, ...]) -> None:
        if self.win is None:
            self.win = _Window(cols, self.opts)
            return
        if cols == self.win.columns and self.pending is None:
            return
        if not self.win.ready:  # still warming up: simply warm up the new column set instead
            if set(cols) != set(self.win.columns):
                self.column_changes += 1
                self.win, self.pending = _Window(cols, self.opts), None
            return
        present = set(cols)
        if not set(self.win.columns) <= present:
            kept = tuple(c for c in self.win.columns if c in present)
            self.column_changes += 1
            self._restart()
            if kept:
                self.win = self.win.restricted(kept)
            else:
                self.win = _Window(cols, self.opts)
                self.pending = None
                return
        if set(cols) == set(self.win.columns):  # (a new order is fine: values map by name)
            self.pending = None
            return
        if self.pending is None or self.pending.columns != cols:
            if self.pending is None:
                self.column_changes += 1
            self.pending = _Window(cols, self.opts)

    def _learn_seen(self, win: _Window, ep: _Episode) -> None:
        """quiet_rule=seen: an episode ended with no malicious verdict (a normal row followed,
        or it was re-baselined): its quiet columns' values stop being breaches. The ranges as
        they were are kept for a malicious verdict on it (:meth:`reject`)."""
        if self.opts.quiet_rule != "seen" or ep.start is None or not len(ep):
            return
        self.seen_before[ep.start] = (win.columns, win.seen_lo.copy(), win.seen_hi.copy())
        while len(self.seen_before) > UNATTENDED_KEPT:
            del self.seen_before[next(iter(self.seen_before))]
        win.learn_seen(list(ep.rows))

    def _switch_to_pending(self) -> None:
        assert self.pending is not None
        if self.win is not None:
            self.pending.carry_seen(self.win)
        self.win, self.pending = self.pending, None
        self._restart()

    def _rebaseline(self, win: _Window) -> dict[str, Any] | None:
        """The unattended policy: the episode has gone ``rebaseline_after`` rows with no verdict,
        so its latest ``rebaseline_after`` rows join M (the oldest rows leaving, as normal rows
        would) and a *new* change is judged against the workload as it is now. The window as it
        was is kept for a malicious verdict (:meth:`reject`); the alarm stays open. Returns the
        audit note for the alarm."""
        ep = self.episode
        rows = [z for z in ep.rows if np.isfinite(z).all()][-self.opts.rebaseline_after :]
        if not rows or ep.start is None:
            return None
        new = _Window(win.columns, self.opts, win.stats.restricted(np.arange(len(win.columns))))
        new.deltas = win.deltas
        new.carry_seen(win)
        self._learn_seen(new, ep)
        for z in rows:
            new.add(z)
        new.stats.refresh()
        self.unattended[ep.start] = win
        while len(self.unattended) > UNATTENDED_KEPT:
            del self.unattended[next(iter(self.unattended))]
        self.win = new
        self.rebaselines += 1
        self._restart()
        return {
            "action": "model re-baselined",
            "details": {
                "why": f"{ep.run_length} abnormal rows without a verdict (rebaseline_after={self.opts.rebaseline_after})",
                "episode_first_row": ep.start,
                "rows_learnt": len(rows),
                "undo": "a malicious verdict on this alarm restores the window as it was before the episode",
            },
        }

    def _fold_episode(self, model: _Model) -> None:
        """Keep A's sums (identification, quiet columns) up to date with the row just added."""
        self.episode.fold(model)

    # -- results ------------------------------------------------------------------------------

    def _anomaly(
        self, row: Row, win: _Window, model: _Model, x: np.ndarray | None, spe: float, stale: list[SeriesKey]
    ) -> Anomaly:
        ep = self.episode
        blame: list[Blame] = []
        findings: list[pm.ColumnFinding] = []
        fit = model.fit
        own = fit is not None and spe > model.threshold  # (a row may be abnormal by the quiet rule alone)
        over = own or (fit is not None and self.smoothed_over)  # (smooth > 0: or by the smoothed ratio)
        if over:
            assert ep.ident is not None  # (folded under this model by _score)
            findings = ep.ident.findings(self.opts.b1, self.opts.b2, normal_kept=CANDIDATES)
            blame = [
                Blame(
                    column=win.columns[model.active[f.index]],
                    direction=f.direction,
                    score=float(f.stddev or 0.0),
                    details={"rd": f.rd, "stddev": f.stddev, "meandiff": f.meandiff},
                )
                for f in findings
                if f.abnormal
            ]
        quiet = model.quiet
        low, high = quiet.band
        assert ep.quiet is not None
        z = ep.rows[-1]  # this row
        for i, worst in ep.quiet.worst():  # each quiet column furthest out of its band over A
            j = int(quiet.index[i])
            blame.append(
                Blame(
                    column=win.columns[j],
                    direction="up" if worst > 0 else "down",
                    score=abs(worst),
                    details={
                        "rule": "quiet column left its band",
                        "band": [float(low[i]), float(high[i])],
                        "noise": float(quiet.noise[i]),
                        "value": float(z_last) if math.isfinite(z_last := z[j]) else None,
                    },
                )
            )
        blame.sort(key=lambda b: -b.score)
        breached = ep.quiet.last != 0  # this row's quiet columns out of their band
        details: dict[str, Any] = {
            # what made this row abnormal: SPE over Q_α, a quiet column out of its band, or both
            "trigger": "+".join(
                w for w, on in (("spe", own), ("smoothed", over and not own), ("quiet", bool(breached.any()))) if on
            ),
            "k": fit.k if fit else 0,
            "d": fit.d if fit else 0,
            "method": fit.method if fit else "none",
            "h0": None if fit is None or math.isnan(fit.h0) else fit.h0,
            "threshold_rule": model.rule,
            "q_alpha": fit.q_alpha if fit is not None and math.isfinite(fit.q_alpha) else None,
            "quiet_columns": len(quiet.index),
            "quiet_breaches": [win.columns[int(j)].column for j in quiet.index[breached]],
            "rows_in_A": len(ep),
            "first_row_of_A": ep.index[0],
            "run_length": ep.run_length,
            "window_rows": win.stats.n,
            "stale_columns": [c.column for c in stale],
            "candidates": [
                {"column": win.columns[model.active[f.index]].column, "rd": f.rd, "stddev": f.stddev}
                for f in findings
                if not f.abnormal
            ][:CANDIDATES],
        }
        if fit is not None and x is not None:
            r = fit.residual(x)
            details["residual_top"] = [
                {"column": win.columns[model.active[j]].column, "share": float(r[j] ** 2 / spe) if spe > 0 else 0.0}
                for j in np.argsort(-(r * r))[:5]
            ]
        if self.opts.smooth > 0:
            details["smoothed_ratio"] = math.expm1(self.level)  # the EWMA's value: over 1 is reported
        return Anomaly(
            detector=NAME,
            scope=self.scope,
            index=row.index,
            ts=row.ts,
            score=spe,
            threshold=model.threshold,
            blame=blame,
            details=details,
        )

    # -- operator and controller -------------------------------------------------------------

    def accept_normal(self, rows: Sequence[Row] | None = None) -> int:
        """The operator's *normal* verdict: fold ``rows`` (default: A, else the last episode)
        into M, clear A and refit. Rows lacking a modelled column or holding NaN there are
        skipped. Returns how many rows joined M."""
        win = self.win
        if win is None:
            return 0
        learnt = self._unattended_in(rows)
        if learnt:  # the episode is in M already (re-baselined): the verdict only confirms it
            for start in learnt:
                del self.unattended[start]
            return 0
        batch: list[np.ndarray] = []
        if rows:
            for r in rows:
                lookup = {c: j for j, c in enumerate(r.columns)}
                if not all(c in lookup for c in win.columns):
                    continue
                vals = np.asarray(r.values, dtype=np.float64)
                z = vals[[lookup[c] for c in win.columns]]
                if np.isfinite(z).all():
                    batch.append(z)
        elif len(self.episode):
            batch = [z for z in self.episode.rows if np.isfinite(z).all()]
            self._learn_seen(win, self.episode)
        elif self.last_episode and self.last_episode[0] == win.columns:
            batch = [z for z in self.last_episode[1] if np.isfinite(z).all()]
        for z in batch:
            win.add(z)
        self._restart()
        if win.top is not None:
            win.top.u = None  # the window moved by many rows: start from a full decomposition
        win.stats.refresh()
        win._fit = None
        if win.ready:
            win.model()
        return len(batch)

    def _unattended_in(self, rows: Sequence[Row] | None) -> list[int]:
        """The re-baselined episodes (first row indices) that ``rows`` cover; with no rows given,
        the latest one."""
        if not self.unattended:
            return []
        if not rows:
            return [next(reversed(self.unattended))]
        # (an alarm's first row is the episode's confirm-th: the rows before it were not reported)
        lo, hi = min(r.index for r in rows) - (self.opts.confirm - 1), max(r.index for r in rows)
        return [s for s in self.unattended if lo <= s <= hi]

    def reject(self, rows: Sequence[Row] | None = None) -> int:
        """The operator's *malicious* verdict on the alarm holding ``rows`` (default: the latest
        re-baselined episode). An episode never learnt needs nothing: its rows never joined M. One
        the unattended policy learnt is undone: M returns to the window as it was before that
        episode (what was learnt since goes with it), and no re-baselining happens until a row is
        normal again, so the same attack is not learnt anew. Returns how many rows left M."""
        self._unlearn_seen(rows)
        learnt = self._unattended_in(rows)
        if not learnt or self.win is None:
            return 0
        first = min(learnt)
        old = self.unattended[first]
        starts = list(self.unattended)
        for s in starts[starts.index(first) :]:
            del self.unattended[s]
        removed = self.win.stats.n
        if old.columns == self.win.columns:
            self.win = old
            old._fit = None
            if old.top is not None:
                old.top.u = None
        else:  # the column set changed since: start again over the current columns
            self.win, self.pending = _Window(self.win.columns, self.opts), None
        self._restart()
        self.hold = True
        return removed

    def _unlearn_seen(self, rows: Sequence[Row] | None) -> None:
        """A malicious verdict: the quiet columns' seen ranges return to what they were before
        the episode (and what was learnt since goes with it)."""
        if not self.seen_before:
            return
        if rows:
            lo, hi = min(r.index for r in rows) - (self.opts.confirm - 1), max(r.index for r in rows)
            starts = [s for s in self.seen_before if lo <= s <= hi]
        else:
            starts = [next(reversed(self.seen_before))]
        if not starts:
            return
        order = list(self.seen_before)
        columns, lo_seen, hi_seen = self.seen_before[min(starts)]
        for s in order[order.index(min(starts)) :]:
            del self.seen_before[s]
        for win in (self.win, *self.unattended.values()):
            if win is not None:
                win.set_seen(columns, lo_seen, hi_seen)

    def model(self) -> pm.PcaFit | None:
        """The current PCA model over the active columns, or None while warming up (or when
        every column is quiet)."""
        if self.win is None or not self.win.ready:
            return None
        return self.win.model().fit

    def deltas_from_mu(self, mu: float) -> dict[SeriesKey, float]:
        """Tracking error Δ per active column (own units) for a deviation μ on detection
        accuracy; quiet columns are not in the PCA and keep their Δ."""
        if self.win is None or not self.win.ready:
            raise ValueError(f"{NAME} scope {self.scope!r}: no model yet (warming up), Δ cannot be derived")
        model = self.win.model()
        if model.fit is None:
            raise ValueError(f"{NAME} scope {self.scope!r}: every column is quiet (no PCA), Δ cannot be derived")
        sol = pm.solve_delta(model.fit, mu)
        return {self.win.columns[j]: float(v) for j, v in zip(model.active, sol.deltas)}

    def status(self) -> dict[str, Any]:
        win = self.win
        out: dict[str, Any] = {
            "detector": NAME,
            "scope": self.scope,
            "rows_seen": self.rows_seen,
            "ready": bool(win and win.ready),
            "columns": list(win.names) if win else [],
            "window_rows": win.stats.n if win else 0,
            "rows_needed": win.need if win else None,
            "spe": self.last_spe,
            "rows_in_A": len(self.episode),
            "run_length": self.episode.run_length,
            "anomalies": self.anomalies,
            "column_changes": self.column_changes,
            "rebaselines": self.rebaselines,
            "unattended_episodes": list(self.unattended),
            "pending_columns": [c.column for c in self.pending.columns] if self.pending else None,
            "pending_rows": self.pending.stats.n if self.pending else None,
        }
        if self.opts.smooth > 0:
            out["smoothed_ratio"] = math.expm1(self.level)
        if self.state_path is not None:
            out["state"] = {
                "file": str(self.state_path),
                "restored": self.restored,
                "save_failures": self.save_failures,
            }
        if win is None or not win.ready:
            return out
        m = win.model()
        # columns kept out of the PCA: their window std is below their noise level
        out["quiet_columns"] = [win.names[j] for j in m.quiet.index.tolist()]
        fit = m.fit
        if fit is None:
            out.update(method="none", k=0, d=0, q_alpha=None, model_q_alpha=None)
            return out
        last_q = self.last_q if self.last_q is not None else fit.q_alpha
        last_t = self.last_threshold if self.last_threshold is not None else m.threshold
        out.update(
            # spe and q_alpha are a pair: the last scored row and the threshold it was judged
            # by; model_q_alpha is the current model's (it moves when a normal row joins M)
            q_alpha=last_q if math.isfinite(last_q) else None,
            model_q_alpha=fit.q_alpha if math.isfinite(fit.q_alpha) else None,
            # the threshold SPE is compared with (= q_alpha unless the option threshold says
            # quantile or pot), for the last scored row and for the current model
            threshold=last_t if math.isfinite(last_t) else None,
            model_threshold=m.threshold if math.isfinite(m.threshold) else None,
            threshold_rule=m.rule,
            method=fit.method,
            k=fit.k,
            d=fit.d,
            h0=None if math.isnan(fit.h0) else fit.h0,
            theta=list(fit.theta),
            solver=fit.solver,
            exact_refreshes=win.stats.refreshes,
        )
        return out


class PcaSpeFactory:
    name = NAME
    description = (
        "ATOM's PCA monitoring: SPE against the Jackson–Mudholkar Q_α (Box's χ² where h₀ ≤ 0), 3-step identification"
    )

    def create(self, scope: str, options: Mapping[str, Any] | None = None) -> PcaSpeDetector:
        detector = PcaSpeDetector(scope, options)
        kernels.warm_up_in_background()  # compiled long before the window holds min_rows rows
        return detector

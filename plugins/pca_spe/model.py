"""The mathematics of ATOM's monitoring component (Du & Li, section IV), without any plugin glue.

What lives here:

* :class:`WindowStats` — the sliding window M of the last ``t`` normal rows of one scope, with its
  column means and co-moment matrix maintained by rank-one add/remove per row (Welford's
  updates), and an exact recomputation from the stored rows on demand (to bound float drift);
* :func:`fit` — the PCA model of a window: columns standardised with the window's mean and std
  (a floor keeps constant columns finite), eigendecomposition of cov(Y), k by cumulative percent
  variance, residual eigenvalue sums θ₁..θ₃ and the threshold Q_α (Jackson–Mudholkar, or Box's
  scaled χ² where h₀ ≤ 0); :func:`fit_window` is the same from the raw rows (the batch reference);
* :class:`QuietColumns` — the columns that held still over the window (std below their noise
  level, e.g. the tracking error Δ): kept out of the PCA and watched on their own against the
  window's range widened by twice the noise level; :class:`RunningQuietExcess`, how far each
  left its band over the abnormal rows A, kept as rows join and leave A;
* :class:`TopEigen` — the top eigenpairs the sliding window needs per tick, from last tick's by
  one C⁴ filter step and Rayleigh–Ritz; every answer carries a-posteriori bounds (subspace angle,
  k, θ, and in :func:`fit` Q_α) and a full ``eigh`` replaces it wherever they fail (the step's
  arithmetic is in :mod:`atomwatch.plugins.pca_spe.kernels`, compiled by numba when it is installed);
* :func:`identify` — the three identification steps (rd_j, stddev_j, meandiff_j) over A, and
  :class:`RunningIdentification`, the same from A's sums kept as rows join and leave it (a row
  costs the same whatever the episode's length);
* :func:`deltas_from_mu` — each column's tracking error Δ_i from the user's deviation μ on
  detection accuracy (derivation in ``docs/delta-from-mu.md``).

What does not: rows, scopes, column-set changes, the abnormal matrix A and the plugin hooks
(``plugins/pca_spe.py``).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import special

from . import kernels

Method = Literal["jackson-mudholkar", "box", "degenerate"]

#: Residual variance below this fraction of the total variance counts as "no residual subspace".
RESIDUAL_EPS = 1e-12


# --------------------------------------------------------------------------- window statistics


class WindowStats:
    """The window M: a ring buffer of at most ``capacity`` rows of ``d`` columns, with the column
    means and the co-moment matrix Σ (x − mean)(x − mean)ᵀ kept up to date per row in O(d²).

    ``add`` appends a row (the oldest leaves when the window is full); ``refresh`` recomputes the
    statistics exactly from the stored rows. Rows must be finite: the caller filters NaN.

    The rows are stored as float32 (half the memory: 230 kB instead of 460 kB for 720 rows of 80
    columns, the bulk of a scope's state) and each row is rounded to float32 *before* it enters the
    statistics, so the row a full window takes out is exactly the one it put in; the statistics
    stay float64. The rounding (a relative 6·10⁻⁸) is far below any Δ the values already carry.
    """

    def __init__(self, d: int, capacity: int) -> None:
        if d < 1 or capacity < 2:
            raise ValueError(f"window needs d ≥ 1 and capacity ≥ 2, got d={d}, capacity={capacity}")
        self.d = d
        self.capacity = capacity
        self.buf = np.empty((capacity, d), dtype=np.float32)
        self.start = 0  # index of the oldest row in buf
        self.n = 0
        self.mean = np.zeros(d)
        self.comoment = np.zeros((d, d))
        self.updates = 0  # rank-one updates since the last exact refresh
        self.refreshes = 0

    def rows(self) -> np.ndarray:
        """The window's rows, oldest first (a float64 copy)."""
        idx = (self.start + np.arange(self.n)) % self.capacity
        return self.buf[idx].astype(np.float64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).astype(np.float64)  # the value stored, exactly
        if self.n == self.capacity:  # the oldest row leaves, in one rank-two update (n stays the same)
            kernels.current().window_replace(self.comoment, self.mean, self.buf, self.start, x, self.n)
            self.updates += 2
            self.start = (self.start + 1) % self.capacity
        else:
            self.buf[(self.start + self.n) % self.capacity] = x
            self._add(x)

    def _add(self, x: np.ndarray) -> None:
        self.n += 1
        dx = x - self.mean
        self.mean += dx / self.n
        # Σ += (n−1)/n · dx dxᵀ  (symmetric form of dx (x − mean_new)ᵀ)
        kernels.rank_one(self.comoment, (self.n - 1) / self.n, dx)
        self.updates += 1

    def refresh(self) -> None:
        """Recompute mean and co-moment exactly from the stored rows."""
        rows = self.rows()
        self.mean = rows.mean(axis=0) if self.n else np.zeros(self.d)
        c = rows - self.mean
        self.comoment = c.T @ c
        self.updates = 0
        self.refreshes += 1

    def cov(self) -> np.ndarray:
        """Sample covariance (ddof = 1) of the window."""
        return self.comoment / max(self.n - 1, 1)

    def restricted(self, keep: np.ndarray, capacity: int | None = None) -> WindowStats:
        """A new window over the columns ``keep`` (indices) holding the same rows, exact."""
        return WindowStats.of_rows(self.rows()[:, keep], capacity or self.capacity)

    @classmethod
    def of_rows(cls, rows: np.ndarray, capacity: int) -> WindowStats:
        """A window holding the last ``capacity`` of ``rows`` (oldest first), its statistics exact."""
        out = cls(rows.shape[1], capacity)
        rows = rows[-capacity:]
        out.buf[: len(rows)] = rows
        out.n = len(rows)
        out.refresh()
        out.refreshes = 0
        return out


# --------------------------------------------------------------------------- quiet columns


@dataclass
class QuietColumns:
    """Columns that held still over the window: their std is below their noise level ``noise``
    (the tracking error Δ where the agent announced one, else the constant-column floor).

    Such a column carries no correlation the PCA could use, and standardising it by its own
    (tiny) std would turn a move within tracking noise into an SPE of 10⁵–10⁶. Its truth, though,
    is known within bounds: the controller's copy is within Δ of the truth, so while the copies
    stayed in [lo, hi] the truth stayed in [lo − Δ, hi + Δ], and a copy of a truth still in that
    range lies in [lo − 2Δ, hi + 2Δ]. A copy outside that band proves the truth left the range
    it kept over the whole window: that is the column's anomaly, and only that.
    """

    index: np.ndarray  # window column indices
    lo: np.ndarray  # the window's min and max of each quiet column
    hi: np.ndarray
    noise: np.ndarray
    watched: bool = True  # False: kept out of the PCA but not judged (no breach, no excess)

    @property
    def band(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo - 2.0 * self.noise, self.hi + 2.0 * self.noise

    def breaches(self, z: np.ndarray) -> np.ndarray:
        """Boolean per quiet column: the row's value (full window width) is outside the band
        (NaN is never a breach)."""
        v = z[self.index]
        if not self.watched:
            return np.zeros(len(self.index), dtype=bool)
        low, high = self.band
        with np.errstate(invalid="ignore"):
            return (v < low) | (v > high)

    def excess(self, z: np.ndarray) -> np.ndarray:
        """How far outside the band each quiet column's value is, in units of its noise level
        (signed: negative below the band; 0 inside)."""
        v = z[self.index]
        if not self.watched:
            return np.zeros(len(self.index))
        low, high = self.band
        with np.errstate(invalid="ignore"):
            out = np.where(v > high, (v - high) / self.noise, np.where(v < low, (v - low) / self.noise, 0.0))
        return np.nan_to_num(out)

    def ranking_excess(self, z: np.ndarray, rel_std: float) -> float:
        """The largest |:meth:`excess`| of the row with each column's noise level taken at least
        ``rel_std`` × |the row's own value|: the window's level sets the noise level in
        :meth:`excess`, and the value the column jumped to is as much a measure of its scale, so
        that a jump 0 → 1 and 1 → 0 rank alike (the detector's ``last_score``; 0 without a breach)."""
        v = z[self.index]
        if not self.watched or not len(v):
            return 0.0
        noise = np.fmax(self.noise, rel_std * np.abs(np.nan_to_num(v)))
        return float(np.abs(self.excess(z) * self.noise / noise).max())


class RunningQuietExcess:
    """Per quiet column, the row of A where it was furthest out of its band: the largest
    |:meth:`QuietColumns.excess`| over the rows A holds (the earliest on ties), kept as rows
    join A (``add``, with a sequence number) and leave it oldest first (``remove``).

    Each column keeps a queue of (sequence number, excess) whose |excess| does not increase
    from front to back: a new value drops the smaller ones behind it (they can never be the
    largest again while it is in A), the front is the largest, and it leaves with its row. Only
    out-of-band values enter, so a row costs O(1) per quiet column it breaches, amortised,
    whatever A's length.
    """

    def __init__(self, quiet: QuietColumns) -> None:
        self.quiet = quiet
        self._queues: dict[int, deque[tuple[int, float]]] = {}  # quiet column position → queue
        self.last = np.zeros(len(quiet.index))  # the excess of the row added last

    def add(self, seq: int, z: np.ndarray) -> np.ndarray:
        """Fold in row ``seq`` of A (full window width); returns its excess per quiet column."""
        e = self.quiet.excess(z)
        for i in np.flatnonzero(e).tolist():
            v = float(e[i])
            q = self._queues.get(i)
            if q is None:
                q = self._queues[i] = deque()
            while q and abs(q[-1][1]) < abs(v):
                q.pop()
            q.append((seq, v))
        self.last = e
        return e

    def remove(self, seq: int) -> None:
        """Row ``seq`` (the oldest added and not removed) leaves A."""
        for i in [i for i, q in self._queues.items() if q[0][0] == seq]:
            q = self._queues[i]
            q.popleft()
            if not q:
                del self._queues[i]

    def worst(self) -> list[tuple[int, float]]:
        """(quiet column position, its signed excess furthest out) for every quiet column out
        of its band in some row of A, by position."""
        return [(i, self._queues[i][0][1]) for i in sorted(self._queues)]


def split_quiet(std: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(active, quiet) column indices: quiet where the window's std is below the noise level."""
    quiet = std < noise
    return np.flatnonzero(~quiet), np.flatnonzero(quiet)


# --------------------------------------------------------------------------- threshold


@functools.lru_cache(maxsize=64)
def _normal_quantile(p: float) -> float:
    return float(special.ndtri(p))


def q_alpha(
    theta: tuple[float, float, float], alpha: float, method: Method | None = None
) -> tuple[float, Method, float]:
    """Q_α for residual eigenvalue power sums θ = (θ₁, θ₂, θ₃): (threshold, method, h₀).

    Jackson & Mudholkar (1979) as the paper writes it; where h₀ ≤ 0, or the bracket is not
    positive, or the result is not finite, Box's scaled χ²: Q = g·χ²_h(1 − α), g = θ₂/θ₁,
    h = θ₁²/θ₂. With no residual variance the threshold is +∞ (``degenerate``: nothing can be
    judged off the model). ``method="box"`` forces Box's approximation.
    """
    t1, t2, t3 = theta
    if not (t1 > 0 and t2 > 0):
        return math.inf, "degenerate", math.nan
    q, h0 = kernels.current().jackson_mudholkar(t1, t2, t3, _normal_quantile(1.0 - alpha))
    if method != "box" and q == q:
        return q, "jackson-mudholkar", h0
    g, h = t2 / t1, t1 * t1 / t2
    return g * float(special.chdtri(h, alpha)), "box", h0


def normal_score(q: float, theta: tuple[float, float, float], method: Method) -> float:
    """The standard-normal score c of an SPE value q under the approximation ``method`` for the
    residual spectrum θ: the inverse of :func:`q_alpha` in the sense c(Q_α) = c_α."""
    t1, t2, t3 = theta
    if method == "jackson-mudholkar":
        h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2)
        return t1 * ((q / t1) ** h0 - 1.0 - t2 * h0 * (h0 - 1.0) / (t1 * t1)) / math.sqrt(2.0 * t2 * h0 * h0)
    if method == "box":
        g, h = t2 / t1, t1 * t1 / t2
        # the normal quantile of the χ² tail probability, computed from the survival function
        # so that tails far beyond 1 − 1e-16 stay resolved
        return float(-special.ndtri(special.chdtrc(h, q / g)))
    return math.nan


# --------------------------------------------------------------------------- tail thresholds


@dataclass(frozen=True)
class TailFit:
    """A generalised Pareto tail fitted above ``u``: P(X > u + y | X > u) = (1 + ξy/σ)^(−1/ξ)
    (e^(−y/σ) at ξ = 0), with ``n_u`` of ``n`` values above ``u``."""

    u: float
    xi: float
    sigma: float
    n_u: int
    n: int

    def quantile(self, alpha: float) -> float:
        """The value exceeded with probability ``alpha`` (α < n_u/n: beyond ``u``)."""
        r = alpha * self.n / self.n_u
        if self.xi == 0.0:
            return self.u - self.sigma * math.log(r)
        return self.u + self.sigma / self.xi * (r ** (-self.xi) - 1.0)


def gpd_pwm(excess: np.ndarray) -> tuple[float, float]:
    """(ξ, σ) of a generalised Pareto law from excesses over a threshold (all ≥ 0), by
    probability-weighted moments (Hosking & Wallis, 1987): a₀ = mean, a₁ = the unbiased
    estimate of E[Y(1 − F(Y))] from the sorted sample, ξ = 2 − a₀/(a₀ − 2a₁), σ = 2a₀a₁/(a₀ − 2a₁).
    Closed form, valid for ξ < 1 (a finite mean). Raises ValueError on fewer than 2 values or
    no spread (a₀ ≤ 2a₁)."""
    y = np.sort(np.asarray(excess, dtype=np.float64))
    n = len(y)
    if n < 2:
        raise ValueError(f"a tail fit needs at least 2 excesses, got {n}")
    a0 = float(y.mean())
    a1 = float(((n - 1 - np.arange(n)) / (n - 1)) @ y) / n
    den = a0 - 2.0 * a1
    if not (den > 0 and a0 > 0):
        raise ValueError(f"excesses without spread (a0={a0:g}, a1={a1:g})")
    return 2.0 - a0 / den, 2.0 * a0 * a1 / den


#: fewest excesses a tail is fitted on (fewer: the threshold falls back to Q_α)
MIN_EXCESSES = 10


def pot_fit(values: np.ndarray, level: float) -> TailFit | None:
    """Peaks over threshold: a :class:`TailFit` to the excesses of ``values`` over their
    ``level`` quantile, or None where fewer than :data:`MIN_EXCESSES` values exceed it or the
    excesses have no spread."""
    v = np.asarray(values, dtype=np.float64)
    u = float(np.quantile(v, level))
    exc = v[v > u] - u
    if len(exc) < MIN_EXCESSES:
        return None
    try:
        xi, sigma = gpd_pwm(exc)
    except ValueError:
        return None
    return TailFit(u, xi, sigma, len(exc), len(v))


def tail_threshold(values: np.ndarray, alpha: float, rule: str, level: float = 0.9) -> float | None:
    """The SPE threshold a rule reads off a window's own SPE values: ``quantile``, their
    empirical (1 − α) quantile; ``pot``, the α quantile of a generalised Pareto tail fitted over
    their ``level`` quantile (:func:`pot_fit`), never below that quantile's u. None where the
    values cannot give one (too few in the tail)."""
    v = np.asarray(values, dtype=np.float64)
    if rule == "quantile":
        return float(np.quantile(v, 1.0 - alpha)) if len(v) else None
    if rule != "pot":
        raise ValueError(f"unknown tail threshold rule {rule!r} (quantile or pot)")
    if alpha >= 1.0 - level:  # inside the body: the sample answers by itself
        return float(np.quantile(v, 1.0 - alpha))
    tail = pot_fit(v, level)
    if tail is None:
        return None
    return max(tail.quantile(alpha), tail.u)


def thetas(resid: np.ndarray) -> tuple[float, float, float]:
    r = np.clip(np.asarray(resid, dtype=np.float64), 0.0, None)
    return float(r.sum()), float((r * r).sum()), float((r * r * r).sum())


# --------------------------------------------------------------------------- the model


@dataclass
class PcaFit:
    """The PCA model of one window (what ``SPE`` and ``Q_α`` are computed from).

    ``corr`` is cov(Y) (the covariance of the standardised window), ``p1`` its top-k eigenvectors
    (d × k), ``lam1`` their eigenvalues; ``theta`` the power sums of the residual eigenvalues.
    ``lam`` holds every eigenvalue (descending) when a full decomposition was made, else None.
    """

    n: int
    mean: np.ndarray
    std: np.ndarray  # the std used to standardise (floored)
    raw_std: np.ndarray  # the window's own std (ddof = 1)
    corr: np.ndarray
    k: int
    p1: np.ndarray
    lam1: np.ndarray
    total: float
    theta: tuple[float, float, float]
    q_alpha: float
    method: Method
    h0: float
    alpha: float
    lam: np.ndarray | None = None
    solver: str = "eigh"
    _resid_diag: np.ndarray | None = field(default=None, repr=False)

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    def standardise(self, z: np.ndarray) -> np.ndarray:
        return (z - self.mean) / self.std

    def residual(self, x: np.ndarray) -> np.ndarray:
        """x̃ = (I − P₁P₁ᵀ)x for a standardised row (or rows, one per line)."""
        return x - (x @ self.p1) @ self.p1.T

    def fill_missing(self, x: np.ndarray) -> np.ndarray:
        """A standardised row with its NaN cells set to the values that fit the model best
        (least SPE given the known cells): a stale cell can neither raise nor hide an alarm."""
        miss = ~np.isfinite(x)
        if not miss.any():
            return x
        x0 = np.where(miss, 0.0, x)
        if self.k == 0 or miss.all():
            return x0
        pm_ = self.p1[miss]
        q_mm = np.eye(int(miss.sum())) - pm_ @ pm_.T
        rhs = pm_ @ (self.p1.T @ x0)
        x0[miss] = np.linalg.lstsq(q_mm, rhs, rcond=None)[0]
        return x0

    def spe(self, x: np.ndarray) -> float:
        if self.k == 0:
            return float(x @ x)
        return kernels.current().spe(np.ascontiguousarray(x, dtype=np.float64), self.p1)

    def resid_diag(self) -> np.ndarray:
        """diag(P₂Λ₂P₂ᵀ): each column's variance in the residual subspace."""
        if self._resid_diag is None:
            v = np.diag(self.corr) - (self.p1 * self.p1) @ self.lam1
            self._resid_diag = np.clip(v, 0.0, None)
        return self._resid_diag


def std_floor(mean: np.ndarray, min_std: float, rel_std: float) -> np.ndarray:
    """The smallest std a column is standardised with: max(min_std, rel_std·|mean|)."""
    return np.maximum(min_std, rel_std * np.abs(mean))


def choose_k(lam_desc: np.ndarray, total: float, cpv: float) -> int:
    """Smallest ℓ with CPV(ℓ) = Σ_{i≤ℓ} λ_i / Σλ > cpv (at most len(lam))."""
    if total <= 0:
        return 0
    cum = np.cumsum(lam_desc) / total
    return int(min(np.searchsorted(cum, cpv, side="right") + 1, len(lam_desc)))


def standardised_cov(
    mean: np.ndarray, cov: np.ndarray, min_std: float, rel_std: float, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cov(Y), std used, raw std) for a window with this mean and covariance cov·scale (the std
    floored by :func:`std_floor`)."""
    return kernels.current().standardised(cov, float(scale), mean, float(min_std), float(rel_std))


def fit(
    n: int,
    mean: np.ndarray,
    cov: np.ndarray,
    *,
    cpv: float = 0.90,
    alpha: float = 0.002,
    min_std: float = 1e-6,
    rel_std: float = 1e-3,
    top: TopEigen | None = None,
    cov_scale: float = 1.0,
) -> PcaFit:
    """The PCA model of a window given its size, column means and sample covariance
    ``cov``·``cov_scale`` (a window's co-moment and 1/(n − 1) save a pass over it).

    With ``top`` (a :class:`TopEigen` carried from the previous tick) the top eigenpairs come
    from its warm-started solver when its bounds certify them and Q_α moves by at most
    ``top.q_tol`` over its θ error bounds; otherwise from a full ``numpy.linalg.eigh``.
    """
    corr = None
    if top is not None and top.ready(cov.shape[0]):
        try:
            corr, std, raw, total, verdict, u, w, status, q, h0 = kernels.current().fit_step(
                cov,
                float(cov_scale),
                mean,
                float(min_std),
                float(rel_std),
                top.u,
                cpv,
                top.tol,
                top.theta_tol,
                top.iters,
                _normal_quantile(1.0 - alpha),
                top.q_tol,
                RESIDUAL_EPS,
            )
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError):  # not finite: the full eigh decides
            verdict, status = (0,), 0
        if status == -2:
            top.fallbacks += 1
        elif verdict[0] == 0:
            top.miss()
        else:
            k, p1, lam1, theta = top.take(verdict, u, w)
            thr = (q, "jackson-mudholkar", h0) if status == 1 else None
            if status == -1:  # Box's approximation or no residual: decided here
                thr = _verified_threshold(theta, top.theta_err, total, alpha, top.q_tol)
            if thr is not None:
                q, method, h0 = thr
                return PcaFit(
                    n, mean.copy(), std, raw, corr, k, p1, lam1, total, theta, q, method, h0, alpha, None, "subspace"
                )
            top.fallbacks += 1
    if corr is None:
        corr, std, raw = standardised_cov(mean, cov, min_std, rel_std, cov_scale)
        total = float(corr.trace())
    w, v = np.linalg.eigh(corr)
    lam = np.clip(w[::-1], 0.0, None)
    vec = np.ascontiguousarray(v[:, ::-1])
    k = choose_k(lam, total, cpv)
    theta = thetas(lam[k:])
    q, method, h0 = _threshold(theta, total, alpha)
    if top is not None:
        top.seed(vec, lam, k)
    return PcaFit(
        n,
        mean.copy(),
        std,
        raw,
        corr,
        k,
        vec[:, :k].copy(),
        lam[:k].copy(),
        total,
        theta,
        q,
        method,
        h0,
        alpha,
        lam,
        "eigh",
    )


def _verified_threshold(
    theta: tuple[float, float, float], err: tuple[float, float, float], total: float, alpha: float, tol: float
) -> tuple[float, Method, float] | None:
    """Q_α for θ known within ±err, or None unless every θ in that box gives the same method
    and a Q_α within ``tol`` (relative) of this one.

    To first order (the errors are ≤ 10⁻¹⁰ of θ) the spread is Σ_j |Q(θ + err_j e_j) − Q(θ)|:
    three extra evaluations instead of an analytic derivative of both formulas. A possible sign
    change of h₀ (the switch between the two) is refused outright. The Jackson–Mudholkar case
    is :func:`atomwatch.plugins.pca_spe.kernels.verified_jackson_mudholkar` (which a warm :func:`fit` runs
    inside its one compiled call); Box's and the degenerate case are decided here.
    """
    t1, t2, t3 = theta
    status, q, h0 = kernels.current().verified_jackson_mudholkar(
        t1, t2, t3, err[0], err[1], err[2], total, _normal_quantile(1.0 - alpha), tol, RESIDUAL_EPS * max(total, 1.0)
    )
    if status >= 0:
        return (q, "jackson-mudholkar", h0) if status == 1 else None
    q, method, h0 = _threshold(theta, total, alpha)
    if method == "degenerate":
        return (q, method, h0) if t1 + err[0] <= RESIDUAL_EPS * max(total, 1.0) else None
    if not (math.isfinite(q) and q > 0 and t1 - err[0] > RESIDUAL_EPS * max(total, 1.0)):
        return None
    if not kernels.current().h0_keeps_its_sign(h0, t1, t2, t3, *err):  # (the switch back to Jackson–Mudholkar)
        return None
    # (θ₁ stays above the degenerate floor over the box, so q_alpha itself decides the method)
    q1, m1, _ = q_alpha((t1 + err[0], t2, t3), alpha)
    q2, m2, _ = q_alpha((t1, t2 + err[1], t3), alpha)
    q3, m3, _ = q_alpha((t1, t2, t3 + err[2]), alpha)
    if not (m1 == m2 == m3 == method):
        return None
    return (q, method, h0) if abs(q1 - q) + abs(q2 - q) + abs(q3 - q) <= tol * q else None


def _threshold(theta: tuple[float, float, float], total: float, alpha: float) -> tuple[float, Method, float]:
    if theta[0] <= RESIDUAL_EPS * max(total, 1.0):
        return math.inf, "degenerate", math.nan
    return q_alpha(theta, alpha)


def fit_window(rows: np.ndarray, **kw) -> PcaFit:
    """The batch reference: the model refitted from the raw window rows (t × d)."""
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(axis=0)
    c = rows - mean
    cov = (c.T @ c) / max(rows.shape[0] - 1, 1)
    kw.pop("top", None)
    return fit(rows.shape[0], mean, cov, **kw)


# --------------------------------------------------------------------------- warm-started top-k


class TopEigen:
    """Top eigenpairs of a slowly changing symmetric PSD matrix C (the window's cov(Y)),
    warm-started from the last tick, every accepted result verified a posteriori.

    One step (``solve``, or fused into :func:`fit`): the p carried vectors U are filtered by C⁴
    (two products with C², which the step needs anyway for tr(C³)), orthonormalised to rounding
    (Householder QR; compiled, Cholesky QR of the column-normalised block where QᵀQ = I to
    rounding, else Householder), and Rayleigh–Ritz gives Ritz pairs (w_i, u_i) (the p × p
    eigenproblem by LAPACK, or compiled by Householder tridiagonalisation and implicit QL).
    The block p holds the top k, every eigenvalue above ``gap_ratio``·λ_k and ``extra`` more
    (read from the last full decomposition), so one step shrinks the error in the top-k
    subspace by about (λ_{p+1}/λ_k)⁴ — at the benchmark's d = 80, (0.03/4.8)⁴ ≈ 2·10⁻⁹ against a
    drift of ~10⁻² per row.

    Verification (all a posteriori, from quantities the step computed; C PSD):

    * R = CU_k − U_kΘ_k, ‖R‖ ≤ ‖R‖_F (plus a rounding allowance);
    * λ_{k+1} ≤ λ_max(C₂₂) ≤ min(tr C₂₂, ‖C₂₂‖_F) with C₂₂ the compression of C to U_k⊥
      (Cauchy interlacing), and tr C₂₂ = tr C − Σw_i, ‖C₂₂‖²_F ≤ ‖C‖²_F − Σw_i²;
      so η = w_k − that bound is a lower bound on the gap between Θ_k and the rest of C's spectrum;
    * Davis–Kahan sinΘ theorem: the angle between span(U_k) and the top-k eigenspace is
      ≤ ‖R‖/η, hence |SPE − SPE~| ≤ (‖R‖/η)·‖x‖² for every row x. Accepted only if ≤ ``tol``;
    * quadratic residual bound (Mathias 1998; Li & Li 2005): 0 ≤ λ_i − w_i ≤ ‖R‖²/η = β for
      i ≤ k (the lower side is interlacing), so k is accepted only if the CPV test gives the same k
      for every spectrum within those bounds, and θ gets an error bound;
    * θ₁ = tr C − Σλ_i, θ₂ = ‖C‖²_F − Σλ_i², θ₃ = tr(C³) − Σλ_i³ (i ≤ k). These cancel: the
      rounding of ‖C‖²_F and of tr(C³) = ⟨C², C⟩ is at most (d² + d)·u·‖C‖_F^j (u = 2⁻⁵³), which
      at d = 80 is ~10⁻⁹ of θ₃ (measured error: ~10⁻¹²) but can reach 10⁻⁶ of θ₃ where the
      residual spectrum is tiny (d = 21 in the benchmark: tr(C³)/θ₃ ≈ 8·10⁶). Where the bound
      exceeds ``theta_tol`` of θ, θ₂ and θ₃ come instead from the residual block
      (I − U_kU_kᵀ)C(I − U_kU_kᵀ), which does not cancel (one more d³ product).

    ``fit`` then checks that Q_α moves by at most ``q_tol`` (relative) over the θ error bounds.
    Whatever fails, ``solve`` returns None and the caller makes a full ``eigh`` (which reseeds this
    object); after a miss the solver stays off for a number of fits that doubles with each
    further miss (at most 64), and a full ``eigh`` is forced every ``full_every`` fits anyway.
    A warm start from a different matrix (the active column set changed, the window jumped)
    is safe: it is only a starting point, and the result is verified like any other.
    """

    def __init__(
        self,
        extra: int = 0,
        iters: int = 2,
        tol: float = 1e-10,
        full_every: int = 100,
        gap_ratio: float = 0.02,
        q_tol: float = 1e-8,
        theta_tol: float = 1e-8,
        max_block: int = 16,
    ) -> None:
        if not (0 < tol < 1 and 0 < q_tol < 1 and 0 < theta_tol < 1):
            raise ValueError(
                f"TopEigen tolerances must be in (0, 1), got tol={tol}, q_tol={q_tol}, theta_tol={theta_tol}"
            )
        if iters < 1 or full_every < 1 or extra < 0 or max_block < 1:
            raise ValueError(
                f"TopEigen needs iters ≥ 1, full_every ≥ 1, extra ≥ 0, max_block ≥ 1, got {iters}, {full_every}, {extra}, {max_block}"
            )
        self.extra = extra
        self.iters = iters
        self.tol = tol
        self.full_every = full_every
        self.gap_ratio = gap_ratio
        self.q_tol = q_tol
        self.theta_tol = theta_tol
        self.max_block = max_block
        self.u: np.ndarray | None = None
        self.since_full = 0
        self.off = 0  # fits to skip after a miss
        self.misses = 0
        self.hits = 0
        self.fallbacks = 0
        # the last accepted result's bounds: sinΘ ≥ angle to the true top-k subspace, and the
        # absolute error bounds of θ₁, θ₂, θ₃
        self.sin_theta = math.nan
        self.theta_err: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    def seed(self, vec_desc: np.ndarray, lam_desc: np.ndarray, k: int) -> None:
        """Start from a full decomposition (eigenvectors and eigenvalues, descending)."""
        d = vec_desc.shape[1]
        if k == 0 or k >= d:
            self.u = None
            return
        above = int(np.searchsorted(-lam_desc, -self.gap_ratio * lam_desc[k - 1], side="right"))
        p = min(d - 1, max(k + 1, above) + self.extra, k + self.max_block)
        self.u = np.ascontiguousarray(vec_desc[:, :p])
        self.since_full = 0

    def miss(self) -> None:
        """A step was refused: the solver stays off for a number of fits that doubles per miss."""
        self.misses += 1
        self.off = min(64, 2 ** min(self.misses, 6))
        self.fallbacks += 1

    def ready(self, d: int) -> bool:
        """Whether this fit (of a d × d matrix) may try a step; counts the fit either way."""
        u = self.u
        self.since_full += 1
        if self.off > 0:
            self.off -= 1
            self.fallbacks += 1
            return False
        if u is None or u.shape[0] != d or u.shape[1] >= d or self.since_full >= self.full_every:
            self.fallbacks += 1
            return False
        return True

    def take(
        self, verdict: tuple[int, float, float, float, float, float, float, float], u: np.ndarray, w: np.ndarray
    ) -> tuple[int, np.ndarray, np.ndarray, tuple[float, float, float]]:
        """Carry an accepted step's Ritz vectors and bounds: (k, P₁, λ₁..λ_k, θ)."""
        k, t1, t2, t3, e1, e2, e3, sin_theta = verdict
        self.u = u
        self.misses = 0
        self.hits += 1
        self.sin_theta = sin_theta
        self.theta_err = (e1, e2, e3)
        return k, np.ascontiguousarray(u[:, :k]), w[:k].copy(), (t1, t2, t3)

    def solve(
        self, c: np.ndarray, total: float, cpv: float
    ) -> tuple[int, np.ndarray, np.ndarray, tuple[float, float, float]] | None:
        """(k, P₁, λ₁..λ_k, θ) or None when the caller must do a full decomposition
        (:func:`fit` makes the same step fused with the standardisation and the threshold)."""
        if not self.ready(c.shape[0]):
            return None
        if not total > 0 or c.dtype != np.float64:
            self.fallbacks += 1
            return None
        try:
            verdict, u, w = kernels.current().subspace_step(c, self.u, total, cpv, self.tol, self.theta_tol, self.iters)
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError):
            verdict = (0,)  # a non-finite or singular step: the full eigh decides
        if verdict[0] > 0:
            return self.take(verdict, u, w)
        self.miss()
        return None


# --------------------------------------------------------------------------- identification


@dataclass
class ColumnFinding:
    """The identification numbers of one column of the scope."""

    index: int
    rd: float
    stddev: float | None
    meandiff: float | None
    direction: str
    abnormal: bool


def identify(model: PcaFit, a_raw: np.ndarray, b1: float = 2.0, b2: float = 3.0) -> list[ColumnFinding]:
    """ATOM's three steps over the abnormal rows A (m × d, raw units; NaN = unknown cell).

    1. rd_j = (a_j − y_j)/y_j with a_j = ‖(B P₂P₂ᵀ)_j‖²/m (B = A standardised with M's mean and
       std, NaN cells taken at the mean) and y_j = ‖(Y P₂P₂ᵀ)_j‖²/t = (t−1)/t · diag(P₂Λ₂P₂ᵀ)_j.
    2. for rd_j ≥ b₁: stddev_j = mean_i |a_ij − avg_j| / std_j; abnormal when ≥ b₂.
    3. meandiff_j = (mean_i a_ij − avg_j)/avg_j (None when avg_j = 0); direction from the sign
       of mean_i a_ij − avg_j.

    Returns the findings of every column that passed step 1, abnormal ones first by stddev.
    This is the batch form (one pass over A); :class:`RunningIdentification` keeps the same
    sums as rows join and leave A.
    """
    a_raw = np.atleast_2d(np.asarray(a_raw, dtype=np.float64))
    b = model.standardise(a_raw)
    b = np.array([model.fill_missing(r) for r in b]) if not np.isfinite(b).all() else b
    br = model.residual(b)
    finite = np.isfinite(a_raw)
    safe = np.where(finite, a_raw, 0.0)
    return _findings(
        model,
        (br * br).mean(axis=0),
        finite.sum(axis=0),
        safe.sum(axis=0),
        (np.abs(safe - model.mean) * finite).sum(axis=0),
        b1,
        b2,
    )


def _findings(
    model: PcaFit,
    a: np.ndarray,
    known: np.ndarray,
    colsum: np.ndarray,
    devsum: np.ndarray,
    b1: float,
    b2: float,
    normal_kept: int | None = None,
) -> list[ColumnFinding]:
    """The three steps from A's sums per column: a_j (mean squared residual), the count of
    known cells, their sum, and the sum of their distances |a_ij − avg_j|. Worked out over
    every column at once (an abnormal row of a wide scope passes dozens of columns through
    step 1); ``normal_kept``: at most that many of the columns not found abnormal are returned
    (after every abnormal one)."""
    y = (model.n - 1) / model.n * model.resid_diag()
    tiny = 1e-12
    rd = (a - y) / np.maximum(y, tiny)
    idx = np.flatnonzero(rd >= b1)
    if not len(idx):
        return []
    with np.errstate(invalid="ignore", divide="ignore"):  # a column unknown in every row of A: NaN
        colmean = colsum[idx] / known[idx]
        dev = devsum[idx] / known[idx] / model.std[idx]
    mean, rd = model.mean[idx], rd[idx]
    has_dev, has_mean = np.isfinite(dev), np.isfinite(colmean)
    diff = np.where(has_mean, colmean - mean, 0.0)
    has_md = has_mean & (mean != 0)
    md = np.divide(diff, mean, out=np.zeros_like(diff), where=has_md)
    abnormal = has_dev & (dev >= b2)
    # abnormal first, then by stddev (unknown as 0) and rd, both descending; ties by column
    order = np.lexsort((-rd, -np.where(has_dev, dev, 0.0), ~abnormal))
    if normal_kept is not None:
        order = order[: int(abnormal.sum()) + normal_kept]
    return [
        ColumnFinding(
            index=int(idx[i]),
            rd=float(rd[i]),
            stddev=float(dev[i]) if has_dev[i] else None,
            meandiff=float(md[i]) if has_md[i] else None,
            direction="up" if diff[i] >= 0 else "down",
            abnormal=bool(abnormal[i]),
        )
        for i in order.tolist()
    ]


class RunningIdentification:
    """The sums :func:`identify` needs over the abnormal rows A, for one model, kept up to date
    as rows join A (``add``) and leave it (``remove``, the oldest when A is full): per column
    Σ x̃_ij² (the squared residual of the standardised row, stale cells filled as in
    :meth:`PcaFit.fill_missing`), the count of known cells, Σ a_ij and Σ |a_ij − avg_j| over them.

    A row costs O(d·k) to add or remove whatever A's length, where :func:`identify` costs
    O(m·d·k) per call. The float sums are compensated (Neumaier), so that a long episode's
    adds and removes leave them within a few units of rounding of the exact sums over the rows
    A holds now: :meth:`findings` agrees with :func:`identify` over the same rows to ~10⁻¹³
    (relative; the stale-cell and residual arithmetic is the same per row).
    """

    def __init__(self, model: PcaFit) -> None:
        self.model = model
        self.m = 0
        self.known = np.zeros(model.d, dtype=np.int64)
        self._sum = np.zeros((3, model.d))  # Σ x̃², Σ a (known cells), Σ |a − avg| (known cells)
        self._err = np.zeros((3, model.d))  # their compensations (what rounding dropped)

    def _terms(self, a_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fit = self.model
        finite = np.isfinite(a_raw)
        b = fit.standardise(a_raw)
        if not np.isfinite(b).all():
            b = fit.fill_missing(b)
        r = fit.residual(b)
        terms = np.empty((3, fit.d))
        np.multiply(r, r, out=terms[0])
        np.copyto(terms[1], np.where(finite, a_raw, 0.0))
        np.multiply(np.abs(terms[1] - fit.mean), finite, out=terms[2])
        return terms, finite

    def _accumulate(self, terms: np.ndarray) -> None:
        s = self._sum
        t = s + terms
        # Neumaier: the low-order bits of the larger operand that the rounded sum t dropped
        self._err += np.where(np.abs(s) >= np.abs(terms), (s - t) + terms, (terms - t) + s)
        self._sum = t

    def add(self, a_raw: np.ndarray) -> None:
        """Fold in one row of A (raw, the model's columns; NaN = unknown cell)."""
        terms, finite = self._terms(np.asarray(a_raw, dtype=np.float64))
        self._accumulate(terms)
        self.known += finite
        self.m += 1

    def remove(self, a_raw: np.ndarray) -> None:
        """Take out a row added before (the same values: its terms are recomputed)."""
        terms, finite = self._terms(np.asarray(a_raw, dtype=np.float64))
        self._accumulate(-terms)
        self.known -= finite
        self.m -= 1

    def findings(self, b1: float = 2.0, b2: float = 3.0, normal_kept: int | None = None) -> list[ColumnFinding]:
        """:func:`identify` over the rows added and not removed (at least one); ``normal_kept``
        as :func:`_findings` takes it."""
        if self.m < 1:
            raise ValueError("identification needs at least one row of A")
        total = self._sum + self._err
        return _findings(self.model, total[0] / self.m, self.known, total[1], total[2], b1, b2, normal_kept)


# --------------------------------------------------------------------------- Δ from μ


@dataclass
class DeltaSolution:
    """What :func:`solve_delta` found: ε (eigenvalue perturbation), the false-alarm deviation
    μ* it causes, δ (the tracking error in standardised units) and Δ per column."""

    mu: float
    epsilon: float
    mu_star: float
    eta: float
    delta_std: float
    deltas: np.ndarray
    method: Method


def residual_spectrum(model: PcaFit) -> np.ndarray:
    """The residual eigenvalues λ_{k+1..d} (a full ``eigh`` if the fit kept only the top k)."""
    if model.lam is not None:
        return model.lam[model.k :]
    lam = np.clip(np.linalg.eigvalsh(model.corr)[::-1], 0.0, None)
    return lam[model.k :]


def perturbation_signs(n: int, draws: int = 32, seed: int = 0) -> np.ndarray:
    """The sign patterns the residual eigenvalues are moved by: all +1, all −1, and ``draws``
    random ±1 patterns from a fixed seed (the same for every ε, so μ*(ε) is a function)."""
    rng = np.random.default_rng(seed)
    rand = rng.choice((-1.0, 1.0), size=(draws, n))
    return np.vstack([np.ones(n), -np.ones(n), rand])


def mu_star(resid: np.ndarray, epsilon: float, alpha: float, draws: int = 32) -> tuple[float, float]:
    """(μ*, η) for residual eigenvalues perturbed by ±ε: η is the largest change of the normal
    score c at the threshold computed from a perturbed spectrum (over the sign patterns of
    :func:`perturbation_signs`), and μ* = Φ(c_α) − Φ(c_α − η)."""
    resid = np.asarray(resid, dtype=np.float64)
    base = thetas(resid)
    _q0, method, _ = q_alpha(base, alpha)
    if method == "degenerate":
        return math.nan, math.nan
    c_alpha = float(special.ndtri(1.0 - alpha))
    eta = 0.0
    for signs in perturbation_signs(len(resid), draws):
        # the perturbed threshold uses the base model's approximation where it is valid, so
        # that μ*(ε) does not jump where a perturbed spectrum would switch approximation
        q, _m, _ = q_alpha(thetas(np.clip(resid + signs * epsilon, 0.0, None)), alpha, method)
        c = normal_score(q, base, method) if math.isfinite(q) else math.inf
        eta = max(eta, abs(c - c_alpha) if math.isfinite(c) else math.inf)
    if not math.isfinite(eta):
        return float(special.ndtr(c_alpha)), eta
    return float(special.ndtr(c_alpha) - special.ndtr(c_alpha - eta)), eta


def delta_from_epsilon(epsilon: float, lam_mean: float, t: int, d: int) -> float:
    """δ = √3·σ with σ the positive root of ε = 2σ√(λ̄d/t) + σ²√((t+d)/t) (equal σ_i):
    δ = (√(3λ̄d + 3ε√(t² + td)) − √(3λ̄d)) / √(t + d)."""
    a = 3.0 * lam_mean * d
    return (math.sqrt(a + 3.0 * epsilon * math.sqrt(t * t + t * d)) - math.sqrt(a)) / math.sqrt(t + d)


def solve_delta(model: PcaFit, mu: float, *, iterations: int = 80) -> DeltaSolution:
    """Binary-search the largest ε with μ*(ε) ≤ μ (deterministic: the residual eigenvalues are
    moved by ±ε in fixed sign patterns, the worst counts), then δ and Δ_i = δ·std_i."""
    if not (0.0 < mu < 1.0):
        raise ValueError(f"mu must be in (0, 1), got {mu!r}")
    if model.method == "degenerate":
        raise ValueError(
            "the model has no residual subspace (constant or perfectly correlated columns): Δ cannot be derived from μ"
        )
    resid = residual_spectrum(model)
    lam_mean = model.total / model.d
    lo, hi = 0.0, max(lam_mean, 1e-12)
    # grow the bracket until it violates μ (or covers a perturbation as large as the spectrum)
    while mu_star(resid, hi, model.alpha)[0] <= mu and hi < 1e6 * max(lam_mean, 1e-12):
        lo, hi = hi, hi * 2.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mu_star(resid, mid, model.alpha)[0] <= mu:
            lo = mid
        else:
            hi = mid
    ms, eta = mu_star(resid, lo, model.alpha)
    delta = delta_from_epsilon(lo, lam_mean, model.n, model.d)
    return DeltaSolution(mu, lo, ms, eta, delta, delta * model.std, model.method)


def deltas_from_mu(model: PcaFit, mu: float) -> np.ndarray:
    """Per-column tracking error Δ_i (the columns' own units) for a deviation μ."""
    return solve_delta(model, mu).deltas

"""The numeric kernels of a PCA-SPE tick, compiled by numba when it is installed.

What lives here: a whole warm fit in one call (:func:`fit_step`), the window's rank-two update
(:func:`window_replace`), standardisation, the filtered Rayleigh–Ritz step and its a-posteriori
bounds, the Jackson–Mudholkar threshold and SPE — written in the subset of numpy numba compiles,
so they run as plain numpy without it (``ATOMWATCH_NO_JIT=1`` forces that). Callers take them
from :func:`current`: the compiled ones once compiled, the plain ones meanwhile. What does not:
when to use the solver, the threshold's choice, the model (:mod:`.model`). Details: ``docs/pca.md``.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg import blas

log = logging.getLogger(__name__)

#: Set (before the module's code runs) in the plain copy :data:`plain` loads of this file.
_PLAIN_COPY = bool(globals().get("_PLAIN_COPY", False))

try:
    if _PLAIN_COPY or os.environ.get("ATOMWATCH_NO_JIT", "").strip() not in ("", "0"):
        raise ImportError("ATOMWATCH_NO_JIT is set")
    import numba
except ImportError:
    numba = None

#: True when the kernels are compiled (numba installed and not switched off)
JIT = numba is not None

#: Unit roundoff of float64 (half the machine epsilon): the unit of the rounding allowances.
UNIT = float(np.finfo(np.float64).eps) / 2


def _kernel(f: Callable[..., Any]) -> Callable[..., Any]:
    return numba.njit(cache=True, nogil=True)(f) if JIT else f


if JIT:

    @_kernel
    def _orthonormal(y: np.ndarray) -> np.ndarray:
        """An orthonormal basis of span(y) (d × p, full column rank).

        The filtered block is close to the previous (orthonormal) vectors scaled by λ⁴, so with
        its columns normalised its Gram matrix G is close to I and Cholesky QR (Q = Y L⁻ᵀ,
        G = LLᵀ) is as accurate as Householder QR at a fraction of its LAPACK overhead. It is
        accepted only when QᵀQ is I to rounding (‖QᵀQ − I‖_F ≤ (d + p)·u), which is what the
        bounds assume; otherwise (a cold or distant start) Householder QR."""
        d, p = y.shape
        g = y.T @ y
        scale = np.empty(p)
        for j in range(p):
            if not g[j, j] > 0.0:
                return np.linalg.qr(y)[0]
            scale[j] = 1.0 / math.sqrt(g[j, j])
        lo = np.zeros((p, p))  # the Cholesky factor of the normalised g, then its inverse
        for j in range(p):
            acc = g[j, j] * scale[j] * scale[j]
            for m in range(j):
                acc -= lo[j, m] * lo[j, m]
            if not acc > 0.0:
                return np.linalg.qr(y)[0]
            ljj = math.sqrt(acc)
            lo[j, j] = ljj
            for i in range(j + 1, p):
                acc = g[i, j] * scale[i] * scale[j]
                for m in range(j):
                    acc -= lo[i, m] * lo[j, m]
                lo[i, j] = acc / ljj
        inv = np.zeros((p, p))
        for j in range(p):
            inv[j, j] = 1.0 / lo[j, j]
            for i in range(j + 1, p):
                acc = 0.0
                for m in range(j, i):
                    acc -= lo[i, m] * inv[m, j]
                inv[i, j] = acc / lo[i, i]
        # Q = diag-scaled Y times L⁻ᵀ: fold the column scaling into L⁻ᵀ (one product)
        for i in range(p):
            for j in range(p):
                inv[i, j] *= scale[j]
        q = y @ np.ascontiguousarray(inv.T)
        e = q.T @ q
        off = 0.0
        for i in range(p):
            e[i, i] -= 1.0
            for j in range(p):
                off += e[i, j] * e[i, j]
        if not math.sqrt(off) <= (d + p) * UNIT:
            return np.linalg.qr(y)[0]
        return q

    @_kernel
    def _tridiagonal_ql(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Eigenvalues (unordered) and eigenvectors as rows, of a small symmetric h, and
        whether the QL iteration converged.

        Householder reduction to tridiagonal form T = ZᵀhZ with Z accumulated, then the
        implicit QL iteration with a shift from each leading 2 × 2 block, rotating Z along.
        Both steps are orthogonal transformations, backward stable like LAPACK's ``dsyev``;
        written out here because LAPACK spends most of its ~10 µs on a 12 × 12 problem in calls
        between its routines. Z is kept transposed (rows are vectors) so each rotation updates
        two contiguous rows."""
        n = h.shape[0]
        a = h.copy()
        zt = np.eye(n)
        v = np.zeros(n)
        pv = np.zeros(n)
        for k in range(n - 2):
            below = 0.0  # ‖a[k, k+2:]‖²: the part of row k the reflection must clear
            for i in range(k + 2, n):
                below += a[k, i] * a[k, i]
            if below == 0.0:
                continue
            x0 = a[k, k + 1]
            norm = math.sqrt(below + x0 * x0)
            alpha = -norm if x0 >= 0.0 else norm
            v[k + 1] = x0 - alpha
            for i in range(k + 2, n):
                v[i] = a[k, i]
            beta = 2.0 / (v[k + 1] * v[k + 1] + below)
            # the trailing block A₂₂ ← (I − βvvᵀ)A₂₂(I − βvvᵀ) = A₂₂ − v wᵀ − w vᵀ,
            # with p = βA₂₂v and w = p − (β/2)(vᵀp)v
            vp = 0.0
            for i in range(k + 1, n):
                acc = 0.0
                for j in range(k + 1, n):
                    acc += a[i, j] * v[j]
                pv[i] = beta * acc
                vp += v[i] * pv[i]
            vp *= 0.5 * beta
            for i in range(k + 1, n):
                pv[i] -= vp * v[i]
            for i in range(k + 1, n):
                vi = v[i]
                wi = pv[i]
                for j in range(k + 1, n):
                    a[i, j] -= vi * pv[j] + wi * v[j]
            a[k + 1, k] = alpha
            a[k, k + 1] = alpha
            for r in range(n):  # Z ← Z(I − βvvᵀ)
                acc = 0.0
                for j in range(k + 1, n):
                    acc += zt[j, r] * v[j]
                acc *= beta
                for j in range(k + 1, n):
                    zt[j, r] -= acc * v[j]
        d = np.empty(n)
        e = np.zeros(n)  # e[i] couples d[i] and d[i + 1]
        for i in range(n):
            d[i] = a[i, i]
        for i in range(n - 1):
            e[i] = a[i + 1, i]
        for lo in range(n):
            sweeps = 0
            while True:
                m = lo  # the first negligible coupling at or after lo ends the unreduced block
                while m < n - 1 and abs(e[m]) > 2.0 * UNIT * (abs(d[m]) + abs(d[m + 1])):
                    m += 1
                if m == lo:
                    break
                sweeps += 1
                if sweeps > 60:
                    return d, zt, False
                g = (d[lo + 1] - d[lo]) / (2.0 * e[lo])
                r = math.sqrt(g * g + 1.0)
                g = d[m] - d[lo] + e[lo] / (g + (r if g >= 0.0 else -r))
                s = 1.0
                c = 1.0
                shift = 0.0
                i = m - 1
                split = False
                while i >= lo:  # chase the bulge from the bottom of the block up
                    f = s * e[i]
                    b = c * e[i]
                    r = math.sqrt(f * f + g * g)
                    e[i + 1] = r
                    if r == 0.0:  # the block splits here: start again on the upper part
                        d[i + 1] -= shift
                        e[m] = 0.0
                        split = True
                        break
                    s = f / r
                    c = g / r
                    g = d[i + 1] - shift
                    r = (d[i] - g) * s + 2.0 * c * b
                    shift = s * r
                    d[i + 1] = g + shift
                    g = c * r - b
                    for q in range(n):
                        zi = zt[i, q]
                        zj = zt[i + 1, q]
                        zt[i + 1, q] = s * zi + c * zj
                        zt[i, q] = c * zi - s * zj
                    i -= 1
                if split:
                    continue
                d[lo] -= shift
                e[lo] = g
                e[m] = 0.0
        return d, zt, True

    @_kernel
    def _sym_eig(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and eigenvectors (columns) of a small symmetric h
        (:func:`_tridiagonal_ql`; LAPACK where it does not converge)."""
        d, zt, ok = _tridiagonal_ql(h)
        if not ok:
            return np.linalg.eigh(h)
        order = np.argsort(d)
        n = d.shape[0]
        vec = np.empty((n, n))
        for j in range(n):
            for r in range(n):
                vec[r, j] = zt[order[j], r]
        return d[order], vec

else:
    from scipy.linalg import lapack

    def _orthonormal(y: np.ndarray) -> np.ndarray:
        """Q of the Householder QR of y (LAPACK directly: numpy's wrapper costs more than the work)."""
        qr, tau, _work, info = lapack.dgeqrf(y)
        if info == 0:
            q, _work, info = lapack.dorgqr(qr, tau)
            if info == 0:
                return q
        raise np.linalg.LinAlgError(f"QR failed (LAPACK info {info})")

    def _sym_eig(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, v, info = lapack.dsyevd(h)
        if info != 0:
            raise np.linalg.LinAlgError(f"symmetric eigenproblem failed (LAPACK info {info})")
        return w, v


@_kernel
def standardised(
    m: np.ndarray, scale: float, mean: np.ndarray, min_std: float, rel_std: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cov(Y), std used, raw std) for the covariance m·scale (the co-moment and 1/(n − 1) save
    a pass): each column scaled by max(its std, min_std, rel_std·|mean|)."""
    raw = np.sqrt(np.maximum(np.diag(m) * scale, 0.0))
    std = np.maximum(raw, np.maximum(min_std, rel_std * np.abs(mean)))
    inv = 1.0 / std
    return _scaled(m, inv * scale, inv), std, raw


if JIT:

    @_kernel
    def _scaled(m: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """diag(left)·m·diag(right) in one pass."""
        d = m.shape[0]
        out = np.empty((d, d))
        for i in range(d):
            li = left[i]
            for j in range(d):
                out[i, j] = m[i, j] * li * right[j]
        return out

else:

    def _scaled(m: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """diag(left)·m·diag(right)."""
        out = m * left.reshape((-1, 1))
        out *= right
        return out


if JIT:

    @_kernel
    def window_replace(
        comoment: np.ndarray, mean: np.ndarray, buf: np.ndarray, slot: int, new: np.ndarray, n: int
    ) -> None:
        """Replace the row ``buf[slot]`` of a full window of ``n`` rows by ``new``, in place: the
        row, the mean, and the co-moment Σ (x − mean)(x − mean)ᵀ by one rank-two update (one
        pass over it)."""
        d = mean.shape[0]
        d_old = buf[slot] - mean
        buf[slot] = new
        for i in range(d):
            mean[i] -= d_old[i] * (1.0 / (n - 1))
        d_new = new - mean
        for i in range(d):
            mean[i] += d_new[i] * (1.0 / n)
        a = -n / (n - 1)
        b = (n - 1) / n
        for i in range(d):
            ai = a * d_old[i]
            bi = b * d_new[i]
            for j in range(d):
                comoment[i, j] += ai * d_old[j] + bi * d_new[j]

else:

    def window_replace(
        comoment: np.ndarray, mean: np.ndarray, buf: np.ndarray, slot: int, new: np.ndarray, n: int
    ) -> None:
        """Replace the row ``buf[slot]`` of a full window of ``n`` rows by ``new``, in place: the
        row, the mean, and the co-moment Σ (x − mean)(x − mean)ᵀ by two rank-one updates."""
        d_old = buf[slot] - mean
        buf[slot] = new
        mean -= d_old * (1.0 / (n - 1))
        d_new = new - mean
        mean += d_new * (1.0 / n)
        rank_one(comoment, -n / (n - 1), d_old)
        rank_one(comoment, (n - 1) / n, d_new)


def rank_one(a: np.ndarray, alpha: float, x: np.ndarray) -> None:
    """a += alpha·x xᵀ in place for a symmetric a (BLAS dger on the Fortran-ordered view aᵀ,
    which is a itself since the update is symmetric: ~2 µs at d = 80 against ~6 µs for
    ``np.outer`` and an add). Plain Python: the window's warm-up rows and the plain path."""
    if a.flags.c_contiguous and a.dtype == np.float64 and x.dtype == np.float64:
        view = a.T
        if blas.dger(alpha, x, x, a=view, overwrite_a=1) is view:  # updated in place
            return
    a += alpha * np.outer(x, x)


@_kernel
def spe(x: np.ndarray, p1: np.ndarray) -> float:
    """SPE(x) = ‖(I − P₁P₁ᵀ)x‖² of one standardised row."""
    r = x - p1 @ (p1.T @ x)
    return float(np.dot(r, r))


@_kernel
def square_traces(c: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(C², tr C² = ‖C‖²_F, tr C³ = ⟨C², C⟩) of a symmetric C."""
    c2 = c @ c
    return c2, float(np.trace(c2)), float(np.dot(c2.ravel(), c.ravel()))


@_kernel
def filtered_ritz(c: np.ndarray, c2: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ritz vectors (d × p), values (descending) and C·(Ritz vectors) of C on span(C⁴U)."""
    q = np.ascontiguousarray(_orthonormal(c2 @ (c2 @ u)))
    cq = c @ q
    h = q.T @ cq
    w, s = _sym_eig(0.5 * (h + h.T))
    s = np.ascontiguousarray(s[:, ::-1])
    return q @ s, np.ascontiguousarray(w[::-1]), cq @ s


@_kernel
def cpv_count(w_desc: np.ndarray, total: float, cpv: float) -> int:
    """The smallest ℓ with Σ_{i≤ℓ} w_i > cpv·total, or len + 1 when the values do not reach the
    CPV (0 when total ≤ 0): :func:`atomwatch.plugins.pca_spe.model.choose_k` over leading eigenvalues only."""
    if not total > 0:
        return 0
    lim = cpv * total
    acc = 0.0
    for i in range(w_desc.shape[0]):
        acc += w_desc[i]
        if acc > lim:
            return i + 1
    return w_desc.shape[0] + 1


@_kernel
def residual_power_sums(c: np.ndarray, p1: np.ndarray, cnorm: float) -> tuple[float, float, float, float]:
    """(‖R‖²_F, tr R³, and their rounding bounds) for the residual block R = (I − P₁P₁ᵀ)C(I − P₁P₁ᵀ).

    Its nonzero eigenvalues are those of C compressed to span(P₁)⊥, which lie within the
    quadratic residual bound of λ_{k+1..d}; no large terms cancel, so this is accurate where
    tr(C³) − Σλ_top³ is not. NaN when not finite.
    """
    d, k = p1.shape
    r = c - p1 @ (p1.T @ c)
    r = r - (r @ p1) @ p1.T
    t2 = float(np.sum(r * r))
    t3 = float(np.sum((r @ r) * r))
    if not (math.isfinite(t2) and math.isfinite(t3)):
        return math.nan, math.nan, math.nan, math.nan
    dr = 4.0 * (d + k) * UNIT * cnorm  # ‖R − fl(R)‖_F
    rn = math.sqrt(max(t2, 0.0))
    e2 = 2.0 * rn * dr + dr * dr + d * d * UNIT * t2
    e3 = 3.0 * t2 * dr + 3.0 * rn * dr * dr + dr**3 + (d * d + d) * UNIT * rn * t2
    return t2, t3, e2, e3


@_kernel
def verify(
    c: np.ndarray,
    u: np.ndarray,
    w: np.ndarray,
    cu: np.ndarray,
    total: float,
    cpv: float,
    f2: float,
    f3: float,
    tol: float,
    theta_tol: float,
) -> tuple[int, float, float, float, float, float, float, float]:
    """The bounds of one Ritz step (w descending, C·u = cu), see :class:`atomwatch.plugins.pca_spe.model.TopEigen`.

    Returns (k, θ₁, θ₂, θ₃, err θ₁, err θ₂, err θ₃, sinΘ bound), k = 0 when any bound fails."""
    fail = (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    d, p = u.shape
    k = cpv_count(w, total, cpv)
    if k == 0 or k > p:
        return fail
    r = cu[:, :k] - u[:, :k] * w[:k]
    w1 = abs(w[0])
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for i in range(k):
        v = w[i]
        v2 = v * v
        s1 += v
        s2 += v2
        s3 += v2 * v
    t1, t2, t3 = total - s1, f2 - s2, f3 - s3
    cnorm = math.sqrt(f2)
    # rounding allowances: each Ritz value (forming H = QᵀCQ and its eigh), the residual
    # (forming CU − UΘ, and U orthonormal only to rounding), the sums tr C, ‖C‖²_F, tr(C³)
    ew = 2.0 * (d + p) * UNIT * w1
    res = math.sqrt(float(np.sum(r * r))) + 2.0 * (d + p) * UNIT * cnorm * math.sqrt(k)
    e_tr = d * UNIT * total
    e_f2 = d * d * UNIT * f2
    e_f3 = (d * d + d) * UNIT * cnorm * f2
    # the gap between Θ_k and the rest of C's spectrum (0 ≤ λ_max(C₂₂) ≤ tr C₂₂, ≤ ‖C₂₂‖_F)
    above = max(0.0, min(t1 + e_tr + k * ew, math.sqrt(max(t2 + e_f2 + 2.0 * s1 * ew + k * ew * ew, 0.0))))
    eta = w[k - 1] - ew - above
    if not (eta > 0.0):
        return fail
    sin_theta = res / eta
    if not (sin_theta <= tol):
        return fail
    de = res * res / eta + ew  # |λ_i − w_i| for i ≤ k, rounding included
    # k: the CPV test must give the same k for every spectrum within the bounds
    lim = cpv * total
    if not (s1 - k * ew - e_tr > lim and s1 - w[k - 1] + (k - 1) * de + e_tr < lim):
        return fail
    e1 = k * de + e_tr
    e2 = 2.0 * s1 * de + k * de * de + e_f2
    e3 = 3.0 * s2 * de + 3.0 * s1 * de * de + k * de**3 + e_f3
    if not (t1 > 0 and t2 > 0 and t3 > 0 and e2 <= theta_tol * t2 and e3 <= theta_tol * t3):
        # cancellation too deep: θ₂, θ₃ from the residual block instead
        t2, t3, r2, r3 = residual_power_sums(c, np.ascontiguousarray(u[:, :k]), cnorm)
        if not (math.isfinite(t2) and math.isfinite(t3)):
            return fail
        nk = d - k
        e2 = r2 + 2.0 * t1 * de + nk * de * de
        e3 = r3 + 3.0 * t2 * de + 3.0 * t1 * de * de + nk * de**3
        if not (t1 > 0 and t2 > 0 and t3 > 0 and e2 <= theta_tol * t2 and e3 <= theta_tol * t3):
            return fail
    if not (e1 <= theta_tol * t1):
        return fail
    return k, t1, t2, t3, e1, e2, e3, sin_theta


@_kernel
def jackson_mudholkar(t1: float, t2: float, t3: float, c: float) -> tuple[float, float]:
    """(Q_α, h₀) by Jackson & Mudholkar for residual power sums θ₁..θ₃ > 0 and c = c_α; Q_α is
    NaN where the formula does not apply (h₀ ≤ 0, a bracket ≤ 0, or no finite result)."""
    h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2)
    if not h0 > 0.0:
        return math.nan, h0
    base = c * math.sqrt(2.0 * t2 * h0 * h0) / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / (t1 * t1)
    if not base > 0.0:
        return math.nan, h0
    log_q = math.log(base) / h0
    if not log_q < 700.0:
        return math.nan, h0
    q = t1 * math.exp(log_q)
    if not math.isfinite(q):
        return math.nan, h0
    return q, h0


@_kernel
def jackson_mudholkar_spread(
    q: float, t1: float, t2: float, t3: float, e1: float, e2: float, e3: float, c: float
) -> float:
    """Σ_j |Q(θ + e_j) − Q(θ)| over the three θ error bounds, ``q`` being Q(θ); NaN where the
    formula does not apply at any of the three points."""
    q1, _ = jackson_mudholkar(t1 + e1, t2, t3, c)
    q2, _ = jackson_mudholkar(t1, t2 + e2, t3, c)
    q3, _ = jackson_mudholkar(t1, t2, t3 + e3, c)
    return abs(q1 - q) + abs(q2 - q) + abs(q3 - q)


@_kernel
def h0_keeps_its_sign(h0: float, t1: float, t2: float, t3: float, e1: float, e2: float, e3: float) -> bool:
    """Whether h₀ = 1 − 2θ₁θ₃/(3θ₂²) has the same sign for every θ within ±e (its largest change
    over the box, to first order with a 1 % margin, against its distance from 0): where it may
    not, which approximation applies (Jackson–Mudholkar or Box) is undecided."""
    dh = (1.0 - h0) * (e1 / t1 + e3 / t3 + 2.0 * e2 / t2) * 1.01
    return abs(h0) > dh


@_kernel
def verified_jackson_mudholkar(
    t1: float, t2: float, t3: float, e1: float, e2: float, e3: float, total: float, c: float, tol: float, floor: float
) -> tuple[int, float, float]:
    """Q_α by Jackson & Mudholkar for θ known within ±e, when every θ in that box gives it
    within ``tol`` (relative): (1, Q_α, h₀); (0, NaN, h₀) when the box spreads Q_α wider or
    may cross h₀ = 0; (−1, NaN, NaN) when θ is outside the formula's domain (no residual above
    ``floor``, or h₀ ≤ 0 where Box's approximation applies): the caller decides those.

    To first order (the errors are ≤ 10⁻¹⁰ of θ) the spread is Σ_j |Q(θ + e_j) − Q(θ)|."""
    if t1 <= floor or not (t1 > 0.0 and t2 > 0.0):
        return -1, math.nan, math.nan
    q, h0 = jackson_mudholkar(t1, t2, t3, c)
    if not (q == q):
        return -1, math.nan, math.nan
    if not (math.isfinite(q) and q > 0.0 and t1 - e1 > floor):
        return 0, math.nan, h0
    if not h0_keeps_its_sign(h0, t1, t2, t3, e1, e2, e3):
        return 0, math.nan, h0
    if not (jackson_mudholkar_spread(q, t1, t2, t3, e1, e2, e3, c) <= tol * q):  # NaN: the method changes in the box
        return 0, math.nan, h0
    return 1, q, h0


@_kernel
def fit_step(
    m: np.ndarray,
    scale: float,
    mean: np.ndarray,
    min_std: float,
    rel_std: float,
    u: np.ndarray,
    cpv: float,
    tol: float,
    theta_tol: float,
    iters: int,
    c: float,
    q_tol: float,
    floor: float,
) -> tuple[
    np.ndarray,
    np.ndarray,
    np.ndarray,
    float,
    tuple[int, float, float, float, float, float, float, float],
    np.ndarray,
    np.ndarray,
    int,
    float,
    float,
]:
    """One warm fit in one call: cov(Y) (:func:`standardised`), its trace, the solver's step
    from ``u`` (:func:`subspace_step`) and, when the step is accepted, the verified Q_α
    (:func:`verified_jackson_mudholkar`, c = c_α). Returns (cov(Y), std, raw std, tr, verdict,
    Ritz vectors, Ritz values, threshold status, Q_α, h₀); the step is not tried (verdict k = 0,
    status −2) when the trace is not positive."""
    corr, std, raw = standardised(m, scale, mean, min_std, rel_std)
    total = float(np.trace(corr))
    if not total > 0.0:
        return corr, std, raw, total, (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), u, np.zeros(0), -2, math.nan, math.nan
    verdict, v, w = subspace_step(corr, u, total, cpv, tol, theta_tol, iters)
    status, q, h0 = 0, math.nan, math.nan
    if verdict[0] > 0:
        status, q, h0 = verified_jackson_mudholkar(
            verdict[1],
            verdict[2],
            verdict[3],
            verdict[4],
            verdict[5],
            verdict[6],
            total,
            c,
            q_tol,
            floor * max(total, 1.0),
        )
    return corr, std, raw, total, verdict, v, w, status, q, h0


@_kernel
def subspace_step(
    c: np.ndarray, u: np.ndarray, total: float, cpv: float, tol: float, theta_tol: float, iters: int
) -> tuple[tuple[int, float, float, float, float, float, float, float], np.ndarray, np.ndarray]:
    """Up to ``iters`` filtered Rayleigh–Ritz steps from ``u`` until :func:`verify` accepts one:
    (its verdict, the Ritz vectors, the Ritz values); the verdict's k is 0 when none passed."""
    c2, f2, f3 = square_traces(c)
    verdict = (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    w = np.zeros(0)
    for _ in range(iters):
        u, w, cu = filtered_ritz(c, c2, u)
        verdict = verify(c, u, w, cu, total, cpv, f2, f3, tol, theta_tol)
        if verdict[0] > 0:
            break
    return verdict, u, w


def _load_plain_copy() -> Any:
    """This file loaded again as its plain numpy variant (what ``ATOMWATCH_NO_JIT=1`` gives)."""
    name = __name__ + "_plain"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, __file__)
    module = importlib.util.module_from_spec(spec)
    module.__dict__["_PLAIN_COPY"] = True
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: The plain numpy kernels: this module itself without numba, else a plain copy of it, which
#: serves the fits while the compiled kernels are still being compiled (see :func:`current`).
plain = _load_plain_copy() if JIT else sys.modules[__name__]

_warm_thread: threading.Thread | None = None
_compiled = threading.Event()  # every kernel compiled (or loaded from numba's cache)
_failed = threading.Event()  # compiling failed: the plain kernels serve for good
_compile_lock = threading.Lock()


def current() -> Any:
    """The kernels to call now: the compiled ones once they are compiled; the plain ones while
    :func:`warm_up_in_background` is still compiling them (a fit never waits ~20 s for numba:
    both give the same results to rounding), and for good if compiling failed. With no
    background warm-up started, the first call compiles them here, as numba would."""
    if _compiled.is_set():
        return _self
    if not JIT or _failed.is_set() or (_warm_thread is not None and _warm_thread.is_alive()):
        return plain
    with _compile_lock:
        if not (_compiled.is_set() or _failed.is_set()):
            _warm_up_logged()
    return _self if _compiled.is_set() else plain


def warm_up_in_background() -> None:
    """Compile the kernels without holding anything up, once per process; until they are ready
    :func:`current` hands out the plain kernels.

    numba compiles in a child process (``python -c "…; kernels.warm_up()"``) that fills numba's
    on-disk cache; this process then only loads the cached machine code (about a
    second). A process that ends meanwhile kills the child and waits for that short load alone:
    interpreter teardown during an in-process LLVM compile crashed (SIGSEGV, SIGABRT) in 2 of 5
    short runs, and joining a ~20 s compile would hold every short run's exit."""
    global _warm_thread
    with _compile_lock:
        if JIT and _warm_thread is None and not _compiled.is_set():
            _warm_thread = threading.Thread(target=_warm_up_via_child, name="atomwatch-kernels-warm-up", daemon=True)
            _warm_thread.start()
            atexit.register(_stop_warm_up)


_exiting = threading.Event()
_child: subprocess.Popen | None = None


def _warm_up_via_child() -> None:
    global _child
    started = time.perf_counter()
    try:
        with _compile_lock:
            if _exiting.is_set():
                return
            _child = subprocess.Popen(
                [sys.executable, "-c", f"import {__name__} as k; k.warm_up()"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            log.info("compiling the PCA kernels in child process %d; the plain kernels serve meanwhile", _child.pid)
        _, err = _child.communicate()
        if _child.returncode != 0 and not _exiting.is_set():
            # numba's cache may be unusable here (no writable cache folder): compile in-process
            log.info("compiling the PCA kernels in a child process failed (%s): compiling here", _tail(err))
    except OSError as e:
        log.info("cannot start a child process to compile the PCA kernels (%s): compiling here", e)
    if _exiting.is_set():
        return
    _warm_up_logged(time.perf_counter() - started)


def _tail(err: bytes) -> str:
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {_child.returncode if _child else '?'}"


def _stop_warm_up() -> None:
    """At exit: stop the compiling child; wait for an in-process load of the cached kernels (the
    only LLVM work this process does), so the interpreter never tears down under it."""
    _exiting.set()
    with _compile_lock:
        child = _child
    if child is not None and child.poll() is None:
        child.kill()
    thread = _warm_thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(120)


def _warm_up_logged(child_seconds: float = 0.0) -> None:
    try:
        loaded = warm_up()
        if child_seconds:
            log.info(
                "PCA kernels compiled in a child process and loaded in %.1f s (loading: %.1f s)",
                child_seconds + loaded,
                loaded,
            )
        else:
            log.info("PCA kernels compiled or loaded from numba's cache in %.1f s", loaded)
    except Exception:  # the plain kernels serve instead
        _failed.set()
        log.exception("compiling the PCA kernels failed: the plain numpy kernels serve instead")


def warm_up() -> float:
    """Compile (or load from numba's cache) every kernel now; the seconds it took (0 without numba)."""
    if not JIT:
        return 0.0
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6))
    cov = np.cov(x, rowvar=False)
    corr = standardised(cov, 1.0, x.mean(axis=0), 1e-6, 1e-3)[0]
    c2, f2, f3 = square_traces(corr)
    u = np.ascontiguousarray(np.linalg.eigh(corr)[1][:, ::-1][:, :3])
    q, w, cq = filtered_ritz(corr, c2, u)
    verify(corr, q, w, cq, float(np.trace(corr)), 0.5, f2, f3, 1e-10, 1e-8)
    subspace_step(corr, u, float(np.trace(corr)), 0.5, 1e-10, 1e-8, 2)
    fit_step(cov, 1.0, x.mean(axis=0), 1e-6, 1e-3, u, 0.5, 1e-10, 1e-8, 2, 3.0, 1e-8, 1e-12)
    verified_jackson_mudholkar(3.0, 2.0, 1.5, 1e-12, 1e-12, 1e-12, 6.0, 3.0, 1e-8, 1e-12)
    h0_keeps_its_sign(-0.5, 3.0, 2.0, 1.5, 1e-12, 1e-12, 1e-12)
    residual_power_sums(corr, np.ascontiguousarray(q[:, :2]), math.sqrt(f2))
    spe(np.ascontiguousarray(x[0]), np.ascontiguousarray(q[:, :2]))
    window_replace(cov.copy(), x.mean(axis=0), x.astype(np.float32), 0, x[1].copy(), 40)  # float32 rows
    _compiled.set()
    return time.perf_counter() - t0


_self = sys.modules[__name__]

"""The PCA-SPE tick kernels: compiled by numba (the ``fast`` extra) and as plain numpy
(``ATOMWATCH_NO_JIT=1``) they give the same model as a full refit, tick after tick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from atomwatch.plugins.pca_spe import kernels

ROOT = Path(__file__).resolve().parent.parent

# a host of 12 VMs × 7 metrics whose top eigenspace moves a little every row; prints, per tick,
# which solver answered and the relative SPE / Q_α differences against a full refit
SCRIPT = r"""
import json, sys
import numpy as np

from atomwatch.plugins.pca_spe import kernels, model as pm
rng = np.random.default_rng(7)
t, d, ticks = 300, 84, 40
shared = rng.standard_normal((t + ticks + 1, 1))
own = rng.standard_normal((t + ticks + 1, 12))
scale = 10.0 ** rng.uniform(0, 5, size=d)
x = np.stack([scale[j] * (5 + 0.4 * shared[:, 0] + own[:, j // 7] + 0.15 * rng.standard_normal(t + ticks + 1))
              for j in range(d)], axis=1)
x = x.astype(np.float32).astype(np.float64)  # values the window can hold exactly (it stores float32)
w = pm.WindowStats(d, t)
for r in x[:t]:
    w.add(r)
top = pm.TopEigen()
pm.fit(w.n, w.mean, w.cov(), top=top)
out = {"jit": kernels.JIT, "solvers": [], "spe": [], "q": []}
for i in range(t, t + ticks):
    if i > t:
        w.add(x[i - 1])  # the window is now x[i - t : i]
    got = pm.fit(w.n, w.mean, w.cov(), top=top)
    ref = pm.fit_window(x[i - t:i])
    z = x[i]
    out["solvers"].append(got.solver)
    out["spe"].append(abs(got.spe(got.standardise(z)) - ref.spe(ref.standardise(z))) / ref.spe(ref.standardise(z)))
    out["q"].append(abs(got.q_alpha - ref.q_alpha) / ref.q_alpha)
print(json.dumps(out))
"""


def _run(no_jit: bool) -> dict:
    env = dict(os.environ)
    env.pop("ATOMWATCH_NO_JIT", None)
    if no_jit:
        env["ATOMWATCH_NO_JIT"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("no_jit", [False, True], ids=["compiled", "plain-numpy"])
def test_each_tick_matches_a_full_refit_compiled_and_plain(no_jit):
    if not no_jit:
        require(
            kernels.JIT or os.environ.get("ATOMWATCH_NO_JIT"), "numba is not installed (pip install 'atomwatch[fast]')"
        )
    out = _run(no_jit)
    assert out["jit"] is (not no_jit)
    assert out["solvers"].count("subspace") >= 35, out["solvers"]  # the warm-started step answers
    assert max(out["spe"]) <= 1e-9 and max(out["q"]) <= 1e-9, (max(out["spe"]), max(out["q"]))


def test_kernels_agree_with_numpy_on_one_step():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 30)) @ rng.standard_normal((30, 30)) + 10
    mean, cov = x.mean(axis=0), np.cov(x, rowvar=False)
    corr, std, raw = kernels.standardised(cov, 1.0, mean, 1e-6, 1e-3)
    scaled = kernels.standardised((x - mean).T @ (x - mean), 1.0 / (len(x) - 1), mean, 1e-6, 1e-3)
    assert np.allclose(scaled[0], corr, rtol=1e-12, atol=1e-14) and np.allclose(scaled[2], raw, rtol=1e-12)
    assert np.allclose(raw, x.std(axis=0, ddof=1), rtol=1e-12)
    assert np.allclose(corr, np.corrcoef(x, rowvar=False), rtol=1e-10, atol=1e-12)
    c2, f2, f3 = kernels.square_traces(corr)
    lam = np.linalg.eigvalsh(corr)
    assert np.isclose(f2, (lam**2).sum(), rtol=1e-12) and np.isclose(f3, (lam**3).sum(), rtol=1e-12)
    vec = np.linalg.eigh(corr)[1][:, ::-1]
    u = np.ascontiguousarray(vec[:, :6] + 1e-3 * rng.standard_normal((30, 6)))  # a slightly wrong start
    q, w, cq = kernels.filtered_ritz(corr, c2, u)
    assert np.allclose(q.T @ q, np.eye(6), atol=1e-13)
    assert np.allclose(cq, corr @ q, atol=1e-12)
    assert np.all(np.diff(w) <= 0) and np.allclose(w[:3], lam[::-1][:3], rtol=1e-6)
    # a window row replaced: mean and co-moment as recomputed from the rows
    comoment = (x - mean).T @ (x - mean)
    m, new, buf = mean.copy(), x[0] * 1.1, x.copy()
    kernels.window_replace(comoment, m, buf, 0, new, len(x))
    y = np.vstack([x[1:], new])
    assert np.array_equal(buf[0], new) and np.array_equal(buf[1:], x[1:])
    assert np.allclose(m, y.mean(axis=0), rtol=1e-13)
    assert np.allclose(comoment, (y - y.mean(axis=0)).T @ (y - y.mean(axis=0)), rtol=1e-9, atol=1e-9)
    p1 = np.ascontiguousarray(vec[:, :4])
    z = (x[5] - mean) / std
    assert np.isclose(kernels.spe(z, p1), float(np.sum((z - p1 @ (p1.T @ z)) ** 2)), rtol=1e-12)


def _small_symmetric_cases() -> list[np.ndarray]:
    """Small symmetric matrices of every shape the Rayleigh–Ritz step may meet: near-diagonal
    (a warm start), clustered and repeated eigenvalues, rank-deficient, indefinite, graded,
    zero, 1 × 1 and 2 × 2."""
    rng = np.random.default_rng(11)
    out = [np.zeros((3, 3)), np.array([[2.5]]), np.array([[1.0, 1e-9], [1e-9, 1.0]]), np.eye(5)]
    for n in (2, 3, 7, 12, 16, 29):
        r = rng.standard_normal((n, n))
        q = np.linalg.qr(r)[0]
        out += [
            r + r.T,
            r @ r.T,
            np.diag(np.sort(rng.uniform(0, 8, n))[::-1]) + 3e-3 * (r + r.T),  # warm start
            q @ np.diag(np.round(rng.uniform(0, 3, n))) @ q.T,  # repeated eigenvalues
            q @ np.diag(10.0 ** rng.uniform(-12, 2, n)) @ q.T,  # graded
            (r[:, :1] @ r[:, :1].T),  # rank one
        ]
    return out


def test_small_eigensolver_matches_lapack():
    """The Rayleigh–Ritz step's p × p eigensolver (written out in the compiled path) gives
    LAPACK's eigenvalues to rounding, orthonormal vectors and residuals at rounding level."""
    for h in _small_symmetric_cases():
        w, v = kernels._sym_eig(np.ascontiguousarray(h))
        ref = np.linalg.eigvalsh(h)
        scale = max(np.abs(ref).max(), 1e-300)
        n = h.shape[0]
        assert np.all(np.diff(w) >= 0), w
        assert np.max(np.abs(w - ref)) <= 50 * n * kernels.UNIT * scale, (n, w, ref)
        assert np.max(np.abs(v.T @ v - np.eye(n))) <= 50 * n * kernels.UNIT
        assert np.max(np.abs(h @ v - v * w)) <= 50 * n * kernels.UNIT * scale


# a fresh numba cache: the background warm-up compiles for many seconds, and the fits made
# meanwhile must run on the plain kernels instead of waiting for it
WARM_UP_SCRIPT = r"""
import json, sys
import numpy as np

from atomwatch.plugins.pca_spe import kernels, model as pm
rng = np.random.default_rng(5)
x = (rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))).astype(np.float32).astype(np.float64)
w = pm.WindowStats(12, 300)
for r in x[:300]:
    w.add(r)
top = pm.TopEigen()
kernels.warm_up_in_background()
during = []
for r in x[300:340]:
    during.append(kernels.current() is kernels.plain)
    w.add(r)
    pm.fit(w.n, w.mean, w.cov(), top=top)
kernels._warm_thread.join()
got = pm.fit(w.n, w.mean, w.cov(), top=top)
ref = pm.fit_window(x[40:340])
print(json.dumps({"plain_during": during, "compiled_after": kernels.current() is kernels._self and kernels.current().JIT,
                  "plain_is_plain": not kernels.plain.JIT, "q_rel": abs(got.q_alpha - ref.q_alpha) / ref.q_alpha}))
"""


def test_fits_use_the_plain_kernels_while_numba_compiles(tmp_path):
    """A controller's first fits do not wait for the background compile (~20 s with no cache):
    they run on the plain kernels, and on the compiled ones once it is done."""
    require(kernels.JIT or os.environ.get("ATOMWATCH_NO_JIT"), "numba is not installed (pip install 'atomwatch[fast]')")
    if not kernels.JIT:
        pytest.skip("ATOMWATCH_NO_JIT is set: nothing is compiled")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    proc = subprocess.run(
        [sys.executable, "-c", WARM_UP_SCRIPT, str(ROOT)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert all(out["plain_during"]), out["plain_during"]
    assert out["compiled_after"] and out["plain_is_plain"]
    assert out["q_rel"] <= 1e-9


def test_the_window_stores_float32_rows_and_takes_out_exactly_what_it_put_in():
    """Half the memory of a scope (its rows) for a rounding far below any Δ: each row is rounded
    before it enters the statistics, so after many turnovers the kept mean and co-moment are
    still those of the stored rows (a float64 row taken out as its float32 copy would drift)."""
    from atomwatch.plugins.pca_spe import model as pm

    rng = np.random.default_rng(11)
    w = pm.WindowStats(6, 50)
    x = 1e9 + 1e6 * rng.standard_normal((1000, 6))  # large offsets: where float32 rounding shows
    for r in x:
        w.add(r)
    assert w.buf.dtype == np.float32 and w.buf.nbytes == 50 * 6 * 4
    rows = w.rows()
    assert rows.dtype == np.float64 and np.array_equal(rows, x[-50:].astype(np.float32).astype(np.float64))
    mean, comoment = w.mean.copy(), w.comoment.copy()
    w.refresh()
    assert np.allclose(mean, w.mean, rtol=1e-12)
    assert np.allclose(comoment, w.comoment, rtol=1e-6, atol=1e-6 * np.abs(w.comoment).max())

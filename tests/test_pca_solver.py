"""The warm-started top-k solver (``TopEigen``) against a full ``eigh``: k, the P₁ subspace, θ and
Q_α on random and adversarial matrices (clustered eigenvalues at the CPV boundary, a changing
active column set or dimension, rank-deficient windows), its a-posteriori bounds (they must hold
wherever it answers), and that it falls back (returns None) rather than answer wrongly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atomwatch.plugins.pca_spe import model as pm

CPV, ALPHA = 0.9, 0.002


def hosts(rng, rows, d, groups=None, noise=0.15):
    """Rows of d metrics in groups of 7 (one VM each) driven by their VM's workload, a shared
    workload and noise, in very different units."""
    groups = groups or math.ceil(d / 7)
    shared = rng.standard_normal((rows, 1))
    own = rng.standard_normal((rows, groups))
    scale = 10.0 ** rng.uniform(0, 4, size=d)
    drive = 0.4 * shared + own[:, np.arange(d) % groups]
    return scale * (5.0 + drive + noise * rng.standard_normal((rows, d)))


def corr_of(rows):
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(axis=0)
    cov = np.cov(rows, rowvar=False)
    return pm.standardised_cov(mean, cov, 1e-6, 1e-3)[0]


def reference(c):
    """k, P₁, θ and Q_α of C by a full eigh (what ``fit`` computes without a solver)."""
    w, v = np.linalg.eigh(c)
    lam = np.clip(w[::-1], 0.0, None)
    total = float(np.trace(c))
    k = pm.choose_k(lam, total, CPV)
    theta = pm.thetas(lam[k:])
    q = pm._threshold(theta, total, ALPHA)[0]
    return k, v[:, ::-1][:, :k], lam, theta, q


def sin_angle(a, b):
    """Largest principal angle (its sine) between the column spans of orthonormal a and b."""
    return float(np.linalg.norm(a @ a.T - b @ b.T, 2))


def seeded(c, **kw):
    top = pm.TopEigen(**kw)
    pm.fit(1000, np.zeros(c.shape[0]), c, top=top)  # the first fit is a full eigh: it seeds
    assert top.u is not None
    return top


def check_against_eigh(top, c, got):
    """The solver's answer agrees with a full eigh, and within the bounds it claims."""
    k, p1, lam1, theta = got
    rk, rp1, rlam, rtheta, rq = reference(c)
    assert k == rk
    assert np.allclose(p1.T @ p1, np.eye(k), atol=1e-12)
    angle = sin_angle(p1, rp1)
    assert angle <= max(top.sin_theta, 1e-13) * 1.01 + 1e-14, (angle, top.sin_theta)
    assert top.sin_theta <= top.tol
    np.testing.assert_allclose(lam1, rlam[:k], rtol=1e-11)
    for j in range(3):
        # the claimed bound holds, up to the reference's own rounding
        assert abs(theta[j] - rtheta[j]) <= top.theta_err[j] + 1e-12 * rtheta[j], (j, theta, rtheta, top.theta_err)
        assert abs(theta[j] - rtheta[j]) <= 1e-8 * rtheta[j]
    q = pm._threshold(theta, float(np.trace(c)), ALPHA)[0]
    assert q == pytest.approx(rq, rel=1e-9)


# --------------------------------------------------------------------------- random windows


@pytest.mark.parametrize("d", [8, 21, 40])
def test_sliding_window_answers_agree_with_eigh_every_tick(d):
    rng = np.random.default_rng(d)
    t = 300
    x = hosts(rng, t + 60, d)
    top = seeded(corr_of(x[:t]))
    answered = 0
    for i in range(1, 60):
        c = corr_of(x[i : i + t])
        got = top.solve(c, float(np.trace(c)), CPV)
        if got is not None:
            answered += 1
            check_against_eigh(top, c, got)
    assert answered >= 50  # warm: nearly every tick is answered without a full eigh


def test_fit_with_solver_matches_fit_without_on_a_stream():
    rng = np.random.default_rng(80)
    t, d = 720, 80
    x = hosts(rng, t + 40, d)
    w = pm.WindowStats(d, t)
    for r in x[:t]:
        w.add(r)
    top = pm.TopEigen()
    pm.fit(w.n, w.mean, w.cov(), top=top)
    solvers = []
    for i in range(t, t + 40):
        w.add(x[i])
        inc = pm.fit(w.n, w.mean, w.cov(), top=top)
        ref = pm.fit_window(w.rows())
        solvers.append(inc.solver)
        z = inc.standardise(x[i - 3])
        assert inc.k == ref.k
        assert inc.spe(z) == pytest.approx(ref.spe(ref.standardise(x[i - 3])), rel=1e-8)
        assert inc.q_alpha == pytest.approx(ref.q_alpha, rel=1e-8)
        np.testing.assert_allclose(inc.theta, ref.theta, rtol=1e-8)
    assert solvers.count("subspace") >= 35


# --------------------------------------------------------------------------- adversarial spectra


def matrix_with_spectrum(rng, lam):
    q, _ = np.linalg.qr(rng.standard_normal((len(lam), len(lam))))
    return (q * lam) @ q.T


def test_clustered_eigenvalues_at_the_cpv_boundary_are_refused():
    rng = np.random.default_rng(1)
    d, k = 20, 4
    # λ_k and λ_{k+1} equal to 1e-13: the top-k subspace is not determined, so no answer is right
    lam = np.array([6.0, 5.0, 4.0, 3.0, 3.0 - 1e-13] + [0.05] * (d - 5))
    lam *= d / lam.sum()
    c = matrix_with_spectrum(rng, lam)
    cpv = float(lam[:k].sum() / lam.sum()) - 1e-6
    top = pm.TopEigen()
    w, v = np.linalg.eigh(c)
    top.seed(np.ascontiguousarray(v[:, ::-1]), w[::-1], k)
    assert top.solve(c, float(np.trace(c)), cpv) is None
    assert top.misses == 1


def test_cpv_exactly_at_a_cumulative_sum_is_refused():
    # Σ_{i≤k} λ_i / Σλ a hair above cpv: k is decided by rounding; the solver must not decide it
    rng = np.random.default_rng(2)
    d = 16
    lam = np.array([8.0, 4.0, 2.0, 1.0] + [0.01] * (d - 4))
    c = matrix_with_spectrum(rng, lam)
    total = float(np.trace(c))
    cpv = float(lam[:3].sum()) / total - 1e-15
    w, v = np.linalg.eigh(c)
    top = pm.TopEigen()
    top.seed(np.ascontiguousarray(v[:, ::-1]), w[::-1], 3)
    assert top.solve(c, total, cpv) is None
    # a clear margin: answered, and right
    top = pm.TopEigen()
    top.seed(np.ascontiguousarray(v[:, ::-1]), w[::-1], 3)
    got = top.solve(c, total, float(lam[:3].sum()) / total - 1e-3)
    assert got is not None and got[0] == 3


def test_a_smooth_spectrum_without_a_gap_falls_back():
    # eigenvalues decaying evenly: nothing separates the top k from the rest well enough to
    # certify the subspace to 1e-10 in two filter steps
    rng = np.random.default_rng(3)
    d = 30
    lam = np.linspace(3.0, 0.5, d)
    c = matrix_with_spectrum(rng, lam)
    top = seeded(c)
    c2 = c + 1e-3 * matrix_with_spectrum(rng, rng.uniform(0, 1, d))
    got = top.solve(c2, float(np.trace(c2)), CPV)
    if got is not None:  # only if it could prove it
        check_against_eigh(top, c2, got)
    else:
        assert top.fallbacks >= 1


def test_a_wrong_warm_start_is_never_returned():
    # a start orthogonal to the top eigenvectors (as after a column set change with the same
    # count): one filter step cannot reach the top subspace, so no answer; more steps may
    rng = np.random.default_rng(4)
    x = hosts(rng, 400, 24)
    c = corr_of(x)
    w, v = np.linalg.eigh(c)
    v = v[:, ::-1]
    bad = np.ascontiguousarray(v[:, 10:16])  # spans nothing of the top 4
    top = pm.TopEigen(iters=1)
    top.u = bad
    assert top.solve(c, float(np.trace(c)), CPV) is None
    top = pm.TopEigen(iters=2)
    top.u = bad
    got = top.solve(c, float(np.trace(c)), CPV)
    if got is not None:
        check_against_eigh(top, c, got)


def test_a_changed_active_column_set_of_the_same_size_is_safe():
    rng = np.random.default_rng(5)
    t, d = 300, 28
    x = hosts(rng, t + 1, d + 4)
    top = seeded(corr_of(x[:t, :d]))
    # the next fit covers another set of d columns (four left, four others joined)
    c = corr_of(x[1 : t + 1, 4:])
    got = top.solve(c, float(np.trace(c)), CPV)
    if got is not None:
        check_against_eigh(top, c, got)
    # through fit: the model is the eigh model either way
    top = seeded(corr_of(x[:t, :d]))
    inc = pm.fit(t, np.zeros(d), c, top=top)
    ref = pm.fit(t, np.zeros(d), c)
    assert inc.k == ref.k and inc.q_alpha == pytest.approx(ref.q_alpha, rel=1e-8)
    assert sin_angle(inc.p1, ref.p1) < 1e-8


def test_a_changed_dimension_falls_back_and_reseeds():
    rng = np.random.default_rng(6)
    x = hosts(rng, 300, 30)
    top = seeded(corr_of(x[:, :30]))
    c = corr_of(x[:, :27])
    before = top.fallbacks
    assert top.solve(c, float(np.trace(c)), CPV) is None
    assert top.misses == 0 and top.off == 0 and top.fallbacks == before + 1  # refused up front, no back-off
    fit = pm.fit(300, np.zeros(27), c, top=top)
    assert fit.solver == "eigh" and top.u.shape[0] == 27
    c2 = corr_of(x[1:, :27])
    got = top.solve(c2, float(np.trace(c2)), CPV)
    assert got is not None
    check_against_eigh(top, c2, got)


def test_rank_deficient_windows():
    # fewer rows than columns, and duplicated columns: C is singular
    rng = np.random.default_rng(7)
    d = 30
    x = hosts(rng, 23, d)
    x[:, 5] = x[:, 4] * 3.0
    top = seeded(corr_of(x[:20]))
    for i in range(1, 4):
        c = corr_of(x[i : i + 20])
        assert np.linalg.matrix_rank(c) < d
        got = top.solve(c, float(np.trace(c)), CPV)
        if got is not None:
            check_against_eigh(top, c, got)


def test_non_finite_input_is_refused():
    rng = np.random.default_rng(8)
    c = corr_of(hosts(rng, 200, 14))
    top = seeded(c)
    bad = c.copy()
    bad[2, 3] = bad[3, 2] = np.nan
    assert top.solve(bad, float(np.trace(c)), CPV) is None


# --------------------------------------------------------------------------- Q_α over the θ bounds


def test_threshold_check_refuses_where_theta_is_not_known_well_enough():
    theta = (3.96, 7.09, 18.78)
    ok = pm._verified_threshold(theta, (1e-14, 1e-14, 1e-13), 80.0, ALPHA, 1e-8)
    assert ok is not None and ok == pm._threshold(theta, 80.0, ALPHA)
    assert pm._verified_threshold(theta, (1e-3, 1e-3, 1e-3), 80.0, ALPHA, 1e-8) is None
    # h₀ near 0: its sign (Jackson–Mudholkar vs Box) is not decided by θ within the bounds
    t1, t2 = 2.0, 3.0
    t3 = 3.0 * t2 * t2 / (2.0 * t1) * (1 - 1e-12)
    assert pm._verified_threshold((t1, t2, t3), (0.0, 0.0, 1e-9), 10.0, ALPHA, 1e-8) is None
    # no residual variance: degenerate only when every θ₁ in the box is
    assert pm._verified_threshold((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 10.0, ALPHA, 1e-8)[1] == "degenerate"
    assert pm._verified_threshold((1e-12, 1e-24, 1e-36), (1e-6, 0.0, 0.0), 10.0, ALPHA, 1e-8) is None


def test_options_are_checked():
    with pytest.raises(ValueError, match="tol"):
        pm.TopEigen(tol=0.0)
    with pytest.raises(ValueError, match="iters"):
        pm.TopEigen(iters=0)


# --------------------------------------------------------------------------- through the detector


def test_detector_with_the_solver_judges_every_row_as_with_eigh():
    """The same stream, with the active column set changing (a VM leaves and comes back in
    another order, a column goes quiet) and a fault: ``solver=subspace`` gives the same alarms,
    scores and thresholds as ``solver=eigh``, and really answers most fits."""
    from atomwatch import Row, SeriesKey
    from atomwatch.plugins.pca_spe.detector import PcaSpeDetector

    rng = np.random.default_rng(12)
    t, d = 150, 14
    x = hosts(rng, 900, d, groups=3)
    x[400:600, 13] = 7.0  # a column that holds still for a while: it leaves the PCA, then returns
    x[820:840, 2] *= 1.5  # a fault
    names = [f"vm{j // 5}/m{j % 5}" for j in range(d)]
    runs = {}
    for solver in ("eigh", "subspace"):
        det = PcaSpeDetector("s", {"t": t, "min_rows": 100, "solver": solver, "alpha": 1e-4})
        out, statuses = [], []
        for i in range(len(x)):
            if 300 <= i < 450:  # vm2 leaves
                cols, vals = names[:10], x[i, :10]
            elif i >= 450:  # and comes back, first in the list
                cols, vals = names[10:] + names[:10], np.concatenate([x[i, 10:], x[i, :10]])
            else:
                cols, vals = names, x[i]
            a = det.update(
                Row("s", i, float(i), tuple(SeriesKey.from_column(c) for c in cols), np.asarray(vals, dtype=float))
            )
            out.append(None if a is None else (a.score, a.threshold))
            st = det.status()
            statuses.append((st.get("spe"), st.get("q_alpha"), st.get("k"), st.get("solver")))
        runs[solver] = (out, statuses, det)
    (out_e, st_e, _), (out_s, st_s, _) = runs["eigh"], runs["subspace"]
    assert [a is None for a in out_e] == [a is None for a in out_s]
    assert sum(a is not None for a in out_e) >= 10  # the fault is caught
    for a, b in zip(out_e, out_s):
        if a is not None:
            assert b[0] == pytest.approx(a[0], rel=1e-8) and b[1] == pytest.approx(a[1], rel=1e-8)
    for (spe_e, q_e, k_e, _), (spe_s, q_s, k_s, _) in zip(st_e, st_s):
        assert k_e == k_s
        if spe_e is not None:
            assert spe_s == pytest.approx(spe_e, rel=1e-8, abs=1e-12)
        if q_e is not None:
            assert q_s == pytest.approx(q_e, rel=1e-8)
    assert sum(s[3] == "subspace" for s in st_s) >= 0.5 * sum(s[3] is not None for s in st_s)

"""Δ from μ: the tracking error each metric may have for a deviation μ on detection accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from atomwatch import Row, SeriesKey
from atomwatch.plugins.pca_spe import model as pm
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector


def window(seed=1, rows=720, d=21):
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((rows, 3))
    return 50 + 5 * f @ rng.standard_normal((3, d)) + 0.5 * rng.standard_normal((rows, d))


def test_smaller_mu_gives_smaller_delta():
    model = pm.fit_window(window())
    sols = [pm.solve_delta(model, mu) for mu in (0.001, 0.005, 0.01, 0.05, 0.2)]
    eps = [s.epsilon for s in sols]
    deltas = [s.deltas for s in sols]
    assert all(a < b for a, b in zip(eps, eps[1:]))
    for a, b in zip(deltas, deltas[1:]):
        assert np.all(a < b)
    for s in sols:
        assert 0 < s.mu_star <= s.mu
        # the search is tight: a slightly larger ε breaks the bound
        assert pm.mu_star(pm.residual_spectrum(model), s.epsilon * 1.001, model.alpha)[0] > s.mu


def test_delta_scales_with_each_columns_std():
    x = window()
    model = pm.fit_window(x)
    sol = pm.solve_delta(model, 0.01)
    ratio = sol.deltas / x.std(axis=0, ddof=1)
    np.testing.assert_allclose(ratio, sol.delta_std, rtol=1e-12)  # Δ_i = δ · std_i
    # rescaling one metric (other units) rescales its Δ and nothing else
    y = x.copy()
    y[:, 4] *= 1000.0
    sol2 = pm.solve_delta(pm.fit_window(y), 0.01)
    assert sol2.deltas[4] == pytest.approx(1000.0 * sol.deltas[4], rel=1e-6)
    np.testing.assert_allclose(np.delete(sol2.deltas, 4), np.delete(sol.deltas, 4), rtol=1e-6)


def test_delta_is_the_root_of_the_papers_bound():
    model = pm.fit_window(window())
    sol = pm.solve_delta(model, 0.01)
    t, d = model.n, model.d
    lam_bar = model.total / d
    sigma = sol.delta_std / math.sqrt(3)  # uniform error on [−δ, δ] has std δ/√3
    # ε = 2√(λ̄/t · Σσ²) + √((1/t + 1/d) Σσ⁴) with equal σ_i
    eps = 2 * math.sqrt(lam_bar / t * d * sigma**2) + math.sqrt((1 / t + 1 / d) * d * sigma**4)
    assert eps == pytest.approx(sol.epsilon, rel=1e-9)


def test_mu_star_is_the_false_alarm_deviation():
    model = pm.fit_window(window())
    resid = pm.residual_spectrum(model)
    ms, eta = pm.mu_star(resid, 0.05, model.alpha)
    c_alpha = stats.norm.ppf(1 - model.alpha)
    assert ms == pytest.approx(stats.norm.cdf(c_alpha) - stats.norm.cdf(c_alpha - eta), rel=1e-12)
    # η is measured on the normal-score scale: lowering every residual eigenvalue by ε lowers Q_α,
    # and the true score of that lower threshold is c_α − η (or the +ε side is worse)
    th = pm.thetas(resid)
    q_low, _, _ = pm.q_alpha(pm.thetas(np.clip(resid - 0.05, 0, None)), model.alpha)
    assert c_alpha - pm.normal_score(q_low, th, model.method) <= eta + 1e-12
    assert pm.mu_star(resid, 0.0, model.alpha)[0] == pytest.approx(0.0, abs=1e-12)


def test_detector_gives_deltas_per_series_key():
    x = window(d=6, rows=300)
    cols = tuple(SeriesKey.from_column(f"vm{j // 3}/m{j % 3}") for j in range(6))
    det = PcaSpeDetector("h", {"t": 300})
    with pytest.raises(ValueError, match="warming up"):
        det.deltas_from_mu(0.01)
    for i, v in enumerate(x):
        det.update(Row("h", i, float(i), cols, v))
    d1, d2 = det.deltas_from_mu(0.01), det.deltas_from_mu(0.001)
    assert set(d1) == set(cols) and all(d2[c] < d1[c] for c in cols)
    with pytest.raises(ValueError, match="mu"):
        det.deltas_from_mu(1.5)


def test_no_residual_subspace_is_a_clear_error():
    x = np.tile(np.array([1.0, 2.0, 3.0]), (100, 1))
    with pytest.raises(ValueError, match="no residual subspace"):
        pm.solve_delta(pm.fit_window(x), 0.01)

"""The pca-spe detector: SPE and Q_α against the paper's formulas, Box's branch, the incremental
window against a batch refit, constant/NaN/changing columns, the operator's normal verdict, and
the unattended policy (re-baselining after an unanswered episode, undone by a malicious verdict)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

import atomwatch
from atomwatch import Row, SeriesKey
from atomwatch.detectors import find_factory
from atomwatch.pluginmanager import get_plugin_manager
from atomwatch.plugins.pca_spe import model as pm
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector


def keys(names):
    return tuple(SeriesKey.from_column(n) for n in names)


def workload(rng, rows, d, factors=3, noise=0.3, offset=50.0):
    """Rows of d correlated metrics driven by a few latent workloads plus noise, as values the
    window holds exactly (it stores float32), so the paper's formulas can be checked to rounding."""
    f = rng.standard_normal((rows, factors))
    load = rng.standard_normal((factors, d))
    return stored(offset + 5.0 * f @ load + noise * rng.standard_normal((rows, d))), load


def stored(x):
    """``x`` rounded as pca-spe's window stores it (float32), back in float64."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def feed(det, cols, x, start=0):
    out = []
    for i, v in enumerate(x):
        a = det.update(Row("s", start + i, float(start + i), cols, np.asarray(v, dtype=float)))
        if a is not None:
            out.append(a)
    return out


# --------------------------------------------------------------------------- the paper's formulas


def paper_model(window: np.ndarray, cpv: float, alpha: float):
    """Section IV-C written out independently: standardise, eig of cov(Y), k by CPV, θ, Q_α."""
    avg = window.mean(axis=0)
    std = window.std(axis=0, ddof=1)
    y = (window - avg) / std
    lam, vec = np.linalg.eig(np.cov(y, rowvar=False))  # general eig on purpose: not eigh
    order = np.argsort(lam.real)[::-1]
    lam, vec = lam.real[order], vec.real[:, order]
    cum = np.cumsum(lam) / lam.sum()
    k = next(j for j in range(1, len(lam) + 1) if cum[j - 1] > cpv)
    p2 = vec[:, k:]
    th = [np.sum(lam[k:] ** i) for i in (1, 2, 3)]
    h0 = 1 - 2 * th[0] * th[2] / (3 * th[1] ** 2)
    c = stats.norm.ppf(1 - alpha)
    q_jm = th[0] * (c * np.sqrt(2 * th[1] * h0**2) / th[0] + 1 + th[1] * h0 * (h0 - 1) / th[0] ** 2) ** (1 / h0)
    q_box = th[1] / th[0] * stats.chi2.ppf(1 - alpha, th[0] ** 2 / th[1])

    def spe(z):
        x = (z - avg) / std
        return float(np.sum((p2 @ p2.T @ x) ** 2))

    return k, h0, q_jm, q_box, spe


@pytest.mark.parametrize("solver", ["eigh", "subspace"])
def test_q_alpha_and_spe_reproduce_the_paper_on_fixed_data(solver):
    rng = np.random.default_rng(7)
    t, d = 200, 12
    x, _ = workload(rng, t + 40, d)
    cols = keys([f"vm{j // 4}/m{j % 4}" for j in range(d)])
    # (the paper's window slides: each normal row joins M and the oldest leaves)
    det = PcaSpeDetector(
        "s", {"t": t, "min_rows": t, "solver": solver, "cpv": 0.9, "alpha": 0.002, "reference": "sliding"}
    )
    assert feed(det, cols, x[:t]) == []  # warm-up: the window fills, nothing is judged
    k, h0, q_jm, _q_box, spe = paper_model(x[:t], 0.9, 0.002)
    assert h0 > 0
    st = det.status()
    assert st["method"] == "jackson-mudholkar" and st["k"] == k
    assert st["q_alpha"] == pytest.approx(q_jm, rel=1e-9)
    # a row that breaks the correlation: flagged, with score = SPE and threshold = Q_α
    bad = x[t].copy()
    bad[3] += 40.0
    (a,) = feed(det, cols, [bad], start=t)
    assert a.score == pytest.approx(spe(bad), rel=1e-9)
    assert a.threshold == pytest.approx(q_jm, rel=1e-9)
    assert a.score > a.threshold
    assert a.details["method"] == "jackson-mudholkar" and a.details["k"] == k and a.details["rows_in_A"] == 1
    # an abnormal row leaves the model untouched; a normal row joins M and the model moves
    assert det.status()["q_alpha"] == pytest.approx(q_jm, rel=1e-12)
    good = x[t + 1]
    assert feed(det, cols, [good], start=t + 1) == []
    st = det.status()
    assert st["spe"] == pytest.approx(spe(good), rel=1e-9) and st["q_alpha"] == pytest.approx(q_jm, rel=1e-9)
    k2, _, q2, _, _ = paper_model(np.vstack([x[1:t], good]), 0.9, 0.002)
    assert st["model_q_alpha"] == pytest.approx(q2, rel=1e-9) and st["model_q_alpha"] != st["q_alpha"]
    assert det.status()["rows_in_A"] == 0


def test_box_threshold_where_h0_is_not_positive():
    # a residual spectrum dominated by one eigenvalue plus many small ones gives h₀ ≤ 0
    rng = np.random.default_rng(3)
    t, d = 400, 60
    f = rng.standard_normal((t, 3))
    load = np.zeros((3, d))
    load[0] = 3.0
    load[1, : d // 2] = 3.0
    load[1, d // 2 :] = -3.0
    load[2, :2] = [2.0, -2.0]  # one weak direction left in the residual space
    x = stored(100 + f @ load + 0.8 * rng.standard_normal((t, d)))
    k, h0, q_jm, q_box, spe = paper_model(x, 0.9, 0.002)
    assert h0 <= 0, h0
    cols = keys([f"vm{j // 6}/m{j % 6}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "min_rows": t})
    feed(det, cols, x)
    st = det.status()
    assert st["method"] == "box" and st["h0"] <= 0
    assert st["q_alpha"] == pytest.approx(q_box, rel=1e-9)
    # the model module exposes the same choice for the same θ
    lam = np.sort(np.linalg.eigvalsh(np.corrcoef(x, rowvar=False)))[::-1]
    q, method, h = pm.q_alpha(pm.thetas(lam[k:]), 0.002)
    assert method == "box" and h <= 0 and q == pytest.approx(q_box, rel=1e-9)
    # nearly every row of the normal data stays under the Box threshold (J–M would be meaningless)
    flagged = np.mean([spe(r) > q_box for r in x])
    assert flagged < 0.02


def test_q_alpha_direct_cases():
    # Jackson–Mudholkar for a flat residual spectrum matches χ² reasoning: θ = (n, n, n) → h₀ = 1/3
    q, method, h0 = pm.q_alpha((10.0, 10.0, 10.0), 0.002)
    assert method == "jackson-mudholkar" and h0 == pytest.approx(1 / 3)
    assert q == pytest.approx(stats.chi2.ppf(0.998, 10), rel=0.02)  # Wilson–Hilferty accuracy
    assert pm.q_alpha((0.0, 0.0, 0.0), 0.002)[1] == "degenerate"


# --------------------------------------------------------------------------- incremental vs batch


def test_incremental_window_equals_batch_refit_after_many_updates():
    rng = np.random.default_rng(11)
    t, d = 150, 16
    x, _ = workload(rng, 4000, d, offset=1e5)  # a large offset: cancellation would show
    w = pm.WindowStats(d, t)
    top = pm.TopEigen(full_every=10**9)
    worst = 0.0
    for i, row in enumerate(x):
        w.add(row)  # 4000 adds, 3850 of them with a removal
        if i >= t and i % 97 == 0:
            inc = pm.fit(w.n, w.mean, w.cov(), top=top)
            ref = pm.fit_window(w.rows())
            probe = x[(i * 7) % len(x)] + rng.standard_normal(d)
            for a, b in (
                (inc.q_alpha, ref.q_alpha),
                (inc.spe(inc.standardise(probe)), ref.spe(ref.standardise(probe))),
            ):
                worst = max(worst, abs(a - b) / abs(b))
    assert w.updates == 4000 + 3850 and w.refreshes == 0
    rows = w.rows()
    np.testing.assert_allclose(w.mean, rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        w.cov(), np.cov(rows, rowvar=False), rtol=1e-6, atol=1e-6 * np.abs(np.cov(rows, rowvar=False)).max()
    )
    assert worst <= 1e-6, worst
    assert top.hits > 0  # the warm-started solver was really used


# --------------------------------------------------------------------------- awkward columns


def test_constant_near_constant_and_nan_columns_raise_no_alarm():
    rng = np.random.default_rng(5)
    t, d = 120, 8
    x, _ = workload(rng, 600, d)
    x = np.hstack([x, np.full((600, 1), 42.0), 7.0 + 1e-12 * rng.standard_normal((600, 1)), np.zeros((600, 1))])
    # scattered stale cells, and one column stale for a long stretch
    nan_at = rng.random(x.shape) < 0.01
    x[nan_at] = np.nan
    x[300:400, 2] = np.nan
    cols = keys([f"vm{j // 4}/m{j % 4}" for j in range(d)] + ["vm9/const", "vm9/flat", "vm9/zero"])
    # α = 10⁻⁵: the false alarms the threshold allows by design (one in 500 rows at 0.2 %) stay out
    det = PcaSpeDetector("s", {"t": t, "alpha": 1e-5})
    assert feed(det, cols, x) == []
    st = det.status()
    assert st["ready"] and st["method"] in ("jackson-mudholkar", "box")
    assert "vm9/const" in st["columns"]
    # the long-stale column was dropped and came back; a constant column that moves is noticed
    assert st["column_changes"] >= 1
    later, _ = workload(np.random.default_rng(5), 1, d)
    moved = np.concatenate([x[-1, :d], [43.0, 7.0, 0.0]])
    moved[:d] = np.where(np.isfinite(moved[:d]), moved[:d], 50.0)
    got = feed(det, cols, [moved], start=600)
    assert got and got[0].blame and got[0].blame[0].column.column == "vm9/const" and got[0].blame[0].direction == "up"


def feed_tracked(det, cols, x, deltas, start=0):
    out = []
    for i, v in enumerate(x):
        row = Row(
            "s", start + i, float(start + i), cols, np.asarray(v, dtype=float), deltas=np.asarray(deltas, dtype=float)
        )
        if a := det.update(row):
            out.append(a)
    return out


@pytest.mark.parametrize("delta_noise, alarms", [(1.0, False), (0.0, True)])
def test_a_constant_column_moving_within_its_tracking_error_is_not_an_anomaly(delta_noise, alarms):
    """Seen on the lab: a disk-ops copy held at 1.0007 for the whole window steps to 1.032 (its
    Δ is 2 ops/s) and memory moves by half a percent (Δ = 1 %) when a process exits. Against
    the rel_std floor alone that scores ~10⁶; against Δ it is noise. A move of many Δ still
    alarms and is blamed on that column."""
    rng = np.random.default_rng(11)
    d = 6
    x, _ = workload(rng, 300, d)
    ops = np.full((300, 1), 1.0007)
    mem = np.full((300, 1), 15.36)
    x = np.hstack([x, ops, mem])
    cols = keys([f"vm0/m{j}" for j in range(d)] + ["vm0/DiskWriteOps", "vm0/MemoryUtilization"])
    deltas = [0.01] * d + [2.0, 1.0]
    det = PcaSpeDetector("s", {"t": 200, "alpha": 1e-4, "delta_noise": delta_noise})
    assert feed_tracked(det, cols, x, deltas) == []
    step = np.concatenate([x[-1, :d], [1.032, 15.86]])
    got = feed_tracked(det, cols, [step], deltas, start=300)
    assert bool(got) is alarms, [a.score for a in got]
    if delta_noise:
        assert set(det.status()["quiet_columns"]) == {"vm0/DiskWriteOps", "vm0/MemoryUtilization"}
        # a real move (many Δ) of the same column still alarms and is blamed on it
        jump = np.concatenate([x[-1, :d], [1.0007, 40.0]])
        got = feed_tracked(det, cols, [jump], deltas, start=301)
        assert got and got[0].blame[0].column.column == "vm0/MemoryUtilization"
        assert got[0].details["trigger"] == "quiet" and got[0].details["quiet_breaches"] == ["vm0/MemoryUtilization"]


def test_only_constant_columns_never_alarm():
    det = PcaSpeDetector("s", {"t": 50})
    cols = keys(["a/x", "a/y"])
    assert feed(det, cols, np.tile([3.0, 4.0], (200, 1))) == []
    st = det.status()
    assert st["method"] == "none" and st["quiet_columns"] == ["a/x", "a/y"]
    # each is still watched on its own
    got = feed(det, cols, [[3.0, 4.5]], start=200)
    assert [b.column.column for b in got[0].blame] == ["a/y"] and got[0].blame[0].direction == "up"


def test_column_set_changes_are_followed_without_alarms():
    rng = np.random.default_rng(9)
    t, d = 100, 12
    x, _ = workload(rng, 1200, d)
    names = [f"vm{j // 4}/m{j % 4}" for j in range(d)]
    det = PcaSpeDetector("s", {"t": t, "min_rows": 60, "alpha": 1e-5})
    assert feed(det, keys(names), x[:300]) == []
    # vm2 leaves: detection goes on at once over the remaining columns
    assert feed(det, keys(names[:8]), x[300:500, :8], start=300) == []
    st = det.status()
    assert st["columns"] == names[:8] and st["ready"] and st["window_rows"] == t
    # vm2 comes back (and in a different column order): the old model scores until the new set has its rows
    order = names[8:] + names[:8]
    back = np.hstack([x[500:, 8:], x[500:, :8]])
    assert feed(det, keys(order), back[:30], start=500) == []
    assert det.status()["pending_rows"] == 30 and det.status()["columns"] == names[:8]
    assert feed(det, keys(order), back[30:200], start=530) == []
    st = det.status()
    assert st["pending_columns"] is None and sorted(st["columns"]) == sorted(names)
    # the new model sees a fault on a column that was new
    fault = back[200:230].copy()
    fault[:, 1] += 60.0
    got = feed(det, keys(order), fault, start=700)
    assert len(got) >= 25
    assert {b.column.column for a in got for b in a.blame} == {order[1]}


def test_bad_rows_and_options_are_reported_clearly():
    det = PcaSpeDetector("s", {})
    with pytest.raises(ValueError, match="3 values for 2 columns"):
        det.update(Row("s", 0, 0.0, keys(["a/x", "a/y"]), np.zeros(3)))
    with pytest.raises(ValueError, match="unknown option.*'window'"):
        PcaSpeDetector("s", {"window": 10})
    with pytest.raises(ValueError, match="alpha"):
        PcaSpeDetector("s", {"alpha": 2})
    with pytest.raises(ValueError, match="t='x' is not an integer"):
        PcaSpeDetector("s", {"t": "x"})


# --------------------------------------------------------------------------- the operator's verdict


#: Q_α lets α of normal rows through by design; these tests assert zero, so α is tiny here.
QUIET = 1e-5


def _shifted_workload():
    rng = np.random.default_rng(21)
    t, d = 200, 9
    x, load = workload(rng, 900, d, factors=2)
    # from row 400 on a new, steady workload: one VM's metric runs 40 units higher
    x[400:, 4] += 40.0
    return t, d, x


def test_normal_verdict_folds_A_into_M_and_the_workload_stops_alarming():
    t, d, x = _shifted_workload()
    cols = keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "alpha": QUIET})
    assert feed(det, cols, x[:400]) == []
    first = feed(det, cols, x[400:460], start=400)
    assert len(first) == 60  # every row of the new workload is abnormal; A grows
    assert det.status()["rows_in_A"] == 60 and first[-1].details["rows_in_A"] == 60
    rows_of_a = [Row("s", a.index, float(a.index), cols, x[a.index]) for a in first]
    assert det.accept_normal(rows_of_a) == 60
    assert det.status()["rows_in_A"] == 0
    assert feed(det, cols, x[460:900], start=460) == []


def test_without_the_verdict_the_same_workload_keeps_alarming():
    t, d, x = _shifted_workload()
    cols = keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "alpha": QUIET, "rebaseline_after": 0})  # the paper: wait for the verdict
    assert feed(det, cols, x[:400]) == []
    got = feed(det, cols, x[400:900], start=400)
    assert len(got) == 500
    # A spans at most the window's t rows; the run's length keeps counting (the alarm level)
    assert det.status()["rows_in_A"] == t and det.status()["run_length"] == 500
    assert got[-1].details["first_row_of_A"] == 900 - t and got[-1].details["run_length"] == 500


def test_confirm_waits_for_consecutive_abnormal_rows():
    t, d, x = _shifted_workload()
    cols = keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "confirm": 3})
    got = feed(det, cols, x[:460])
    # a lone false alarm of α = 0.2 % would need three abnormal rows in a row to be reported
    assert [a.index for a in got] == list(range(402, 460))
    assert got[0].details["rows_in_A"] == 3 and got[0].details["first_row_of_A"] == 400


def test_accept_normal_without_rows_uses_the_current_A():
    t, d, x = _shifted_workload()
    cols = keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "alpha": QUIET})
    assert len(feed(det, cols, x[:460])) == 60
    assert det.accept_normal() == 60
    assert feed(det, cols, x[460:900], start=460) == []


def test_registered_through_the_plugin_manager():
    factory = find_factory(get_plugin_manager(), "pca-spe")
    det = factory.create("host-1", {"t": 50})
    assert det.name == "pca-spe" and det.status()["scope"] == "host-1"
    assert not math.isnan(det.opts.alpha)


# --------------------------------------------------------------------------- unattended operation


def test_an_unanswered_episode_is_learnt_after_rebaseline_after_rows_and_a_new_change_still_alarms():
    t, d, x = _shifted_workload()
    cols = keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "alpha": QUIET, "rebaseline_after": 100})
    assert feed(det, cols, x[:400]) == []
    got = feed(det, cols, x[400:900], start=400)
    # the shift alarms for exactly 100 rows, then its latest rows join M and the rest is normal
    assert [a.index for a in got] == list(range(400, 500))
    note = got[-1].details["audit"]
    assert note["action"] == "model re-baselined"
    assert note["details"]["episode_first_row"] == 400 and note["details"]["rows_learnt"] == 100
    assert all("audit" not in a.details for a in got[:-1])
    assert det.status()["rebaselines"] == 1 and det.status()["unattended_episodes"] == [400]
    # a new change on top of the learnt workload is still caught and blamed
    y = x[840:900].copy()  # rows of the learnt workload again, with one metric far off
    y[:, 7] += 12 * x[400:900, 7].std()
    new = feed(det, cols, y, start=900)
    assert len(new) == 60 and new[-1].blame[0].column == cols[7]


def test_a_malicious_verdict_restores_the_window_from_before_the_episode():
    t, d, x = _shifted_workload()
    cols = keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "alpha": QUIET, "rebaseline_after": 100})
    feed(det, cols, x[:400])
    before = det.win.stats.rows().copy()
    got = feed(det, cols, x[400:600], start=400)
    assert len(got) == 100
    alarm_rows = [Row("s", a.index, float(a.index), cols, x[a.index]) for a in got]
    assert det.reject(alarm_rows) > 0
    assert np.array_equal(det.win.stats.rows(), before)  # the episode's rows are out of M
    assert det.status()["unattended_episodes"] == []
    # the attack going on alarms again, and is not re-learnt while it lasts
    again = feed(det, cols, x[600:900], start=600)
    assert len(again) == 300 and all("audit" not in a.details for a in again)
    # a verdict on an episode never learnt changes nothing
    assert det.reject(alarm_rows) == 0


def test_a_normal_verdict_on_a_learnt_episode_folds_nothing_twice():
    t, d, x = _shifted_workload()
    cols = keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "alpha": QUIET, "rebaseline_after": 100})
    feed(det, cols, x[:400])
    got = feed(det, cols, x[400:600], start=400)
    n = det.win.stats.n
    assert det.accept_normal([Row("s", a.index, float(a.index), cols, x[a.index]) for a in got]) == 0
    assert det.win.stats.n == n and det.status()["unattended_episodes"] == []


def test_rebaseline_after_below_confirm_is_refused_naming_the_option():
    with pytest.raises(atomwatch.OptionError, match="rebaseline_after"):
        PcaSpeDetector("s", {"confirm": 5, "rebaseline_after": 2})

"""ATOM's three identification steps: the numbers against the paper's formulas, and the blamed
(VM, metric) pairs and directions on data with a known fault."""

from __future__ import annotations

import numpy as np
import pytest

from atomwatch import Row, SeriesKey
from atomwatch.plugins.pca_spe import model as pm
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector

METRICS = [
    "CPUUtilization",
    "NetworkIn",
    "NetworkOut",
    "DiskReadOps",
    "DiskWriteOps",
    "DiskReadBytes",
    "DiskWriteBytes",
]
VMS = ["vm1", "vm2", "vm3"]
COLUMNS = [f"{vm}/{m}" for vm in VMS for m in METRICS]  # d = 21, as in the paper's experiments
KEYS = tuple(SeriesKey.from_column(c) for c in COLUMNS)


def hosts(rng, rows):
    """Three VMs whose metrics follow their own workloads (and a shared one), plus noise."""
    shared = rng.standard_normal((rows, 1))
    own = rng.standard_normal((rows, 3))
    x = np.empty((rows, 21))
    for v in range(3):
        drive = 0.5 * shared[:, 0] + own[:, v]
        for m in range(7):
            j = v * 7 + m
            x[:, j] = 100.0 * (m + 1) + 10.0 * (m + 1) * drive + 2.0 * rng.standard_normal(rows)
    return x


def run(det, x, start=0):
    out = []
    for i, v in enumerate(x):
        a = det.update(Row("h", start + i, float(start + i), KEYS, v))
        if a is not None:
            out.append(a)
    return out


def col(name):
    return COLUMNS.index(name)


def test_blames_the_faulty_metrics_with_their_direction():
    rng = np.random.default_rng(2)
    x = hosts(rng, 1000)
    det = PcaSpeDetector("h", {"t": 720, "alpha": 1e-5})
    assert run(det, x[:760]) == []
    fault = x[760:800].copy()
    std = x[:760].std(axis=0, ddof=1)
    fault[:, col("vm2/NetworkOut")] += 8 * std[col("vm2/NetworkOut")]  # a DDoS bot sending
    fault[:, col("vm2/CPUUtilization")] += 6 * std[col("vm2/CPUUtilization")]
    fault[:, col("vm3/DiskWriteOps")] -= 7 * std[col("vm3/DiskWriteOps")]  # a stalled writer
    got = run(det, fault, start=760)
    assert len(got) == 40  # one alarm per abnormal row, A growing
    last = got[-1]
    assert last.details["rows_in_A"] == 40
    blamed = {b.column.column: b for b in last.blame}
    assert set(blamed) == {"vm2/NetworkOut", "vm2/CPUUtilization", "vm3/DiskWriteOps"}
    assert blamed["vm2/NetworkOut"].direction == "up" and blamed["vm2/CPUUtilization"].direction == "up"
    assert blamed["vm3/DiskWriteOps"].direction == "down"
    for b in last.blame:
        assert b.details["rd"] >= 2 and b.details["stddev"] >= 3 and b.score == b.details["stddev"]
        assert (b.details["meandiff"] > 0) == (b.direction == "up")
    assert blamed["vm2/NetworkOut"].column.vm_name == "vm2" and blamed["vm2/NetworkOut"].column.metric == "NetworkOut"
    # the idle-looking columns of vm1 are never blamed, in any row
    assert not any(b.column.vm_name == "vm1" for a in got for b in a.blame)


def test_identification_numbers_follow_the_paper():
    rng = np.random.default_rng(4)
    x = hosts(rng, 400)
    window, a_rows = x[:300], x[300:320].copy()
    a_rows[:, 5] += 5 * window[:, 5].std(ddof=1)
    model = pm.fit_window(window)
    # independent: Y, B, residual matrices and the three steps as written in section IV-C-3
    avg, std = window.mean(axis=0), window.std(axis=0, ddof=1)
    y = (window - avg) / std
    b = (a_rows - avg) / std
    lam, vec = np.linalg.eigh(np.cov(y, rowvar=False))
    lam, vec = lam[::-1], vec[:, ::-1]
    k = int(np.argmax(np.cumsum(lam) / lam.sum() > 0.9)) + 1
    assert k == model.k
    p2 = vec[:, k:]
    yr, br = y @ p2 @ p2.T, b @ p2 @ p2.T
    a_j = (br**2).sum(axis=0) / len(a_rows)
    y_j = (yr**2).sum(axis=0) / len(window)
    rd = (a_j - y_j) / y_j
    stddev = np.abs(a_rows - avg).mean(axis=0) / std
    meandiff = (a_rows.mean(axis=0) - avg) / avg
    found = {f.index: f for f in pm.identify(model, a_rows, b1=2, b2=3)}
    assert set(found) == set(np.flatnonzero(rd >= 2))
    for j, f in found.items():
        assert f.rd == pytest.approx(rd[j], rel=1e-8)
        assert f.stddev == pytest.approx(stddev[j], rel=1e-10)
        assert f.meandiff == pytest.approx(meandiff[j], rel=1e-10)
        assert f.abnormal == (stddev[j] >= 3)
    assert found[5].abnormal and found[5].direction == "up"
    # abnormal columns first, then by stddev and rd, both descending
    got = pm.identify(model, a_rows, b1=2, b2=3)
    order = [(not f.abnormal, -(f.stddev or 0.0), -f.rd) for f in got]
    assert order == sorted(order) and len(got) > 2
    # the detector asks for every abnormal column and at most a few of the others
    running = pm.RunningIdentification(model)
    for r in a_rows:
        running.add(r)
    kept = [(f.index, f.abnormal) for f in running.findings(2, 3, normal_kept=1)]
    assert (
        kept
        == [(f.index, f.abnormal) for f in got if f.abnormal] + [(f.index, False) for f in got if not f.abnormal][:1]
    )


def test_b1_b2_are_options():
    rng = np.random.default_rng(2)
    x = hosts(rng, 900)
    fault = x[760:780].copy()
    fault[:, 2] += 8 * x[:760, 2].std(ddof=1)
    strict = PcaSpeDetector("h", {"alpha": 1e-5, "b2": 50})
    run(strict, x[:760])
    got = run(strict, fault, start=760)
    assert got and all(a.blame == [] for a in got)  # flagged, but nothing passes stddev ≥ 50
    assert any(c["column"] == COLUMNS[2] for c in got[-1].details["candidates"])  # still shown as a candidate


def test_stale_cells_in_A_do_not_break_identification():
    rng = np.random.default_rng(2)
    x = hosts(rng, 900)
    det = PcaSpeDetector("h", {"alpha": 1e-5})
    run(det, x[:760])
    fault = x[760:780].copy()
    fault[:, 9] += 10 * x[:760, 9].std(ddof=1)
    fault[::3, 0] = np.nan
    got = run(det, fault, start=760)
    assert len(got) == 20
    assert [b.column.column for b in got[-1].blame] == [COLUMNS[9]]
    assert got[0].details["stale_columns"] == [COLUMNS[0]]

"""``atomwatch detect`` run as a real subprocess over generated and real traces, and the
evaluation functions it prints (point-wise and point-adjusted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, have_module, require
from pipeline import lab_delta_args

from atomwatch import evaluation as ev
from atomwatch.detectors import DetectorError, anomalies_of, run_detector
from atomwatch.trace_rows import trace_rows
from atomwatch.traces import read_trace, write_trace

COLS = [f"vm{j // 3}/m{j % 3}" for j in range(9)]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atomwatch", "detect", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """A recording folder: 900 rows, a fault on vm1/m0 at rows 600–649, labels.csv beside it."""
    folder = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(0)
    f = rng.standard_normal((900, 2))
    x = 50 + 5 * f @ rng.standard_normal((2, 9)) + 0.5 * rng.standard_normal((900, 9))
    x[600:650, 3] += 40.0
    write_trace(folder / "values.csv", COLS, x, 1_700_000_000 + 10.0 * np.arange(900))
    label = np.zeros(900, dtype=int)
    label[600:650] = 1
    label[800:810] = 1  # a labelled segment with nothing in the data: a miss for every detector
    with (folder / "labels.csv").open("w") as fh:
        fh.write("row,timestamp,label,class,vm\n")
        for i, v in enumerate(label):
            fh.write(f"{i},{1_700_000_000 + 10 * i},{v},{'noise' if v else 'normal'},{'vm1' if v else ''}\n")
    return folder


def test_json_output_over_a_recording_uses_its_labels(recording):
    p = cli(str(recording), "--detector", "pca-spe", "--set", "t=300", "--set", "pca-spe.alpha=0.00001", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"detector", "rows", "anomalies", "evaluation"}
    assert out["detector"] == "pca-spe" and out["rows"] == 900
    rows = [a["row"] for a in out["anomalies"]]
    assert rows == list(range(600, 650))  # rows counted from 0 after the header
    for a in out["anomalies"]:
        assert set(a) == {"row", "score", "threshold", "blame"} and a["score"] > a["threshold"]
    assert {b["column"] for a in out["anomalies"] for b in a["blame"]} == {"vm1/m0"}
    assert all(b["direction"] == "up" for a in out["anomalies"] for b in a["blame"])
    e = out["evaluation"]
    assert e["segments"] == 2 and e["segments_detected"] == 1
    assert e["point_wise"]["confusion_matrix"] == [[840, 0], [10, 50]]
    assert e["point_wise"]["precision"] == 1.0 and e["point_wise"]["recall"] == pytest.approx(50 / 60)


def test_table_output_and_explicit_labels(recording, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text("label\n" + "".join("1\n" if 600 <= i < 700 else "0\n" for i in range(900)))
    p = cli(str(recording / "values.csv"), "--set", "t=300", "--set", "alpha=0.00001", "--labels", str(labels))
    assert p.returncode == 0, p.stderr
    assert "pca-spe over" in p.stdout and "900 rows, 50 flagged" in p.stdout
    assert "vm1/m0 ↑" in p.stdout
    adjusted = next(line for line in p.stdout.splitlines() if line.startswith("point-adjusted"))
    assert adjusted.split()[1:4] == ["1.000", "1.000", "1.000"]  # the one segment is detected
    pointwise = next(line for line in p.stdout.splitlines() if line.startswith("point-wise"))
    assert pointwise.split()[2] == "0.500"  # recall 50/100


def test_errors_go_to_stderr_with_status_2(recording, tmp_path):
    p = cli(str(recording), "--detector", "no-such-detector")
    assert p.returncode == 2 and "no detector named 'no-such-detector'" in p.stderr and "pca-spe" in p.stderr
    p = cli(str(tmp_path / "missing.csv"))
    assert p.returncode == 2 and "missing.csv: no such file" in p.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a/x,a/y\n1,2\n3,oops\n")
    p = cli(str(bad))
    assert p.returncode == 2 and "line 3" in p.stderr and "'oops'" in p.stderr
    p = cli(str(recording), "--set", "alpha=7")
    assert p.returncode == 2 and "alpha" in p.stderr
    p = cli(str(recording), "--labels", str(bad))
    assert p.returncode == 2 and "label" in p.stderr
    assert p.stdout == ""


def test_any_detector_plugin_works(recording, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "every_tenth.py").write_text(
        "import atomwatch\n"
        "class D:\n"
        "    name = 'every-tenth'\n"
        "    def update(self, row):\n"
        "        if row.index % 10 == 0:\n"
        "            return [atomwatch.Anomaly('every-tenth', row.scope, row.index, row.ts, 1.0, 0.5,"
        " [atomwatch.Blame(row.columns[0], 'down', 1.0)])]\n"
        "class F:\n"
        "    name = 'every-tenth'\n"
        "    description = 'flags rows 0, 10, 20 ...'\n"
        "    def create(self, scope, options):\n"
        "        return D()\n"
        "@atomwatch.hookimpl\n"
        "def register_detectors():\n"
        "    return [F()]\n"
    )
    p = cli(str(recording), "--detector", "every-tenth", "--plugins-dir", str(plugins), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [a["row"] for a in out["anomalies"]] == list(range(0, 900, 10))
    assert out["anomalies"][0]["blame"] == [
        {"column": "vm0/m0", "vm_uuid": "vm0", "vm_name": "vm0", "metric": "m0", "direction": "down", "score": 1.0}
    ]
    assert out["evaluation"]["point_adjusted"]["tp"] == 60


@pytest.mark.parametrize("name", ["precog/test1.csv", "precog/m_100_test.csv.gz"])
def test_smoke_on_real_traces(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not here")
    p = cli(str(path), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["rows"] == read_trace(path).rows > 0
    # one series: no residual subspace, so PCA-SPE has nothing to flag
    assert out["anomalies"] == []


# --------------------------------------------------------------------------- offline and evaluation


def test_offline_rows_are_what_the_live_path_sees(recording):
    trace = read_trace(recording)
    rows = list(trace_rows(trace, "host-a"))
    assert len(rows) == 900 and rows[0].index == 0 and rows[-1].index == 899
    assert rows[1].ts - rows[0].ts == 10.0 and rows[0].scope == "host-a"
    assert rows[0].columns[3].vm_name == "vm1" and rows[0].columns[3].metric == "m0"

    class Broken:
        name = "broken"

        def update(self, row):
            if row.index == 5:
                raise RuntimeError("boom")

    with pytest.raises(DetectorError, match="'broken' failed at row 5: RuntimeError: boom"):
        run_detector(Broken(), rows)
    with pytest.raises(DetectorError, match="returned str"):
        anomalies_of("nope", "x", 3)


def test_delta_tracks_the_trace_as_an_agent_would(tmp_path):
    """--delta: the detector sees the controller's copies (within Δ of the recorded values) and
    each column's Δ. A column constant over the window that then steps by less than its Δ is
    tracking noise live, and so it is offline; without --delta the same step is an anomaly."""
    rng = np.random.default_rng(3)
    f = rng.standard_normal((400, 2))
    x = 50 + 5 * f @ rng.standard_normal((2, 6)) + 0.5 * rng.standard_normal((400, 6))
    mem = np.full((400, 1), 15.4)
    mem[300:] += 0.5  # a process exits, memory settles half a point higher
    write_trace(tmp_path / "t.csv", [f"vm{j}/m" for j in range(6)] + ["vm0/MemoryUtilization"], np.hstack([x, mem]))

    rows = list(trace_rows(read_trace(tmp_path / "t.csv"), "s", {"MemoryUtilization": 1.0, "*": 0.2}))
    assert rows[0].deltas.tolist() == [0.2] * 6 + [1.0]
    copies = np.array([r.values for r in rows])
    assert np.all(np.abs(copies - np.hstack([x, mem])) <= rows[0].deltas)
    assert (copies[1:] != copies[:-1]).sum() < (np.hstack([x, mem])[1:] != np.hstack([x, mem])[:-1]).sum()

    def flagged(*extra):
        out = cli(str(tmp_path / "t.csv"), "--json", "--set", "alpha=0.0001", "--set", "confirm=2", *extra)
        assert out.returncode == 0, out.stderr
        return [a["row"] for a in json.loads(out.stdout)["anomalies"]]

    assert any(r >= 300 for r in flagged()), "the raw step is an anomaly"
    assert not any(r >= 300 for r in flagged("--delta", "MemoryUtilization=1", "--delta", "0.2"))
    bad = cli(str(tmp_path / "t.csv"), "--delta", "MemoryUtilization=-1")
    assert bad.returncode == 2 and "--delta 'MemoryUtilization=-1': Δ must be a finite number ≥ 0" in bad.stderr


def test_point_adjust_marks_whole_segments():
    y = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 1])
    p = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    assert ev.segments(y) == [(1, 4), (6, 8), (9, 10)]
    np.testing.assert_array_equal(ev.point_adjust(y, p), [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    r = ev.evaluate(y, p)
    assert r["point_wise"]["confusion_matrix"] == [[3, 1], [5, 1]]
    assert r["point_wise"]["precision"] == 0.5 and r["point_wise"]["recall"] == pytest.approx(1 / 6)
    assert r["point_adjusted"]["tp"] == 3 and r["point_adjusted"]["recall"] == pytest.approx(0.5)
    assert r["point_adjusted"]["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert r["segments_detected"] == 1 and r["segments"] == 3
    none = ev.evaluate(np.zeros(5, int), np.zeros(5, int))
    assert none["point_wise"]["f1"] == 0.0 and none["point_wise"]["tn"] == 5


def test_scores_match_scikit_learn():
    """evaluation.scores counts with numpy; scikit-learn (a test tool, not a dependency) gives the
    same precision, recall, F1 and confusion matrix, edge cases included."""
    require(have_module("sklearn"), "scikit-learn is not installed (pip install 'atomwatch[test]')")
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(7)
    cases = [
        (np.zeros(6, int), np.zeros(6, int)),
        (np.ones(4, int), np.zeros(4, int)),
        (np.zeros(4, int), np.ones(4, int)),
    ]
    cases += [(np.ones(5, int), np.ones(5, int))]
    cases += [(rng.random(n) < q, rng.random(n) < r) for n in (1, 7, 50, 500) for q in (0.1, 0.5) for r in (0.05, 0.6)]
    for t, p in cases:
        got = ev.scores(t, p)
        want = precision_recall_fscore_support(t, p, labels=[1], average="binary", pos_label=1, zero_division=0)
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx(list(want[:3]), rel=1e-12, abs=0)
        assert got["confusion_matrix"] == confusion_matrix(t, p, labels=[0, 1]).tolist()
    # no points at all (scikit-learn refuses them): every count and score is 0
    assert ev.scores([], []) == dict(ev.scores([0], [0]), tn=0, confusion_matrix=[[0, 0], [0, 0]])


def test_evaluation_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        ev.scores([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="only 0/1"):
        ev.scores([0, 2], [0, 1])


@pytest.mark.parametrize(
    "run, alpha, pairs",
    [
        ("lab-normal-1s-b", "1e-5", True),
        ("lab-normal-1s", "1e-5", False),
        ("lab-normal-1s-b", "1e-12", False),
        ("lab-normal-1s", "1e-12", False),
    ],
)
def test_lab_normal_work_has_heavy_tails_that_alpha_must_cover(run, alpha, pairs):
    """The lab detection test's normal work (two runs in tests/data: 1 s ticks, its 90 s day,
    replayed through tracking at the lab's Δs): at α = 10⁻⁵ pca-spe flags consecutive normal
    rows in one run and none in the other — the SPE tail is far heavier than the Gaussian Q_α
    assumes, and run-dependent — and at the test's α = 10⁻¹² no two consecutive rows in either,
    as that test requires of its live run."""
    out = cli(
        str(Path(__file__).parent / "data" / run),
        "--set",
        "confirm=1",
        "--set",
        "min_rows=240",
        "--set",
        f"alpha={alpha}",
        *lab_delta_args(),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    flagged = {a["row"] for a in json.loads(out.stdout)["anomalies"]}
    consecutive = sorted(r for r in flagged if r - 1 in flagged)
    assert bool(consecutive) is pairs, (run, alpha, sorted(flagged))

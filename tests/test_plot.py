"""``atomwatch plot``: SPE against Q_α to PNG, abnormal instants marked, labels shaded."""

from __future__ import annotations

import csv
import subprocess

import numpy as np
import pytest

from atomwatch.traces import write_trace


@pytest.fixture
def recording(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    cols = [f"vm{i}/{m}" for i in (1, 2) for m in ("CPUUtilization", "NetworkOut", "DiskWriteOps")]
    t = np.arange(n)
    values = 20 + 5 * np.sin(t / 40)[:, None] + rng.normal(0, 1, (n, len(cols))) + np.arange(len(cols))
    values[500:540, cols.index("vm2/NetworkOut")] += 80
    (tmp_path / "rec").mkdir()
    write_trace(tmp_path / "rec" / "values.csv", cols, values, 1.7e9 + 10 * t)
    with open(tmp_path / "rec" / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "timestamp", "label", "class", "vm"])
        for i in range(n):
            on = 500 <= i < 540
            w.writerow([i, 1.7e9 + 10 * i, int(on), "ddos" if on else "normal", "vm2" if on else ""])
    return tmp_path / "rec"


def test_plot_writes_a_png_with_the_attack_flagged(recording, tmp_path):
    import matplotlib.image

    out = tmp_path / "spe.png"
    proc = subprocess.run(
        ["atomwatch", "plot", str(recording), "--detector", "pca-spe", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 300 and img.shape[1] > 800
    flagged = int(proc.stdout.split(", ")[1].split()[0])
    assert flagged >= 30, proc.stdout  # most of the 40 attack rows


def test_series_gives_score_and_threshold_per_row(recording):
    from atomwatch.cli.plot import series
    from atomwatch.detectors import find_factory
    from atomwatch.pluginmanager import get_plugin_manager
    from atomwatch.trace_rows import trace_rows
    from atomwatch.traces import read_trace

    det = find_factory(get_plugin_manager(), "pca-spe").create("offline", {})
    scores, thresholds, abnormal = series(det, trace_rows(read_trace(recording)))
    assert len(scores) == len(thresholds) == 600
    assert set(range(500, 540)) & set(abnormal), "the attack rows are flagged"
    attack = scores[500:540]
    assert np.all(attack > thresholds[500:540]), "every attack row's SPE is above Q_α"
    assert np.nanmedian(scores[300:500]) < np.nanmedian(thresholds[300:500])


def test_plot_errors_are_clear(tmp_path):
    proc = subprocess.run(
        ["atomwatch", "plot", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "nope.csv: no such file" in proc.stderr

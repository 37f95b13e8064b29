"""``atomwatch plot``: SPE against Q_α to PNG, abnormal instants marked, labels shaded.

The figure tests look at its artists (axis labels, spans, texts, the legend's place), not pixels."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomwatch.traces import write_trace

DATA_TRACE = Path(__file__).resolve().parents[1] / "atomwatch" / "data" / "lab-cryptominer.csv"


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
        [sys.executable, "-m", "atomwatch", "plot", str(recording), "--detector", "pca-spe", "--out", str(out)],
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
        [sys.executable, "-m", "atomwatch", "plot", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "nope.csv: no such file" in proc.stderr


# --- the figure itself -----------------------------------------------------------------------


def _pca_run(path):
    from atomwatch.cli.plot import run_detector_for_plot
    from atomwatch.detectors import find_factory
    from atomwatch.pluginmanager import get_plugin_manager
    from atomwatch.trace_rows import trace_rows
    from atomwatch.traces import read_trace

    trace = read_trace(path)
    det = find_factory(get_plugin_manager(), "pca-spe").create("offline", {})
    return trace, run_detector_for_plot(det, trace_rows(trace))


def _spans(ax, gid):
    """(left, right) in data x of every shaded span carrying ``gid``."""
    out = []
    for p in ax.patches:
        if p.get_gid() == gid:
            xs = p.get_path().transformed(p.get_patch_transform()).vertices[:, 0]
            out.append((float(xs.min()), float(xs.max())))
    return sorted(out)


def _texts(fig):
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and a.get_text())]


def test_figure_has_time_warm_up_labels_blame_and_a_legend_clear_of_the_data(recording, tmp_path):
    import matplotlib.image

    from atomwatch.cli.plot import figure, time_axis
    from atomwatch.traces import read_labels

    trace, run = _pca_run(recording)
    labels = read_labels(recording / "labels.csv", rows=trace.rows)
    fig = figure(trace, run, labels, "pca-spe")
    ax = fig.axes[0]
    x, _, dates = time_axis(trace)
    assert dates and ax.get_xlabel() == "time (UTC)"
    import matplotlib.dates as mdates

    assert isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
    first = mdates.num2date(ax.get_xlim()[0])
    assert first.timestamp() == pytest.approx(1.7e9, abs=1e-3)  # the trace's first timestamp, not row 0

    # warm-up: one span from the first row to the first row the detector calls itself ready
    first_ready = int(np.argmax(run.ready))
    assert 0 < first_ready <= 31, first_ready  # pca-spe's min_rows: max(30, 2·6 columns)
    assert not run.ready[:first_ready].any()
    (warm,) = _spans(ax, "warm-up")
    assert warm[0] == pytest.approx(x[0]) and warm[1] == pytest.approx(x[first_ready])

    # the labelled ddos segment, rows 500-539, shaded over exactly those rows
    (seg,) = _spans(ax, "label:ddos")
    assert seg[0] == pytest.approx(x[500]) and seg[1] == pytest.approx(x[540])
    assert not _spans(ax, "label:normal")

    # the blamed column is named in the title and on the attack's episode
    assert run.blamed()[0][0] == "vm2/NetworkOut"
    assert "blamed: vm2/NetworkOut" in ax.get_title()
    notes = [t for t in ax.texts if t.get_gid() == "episode"]
    assert any("vm2/NetworkOut" in t.get_text() for t in notes)

    # the legend is outside the axes and clear of its tick labels, axis label and title
    (legend,) = fig.legends
    names = [t.get_text() for t in legend.get_texts()]
    assert {"labelled: ddos", "warm-up (detector not ready)", "score (SPE)", "threshold (Q_α)"} <= set(names)
    fig.canvas.draw()  # runs the constrained layout
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert not box.overlaps(ax.get_window_extent(renderer))
    assert not box.overlaps(ax.get_tightbbox(renderer))
    assert box.y1 <= ax.get_tightbbox(renderer).y0  # below the axes
    fig_box = fig.bbox
    assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 and box.y0 >= fig_box.y0  # and not cut off

    out = tmp_path / "figure.png"
    fig.savefig(out)
    assert matplotlib.image.imread(out).shape[1] > 800


def test_rows_on_the_x_axis_when_the_trace_has_no_usable_timestamps(tmp_path):
    from atomwatch.cli.plot import figure, run_detector_for_plot
    from atomwatch.trace_rows import trace_rows
    from atomwatch.traces import read_trace, write_trace

    rng = np.random.default_rng(1)
    values = rng.normal(10, 1, (80, 3))
    write_trace(tmp_path / "plain.csv", ["a", "b", "c"], values)
    write_trace(tmp_path / "backwards.csv", ["a", "b", "c"], values, 1.7e9 - np.arange(80))
    write_trace(tmp_path / "seconds.csv", ["a", "b", "c"], values, 5.0 * np.arange(80))

    class Quiet:
        """A detector that says nothing of readiness and finds nothing."""

        name = "quiet"

        def update(self, row):
            return None

        def status(self):
            return {}

    for name, label in [
        ("plain.csv", "row (tick number; the trace has no timestamps)"),
        ("backwards.csv", "row (tick number; the trace's timestamps are not increasing)"),
        ("seconds.csv", "time since the first row (s)"),
    ]:
        trace = read_trace(tmp_path / name)
        run = run_detector_for_plot(Quiet(), trace_rows(trace))
        assert run.ready is None
        fig = figure(trace, run, None, "quiet")
        ax = fig.axes[0]
        assert ax.get_xlabel() == label
        assert not _spans(ax, "warm-up"), "no warm-up drawn for a detector that does not report one"
        assert "no row above the threshold" in ax.get_title()
        if name == "seconds.csv":
            assert ax.get_xlim()[1] == pytest.approx(400.0)  # 80 rows of 5 s


def test_blame_of_any_detector_is_named(tmp_path):
    from atomwatch.cli.plot import figure, run_detector_for_plot
    from atomwatch.trace_rows import trace_rows
    from atomwatch.traces import read_trace, write_trace
    from atomwatch.types import Anomaly, Blame

    write_trace(tmp_path / "t.csv", ["vm1/cpu", "vm1/net"], np.ones((50, 2)), 1.7e9 + np.arange(50))
    trace = read_trace(tmp_path / "t.csv")

    class Flags:
        name = "flags"

        def __init__(self):
            self.score = None

        def update(self, row):
            self.score = 5.0 if 20 <= row.index < 25 else 0.5
            if self.score > 1:
                return Anomaly("flags", "s", row.index, row.ts, self.score, 1.0, [Blame(row.columns[1], "up", 4.0)])
            return None

        def status(self):
            return {"score": self.score if self.score is not None and self.score > 0 else None, "threshold": 1.0}

    run = run_detector_for_plot(Flags(), trace_rows(trace))
    assert run.abnormal == list(range(20, 25))
    assert run.blamed() == [("vm1/net", 5)]
    from atomwatch.traces import Labels

    klass = ["normal"] * 50
    klass[30:40] = ["flash-crowd"] * 10  # a benign class, kept at label 0
    klass[20:25] = ["exfil"] * 5
    labels = Labels("l.csv", (np.array(klass) == "exfil").astype(np.int64), klass, [""] * 50)
    fig = figure(trace, run, labels, "flags", title="my title")
    ax = fig.axes[0]
    assert ax.get_title().startswith("my title\n") and "vm1/net (5 rows)" in ax.get_title()
    assert [t.get_text().strip() for t in ax.texts if t.get_gid() == "episode"] == ["vm1/net"]
    assert ax.get_ylabel() == "score (log)"
    assert "abnormal (5 rows)" in _texts(fig)
    x = ax.get_lines()[0].get_xdata()
    (benign,) = _spans(ax, "label:flash-crowd")
    assert benign == (pytest.approx(x[30]), pytest.approx(x[40]))
    assert [p.get_hatch() for p in ax.patches if p.get_gid() == "label:flash-crowd"] == ["//"]
    assert {"labelled: exfil", "flash-crowd (label 0)"} <= set(_texts(fig))


def test_plot_finds_the_labels_beside_a_csv_trace(tmp_path):
    src = DATA_TRACE
    shutil.copy(src, tmp_path / "miner.csv")
    shutil.copy(src.with_name("lab-cryptominer.labels.csv"), tmp_path / "miner.labels.csv")
    out = tmp_path / "miner.png"
    proc = subprocess.run(
        [sys.executable, "-m", "atomwatch", "plot", str(tmp_path / "miner.csv"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"labels: {tmp_path / 'miner.labels.csv'}" in proc.stdout
    assert "blamed: vm2/CPUUtilization" in proc.stdout and "," not in proc.stdout.split("\n", 1)[1]
    assert out.stat().st_size > 10_000


def test_plot_refuses_an_unwritable_out_clearly(recording, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "atomwatch", "plot", str(recording), "--out", str(tmp_path / "no-such-dir" / "x.png")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--out" in proc.stderr and "no-such-dir" in proc.stderr and "Traceback" not in proc.stderr

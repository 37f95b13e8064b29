"""``atomwatch plot`` speed: drawing and saving the figure against running the detector it shows.
Prints one JSON object.

For each trace (the lab's ``ddos`` recording, 240 rows, labelled; a synthetic one of 20,000 rows ×
6 columns with timestamps, an attack and labels): ``detect_s`` — PCA-SPE over every row with its
status read after each (:func:`atomwatch.cli.plot.run_detector_for_plot`, the baseline: the work a
plot cannot avoid); ``draw_s`` — :func:`atomwatch.cli.plot.figure` and ``savefig`` to PNG (Agg);
``bare_draw_s`` — the plot as it was before issue 19 (score and threshold, log scale, legend
inside, ``tight_layout``), the baseline of ``ratio_draw_over_bare``, what the time axis, shading,
notes and the legend's layout cost; ``ratio_draw_over_detect`` — what the picture adds on top of
the detection. Times are CPU seconds of this process (best of a few), since the machine is shared.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from atomwatch.cli.plot import figure, run_detector_for_plot
from atomwatch.detectors import find_factory
from atomwatch.pluginmanager import get_plugin_manager
from atomwatch.trace_rows import trace_rows
from atomwatch.traces import read_labels, read_trace, write_trace
from benchmarks._common import emit, machine

LAB = Path(__file__).resolve().parents[1] / "tests" / "data" / "lab-ddos"


def synthetic(folder: Path, n: int = 20_000) -> Path:
    rng = np.random.default_rng(0)
    cols = [f"vm{i}/{m}" for i in (1, 2) for m in ("CPUUtilization", "NetworkOut", "DiskWriteOps")]
    t = np.arange(n)
    values = 20 + 5 * np.sin(t / 400)[:, None] + rng.normal(0, 1, (n, len(cols))) + np.arange(len(cols))
    attack = (t >= n // 2) & (t < n // 2 + 400)
    values[attack, cols.index("vm2/NetworkOut")] += 80
    folder.mkdir()
    write_trace(folder / "values.csv", cols, values, 1.7e9 + 10 * t)
    with (folder / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "timestamp", "label", "class", "vm"])
        for i in range(n):
            w.writerow([i, 1.7e9 + 10 * i, int(attack[i]), "ddos" if attack[i] else "normal", ""])
    return folder


def cpu_seconds(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(path: Path, out: Path, repeat: int) -> dict[str, float]:
    import matplotlib.pyplot as plt

    trace = read_trace(path)
    labels = read_labels(path, rows=trace.rows)
    factory = find_factory(get_plugin_manager(), "pca-spe")
    holder = {}

    def detect() -> None:
        holder["run"] = run_detector_for_plot(factory.create("offline", {}), trace_rows(trace))

    def draw() -> None:
        fig = figure(trace, holder["run"], labels, "pca-spe")
        fig.savefig(out)
        plt.close(fig)

    def bare() -> None:
        fig, ax = plt.subplots(figsize=(11, 4.2), dpi=110)
        ax.plot(holder["run"].scores, label="score")
        ax.plot(holder["run"].thresholds, ls="--", label="threshold")
        ax.set_yscale("log")
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)

    detect_s = cpu_seconds(detect, repeat)
    draw_s = cpu_seconds(draw, repeat)
    bare_s = cpu_seconds(bare, repeat)
    return {
        "rows": trace.rows,
        "columns": len(trace.columns),
        "detect_s": round(detect_s, 4),
        "draw_s": round(draw_s, 4),
        "bare_draw_s": round(bare_s, 4),
        "ratio_draw_over_bare": round(draw_s / bare_s, 3),
        "ratio_draw_over_detect": round(draw_s / detect_s, 3),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        result = {
            "benchmark": "plot",
            "machine": machine(),
            "lab_ddos": measure(LAB, tmp_path / "lab.png", repeat=5),
            "synthetic_20k": measure(synthetic(tmp_path / "syn"), tmp_path / "syn.png", repeat=3),
        }
    emit(result)


if __name__ == "__main__":
    main()

"""Cost of one abnormal row of pca-spe against the length of its anomaly episode.

Prints one JSON object. A synthetic host (three VMs of eight metrics, units from 1 to 10⁵, one
column constant, so the quiet-column rule is in play) fills the default window (t = 720), then
one VM's CPU goes up and its outgoing traffic down for good: every row from there on is abnormal
and joins A. Two detectors over the same rows:

* ``running`` — the detector as it is: identification (rd, stddev, meandiff) and the quiet-column
  rule read from sums of A kept as rows join and leave it;
* ``recomputing`` — the baseline, the detector as it was: both recomputed over every row of A at
  each abnormal row (``RecomputingDetector`` of ``tests/test_pca_episode.py``, with the quiet
  columns' excess computed row by row as it was).

``per_row_us``: for an episode length L ∈ {1, 100, 700}, the detector holding the first L − 1
abnormal rows is copied, its model fitted (a normal row's refit is not an abnormal row's cost),
and rows L … L + 9 are timed one ``update`` each; the figure is the best over ``--reps`` copies
of the median of those ten (a burst of load on a shared machine spoils a copy, not the figure).
``flat`` says whether every length's figure is within 20 % of the one at L = 1; ``ratio`` is
recomputing / running at each length.

``detect``: a 13,000-row trace of the same host with long anomalies (300 to 900 rows each, a
third of the rows) through both detectors as ``atomwatch detect`` feeds it (one
``update`` per row): wall seconds, and whether both flagged the same rows. ``--write-trace
FILE`` writes that trace as CSV (``FILE`` and its labels beside it) for timing the command itself.

Run from the repository root (the baseline lives in the tests): ``python -m benchmarks.pca_episode
[--reps R] [--trace-rows N] [--quick] [--write-trace FILE]``. BLAS runs single-threaded.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from atomwatch import Row
from atomwatch.plugins.pca_spe import kernels
from atomwatch.plugins.pca_spe import model as pm
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector
from benchmarks._common import emit, machine
from tests.test_pca_episode import RecomputingDetector, as_rows, generated_host

LENGTHS = (1, 100, 700)
TIMED = 10  # rows timed from each length on


class TodayDetector(RecomputingDetector):
    """The baseline exactly as it cost: each row of A's excess computed by its own call."""

    def _excess_over_A(self, quiet: pm.QuietColumns, a: np.ndarray) -> np.ndarray:
        return np.array([quiet.excess(r) for r in a])


def episode_rows(seed: int = 1, normal: int = 800, abnormal: int = 720) -> list[Row]:
    rng = np.random.default_rng(seed)
    cols, x = generated_host(rng, normal + abnormal)
    std = x[:normal].std(axis=0, ddof=1)
    x[normal:, 0] += 6 * std[0]
    x[normal:, 2] -= 6 * std[2]
    return as_rows(cols, x)


def per_row(cls: type[PcaSpeDetector], rows: list[Row], normal: int, reps: int) -> dict[str, float]:
    det = cls("h", {"rebaseline_after": 0})
    for r in rows[:normal]:
        det.update(r)
    out: dict[str, float] = {}
    done = 0  # abnormal rows the detector holds
    for length in LENGTHS:
        for r in rows[normal + done : normal + length - 1]:
            if det.update(r) is None:
                raise RuntimeError(f"row {r.index} was not abnormal: the benchmark's episode is broken")
        done = length - 1
        medians = []
        for _ in range(reps):
            d = copy.deepcopy(det)
            d.win.model()
            secs = []
            for r in rows[normal + done : normal + done + TIMED]:
                t0 = time.perf_counter()
                d.update(r)
                secs.append(time.perf_counter() - t0)
            medians.append(statistics.median(secs))
        out[str(length)] = min(medians) * 1e6
        out[f"{length}_median_of_reps"] = statistics.median(medians) * 1e6
    return out


def long_trace(rows: int, seed: int = 7) -> tuple[list[Row], np.ndarray]:
    """The host with long anomalies: (rows, labels). Anomalies of 300–900 rows, 400–1,200 normal
    rows apart, after 1,500 normal ones; in half of them the constant column moves too."""
    rng = np.random.default_rng(seed)
    cols, x = generated_host(rng, rows)
    std = x[:1500].std(axis=0, ddof=1)
    labels = np.zeros(rows, dtype=np.int64)
    start = 1500
    while start < rows - 200:
        end = min(rows, start + int(rng.integers(300, 900)))
        vm = int(rng.integers(3))
        x[start:end, 8 * vm] += 6 * std[8 * vm]
        x[start:end, 8 * vm + 2] -= 6 * std[8 * vm + 2]
        if rng.random() < 0.5:
            x[start:end, 3] += 5.0
        labels[start:end] = 1
        start = end + int(rng.integers(400, 1200))
    return as_rows(cols, x), labels


def detect(rows: list[Row]) -> dict[str, float | int | bool]:
    out: dict[str, float | int | bool] = {"rows": len(rows)}
    flagged = {}
    for name, cls in (("running", PcaSpeDetector), ("recomputing", TodayDetector)):
        det = cls("offline", {"rebaseline_after": 0})
        t0 = time.perf_counter()
        flagged[name] = [r.index for r in rows if det.update(r) is not None]
        out[f"{name}_s"] = time.perf_counter() - t0
    out["abnormal_rows"] = len(flagged["running"])
    out["same_rows_flagged"] = flagged["running"] == flagged["recomputing"]
    out["ratio"] = out["recomputing_s"] / out["running_s"]
    return out


def write_trace(path: Path, rows: list[Row], labels: np.ndarray) -> None:
    with path.open("w") as f:
        f.write("timestamp," + ",".join(c.column for c in rows[0].columns) + "\n")
        for r in rows:
            f.write(f"{10 * r.index}," + ",".join(repr(float(v)) for v in r.values) + "\n")
    with path.with_name(path.stem + "_labels.csv").open("w") as f:
        f.write("label\n" + "".join(f"{v}\n" for v in labels))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="copies timed per episode length (default 7)")
    ap.add_argument("--trace-rows", type=int, default=13000, help="rows of the detect trace (default 13,000)")
    ap.add_argument("--quick", action="store_true", help="3 reps, a 3,000-row trace (a smoke run)")
    ap.add_argument("--write-trace", type=Path, metavar="FILE", help="also write the detect trace as CSV")
    args = ap.parse_args()
    reps, trace_rows = (3, 3000) if args.quick else (args.reps, args.trace_rows)
    trace, labels = long_trace(trace_rows)
    if args.write_trace:
        write_trace(args.write_trace, trace, labels)
    out: dict = {"machine": machine(), "kernels_compiled": kernels.JIT, "kernels_warm_up_s": kernels.warm_up()}
    normal = 800
    rows = episode_rows(normal=normal, abnormal=max(LENGTHS) + TIMED)
    gc.disable()  # (a collection inside one timed row is noise, not the row's cost)
    try:
        with threadpool_limits(1):
            out["per_row_us"] = {
                "d": 24,
                "t": 720,
                "running": per_row(PcaSpeDetector, rows, normal, reps),
                "recomputing": per_row(TodayDetector, rows, normal, reps),
            }
            pr = out["per_row_us"]
            pr["ratio"] = {str(n): pr["recomputing"][str(n)] / pr["running"][str(n)] for n in LENGTHS}
            pr["running_700_over_1"] = pr["running"]["700"] / pr["running"]["1"]
            pr["flat"] = all(abs(pr["running"][str(n)] / pr["running"]["1"] - 1) <= 0.2 for n in LENGTHS)
            gc.enable()
            out["detect"] = detect(trace)
    finally:
        gc.enable()
    emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cost of a pca-spe row while its fixed reference fills, with and without the refit schedule.

Prints one JSON object. A synthetic host of ten VMs × eight metrics (d = 80: five workloads
mixed into every column, plus noise) runs through two detectors with the defaults
(``reference=fixed``, ``min_rows`` = 2·d = 160, ``t`` = 720) but for ``refit_growth``:

* ``scheduled`` — the default 0.05: the model is refitted when M has grown 5 % since the last
  fit, and exactly when it is full;
* ``every_row`` — the baseline, 0: a refit at every row that joins M, as before.

``fill_us_per_row``: CPU per ``update`` (process time, BLAS on one thread as in the controller)
over the rows that fill M, from ``min_rows`` to ``t``; ``full_us_per_row``: over the next
``--full-rows`` rows (M full, fitted once); ``fits``: how many times each refitted during the
fill; ``flagged``: rows each found abnormal (the same stationary rows: about α of them);
``ratio``: every_row / scheduled. The fill happens on every scope at once when a controller
starts on a running fleet (``docs/scale.md``).

Run: ``python -m benchmarks.pca_fill [--full-rows N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from atomwatch import Row, SeriesKey
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector
from benchmarks._common import emit, machine

VMS, METRICS = 10, 8


def host_rows(n: int, seed: int) -> np.ndarray:
    """``n`` rows of d = 80 columns: five workloads mixed into every column, noise 10 % of it."""
    rng = np.random.default_rng(seed)
    d = VMS * METRICS
    mix = rng.uniform(0.2, 1.0, (5, d))
    load = rng.standard_normal((n, 5))
    return 50.0 + 10.0 * load @ mix + rng.standard_normal((n, d))


def run(rows: np.ndarray, growth: float, full_rows: int) -> dict[str, Any]:
    d = rows.shape[1]
    columns = tuple(SeriesKey(f"uuid-{j // METRICS}", f"vm{j // METRICS}", f"m{j % METRICS}") for j in range(d))
    det = PcaSpeDetector("bench", {"refit_growth": growth})
    need, t = det.opts.rows_needed(d), det.opts.t
    fill, full, flagged, fitted = [], [], 0, set()
    for i, v in enumerate(rows):
        before = det.win.stats.n if det.win is not None else 0
        t0 = time.process_time()
        found = det.update(Row("bench", i, float(i), columns, v))
        spent = time.process_time() - t0
        flagged += found is not None
        if need <= before < t:
            fill.append(spent)
            fitted.add(det.win._fit_rows)  # (the rows M held at its latest fit)
        elif before == t and len(full) < full_rows:
            full.append(spent)
    return {
        "fill_rows": len(fill),
        "fill_us_per_row": round(1e6 * float(np.mean(fill)), 1),
        "full_us_per_row": round(1e6 * float(np.mean(full)), 1) if full else None,
        "fits": len(fitted),
        "flagged": flagged,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pca_fill", description=__doc__.split("\n")[0])
    p.add_argument("--full-rows", type=int, default=1000, help="rows timed once M is full (default 1000)")
    p.add_argument("--seed", type=int, default=16)
    args = p.parse_args(argv)
    threadpool_limits(limits=1, user_api="blas")
    rows = host_rows(720 + 160 + args.full_rows + 10, args.seed)
    run(rows[:400], 0.05, 10)  # compile and warm the kernels before either is timed
    every = run(rows, 0.0, args.full_rows)
    scheduled = run(rows, 0.05, args.full_rows)
    emit(
        {
            "benchmark": "pca_fill",
            "machine": machine(),
            "d": rows.shape[1],
            "scheduled": scheduled,
            "every_row": every,
            "ratio": round(every["fill_us_per_row"] / scheduled["fill_us_per_row"], 2),
        }
    )


if __name__ == "__main__":
    main()

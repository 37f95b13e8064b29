"""Memory of one pca-spe scope at steady state (a full window), as the controller holds it.

One host of 10 VMs × 8 metrics (d = 80) with the default window (``t`` = 720 rows) is fed
``t + 200`` rows of correlated work; the bytes it holds are what :mod:`tracemalloc` counts as
allocated by the detector (numpy arrays included) once its window is full. The baseline, in the
same run, is the same detector with its window's rows stored as float64 (as before issue 16's
float32 window). Printed with the projection to 20,000 hosts.

Usage: ``python -m benchmarks.scope_memory [--d 80] [--t 720]``.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

import numpy as np

from atomwatch.plugins.pca_spe import model
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector
from atomwatch.series import SeriesKey
from atomwatch.types import Row
from benchmarks._common import emit, machine


def held_bytes(d: int, t: int, dtype: type) -> int:
    rng = np.random.default_rng(0)
    columns = tuple(SeriesKey.from_column(f"vm{j // 8}/m{j % 8}") for j in range(d))
    load = rng.standard_normal((4, d))
    rows = 50 + 5 * rng.standard_normal((t + 200, 4)) @ load + 0.3 * rng.standard_normal((t + 200, d))
    original = model.WindowStats.__init__

    def init(self, d_: int, capacity: int) -> None:
        original(self, d_, capacity)
        self.buf = np.empty((capacity, d_), dtype=dtype)

    model.WindowStats.__init__ = init
    try:
        gc.collect()
        tracemalloc.start()
        det = PcaSpeDetector("bench/host", {"t": t})
        for i, v in enumerate(rows):
            det.update(Row("bench/host", i, float(i), columns, v))
        gc.collect()
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert det.status()["ready"]
        return size
    finally:
        model.WindowStats.__init__ = original


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scope_memory", description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=80)
    p.add_argument("--t", type=int, default=720)
    args = p.parse_args(argv)
    held_bytes(args.d, 100, np.float64)  # imports, kernels and caches: allocated once, not per scope
    before = held_bytes(args.d, args.t, np.float64)
    now = held_bytes(args.d, args.t, np.float32)
    emit(
        {
            "benchmark": "scope_memory",
            "machine": machine(),
            "d": args.d,
            "t": args.t,
            "bytes_per_scope": {"float64_window": before, "float32_window": now},
            "ratio": round(now / before, 2),
            "gb_at_20000_hosts": {
                "float64_window": round(before * 20000 / 1e9, 2),
                "float32_window": round(now * 20000 / 1e9, 2),
            },
        }
    )


if __name__ == "__main__":
    main()

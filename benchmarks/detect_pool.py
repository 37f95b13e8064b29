"""What scoring in worker processes costs and frees: the detection thread against ``detect_workers``.

The same rows — ``--hosts`` simulated hosts of 10 VMs × 8 metrics (:mod:`benchmarks._fleet`'s
traces through ATOM's tracking rule, d = 80), ``--ticks`` ticks after a warm-up — go through
pca-spe three ways in this process: :class:`DetectorSet` (the detection thread's work, the
baseline) and :class:`DetectionPool` with 1 and 2 workers. Measured as CPU time, so a machine
shared with other work changes little: the controller process's CPU per row (for the pool, the
pickling, pipes and merging the detection thread still does) and the workers' CPU per row (from
/proc through psutil), and whether all three found the same anomalies.

Usage: ``python -m benchmarks.detect_pool [--hosts 200] [--ticks 60]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import psutil
from threadpoolctl import threadpool_limits

from atomwatch.controller.detect_pool import DetectionPool
from atomwatch.controller.detection import DetectorSet
from atomwatch.detectors import detector_factories
from atomwatch.pluginmanager import PluginManager
from atomwatch.types import Row
from benchmarks._common import emit, machine
from benchmarks._fleet import Fleet

OPTIONS = {"pca-spe": {"min_rows": 30}}


def fleet_rows(hosts: int, ticks: int) -> list[list[Row]]:
    fleet = Fleet(0, hosts, 10)
    columns = [tuple(fleet.keys(i)) for i in range(hosts)]
    deltas = np.asarray(fleet.tracker.delta, dtype=float).reshape(hosts, -1)
    out = []
    for k in range(ticks):
        fleet.tracker.step(fleet.values(k, k >= ticks // 2).ravel())
        g = fleet.tracker.g.reshape(hosts, -1)
        out.append(
            [Row(f"scale/{fleet.host(i)}", k, float(k), columns[i], g[i].copy(), deltas[i]) for i in range(hosts)]
        )
    return out


def workers_cpu(pool: DetectionPool) -> float:
    return sum(sum(psutil.Process(w.proc.pid).cpu_times()[:2]) for w in pool.workers)


def measure(detection, ticks: list[list[Row]], warm: int) -> tuple[float, float, list]:
    """(this process's CPU s per row, the workers' CPU s per row, anomalies) over the measured ticks."""
    for rows in ticks[:warm]:
        detection.run(rows)
    w0 = workers_cpu(detection) if isinstance(detection, DetectionPool) else 0.0
    t0 = time.process_time()
    found = []
    n = 0
    for rows in ticks[warm:]:
        found += detection.run(rows)[0]
        n += len(rows)
    main = (time.process_time() - t0) / n
    workers = (workers_cpu(detection) - w0) / n if isinstance(detection, DetectionPool) else 0.0
    return main, workers, found


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detect_pool", description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=200)
    p.add_argument("--ticks", type=int, default=60, help="measured ticks (after 40 of warm-up)")
    args = p.parse_args(argv)
    threadpool_limits(limits=1, user_api="blas")
    warm = 40
    ticks = fleet_rows(args.hosts, warm + args.ticks)
    pm = PluginManager()
    pm.load_entry_points(allow="pca-spe")
    factories = {"pca-spe": detector_factories(pm)["pca-spe"]}
    thread_main, _, thread_found = measure(DetectorSet(factories, OPTIONS), ticks, warm)
    result = {
        "benchmark": "detect_pool",
        "machine": machine(),
        "hosts": args.hosts,
        "d": 80,
        "measured_rows": args.hosts * args.ticks,
        "thread": {"controller_us_per_row": round(1e6 * thread_main, 1), "anomalies": len(thread_found)},
    }
    key = sorted((a.scope, a.index) for a in thread_found)
    for k in (1, 2):
        pool = DetectionPool(k, ["pca-spe"], OPTIONS, pm)
        try:
            main_s, workers_s, found = measure(pool, ticks, warm)
        finally:
            pool.close()
        result[f"workers_{k}"] = {
            "controller_us_per_row": round(1e6 * main_s, 1),
            "workers_us_per_row": round(1e6 * workers_s, 1),
            "controller_ratio_to_thread": round(main_s / thread_main, 3),
            "total_ratio_to_thread": round((main_s + workers_s) / thread_main, 3),
            "same_anomalies": sorted((a.scope, a.index) for a in found) == key,
        }
    emit(result)


if __name__ == "__main__":
    main()

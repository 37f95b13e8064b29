"""Benchmark of the CoreDNS collector and simulator, printed as one JSON object.

1. Derivation: ms per scrape to parse a CoreDNS 1.11 text (from the simulator, ~250 samples) and
   derive the 25 series, against the bare ``prometheus_client`` parse of the same text measured
   in the same run (the ratio is the cost of the derivation on top of parsing).
2. Live collect: ms per ``collect()`` over real HTTP against N simulator endpoints on loopback
   (N = 1 and 8; the servers run in this process), against N plain sequential ``urllib`` fetches
   of the same URLs, each parsed in full with ``prometheus_client`` (the naive scraper).
3. Simulator: simulated seconds per wall second of ``record`` (1.11 format, 10 s ticks).

Usage: ``python -m benchmarks.coredns [--calls N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from atomwatch.lab.coredns_sim import CorednsSimulator, Event, SimConfig, SimulatorServer, record
from atomwatch.plugins.coredns.collector import CorednsCollector
from atomwatch.plugins.coredns.metrics import InstanceDeriver
from benchmarks._common import emit, machine, seconds_per_call


def derivation(calls: int) -> dict:
    sim = CorednsSimulator(SimConfig(seed=1), [Event("upstream-failure", 0, 600)])
    sim.advance_to(60)
    text = sim.exposition()
    samples = sum(len(f.samples) for f in text_string_to_metric_families(text))
    d = InstanceDeriver("bench")
    clock = [0.0]

    def derive() -> None:
        clock[0] += 10.0
        d.update(text, clock[0])

    def bare() -> None:
        for f in text_string_to_metric_families(text):
            for _ in f.samples:
                pass

    ours = seconds_per_call(derive, calls)
    base = seconds_per_call(bare, calls)
    return {
        "text_bytes": len(text),
        "samples": samples,
        "ms_per_scrape": round(ours["median"] * 1e3, 3),
        "baseline_bare_parse_ms": round(base["median"] * 1e3, 3),
        "ratio_to_bare_parse": round(ours["median"] / base["median"], 2),
    }


def live(n: int, calls: int) -> dict:
    servers = [
        SimulatorServer(CorednsSimulator(SimConfig(seed=i)), "127.0.0.1", 0, clock=None).start() for i in range(n)
    ]
    for s in servers:
        s.sim.advance_to(60)
    col = CorednsCollector([s.url for s in servers], timeout=2, retries=0, budget=5)
    try:
        col.collect()

        def fetch_all() -> None:  # the naive way: fetch one after the other, parse everything
            for s in servers:
                with urllib.request.urlopen(s.url, timeout=2) as r:
                    for f in text_string_to_metric_families(r.read().decode()):
                        for _ in f.samples:
                            pass

        ours = seconds_per_call(col.collect, calls, repeat=3)
        base = seconds_per_call(fetch_all, calls, repeat=3)
    finally:
        col.close()
        for s in servers:
            s.stop()
    return {
        "endpoints": n,
        "ms_per_collect": round(ours["median"] * 1e3, 2),
        "baseline_sequential_fetch_and_parse_ms": round(base["median"] * 1e3, 2),
        "ratio_to_sequential_fetch_and_parse": round(ours["median"] / base["median"], 2),
    }


def simulator(minutes: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        rec = record(Path(d) / "r", minutes=minutes, seed=1, tick=10)
        wall = time.perf_counter() - start
    return {
        "simulated_minutes": minutes,
        "rows": rec.rows,
        "wall_s": round(wall, 2),
        "simulated_s_per_wall_s": round(minutes * 60 / wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    emit(
        {
            "benchmark": "coredns",
            "machine": machine(),
            "derivation": derivation(args.calls),
            "live_collect": [live(1, max(10, args.calls // 10)), live(8, max(5, args.calls // 20))],
            "simulator_record": simulator(20),
        }
    )


if __name__ == "__main__":
    main()

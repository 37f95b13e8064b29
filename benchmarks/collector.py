"""Benchmark of the libvirt collector against per-domain libvirt calls, on real lab guests.

For 1 and 4 running lab guests (booted with ``atomwatch lab up``; the image must be built), it
times ``LibvirtCollector.collect()`` — one ``getAllDomainStats`` call per tick — and, in the same
run and interleaved tick by tick, a baseline that reads the same counters the usual way, one
domain at a time (``listAllDomains`` + per domain ``getCPUStats``, ``vcpus``, ``interfaceStats``,
``blockStats``, ``memoryStats``). Prints one JSON object: wall milliseconds per tick and per
domain, this process's CPU seconds per tick (all threads), and baseline/collector ratios.

    python -m benchmarks.collector [--ticks 30] [--guests 1,4] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

from atomwatch.lab import domains, testbed  # noqa: E402
from atomwatch.lab.paths import PREFIX, default_dir  # noqa: E402
from atomwatch.plugins.libvirt_collector import LibvirtCollector  # noqa: E402


class PerDomainBaseline:
    """Reads each running domain with its own calls (what a naive collector does)."""

    def __init__(self, conn, libvirt):
        self.conn = conn
        self.libvirt = libvirt
        self.devices: dict[str, tuple[list[str], list[str]]] = {}

    def _devices(self, dom) -> tuple[list[str], list[str]]:
        uuid = dom.UUIDString()
        if uuid not in self.devices:
            xml = dom.XMLDesc(0)
            nics = re.findall(r"<target dev='([^']+)'/>\s*<model", xml)
            disks = re.findall(r"<target dev='(vd\w+)' bus=", xml)
            self.devices[uuid] = (nics, disks)
        return self.devices[uuid]

    def collect(self) -> int:
        n = 0
        for dom in self.conn.listAllDomains(self.libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
            if not dom.name().startswith(PREFIX):
                continue
            nics, disks = self._devices(dom)
            dom.getCPUStats(True)
            dom.vcpus()
            for nic in nics:
                dom.interfaceStats(nic)
            for disk in disks:
                dom.blockStats(disk)
            dom.memoryStats()
            n += 1
        return n


def measure(fn, ticks: int, pause: float) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(ticks):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        time.sleep(pause)
    return walls, cpus


def bench(n: int, workdir: Path, ticks: int) -> dict:
    testbed.up(workdir, n)
    libvirt = domains.import_libvirt()
    collector = LibvirtCollector(budget=5.0, domains=rf"^{PREFIX}-guest\d+$")
    conn = domains.connect()
    baseline = PerDomainBaseline(conn, libvirt)
    # warm up both (first XML parse, first connection use)
    collector.collect()
    assert baseline.collect() == n, "not every guest runs"
    cw, cc, bw, bc = [], [], [], []
    for _ in range(ticks):  # interleaved: both see the same host load
        w, c = measure(collector.collect, 1, 0.05)
        cw += w
        cc += c
        w, c = measure(baseline.collect, 1, 0.05)
        bw += w
        bc += c
    seen = {k.vm_name for k in collector.collect().values}
    collector.close()
    conn.close()
    med = statistics.median
    return {
        "domains_seen": len(seen),
        "collector_ms_per_tick": round(1000 * med(cw), 3),
        "collector_ms_per_tick_per_domain": round(1000 * med(cw) / n, 3),
        "collector_cpu_s_per_tick": round(statistics.mean(cc), 6),
        "baseline_ms_per_tick": round(1000 * med(bw), 3),
        "baseline_ms_per_tick_per_domain": round(1000 * med(bw) / n, 3),
        "baseline_cpu_s_per_tick": round(statistics.mean(bc), 6),
        "ratio_wall_baseline_over_collector": round(med(bw) / med(cw), 2),
        "ratio_cpu_baseline_over_collector": round(statistics.mean(bc) / max(statistics.mean(cc), 1e-9), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=30)
    ap.add_argument("--guests", default="1,4", help="comma-separated guest counts (default 1,4)")
    ap.add_argument("--dir", type=Path, default=None, help="the lab's work directory (image built there)")
    ap.add_argument("--keep", action="store_true", help="leave the guests running afterwards")
    args = ap.parse_args()
    workdir = args.dir or default_dir()
    counts = [int(x) for x in args.guests.split(",")]
    results = {}
    state: dict = {}
    try:
        for n in counts:
            results[str(n)] = bench(n, workdir, args.ticks)
            state = testbed.read_state(workdir)
    finally:
        if not args.keep:
            testbed.down(workdir)
    print(
        json.dumps(
            {
                "benchmark": "libvirt collector: one getAllDomainStats per tick vs per-domain calls",
                "ticks": args.ticks,
                "domain_type": state.get("domain_type") or "qemu",
                "guests": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

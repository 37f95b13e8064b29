"""What observability costs: one scrape of the controller's /metrics, and the agent's per-tick
accounting, each against a baseline measured in the same run.

- *scrape*: :func:`atomwatch.controller.metrics.render_metrics` on a controller state of
  ``--hosts`` hosts (24 series each, a PCA-SPE status each) and ``--alarms`` live alarms blaming
  3 columns each, against rendering prometheus-client's process, platform and GC collectors
  alone (what any Python exporter pays); ``ratio`` = scrape / baseline.
- *tick accounting*: what the agent adds per tick for its metrics (three phase timings, values
  sampled / sent / suppressed, stale series and VMs) at ``--series`` series, against
  :meth:`AtomTracker.step` on the same series (the tracking itself); ``ratio`` = added / step.

    python -m benchmarks.observe [--hosts 200] [--alarms 50] [--series 240]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from types import SimpleNamespace

import numpy as np
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest

import atomwatch
from atomwatch.agent.metrics import PhaseTimes
from atomwatch.controller.alarms import AlarmStore
from atomwatch.controller.commands import AgentCommands
from atomwatch.controller.history import History
from atomwatch.controller.ingest import HostState, Ingest
from atomwatch.controller.metrics import render_metrics
from atomwatch.controller.scopes import ScopeRows
from atomwatch.mqtt import Faults
from atomwatch.series import SeriesKey
from atomwatch.tracking import AtomTracker
from benchmarks._common import emit, machine, seconds_per_call

METRICS = ("CPUUtilization", "NetworkIn", "NetworkOut", "DiskReadOps", "DiskWriteOps", "DiskReadBytes")


def controller_state(hosts: int, alarms: int) -> SimpleNamespace:
    ingest = Ingest()
    status = {}
    for h in range(hosts):
        state = HostState("eu1", f"hv{h}", alive=True, synced=True, fresh_at=time.monotonic(), last_seen=time.time())
        state.keys = {i: SeriesKey(f"u{h}-{i // 6}", f"vm{i // 6}", METRICS[i % 6], "") for i in range(24)}
        ingest.hosts[("eu1", f"hv{h}")] = state
        status[f"eu1/hv{h}"] = {"row": 100, "ts": 0.0, "detectors": {"pca-spe": {"spe": 3.0 + h, "q_alpha": 9.0}}}
    store = AlarmStore(":memory:")
    for a in range(alarms):
        blame = [
            atomwatch.Blame(column=SeriesKey(f"u{a}-{v}", f"vm{v}", METRICS[v], ""), direction="up", score=5.0)
            for v in range(3)
        ]
        store.record(atomwatch.Anomaly("pca-spe", f"eu1/hv{a % hosts}", 10, 0.0, 20.0, 9.0, blame))
    return SimpleNamespace(
        config=SimpleNamespace(metrics_blame_limit=50),
        scope_status=status,
        alarms=store,
        ingest=ingest,
        rows_handled=0,
        rows_late=0,
        history=History(),
        connected=asyncio.Event(),
        faults=Faults(logging.getLogger("bench")),
        scope_rows=ScopeRows(),
        commands=AgentCommands(lambda: None, lambda aw, name: None),
    )


def process_only() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=200)
    p.add_argument("--alarms", type=int, default=50)
    p.add_argument("--series", type=int, default=240)
    args = p.parse_args()

    state = controller_state(args.hosts, args.alarms)
    text = render_metrics(state)
    scrape = seconds_per_call(lambda: render_metrics(state), 20)
    baseline = seconds_per_call(process_only, 20)
    state.alarms.shutdown()

    rng = np.random.default_rng(0)
    n = args.series
    tracker = AtomTracker()
    tracker.resize(n, 0.0)
    tracker.set_delta(np.arange(n), np.full(n, 1.0))
    f = rng.normal(50, 3, (64, n))
    f[:, ::37] = np.nan  # a few stale series
    vm_of = [f"u{i // 8}" for i in range(n)]
    active = np.ones(n, dtype=bool)
    times = PhaseTimes(("collect", "track", "publish"))
    stats = {"values_sampled": 0, "values_tracked": 0, "values_suppressed": 0}
    k = iter(range(10**9))

    def step():
        return tracker.step(f[next(k) % 64])

    def accounting():
        row = f[next(k) % 64]
        send = row > 50  # stands for the tracker's mask
        readable = int((active & ~np.isnan(row)).sum())
        tracked = int((send & active).sum())
        stats["values_sampled"] += readable
        stats["values_tracked"] += tracked
        stats["values_suppressed"] += readable - tracked
        stale = active & np.isnan(row)
        _ = int(stale.sum()), len({vm_of[a] for a in np.flatnonzero(stale)})
        for phase in ("collect", "track", "publish"):
            times.observe(phase, 0.003)

    tracking = seconds_per_call(step, 2000)
    added = seconds_per_call(accounting, 2000)
    emit(
        {
            "benchmark": "observe",
            "machine": machine(),
            "scrape": {
                "hosts": args.hosts,
                "live_alarms": args.alarms,
                "bytes": len(text),
                "series": sum(1 for line in text.decode().splitlines() if line and not line.startswith("#")),
                "ms": round(scrape["median"] * 1e3, 3),
                "baseline_process_collectors_ms": round(baseline["median"] * 1e3, 3),
                "ratio": round(scrape["median"] / baseline["median"], 2),
            },
            "tick_accounting": {
                "series": n,
                "us": round(added["median"] * 1e6, 2),
                "baseline_tracker_step_us": round(tracking["median"] * 1e6, 2),
                "ratio": round(added["median"] / tracking["median"], 2),
            },
        }
    )


if __name__ == "__main__":
    main()

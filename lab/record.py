"""``atomwatch lab record``: run a scenario on the live lab and write a labelled recording.

Every tick the libvirt collector (:mod:`atomwatch.plugins.libvirt_collector`) is sampled directly, so the
recording holds the true per-tick values (no tracking error). The output folder is the recording
format of :mod:`atomwatch.traces`: ``values.csv`` (timestamp + ``<vm>/<metric>`` columns),
``labels.csv`` (row,timestamp,label,class,vm — from the scenario schedule alone),
``scenario.json`` and ``README.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from atomwatch.plugins.libvirt_collector import METRICS, LibvirtCollector
from atomwatch.traces import write_trace

from . import testbed
from .domains import DEFAULT_URI, connect
from .driver import ScenarioDriver
from .paths import PREFIX, guest_name
from .scenarios import Scenario

log = logging.getLogger(__name__)


def columns_for(guests: int) -> list[str]:
    return [f"{guest_name(i)}/{m}" for i in range(1, guests + 1) for m in METRICS]


def record(
    scenario: Scenario,
    minutes: float,
    out: Path,
    tick: float = 2.0,
    workdir: Path | None = None,
    uri: str = DEFAULT_URI,
    command: str | None = None,
    day_seconds: int | None = None,
) -> dict:
    """Run ``scenario`` for ``minutes`` and write the recording to ``out``; returns a summary."""
    from .paths import default_dir

    if not minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {minutes}")
    if not tick > 0:
        raise ValueError(f"--tick must be > 0 seconds, got {tick}")
    rows = int(round(minutes * 60.0 / tick))
    if rows < 2:
        raise ValueError(f"--minutes {minutes} at --tick {tick} gives {rows} rows; need at least 2")
    workdir = workdir or default_dir()
    state = testbed.up(workdir, scenario.guests, uri)
    conn = connect(uri)
    doms = testbed.guest_domains(conn, scenario.guests)
    driver = ScenarioDriver(scenario, minutes, doms, day_seconds=day_seconds)
    driver.setup()

    collector = LibvirtCollector(uri=uri, budget=max(0.2, 0.8 * tick), domains=rf"^{PREFIX}-guest\d+$")
    columns = columns_for(scenario.guests)
    index = {c: j for j, c in enumerate(columns)}
    values = np.full((rows, len(columns)), np.nan)
    stamps = np.zeros(rows)

    collector.collect()  # the first sample of every counter: row 1 then has rates
    driver.start_clock()
    t0 = driver.t0
    assert t0 is not None
    wall0 = time.time()
    log.info("recording %s: %d rows at %.2f s (%.1f min) into %s", scenario.name, rows, tick, minutes, out)
    try:
        for i in range(1, rows + 1):
            deadline = t0 + i * tick
            driver.run_due(deadline)
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            reading = collector.collect()
            stamps[i - 1] = wall0 + (time.monotonic() - t0)
            for key, v in reading.values.items():
                j = index.get(key.column)
                if j is not None and v is not None and math.isfinite(v):
                    values[i - 1, j] = v
            if i % max(1, int(60 / tick)) == 0:
                log.info("recorded %d/%d rows", i, rows)
    finally:
        driver.finish()
        collector.close()
        conn.close()
    done_events = driver.done
    day = driver.day_seconds

    out.mkdir(parents=True, exist_ok=True)
    write_trace(out / "values.csv", columns, values, stamps)
    labels = scenario.labels(rows, tick, minutes)
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "timestamp", "label", "class", "vm"])
        for i, (lab, klass, vm) in enumerate(labels):
            w.writerow([i, repr(float(stamps[i])), lab, klass, vm])
    meta = {
        "scenario": scenario.to_dict(),
        "minutes": minutes,
        "tick": tick,
        "rows": rows,
        "columns": columns,
        "command": command or _command_line(),
        "started": wall0,
        "uri": uri,
        "domain_type": state.get("domain_type"),
        "guests": state.get("guests"),
        "kernel_release": state.get("kernel_release"),
        "image_initrd_sha256": state.get("image"),
        "normal_day_seconds": day,
        "events": done_events,
        "attack_rows": int(sum(lab for lab, _, _ in labels)),
        "labelling": "row i (0-based in labels.csv) covers the tick ending (i+1)*tick s after the start; "
        "label 1 when that tick overlaps a scheduled attack window (start, end]",
    }
    (out / "scenario.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(_readme(scenario, meta))
    return {"out": str(out), "rows": rows, "attack_rows": meta["attack_rows"], "events": done_events}


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "atomwatch":
        argv[0] = "atomwatch"
    elif argv and argv[0].endswith("__main__.py"):  # python -m atomwatch
        argv[0] = "atomwatch"
    return " ".join(shlex.quote(a) for a in argv)


def _readme(scenario: Scenario, meta: dict) -> str:
    lines = [
        f"# atomwatch lab recording: {scenario.name}",
        "",
        scenario.description + ".",
        "",
        f"- {meta['rows']} rows, one every {meta['tick']} s ({meta['minutes']} min), "
        f"{scenario.guests} guests under libvirt domain type `{meta['domain_type']}`.",
        f"- Reproduce: `{meta['command']}`",
        "- `values.csv`: timestamp + one column `<vm>/<metric>` per guest and metric (CPUUtilization %, "
        "NetworkIn/Out bytes/s, DiskRead/WriteOps ops/s, DiskRead/WriteBytes bytes/s, MemoryUtilization %), "
        "read by the libvirt collector each tick; an empty cell was stale (not readable that tick).",
        "- `labels.csv`: row,timestamp,label,class,vm from the scenario schedule alone: " + meta["labelling"] + ".",
        "- `scenario.json`: the scenario, its parameters and the attack actions as performed.",
        "",
        "Attacks:",
        "",
    ]
    for a in scenario.attacks:
        s, e = scenario.window(a, meta["minutes"])
        lines.append(f"- `{a.workload}` in {guest_name(a.guest)} from {s:.0f} s to {e:.0f} s (class `{a.klass}`)")
    if not scenario.attacks:
        lines.append("- none")
    return "\n".join(lines) + "\n"

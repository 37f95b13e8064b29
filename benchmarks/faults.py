"""What faults cost: the broker down 5 s and 60 s, agents and the controller killed -9 and restarted.

Each scenario of :mod:`benchmarks.fault_scenarios` runs with real processes (Mosquitto, one
``atomwatch controller``, two ``atomwatch agent``; its docstring says how the truth is written down and
judged), after the baseline: the same run with no fault, which shows the judge finds nothing to count
when nothing goes wrong and gives the live lag (row ts − the sample it holds) to compare with. Per
scenario: samples lost, rows made from stale values, values off by more than Δ, alarms lost, attack
runs without an alarm (the must-be-zero figures are listed under ``nonzero`` when they are not),
seconds from the fault's end to live data (``resume_s``, and in agent ticks), rows marked late, and
the largest live lag as a ratio to the baseline's.

    python -m benchmarks.faults [--scenario broker-5s ...] [--no-backlog] [--keep DIR]

Takes about four minutes (the 60 s outage alone some ninety seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks._common import emit, machine
from benchmarks.fault_scenarios import (
    AGENT_TICK,
    CONTROLLER_TICK,
    MARGIN,
    Scenario,
    mosquitto_binary,
    run_scenario,
)

SCENARIOS = [
    Scenario("baseline", "none"),
    Scenario("broker-5s", "broker", 5.0),
    Scenario("broker-60s", "broker", 60.0),
    Scenario("agent-kill", "agent", 2.0),
    Scenario("controller-kill", "controller", 2.0),
]
MUST_BE_ZERO = ("rows_from_stale_values", "values_off_by_more_than_delta", "alarms_lost", "attack_runs_without_alarm")


def main() -> None:
    names = [s.name for s in SCENARIOS]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", action="append", choices=names, help="run only these (the baseline always runs)")
    p.add_argument("--no-backlog", action="store_true", help="do not give the agents --backlog-dir")
    p.add_argument("--keep", metavar="DIR", help="keep each scenario's records and logs in DIR/NAME")
    args = p.parse_args()
    if mosquitto_binary() is None:
        sys.exit("benchmarks.faults: mosquitto is not installed (apt-get install mosquitto)")
    chosen = [s for s in SCENARIOS if s.fault == "none" or not args.scenario or s.name in args.scenario]
    results = {}
    for scenario in chosen:
        start = time.monotonic()
        print(f"benchmarks.faults: {scenario.name} …", file=sys.stderr, flush=True)
        workdir = None
        if args.keep:
            workdir = Path(args.keep) / scenario.name
            workdir.mkdir(parents=True)
        figures = run_scenario(scenario, workdir=workdir, backlog=not args.no_backlog)
        figures["took_s"] = round(time.monotonic() - start, 1)
        figures["nonzero"] = {k: figures[k] for k in MUST_BE_ZERO if figures[k]}
        if scenario.fault == "broker" and figures["samples_lost"]:
            figures["nonzero"]["samples_lost"] = figures["samples_lost"]
        results[scenario.name] = figures
    base_lag = results["baseline"]["live_lag_s"]["max"]
    for figures in results.values():
        if figures["resume_s"] is not None:
            figures["resume_ticks"] = round(figures["resume_s"] / AGENT_TICK, 2)
        lag = figures["live_lag_s"]["max"]
        figures["max_live_lag_vs_baseline"] = round(lag / base_lag, 2) if lag is not None and base_lag else None
    emit(
        {
            "benchmark": "faults",
            "machine": machine(),
            "load_average": os.getloadavg()[0],
            "agent_tick_s": AGENT_TICK,
            "controller_tick_s": CONTROLLER_TICK,
            "margin_s": MARGIN,
            "all_zero": all(not f["nonzero"] for f in results.values()),
            "scenarios": results,
        }
    )


if __name__ == "__main__":
    main()

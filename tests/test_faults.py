"""Faults lose nothing (issue 15): the broker killed and restarted, agents and the controller killed -9 and
restarted, each with real processes — Mosquitto, ``atomwatch controller`` and two ``atomwatch agent`` —
run by :mod:`benchmarks.fault_scenarios`, the scenarios ``python -m benchmarks.faults`` measures.

Each scenario must end with no row made from values no longer fresh, no value applied farther than Δ
from the truth, no alarm lost and no attack without an alarm; a broker outage must also lose no sample
(the agents keep them and send them, late, once it is back). The figures of a failing run are printed
in full. The first test shows that the judge counts what it claims, on records made up for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import require

from benchmarks.fault_scenarios import (
    AGENT_TICK,
    REPLAY,
    TRUTH,
    Records,
    Scenario,
    analyse,
    bundled_trace,
    mosquitto_binary,
    run_scenario,
)

MUST_BE_ZERO = ("rows_from_stale_values", "values_off_by_more_than_delta", "alarms_lost", "attack_runs_without_alarm")


def left_behind(workdir: Path) -> list[str]:
    """Processes whose command line names the run's folder (its broker, agents, controller)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def run(scenario: Scenario, tmp_path: Path) -> dict:
    require(mosquitto_binary() is not None, "mosquitto is not installed (apt-get install mosquitto)")
    workdir = tmp_path / "run"
    workdir.mkdir()
    figures = run_scenario(scenario, workdir=workdir)
    print(json.dumps(figures, indent=1))
    assert left_behind(workdir) == []
    # after the fault, SIGTERM still stops every part cleanly
    assert figures["exit_status"] == {"truth": 0, "replay": 0, "controller": 0}, json.dumps(figures, indent=1)
    return figures


def nonzero(figures: dict, names: tuple[str, ...] = MUST_BE_ZERO) -> dict:
    return {name: figures[name] for name in names if figures[name]}


# ----------------------------------------------------------------------------- the judge


def test_the_judge_counts_stale_rows_lost_samples_values_off_and_lost_alarms():
    from atomwatch.plugins.replay import ReplayCollector

    trace, _ = bundled_trace()
    replay = ReplayCollector(str(trace))
    columns = [k.column for k in replay.keys]
    t0 = 1000.0
    r = Records()
    # the truth agent ticks every AGENT_TICK from t0; the controller shows every tick but the 6th, then
    # makes one more row from the last tick 1.2 s after it (built from a value no longer fresh)
    clocks = [t0 + AGENT_TICK * k for k in range(12)]
    r.truth = [{"t": c, "clock": c, "counter": k + 1} for k, c in enumerate(clocks)]

    def truth_row(ts: float, clock: float) -> dict:
        return {"ts": ts, "late": False, "values": {"probe/clock": clock}, "deltas": {}}

    r.rows[TRUTH] = [truth_row(c + 0.1, c) for k, c in enumerate(clocks) if k != 5]
    r.rows[TRUTH].append(truth_row(clocks[-1] + 1.2, clocks[-1]))
    # the replay agent reads trace rows 90.. (the attack) at the same ticks, then dies at tick 10
    r.replay = [{"t": c, "row": 90 + k} for k, c in enumerate(clocks[:10])]

    deltas = {col: replay.deltas[key] for col, key in zip(columns, replay.keys)}

    def replay_row(k: int, ts: float, shift: float = 0.0) -> dict:
        values = {col: float(replay.trace.values[90 + k, j]) for j, col in enumerate(columns)}
        values = {col: (None if v != v else v) for col, v in values.items()}
        values["vm2/CPUUtilization"] += shift
        return {"ts": ts, "late": False, "values": values, "deltas": deltas}

    delta = deltas["vm2/CPUUtilization"]
    r.rows[REPLAY] = [replay_row(k, clocks[k] + 0.1) for k in range(10)]
    r.rows[REPLAY][3] = replay_row(3, clocks[3] + 0.1, shift=-50.0)  # one cell off by far more than Δ
    r.rows[REPLAY][4] = replay_row(4, clocks[4] + 0.1, shift=delta * 0.9)  # within Δ
    r.rows[REPLAY].append(replay_row(9, clocks[11] + 0.1))  # made 1 s after its agent died
    # alarm 1 is in the file; alarm 2 was opened, then lost, and its id reused by another alarm
    r.alarms = [{"alarm": 1, "opened_at": t0 + 1}, {"alarm": 2, "opened_at": t0 + 2}]
    in_file = {"alarms": {1: (t0 + 1, REPLAY), 2: (t0 + 9, REPLAY)}, "row_ts": {}}

    figures = analyse(r, in_file, trace=trace, fault_start=t0 + 2, fault_end=t0 + 3, stopped=t0 + 20)
    assert figures["samples_lost"] == 1 and figures["samples_lost_during_fault"] == 1
    assert figures["rows_from_stale_values"] == 2  # the truth row of tick 8, the replay row after the death
    assert figures["values_off_by_more_than_delta"] == 1 and figures["rows_with_values_off"] == 1
    assert figures["alarms_lost"] == 1
    assert figures["attack_runs"] == 1 and figures["attack_runs_without_alarm"] == 1  # no alarm row in it
    in_file["row_ts"][REPLAY] = [clocks[6] + 0.1]
    assert (
        analyse(r, in_file, trace=trace, fault_start=t0, fault_end=t0, stopped=t0 + 20)["attack_runs_without_alarm"]
        == 0
    )


# ----------------------------------------------------------------------------- the faults


@pytest.mark.slow
@pytest.mark.parametrize("outage", [2.0, 5.0], ids=["2s", "5s"])
def test_a_broker_outage_loses_no_sample_and_makes_no_row_from_stale_values(outage, tmp_path):
    figures = run(Scenario(f"broker-{outage:g}s", "broker", outage), tmp_path)
    # the scenario happened: the agents sampled through the outage, live data came back, the attack ran
    assert figures["samples_during_fault"] >= outage / AGENT_TICK - 2
    assert figures["resume_s"] is not None and figures["attack_runs"] == 1
    assert nonzero(figures, (*MUST_BE_ZERO, "samples_lost")) == {}, json.dumps(figures, indent=1)


@pytest.mark.slow
def test_agents_killed_and_restarted_leave_no_row_of_stale_values_and_no_attack_unseen(tmp_path):
    figures = run(Scenario("agent-kill", "agent", 2.0), tmp_path)
    assert figures["resume_s"] is not None and figures["attack_runs"] == 1
    assert nonzero(figures) == {}, json.dumps(figures, indent=1)


@pytest.mark.slow
def test_a_controller_killed_right_after_opening_an_alarm_still_has_it_after_restart(tmp_path):
    figures = run(Scenario("controller-kill", "controller", 2.0), tmp_path)
    assert figures["alarms_opened"] >= 1 and figures["resume_s"] is not None
    assert nonzero(figures) == {}, json.dumps(figures, indent=1)

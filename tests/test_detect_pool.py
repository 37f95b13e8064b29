"""Detection in worker processes (``detect_workers``, issue 16): real processes spawned with the
plugins loaded as in production score rows exactly as the detection thread does, answer a
verdict's refit, come back after a SIGKILL without stopping the others, refuse a detector they
cannot load, and a live controller through a real Mosquitto opens the bundled attack's alarm
from them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from importlib import resources

import pytest
from conftest import SIGNING_KEY
from pipeline import plugin_manager

import atomwatch
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.controller.detect_pool import DetectionPool
from atomwatch.controller.detection import DetectorSet, NoSuchMethod
from atomwatch.detectors import detector_factories
from atomwatch.trace_rows import trace_rows
from atomwatch.traces import read_trace

OPTIONS = {"pca-spe": {"min_rows": 40}}


def recording_rows(scopes: list[str]) -> list[list[atomwatch.Row]]:
    """The bundled cryptominer recording as each of ``scopes``, one list of rows per tick."""
    trace = read_trace(resources.files("atomwatch") / "data" / "lab-cryptominer.csv")
    per_scope = [list(trace_rows(trace, scope=scope)) for scope in scopes]
    return [list(tick) for tick in zip(*per_scope, strict=True)]


def two_per_worker(pool: DetectionPool) -> list[str]:
    """Four scope names, two owned by each of the pool's two workers."""
    names = [f"pool/hv{i}" for i in range(64)]
    return [s for s in names if pool._owner(s) == 0][:2] + [s for s in names if pool._owner(s) == 1][:2]


def key(a: atomwatch.Anomaly) -> tuple:
    """What must match; scores to 8 digits (a worker may run the plain kernels while numba compiles
    its own, which round differently in the last places)."""
    return (a.scope, a.index, f"{a.score:.8g}", f"{a.threshold:.8g}", tuple(b.column.column for b in a.blame))


def test_workers_score_like_the_thread_and_answer_calls():
    pm = plugin_manager("pca-spe")
    factories = {"pca-spe": detector_factories(pm)["pca-spe"]}
    thread = DetectorSet(factories, OPTIONS)
    pool = DetectionPool(2, ["pca-spe"], OPTIONS, pm)
    try:
        scopes = two_per_worker(pool)
        mine, theirs = [], []
        for rows in recording_rows(scopes):
            a, st_thread = thread.run(rows)
            b, st_pool = pool.run(rows)
            mine += a
            theirs += b
        assert mine, "the recording's attack is flagged"
        assert sorted(map(key, theirs)) == sorted(map(key, mine))
        assert st_pool.keys() == st_thread.keys()
        for scope, st in st_thread.items():
            assert st_pool[scope]["row"] == st["row"]
            assert st_pool[scope]["detectors"]["pca-spe"]["ready"] == st["detectors"]["pca-spe"]["ready"]
        # a verdict's refit and μ's Δ reach the scope's detector in its worker
        rows = [r for tick in recording_rows(scopes[:1])[-5:] for r in tick]
        assert pool.call(scopes[0], "pca-spe", "accept_normal", rows) == thread.call(
            scopes[0], "pca-spe", "accept_normal", rows
        )
        with pytest.raises(NoSuchMethod):
            pool.call(scopes[0], "pca-spe", "no_such_method")
        with pytest.raises(NoSuchMethod):
            pool.call("pool/nobody", "pca-spe", "accept_normal", rows)
    finally:
        pool.close()
    assert all(not w.proc.is_alive() for w in pool.workers)


def test_a_killed_worker_is_started_again_and_the_others_go_on(caplog):
    caplog.set_level(logging.ERROR)
    pm = plugin_manager("pca-spe")
    pool = DetectionPool(2, ["pca-spe"], OPTIONS, pm)
    try:
        scopes = two_per_worker(pool)
        ticks = recording_rows(scopes)
        for rows in ticks[:60]:
            pool.run(rows)
        victim = pool.workers[0]
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.join(10)
        found = []
        for rows in ticks[60:]:
            anomalies, status = pool.run(rows)
            found += anomalies
            assert set(status) <= {r.scope for r in rows}
        assert pool.restarts == 1 and pool.workers[0].proc.is_alive() and pool.workers[0] is not victim
        said = [r.getMessage() for r in caplog.records if "detection worker 0" in r.getMessage()]
        assert len(said) == 1 and "starting it again" in said[0]
        # the other worker's scopes kept their models: the attack is still flagged there
        survivors = set(scopes[2:])
        assert survivors and {a.scope for a in found} & survivors
    finally:
        pool.close()


def test_a_detector_the_workers_cannot_load_is_refused():
    pm = plugin_manager("pca-spe")  # "local-only" would be a detector registered in this process only
    with pytest.raises(ConfigError, match="local-only"):
        DetectionPool(1, ["pca-spe", "local-only"], OPTIONS, pm)


def test_a_controller_with_worker_processes_opens_the_bundled_alarm(mosquitto, site):
    """The README's loop with detection in a worker process: the replayed cryptominer's alarm
    blames vm2's CPU, as from the detection thread."""
    from pipeline import live_pipeline

    trace = resources.files("atomwatch") / "data" / "lab-cryptominer.csv"
    pipe = live_pipeline(
        mosquitto.url,
        site,
        ("replay", "pca-spe"),
        {"replay": {"trace": str(trace)}},  # as atomwatch up replays it
        ["pca-spe"],
        0.02,
        0.02,
        rows="data",
        detect_workers=1,
    )

    def blamed() -> set[tuple[str, str]]:
        return {(b["vm_name"], b["metric"]) for a in pipe.controller.alarms.list() for b in a.blame}

    async def run() -> set[tuple[str, str]]:
        tasks = [asyncio.create_task(pipe.controller.run()), asyncio.create_task(pipe.agent.run())]
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline and ("vm2", "CPUUtilization") not in blamed():
                await asyncio.sleep(0.1)
            return blamed()
        finally:
            pipe.agent.stop()
            pipe.controller.stop()
            await asyncio.gather(*tasks)

    assert ("vm2", "CPUUtilization") in asyncio.run(run())
    assert isinstance(pipe.controller.detection, DetectionPool)
    assert pipe.controller.detection.workers == [], "the workers are stopped with the controller"


def test_detect_workers_is_checked():
    for bad in (-1, 257, True, "2"):
        with pytest.raises(ConfigError, match="--detect-workers"):
            ControllerConfig(broker=BrokerAddress.parse("mqtt://127.0.0.1:1"), detect_workers=bad)
    assert (
        Controller(
            ControllerConfig(broker=BrokerAddress.parse("mqtt://127.0.0.1:1"), signing_key=SIGNING_KEY),
            plugin_manager(),
        ).detection.names
        == []
    )

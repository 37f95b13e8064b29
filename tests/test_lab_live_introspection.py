"""Live introspection on a real TCG guest whose RAM is a shared file: no dump, one warm context.

One guest (``awintro-l…``, 256 MiB, ``<memoryBacking>`` with a file source and shared access) is
booted for the module. A real Mosquitto, agent (``introspect``/``terminate``) and controller (the
orchestrator): the healthy baseline is read live; ``cryptominer`` starts; an alarm blaming the
guest's CPU is opened (recorded as a detector would, this module tests the response, not the
detection) and its findings come from the guest's memory read in place, on the worker the baseline
left warm, with the guest paused only for the task list; the *malicious* verdict kills the miner,
verified gone. The guest without shared memory falls back to a dump: ``tests/test_introspection.py``.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from conftest import CONTROLLER_KEY, LAB_ASSETS, SIGNING_KEY, require, require_introspection_lab

pytestmark = [pytest.mark.lab]

SYMBOLS = LAB_ASSETS / "symbols"


@pytest.fixture(scope="module")
def shared_guest(tmp_path_factory):
    require_introspection_lab()
    from atomwatch.lab.domains import LabError
    from atomwatch.lab.private_guest import boot_private_guest, destroy_private_guest

    work = tmp_path_factory.mktemp("live")
    tag = f"l{os.getpid()}"
    try:
        conn, dom = boot_private_guest(work / "guest", tag=tag, shared_memory=True)
    except LabError as e:
        require(False, f"cannot boot a lab guest: {e}")
    try:
        yield work, conn, dom
    finally:
        destroy_private_guest(conn, tag)


def test_live_memory_file_is_found_and_a_pause_is_measured(shared_guest):
    from atomwatch.introspection import live
    from atomwatch.introspection.acquire import state_name

    _work, conn, dom = shared_guest
    found_dom, memory = live.find(conn, dom.name())
    assert found_dom.UUIDString() == dom.UUIDString()
    assert memory.size == 256 << 20 and os.path.getsize(memory.path) == memory.size
    with live.paused(dom, memory):
        assert state_name(dom) == "paused"
    assert state_name(dom) == "running" and len(memory.pauses) == 1 and memory.pauses[0] > 0


def test_cryptominer_found_live_and_killed_through_the_closed_loop(shared_guest, mosquitto, site):
    import atomwatch.plugins.introspection_commands as cmds_plugin
    import atomwatch.plugins.orchestrate as orch_plugin
    from atomwatch import Anomaly, Blame, SeriesKey
    from atomwatch.agent.config import AgentConfig
    from atomwatch.agent.runtime import Agent
    from atomwatch.config import BrokerAddress
    from atomwatch.controller.app import Controller
    from atomwatch.controller.config import ControllerConfig
    from atomwatch.introspection import guest_agent
    from atomwatch.lab import workloads
    from atomwatch.pluginmanager import PluginManager

    work, _conn, dom = shared_guest
    pm = PluginManager()
    pm.register(cmds_plugin, name="introspection-commands")
    pm.register(orch_plugin, name="orchestrate")
    opts = {
        "introspection": {
            "symbols": str(SYMBOLS),
            "cache": str(work / "volcache"),
            "baseline_dir": str(work / "baselines"),
            "dump_dir": str(work / "dumps"),
            "timeout": 240,
            "terminate": "on",
            "introspect_min_interval": "0s",
        },
        "orchestrate": {"rate_limit": 0, "watch_timeout": 0.5, "terminate_timeout": 240},
    }
    broker = BrokerAddress.parse(mosquitto.url)
    agent = Agent(
        AgentConfig(broker=broker, controller_key=CONTROLLER_KEY, site=site, host="hv1", tick=5.0, options=opts), pm
    )
    controller = Controller(
        ControllerConfig(broker=broker, signing_key=SIGNING_KEY, sites=[site], tick=5.0, options=opts, db=":memory:"),
        pm,
    )

    async def wait(pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            await asyncio.sleep(0.1)

    async def main():
        tasks = [asyncio.create_task(controller.run()), asyncio.create_task(agent.run())]
        try:
            await asyncio.wait_for(controller.connected.wait(), 10)
            await asyncio.wait_for(agent.connected.wait(), 10)
            base = await controller.send_command(
                site,
                "hv1",
                "introspect",
                {"vm": dom.UUIDString(), "metrics": ["CPUUtilization"], "baseline": True},
                240,
            )
            assert base["source"] == "live", base.get("not_live")
            assert base["live"]["warm"] is False and base["live"]["pauses"] == 1
            assert not (work / "dumps").exists() or not list((work / "dumps").iterdir())  # no dump was made

            await asyncio.to_thread(workloads.start, dom, "cryptominer")
            await asyncio.sleep(3)
            miner = next(p for p in guest_agent.list_processes(dom) if p.name == "cryptominer")
            key = SeriesKey(dom.UUIDString(), dom.name(), "CPUUtilization", "%")
            anomaly = Anomaly("test", f"{site}/hv1", 0, time.time(), 100.0, 30.0, [Blame(key, "up", 3.0)])
            alarm, _ = controller.alarms.record(anomaly)
            controller.dispatch("alarm_opened", alarm=alarm)
            await wait(lambda: controller.alarms.get(alarm.id).findings, 240, "the findings")
            finding = controller.alarms.get(alarm.id).findings[0]
            assert finding["kind"] == "introspection", finding.get("error")
            # read in place, on the context the baseline loaded, the guest paused only for the task list
            assert finding["source"] == "live" and finding["dump"] is None
            assert finding["live"]["warm"] is True and finding["live"]["pauses"] == 1
            assert 0 < finding["live"]["paused_s"] < 2.0
            assert "read live, guest paused" in finding["summary"]
            top = finding["suspects"][0]
            assert top["name"] == "cryptominer" and top["pid"] == miner.pid, finding["suspects"][:3]
            assert abs(top["start_time"] - miner.start_time) <= guest_agent.START_TOLERANCE

            await controller.give_verdict(alarm.id, "malicious", "operator", {"pid": top["pid"]})
            await wait(
                lambda: any(f["kind"].startswith("termination") for f in controller.alarms.get(alarm.id).findings),
                240,
                "the termination",
            )
            term = next(f for f in controller.alarms.get(alarm.id).findings if f["kind"].startswith("termination"))
            assert term["kind"] == "termination", term
            now = guest_agent.find(guest_agent.list_processes(dom), top["pid"])
            assert now is None or now.state == "Z"
        finally:
            workloads.stop_all(dom)
            agent.stop()
            controller.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_a_guest_rebooted_in_place_gets_a_fresh_context_and_its_new_processes(shared_guest):
    """``reset`` reboots the guest inside the same QEMU process, its RAM not cleared: the kept
    context must notice (the page tables the guest uses now map the kernel elsewhere) and load again,
    and the task list must be the new boot's (init started again)."""
    from atomwatch.introspection import guest_agent, pipeline, warm
    from atomwatch.introspection.volatility import VolatilityConfig
    from atomwatch.lab import domains

    work, conn, dom = shared_guest
    cfg = pipeline.IntrospectionConfig(
        volatility=VolatilityConfig(symbol_dirs=[str(SYMBOLS)], cache_dir=str(work / "volcache"), timeout=240),
        dump_dir=work / "dumps",
        baseline_dir=work / "baselines-reset",
    )
    pool = warm.WarmPool()
    try:
        first = pipeline.introspect(conn, dom.name(), ["CPUUtilization"], cfg, pool=pool)
        again = pipeline.introspect(conn, dom.name(), ["CPUUtilization"], cfg, pool=pool)
        assert first["source"] == again["source"] == "live"
        assert first["live"]["warm"] is False and again["live"]["warm"] is True
        assert again["live"]["worker_pid"] == first["live"]["worker_pid"]
        dom.reset()
        domains.wait_agent(dom, domains.AGENT_TIMEOUT_TCG)
        after = pipeline.introspect(conn, dom.name(), ["CPUUtilization"], cfg, pool=pool)
        assert after["source"] == "live" and after["live"]["warm"] is False
        assert any("warm context was dropped" in n for n in after["live"]["notes"]), after["live"]["notes"]
        ga = next(p for p in guest_agent.list_processes(dom) if p.name == "qemu-ga")
        starts = {t["pid"]: t["start_s"] for t in after["tasks"] if t["pid"] == t["tid"]}
        assert ga.pid in starts and abs(starts[ga.pid] - ga.start_time) <= guest_agent.START_TOLERANCE
    finally:
        pool.close()

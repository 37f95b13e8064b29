"""The agent under a real broker: a broken or slow collector never stops it (its series go
stale, never invented), commands from the controller (set-delta, rebirth, unknown) get replies."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY, Counting

import atomwatch
from atomwatch import CommandFailed
from atomwatch.agent.config import AgentConfig
from atomwatch.agent.runtime import Agent
from atomwatch.config import BrokerAddress
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.pluginmanager import PluginManager

pytestmark = pytest.mark.asyncio

GOOD = atomwatch.SeriesKey("u1", "vm1", "CPUUtilization", "%")
FLAKY = atomwatch.SeriesKey("u2", "vm2", "CPUUtilization", "%")


class Flaky:
    """Works, then raises, then hangs past the budget, then returns garbage, then works again."""

    name = "flaky"

    def __init__(self):
        self.n = 0

    def collect(self):
        self.n += 1
        phase = (self.n // 5) % 4
        if phase == 1:
            raise RuntimeError("libvirt went away")
        if phase == 2:
            time.sleep(0.3)
        if phase == 3:
            return {"not": "a reading"}
        return atomwatch.Reading(values={FLAKY: 50.0 + self.n})

    def close(self):
        pass


class Plugin:
    def __init__(self, *collectors):
        self.collectors = collectors

    @atomwatch.hookimpl
    def register_collectors(self, config):
        return list(self.collectors)


async def start(mosquitto, site, *collectors, tick=0.05):
    pm = PluginManager()
    pm.register(Plugin(*collectors), name="test-collectors")
    broker = BrokerAddress.parse(mosquitto.url)
    agent = Agent(
        AgentConfig(broker=broker, controller_key=CONTROLLER_KEY, site=site, host="hv", tick=tick, collect_budget=0.1),
        pm,
    )
    controller = Controller(ControllerConfig(broker=broker, signing_key=SIGNING_KEY, sites=[site], tick=0.1), pm)
    tasks = [asyncio.create_task(agent.run()), asyncio.create_task(controller.run())]
    await asyncio.wait_for(agent.connected.wait(), 10)
    await asyncio.wait_for(controller.connected.wait(), 10)
    return agent, controller, tasks


async def stop(agent, controller, tasks):
    agent.stop()
    controller.stop()
    await asyncio.gather(*tasks)


async def test_a_failing_collector_makes_stale_series_and_never_stops_the_agent(mosquitto, site):
    good, flaky = Counting(GOOD), Flaky()
    agent, controller, tasks = await start(mosquitto, site, good, flaky)
    seen = []
    controller.row_listeners.append(lambda row: seen.append(dict(zip(row.columns, row.values))))
    await asyncio.sleep(3.0)
    await stop(agent, controller, tasks)
    assert agent.ticks > 20 and tasks[0].exception() is None
    assert agent.sampler.errors > 5, "the flaky collector's failures were noticed"
    assert any(math.isnan(r.get(FLAKY, math.nan)) for r in seen), "its series went stale"
    assert any(not math.isnan(r.get(FLAKY, math.nan)) for r in seen[len(seen) // 2 :]), "and came back"
    assert all(not math.isnan(r[GOOD]) for r in seen[1:]), "the healthy collector's series never did"
    # a stale value is never replaced by an invented one: with Δ = 0 every known value is one
    # the collector gave (50 + its call count, an integer)
    known = [r[FLAKY] for r in seen if not math.isnan(r.get(FLAKY, math.nan))]
    assert known and all(v.is_integer() and v > 50 for v in known)


async def settled(read, quiet: float = 0.5, limit: float = 10.0):
    """``read()`` once it has not changed for ``quiet`` seconds (at most ``limit`` seconds)."""
    value, since, deadline = read(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if read() != value:
            value, since = read(), time.monotonic()
    return value


async def test_commands_get_replies(mosquitto, site):
    good = Counting(GOOD)
    agent, controller, tasks = await start(mosquitto, site, good)
    try:
        await asyncio.sleep(0.3)
        result = await controller.send_command(site, "hv", "set-delta", {"metrics": {"CPUUtilization": 3.0}}, timeout=5)
        assert result["applied"] == 1
        assert agent.deltas[agent.table.aliases[GOOD]] == 3.0
        # a new birth announces the new Δ, so the controller (and the retained birth) know it
        host = controller.ingest.host(site, "hv")
        for _ in range(100):
            if host.deltas.get(agent.table.aliases[GOOD]) == 3.0:
                break
            await asyncio.sleep(0.05)
        assert host.deltas.get(agent.table.aliases[GOOD]) == 3.0
        # births the start-up may still owe (the controller's retained state arriving late asks
        # for one) must be out before counting the one 'rebirth' causes
        births = await settled(lambda: agent.stats["births"])
        result = await controller.send_command(site, "hv", "rebirth", timeout=5)
        assert agent.stats["births"] == births + 1 and result["session"] == agent.session
        with pytest.raises(CommandFailed, match="unknown command 'dance'; this agent knows rebirth, set-delta"):
            await controller.send_command(site, "hv", "dance", timeout=5)
        with pytest.raises(CommandFailed, match="Δ for metric 'CPUUtilization' must be a finite number ≥ 0, got -1"):
            await controller.send_command(site, "hv", "set-delta", {"metrics": {"CPUUtilization": -1}}, timeout=5)
        with pytest.raises(CommandFailed, match="no answer within"):
            await controller.send_command(site, "nobody", "rebirth", timeout=0.5)
    finally:
        await stop(agent, controller, tasks)


async def test_set_delta_takes_effect_and_tracking_sends_less(mosquitto, site):
    good = Counting(GOOD)  # +1 per tick: with Δ = 0 every tick sends, with Δ = 10 far fewer
    agent, controller, tasks = await start(mosquitto, site, good, tick=0.02)
    try:
        await asyncio.sleep(1.0)
        before = agent.stats["values_sent"], agent.ticks
        rate0 = before[0] / before[1]
        await controller.send_command(site, "hv", "set-delta", {"metrics": {"CPUUtilization": 10.0}}, timeout=5)
        await asyncio.sleep(1.5)
        sent = agent.stats["values_sent"] - before[0]
        ticks = agent.ticks - before[1]
        assert rate0 > 0.9
        assert sent / ticks < 0.3
    finally:
        await stop(agent, controller, tasks)


class Blinking:
    """vm2 disappears for a few ticks (a VM stopped) and comes back."""

    name = "blinking"

    def __init__(self):
        self.n = 0

    def collect(self):
        self.n += 1
        values = {GOOD: float(self.n)}
        if not 10 <= self.n < 20:
            values[FLAKY] = 100.0 + self.n
        return atomwatch.Reading(values=values)

    def close(self):
        pass


async def test_a_series_that_goes_and_comes_back_is_born_again(mosquitto, site):
    agent, controller, tasks = await start(mosquitto, site, Blinking())
    seen = []
    controller.ingest.listeners.append(lambda state, msg: seen.append((msg.type, dict(state.snapshot()))))
    try:
        await asyncio.sleep(2.0)
    finally:
        await stop(agent, controller, tasks)
    assert agent.table.aliases[FLAKY] == 1, "the alias is kept"
    gone_at = next(i for i, (kind, snap) in enumerate(seen) if kind == "data" and FLAKY not in snap)
    back_at = next(i for i, (kind, snap) in enumerate(seen) if i > gone_at and FLAKY in snap)
    assert seen[back_at][0] == "birth", "the series comes back with a birth"
    assert seen[back_at][1][FLAKY] > 119
    assert not controller.ingest.dropped, dict(controller.ingest.dropped)

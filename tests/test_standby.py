"""Hot standby: controllers of the same site elect one active controller through the broker (a real
Mosquitto); the standby watches with warm detectors, records nothing and sends no command but a
rebirth, and takes over the alarms file when the active one stops — the open alarm extended, not
opened again. The election's rules alone, with a clock the test moves: the first tests.
(Shards, a clustered broker and processes killed -9: tests/test_shards.py.)"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY, until
from pipeline import Above90Plugin

import atomwatch
from atomwatch import protocol
from atomwatch.agent.config import AgentConfig
from atomwatch.agent.runtime import Agent
from atomwatch.alarm import AlarmStoreUnavailable
from atomwatch.config import BrokerAddress
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.controller.election import DEAD_AFTER, SETTLE, Election
from atomwatch.handles import CommandFailed
from atomwatch.pluginmanager import PluginManager
from atomwatch.series import SeriesKey

# --------------------------------------------------------------------------- the rules


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def state(name: str, rank: int, active: bool = False, online: bool = True) -> protocol.State:
    return protocol.State(online=online, controller=name, rank=rank, active=active)


def test_the_lowest_rank_alive_takes_over_once_settled_and_the_others_wait():
    clock = Clock()
    a, b = Election("a", 0, ["s"], clock), Election("b", 1, ["s"], clock)
    a.connected(), b.connected()
    b.heard("s", state("a", 0))
    a.heard("s", state("b", 1))
    assert a.decide() == [] and not a.is_active("s"), "nobody takes over before the retained states are in"
    clock.now += SETTLE
    assert a.decide() == [("s", True)]
    b.heard("s", state("a", 0, active=True))
    assert b.decide() == [] and not b.is_active("s")


def test_a_standby_takes_over_when_the_active_one_goes_offline_or_its_beats_stop():
    clock = Clock()
    b = Election("b", 1, ["s"], clock)
    b.connected()
    clock.now += SETTLE
    b.heard("s", state("a", 0, active=True))
    assert b.decide() == []
    b.heard("s", state("a", 0, active=False, online=False))  # its last will
    assert b.decide() == [("s", True)]

    c = Election("c", 2, ["s"], clock)
    c.connected()
    clock.now += SETTLE
    c.heard("s", state("a", 0, active=True))
    clock.now += DEAD_AFTER - 0.1
    assert c.decide() == [], "a beat or two late is not dead"
    clock.now += 0.2
    assert c.decide() == [("s", True)], "three beats missed: dead (a broker node died with its will)"


def test_no_preemption_but_two_actives_resolve_to_the_lower_rank():
    clock = Clock()
    a = Election("a", 0, ["s"], clock)
    a.connected()
    clock.now += SETTLE
    a.heard("s", state("b", 1, active=True))
    assert a.decide() == [] and not a.is_active("s"), "a restarted controller does not take over from a warm one"

    b = Election("b", 1, ["s"], clock)
    b.connected()
    clock.now += SETTLE
    assert b.decide() == [("s", True)]
    b.heard("s", state("a", 0, active=True))  # a partition healed: two actives
    assert b.decide() == [("s", False)], "the later one yields"


def test_a_controller_away_from_the_broker_steps_down_after_the_others_could_take_over():
    clock = Clock()
    a = Election("a", 0, ["s"], clock)
    a.connected()
    clock.now += SETTLE
    assert a.decide() == [("s", True)]
    a.disconnected()
    clock.now += DEAD_AFTER - 0.5
    assert a.decide() == [], "a short failover to another broker node keeps the role"
    clock.now += 1.0
    assert a.decide() == [("s", False)]


def test_without_a_rank_there_is_no_election():
    e = Election("ctl", None, ["s1", "s2"])
    assert e.is_active("s1") and e.is_active("s2") and e.decide() == []


# --------------------------------------------------------------------------- with a real broker


class Hot:
    """A collector: CPU 50 %, 99 % while ``hot``."""

    name = "hot"
    key = SeriesKey("uuid-1", "vm1", "CPUUtilization", "%")

    def __init__(self):
        self.hot = False

    def collect(self):
        return atomwatch.Reading(values={self.key: 99.0 if self.hot else 50.0}, deltas={self.key: 0.0})

    def close(self):
        pass


@pytest.mark.asyncio
async def test_the_standby_watches_then_takes_over_the_open_alarm_when_the_active_one_stops(mosquitto, site, tmp_path):
    collector = Hot()
    pm = PluginManager()
    pm.register(Above90Plugin(collector), name="test-hot")
    address = BrokerAddress.parse(mosquitto.url)
    db = str(tmp_path / "alarms.sqlite")

    def controller(name: str, rank: int) -> Controller:
        config = ControllerConfig(
            broker=address, signing_key=SIGNING_KEY, sites=[site], tick=0.1, rows="data", db=db, name=name, rank=rank
        )
        return Controller(config, pm)

    a, b = controller("ctl-a", 0), controller("ctl-b", 1)
    agent = Agent(AgentConfig(broker=address, controller_key=CONTROLLER_KEY, site=site, host="hv1", tick=0.1), pm)
    rows = {"ctl-a": [], "ctl-b": []}
    a.row_listeners.append(rows["ctl-a"].append)
    b.row_listeners.append(rows["ctl-b"].append)
    tasks = [asyncio.create_task(c.run()) for c in (a, b, agent)]
    try:
        await until(
            lambda: a.election.is_active(site) and b.election.active_peer(site) == "ctl-a" and len(rows["ctl-b"]) >= 5,
            "ctl-a active, ctl-b warm",
            timeout=30,
        )
        assert not b.election.is_active(site)
        with pytest.raises(CommandFailed, match="ctl-b.* is a standby on site .*the active one is ctl-a"):
            await b.send_command(site, "hv1", "set-delta", {"deltas": {}})

        collector.hot = True
        await until(lambda: a.alarms.list() and a.alarms.list()[0].level >= 3, "ctl-a's alarm", timeout=30)
        assert len(b.held) >= 3, "the standby found the same anomalies and kept them"
        assert b.alarms.list() == [] or b.alarms.list()[0].id == a.alarms.list()[0].id, "it records nothing"
        with pytest.raises(AlarmStoreUnavailable, match="standby"):
            await b.give_verdict(a.alarms.list()[0].id, "normal", "test")
        level = a.alarms.list()[0].level

        a.stop()
        await tasks[0]
        stopped = time.monotonic()
        await until(lambda: b.election.is_active(site) and b.alarms.writable, "ctl-b active", timeout=30)
        assert time.monotonic() - stopped < 2.0, "its clean stop says offline at once"
        await until(
            lambda: b.alarms.list() and b.alarms.list()[0].level > level + 3, "ctl-b extending the alarm", timeout=30
        )
        (alarm,) = b.alarms.list()
        assert alarm.state == "open", "one alarm: extended by the controller that took over, not opened again"
        actions = [e["action"] for e in b.alarms.audit(alarm.id)]
        assert actions.count("opened") == 1
        assert rows["ctl-b"][-1].index > 10, "ctl-b's detectors were warm: no new start"
    finally:
        collector.hot = False
        for c in (a, b, agent):
            c.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.asyncio
async def test_an_agent_keeps_sending_live_while_any_controller_of_its_site_is_online(mosquitto, site):
    collector = Hot()
    pm = PluginManager()
    pm.register(Above90Plugin(collector), name="test-hot")
    address = BrokerAddress.parse(mosquitto.url)

    def controller(name: str, rank: int) -> Controller:
        config = ControllerConfig(broker=address, sites=[site], tick=0.1, db=":memory:", name=name, rank=rank)
        return Controller(config, pm)

    a, b = controller("ctl-a", 0), controller("ctl-b", 1)
    agent = Agent(AgentConfig(broker=address, controller_key=CONTROLLER_KEY, site=site, host="hv1", tick=0.1), pm)
    tasks = [asyncio.create_task(c.run()) for c in (a, b, agent)]
    try:
        await until(lambda: agent._controller_online is True and len(agent._controllers) == 2, "both heard", timeout=30)
        a.stop()
        await tasks[0]
        await until(lambda: agent._controllers.get("ctl-a") is False, "ctl-a's offline state", timeout=30)
        await asyncio.sleep(0.5)
        assert agent._controller_online is True and len(agent.backlog) == 0, "ctl-b still hears: nothing kept"
        b.stop()
        await tasks[1]
        await until(lambda: len(agent.backlog) >= 3, "ticks kept once no controller hears", timeout=30)
    finally:
        for c in (a, b, agent):
            c.stop()
        await asyncio.gather(*tasks, return_exceptions=True)

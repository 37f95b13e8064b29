"""Faults with a real Mosquitto, in one event loop: a broker outage's ticks come back as late rows,
exactly the tracker's values, in time order before the live rows; no row is made while the values
are not current; a backlog kept on disk outlives its agent; a retained birth is not taken as live.
(The same faults with real processes killed -9: tests/test_faults.py and benchmarks/faults.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time

import aiomqtt
import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY, until
from mqtt_loss import LossyRelay
from pipeline import Above90Plugin, alibaba_trace, make_pipeline, plugin_manager

import atomwatch
from atomwatch import protocol
from atomwatch.agent.config import AgentConfig
from atomwatch.agent.metrics import _AgentCollector
from atomwatch.agent.runtime import RECENT_FRAMES, Agent
from atomwatch.config import BrokerAddress
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.pluginmanager import PluginManager
from atomwatch.series import SeriesKey

pytestmark = pytest.mark.asyncio


def _as_dict(row) -> dict[SeriesKey, float]:
    return dict(zip(row.columns, row.values.tolist(), strict=True))


def _assert_row_is_tick(row, tracked: dict, truth: dict, deltas: dict, where: str) -> None:
    got = _as_dict(row)
    assert set(got) == set(tracked), f"{where}: other columns than the agent's"
    for key, value in tracked.items():
        if math.isnan(value):
            assert math.isnan(got[key]), f"{where}: {key.column} was stale at the agent"
            continue
        assert got[key] == value, f"{where}: {key.column} {got[key]} ≠ the tracker's {value}"
        assert abs(value - truth[key]) <= deltas[key] * (1 + 1e-12) + 1e-9, f"{where}: {key.column} off by more than Δ"


@pytest.mark.parametrize("rule", ["atom", "trend"])
async def test_a_broker_outage_comes_back_as_late_rows_in_order_and_no_row_is_made_meanwhile(
    mosquitto_private, site, tmp_path, rule
):
    """(``trend``: the kept ticks hold lines, each chunk restating them with their age.)"""
    broker = mosquitto_private
    trace = alibaba_trace(tmp_path / "alibaba.csv", machines=3, rows=3000)
    pipe = make_pipeline(broker.url, site, trace, agent_tick=0.05, controller_tick=0.05, delta_rel=0.02, tracking=rule)
    rows = []
    pipe.controller.row_listeners.append(rows.append)
    await pipe.start()
    await pipe.wait_for(
        lambda: sum(not r.late for r in rows) >= 10 and not len(pipe.agent.backlog), 30, "live rows before the outage"
    )
    # (ticks sampled before the first connection come as late rows too: the outage is what follows)
    rows_before, kept_before = len(rows), sum(t.published is None for t in pipe.ticks)

    broker.stop()
    await pipe.wait_for(
        lambda: not pipe.agent.connected.is_set() and not pipe.controller.connected.is_set(), 20, "the outage noticed"
    )
    noticed = len(rows)
    await pipe.wait_for(lambda: len(pipe.agent.backlog) >= 30, 20, "ticks kept by the agent")
    assert rows[noticed:] == [], "no row may be made from values the controller can no longer trust"
    broker.start()
    await pipe.wait_for(lambda: pipe.agent.connected.is_set() and pipe.controller.connected.is_set(), 20, "reconnect")

    kept = [t for t in pipe.ticks if t.published is None][kept_before:]
    skipped = pipe.controller.history.skipped
    await pipe.wait_for(
        lambda: (
            sum(r.late for r in rows[rows_before:]) + skipped["sent-live"] >= len(kept) and len(pipe.agent.backlog) == 0
        ),
        30,
        "the outage's ticks as late rows",
    )
    n_after = len(rows)
    await pipe.wait_for(lambda: len(rows) >= n_after + 5, 20, "live rows after the outage")
    await pipe.stop()

    rows = rows[rows_before - 1 :]  # the last row before the outage, and all after
    late = [r for r in rows if r.late]
    assert skipped["repeated"] == 0
    # the ticks published just before the outage were sent again: skipped where a live row held
    # them, late rows where none did (a broker may die holding them); then every kept tick
    resent = len(late) - len(kept)
    assert 0 <= resent <= RECENT_FRAMES and 0 < resent + skipped["sent-live"] <= RECENT_FRAMES
    assert len(kept) >= 20 and pipe.agent.backlog.dropped == 0 and pipe.agent.stats["history"] >= 1
    # every kept tick rebuilt: exactly the tracker's values at that tick, within Δ of the truth
    for n, (row, tick) in enumerate(zip(late[resent:], kept, strict=True)):
        _assert_row_is_tick(row, tick.tracked, tick.truth, tick.deltas, f"late row {n}")
    # in time order for the detectors: the rows before the outage, the outage, the rows after
    first_late, last_late = rows.index(late[0]), rows.index(late[-1])
    assert all(not r.late for r in rows[:first_late]) and all(r.late for r in rows[first_late : last_late + 1])
    assert all(not r.late for r in rows[last_late + 1 :]) and len(rows) > last_late + 1
    assert [r.index for r in rows] == list(range(rows[0].index, rows[0].index + len(rows))), "in the detectors' order"
    assert all(a.ts < b.ts for a, b in zip(late, late[1:], strict=False))
    assert late[-1].ts < rows[last_late + 1].ts
    if rule == "trend":
        assert sum(t.lines for t in pipe.ticks if t.published is None) > 0, "the outage's ticks held lines"


class Spiking:
    """A collector: CPU 50 % every tick, 99 % on the tick after ``spike`` is set."""

    name = "spiking"
    key = SeriesKey("uuid-1", "vm1", "CPUUtilization", "%")

    def __init__(self):
        self.spike = False

    def collect(self):
        value, self.spike = (99.0 if self.spike else 50.0), False
        return atomwatch.Reading(values={self.key: value}, deltas={self.key: 0.0})

    def close(self):
        pass


async def test_a_late_row_that_is_abnormal_opens_an_alarm_marked_late(mosquitto_private, site):
    """A spike sampled during the outage is scored when it arrives, and the alarm says it is late."""
    broker = mosquitto_private
    collector = Spiking()
    pm = PluginManager()
    pm.register(Above90Plugin(collector), name="test-spike")
    address = BrokerAddress.parse(broker.url)
    agent = Agent(AgentConfig(broker=address, controller_key=CONTROLLER_KEY, site=site, host="hv1", tick=0.05), pm)
    controller = Controller(
        ControllerConfig(broker=address, signing_key=SIGNING_KEY, sites=[site], tick=0.05, detectors=["above-90"]), pm
    )
    rows = []
    controller.row_listeners.append(rows.append)
    tasks = [asyncio.create_task(controller.run()), asyncio.create_task(agent.run())]

    async def until(predicate, what):
        for _ in range(600):
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    await until(lambda: len(rows) >= 5, "live rows")
    broker.stop()
    await until(lambda: not agent.connected.is_set() and len(agent.backlog) >= 5, "kept ticks")
    collector.spike = True  # an abnormal tick while nobody hears it
    await until(lambda: len(agent.backlog) >= 10, "kept ticks after the spike")
    assert controller.alarms.list() == []
    broker.start()
    await until(lambda: controller.alarms.list(), "the alarm")
    (alarm,) = controller.alarms.list()
    opened = [e for e in controller.alarms.audit(alarm.id) if e["action"] == "opened"]
    agent.stop()
    controller.stop()
    await asyncio.gather(*tasks)
    late = [r for r in rows if r.late]
    assert alarm.first_row in [r.index for r in late]
    assert opened[0]["details"]["details"]["late"] is True and opened[0]["details"]["details"]["late_by"] > 0


@pytest.mark.parametrize("rule", ["atom", "trend"])
async def test_a_backlog_kept_on_disk_is_sent_by_the_restarted_agent(mosquitto_private, site, tmp_path, rule):
    broker = mosquitto_private
    broker.stop()  # the agent starts while the broker is away, and is stopped before it returns
    trace = alibaba_trace(tmp_path / "alibaba.csv", machines=2, rows=600)
    backlog_dir = tmp_path / "state"
    backlog_dir.mkdir()
    pm = plugin_manager("replay")
    opts = {"replay": {"trace": str(trace), "delta_rel": 0.02}}

    def agent() -> Agent:
        config = AgentConfig(
            broker=BrokerAddress.parse(broker.url),
            controller_key=CONTROLLER_KEY,
            site=site,
            host="hv1",
            tick=0.05,
            options=opts,
            backlog_dir=str(backlog_dir),
            tracking=rule,
        )
        return Agent(config, pm)

    first = agent()
    tracked = []
    first.listeners.append(
        lambda a, f, send, published: tracked.append(
            {a.table.keys[i]: float(a.tracker.g[i]) for i in a.table.active_aliases()}
        )
    )
    task = asyncio.create_task(first.run())

    def lines_kept() -> bool:
        return any(f.lines for seg in first.backlog.segments for f in seg.frames)

    while len(tracked) < 20 or (rule == "trend" and not lines_kept() and len(tracked) < 500):
        await asyncio.sleep(0.02)
    first.stop()
    await task
    path = backlog_dir / f"{site}+hv1.backlog"
    assert path.exists() and len(first.backlog) == len(tracked)
    if rule == "trend":
        assert lines_kept(), f"no line in {len(tracked)} ticks"

    broker.start()
    controller = Controller(
        ControllerConfig(broker=BrokerAddress.parse(broker.url), signing_key=SIGNING_KEY, sites=[site], tick=0.05),
        pm,
    )
    rows = []
    controller.row_listeners.append(rows.append)
    ctask = asyncio.create_task(controller.run())
    await asyncio.wait_for(controller.connected.wait(), 10)
    second = agent()
    assert len(second.backlog) == len(tracked), "the restarted agent read the backlog back"
    atask = asyncio.create_task(second.run())
    deadline = asyncio.get_running_loop().time() + 30
    while sum(r.late for r in rows) < len(tracked) or path.exists():
        assert asyncio.get_running_loop().time() < deadline, f"{sum(r.late for r in rows)} late rows, file {path}"
        await asyncio.sleep(0.05)
    second.stop()
    controller.stop()
    await asyncio.gather(atask, ctask)
    late = [r for r in rows if r.late]
    # the first agent's ticks first (the second's own first ticks, before it connected, follow)
    assert [_as_dict(r) for r in late[: len(tracked)]] == tracked


async def test_a_retained_birth_is_not_taken_as_live_until_the_agent_answers(mosquitto, site):
    """The birth of an agent that died long ago stays on the broker: its values must make no row."""
    key = SeriesKey("uuid-1", "vm1", "CPUUtilization", "%")
    old = protocol.Birth(
        session=1, agent="test", tick=0.05, ts=1.0, series=[protocol.SeriesInfo(0, key, 0.5, 42.0)], seq=0
    )
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"ghost-{site}") as ghost:
        await ghost.publish(protocol.birth_topic(site, "ghost"), protocol.encode(old), qos=1, retain=True)
    pm = plugin_manager()
    controller = Controller(
        ControllerConfig(broker=BrokerAddress.parse(mosquitto.url), signing_key=SIGNING_KEY, sites=[site], tick=0.05),
        pm,
    )
    rows = []
    controller.row_listeners.append(rows.append)
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.connected.wait(), 10)
        for _ in range(100):
            if controller.ingest.messages["retained-birth"]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # ten controller ticks
        state = controller.ingest.hosts[(site, "ghost")]
        assert controller.ingest.messages["retained-birth"] == 1
        assert state.keys == {0: key} and not state.synced and rows == []
        # the agent answers with a live birth: rows start
        live = protocol.Birth(
            session=2, agent="test", tick=0.05, ts=1.0, series=[protocol.SeriesInfo(0, key, 0.5, 43.0)], seq=0
        )
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"ghost-{site}") as ghost:
            await ghost.publish(protocol.birth_topic(site, "ghost"), protocol.encode(live), qos=1, retain=True)
            for _ in range(100):
                if rows:
                    break
                await asyncio.sleep(0.01)
        assert rows and _as_dict(rows[0]) == {key: 43.0}
    finally:
        controller.stop()
        await task
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"ghost-{site}") as ghost:
            await ghost.publish(protocol.birth_topic(site, "ghost"), b"", qos=1, retain=True)


async def test_rows_held_for_a_history_that_never_comes_go_on_in_order_when_rows_follow_data(monkeypatch, site):
    """rows = "data": a birth announced a backlog that never came (the agent lost the broker
    again): once the hold times out, the held rows reach the detectors before the new ones."""
    from atomwatch.controller import history

    monkeypatch.setattr(history, "HOLD_TIMEOUT", 0.2)
    controller = Controller(
        ControllerConfig(
            broker=BrokerAddress.parse("mqtt://127.0.0.1:1"), signing_key=SIGNING_KEY, sites=[site], rows="data"
        ),
        plugin_manager(),
    )
    rows = []
    controller.row_listeners.append(rows.append)
    key = SeriesKey("uuid-1", "vm1", "CPUUtilization", "%")
    birth = protocol.Birth(
        session=5, agent="t", tick=0.05, ts=1.0, series=[protocol.SeriesInfo(0, key, 0.0, 1.0)], seq=0, backlog=3
    )
    controller.ingest.handle(protocol.birth_topic(site, "hv1"), protocol.encode(birth))

    def data(seq: int) -> None:
        msg = protocol.Data(session=5, seq=seq, ts=2.0 + seq, values=[(0, 10.0 + seq)])
        controller.ingest.handle(protocol.data_topic(site, "hv1"), protocol.encode(msg))

    data(0)
    data(1)
    await asyncio.sleep(0.05)
    assert rows == [], "held while the announced history may come"
    await asyncio.sleep(0.3)
    data(2)
    for _ in range(50):
        if len(rows) == 3:
            break
        await asyncio.sleep(0.01)
    assert [r.values[0] for r in rows] == [10.0, 11.0, 12.0] and [r.index for r in rows] == [0, 1, 2]
    controller.alarms.shutdown()


async def test_live_data_after_ticks_kept_since_the_birth_resumes_with_a_new_birth(mosquitto, site):
    """An agent that (re)connects publishes its birth before it has heard a controller's state;
    the ticks it keeps meanwhile go out as history, so the controller's live copy lacks them:
    the live stream must resume with a birth holding every kept tick's values, never with data
    relative to values the controller never got (seen on a clustered broker after a node died)."""
    collector = Spiking()
    pm = PluginManager()
    pm.register(Above90Plugin(collector), name="test-spike")
    address = BrokerAddress.parse(mosquitto.url)
    agent = Agent(AgentConfig(broker=address, controller_key=CONTROLLER_KEY, site=site, host="hv1", tick=60.0), pm)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 10)
        assert agent._controller_online is not True, "no controller on this site"
        key = Spiking.key
        collector.spike = True
        await agent.tick()  # 99 %: kept, not published (no controller is known to hear it)
        assert len(agent.backlog) >= 1
        alias = agent.table.keys.index(key)
        agent._controller_online = True  # as the controller's retained online state says
        published = await agent._publish_tick(time.time(), [], [], [])
        assert published is not None and published[0] == "birth", "a birth first, not data"
        assert float(agent.tracker.g[alias]) == 99.0, "the birth carries the kept tick's value"
    finally:
        agent.stop()
        await task


async def test_an_agent_whose_broker_lost_the_controllers_retained_state_asks_again(
    mosquitto_private, site, tmp_path, caplog
):
    """A relay in front of the real broker loses the controller's retained state on its way to
    the agent (as a clustered broker's node failing over did): the agent, hearing no controller,
    keeps its ticks; it subscribes to the states again, hears the controller and goes live."""
    trace = alibaba_trace(tmp_path / "alibaba.csv", machines=2, rows=3000)
    pipe = make_pipeline(mosquitto_private.url, site, trace, agent_tick=0.05, controller_tick=0.05)
    rows = []
    pipe.controller.row_listeners.append(rows.append)
    relay = LossyRelay(
        mosquitto_private.port, lambda topic, retained: retained and "/state/" in topic and not relay.dropped
    )
    caplog.set_level(logging.INFO, logger="atomwatch.agent.runtime")

    def heard() -> float:
        families = {f.name: f for f in _AgentCollector(pipe.agent)._health()}
        return families["atomwatch_controller_heard"].samples[0].value

    async with relay:
        controller = asyncio.create_task(pipe.controller.run())
        await asyncio.wait_for(pipe.controller.connected.wait(), 10)  # its retained state is stored
        pipe.agent.config = dataclasses.replace(pipe.agent.config, broker=BrokerAddress.parse(relay.url))
        agent = asyncio.create_task(pipe.agent.run())
        try:
            await until(lambda: relay.dropped, "the relay to lose the controller's retained state")
            assert not pipe.agent._controller_online and not any(not r.late for r in rows)
            assert heard() == 0.0  # (/metrics: connected, but no controller heard)
            await until(lambda: sum(not r.late for r in rows) >= 5, "live rows once the agent asked again", timeout=20)
            assert "asking the broker for the retained states again" in caplog.text
            assert pipe.agent._controller_online is True and heard() == 1.0
        finally:
            pipe.agent.stop()
            pipe.controller.stop()
            await asyncio.gather(agent, controller)

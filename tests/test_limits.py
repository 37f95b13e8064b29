"""The controller's resource limits (docs/limits.md), each hit on real objects: series per host
(ingest, and through a real Mosquitto), columns per scope, pending commands (through Mosquitto,
with a stand-in agent that answers when told), and the limit options themselves."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import tracemalloc
from pathlib import Path

import aiomqtt
import pytest
from conftest import SIGNING_KEY, until

import atomwatch.controller
import atomwatch.plugins
from atomwatch import protocol
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.controller.app import Controller
from atomwatch.controller.commands import CommandFailed
from atomwatch.controller.config import LIMITS, ControllerConfig
from atomwatch.controller.detection import DetectorSet
from atomwatch.controller.ingest import Ingest
from atomwatch.controller.metrics import render_metrics
from atomwatch.controller.scopes import ScopeRows, cap_columns
from atomwatch.pluginmanager import PluginManager
from atomwatch.plugins.pca_spe import kernels
from atomwatch.plugins.pca_spe.detector import PcaSpeFactory
from atomwatch.series import METRIC_UNITS, SeriesKey

METRICS = list(METRIC_UNITS.items())


def keys(vms: int, start: int = 0) -> list[SeriesKey]:
    """8 series (the libvirt metrics) of each of ``vms`` VMs, vm0000, vm0001, …"""
    return [
        SeriesKey(f"uuid-{v:04d}", f"vm{v:04d}", metric, unit)
        for v in range(start, start + vms)
        for metric, unit in METRICS
    ]


def birth(series: list[SeriesKey], session: int = 1, seq: int = 0, value: float = 1.0) -> bytes:
    table = [protocol.SeriesInfo(i, k, 0.5, value + i) for i, k in enumerate(series)]
    return protocol.encode(protocol.Birth(session, "test", 1.0, time.time(), table, seq=seq))


def data(seq: int, values: list[tuple[int, float]], session: int = 1) -> bytes:
    return protocol.encode(protocol.Data(session, seq, time.time(), values))


def refusals(text: str, limit: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'atomwatch_limit_refusals_total{{limit="{limit}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no atomwatch_limit_refusals_total for {limit} in /metrics")


# --------------------------------------------------------------------------- series per host


def test_birth_over_the_series_limit_is_refused_whole_and_stored_state_kept(caplog):
    ing = Ingest(max_series=16)
    bt, dt = protocol.birth_topic("s", "h"), protocol.data_topic("s", "h")
    ing.handle(bt, birth(keys(2)))  # 16 series: at the limit, accepted
    ing.handle(dt, data(0, [(0, 42.0)]))
    h = ing.host("s", "h")
    stored = (dict(h.keys), dict(h.deltas), dict(h.values), h.session, h.seq)
    seen = h.last_seen
    assert len(stored[0]) == 16 and stored[2][0] == 42.0

    with caplog.at_level(logging.WARNING, logger="atomwatch.controller.ingest"):
        ing.handle(bt, birth(keys(3), session=2))  # 24 series
        ing.handle(bt, birth(keys(3), session=2))  # the same birth again (a rebirth): counted, not said again
    said = [r.getMessage() for r in caplog.records if "max_series_per_host" in r.getMessage()]
    assert len(said) == 1, said
    assert "s/h" in said[0] and "announces 24 series" in said[0] and "max_series_per_host = 16" in said[0]
    assert "--max-series-per-host" in said[0] and "16 stored series are kept" in said[0]
    assert ing.dropped["too-many-series"] == 2
    assert (dict(h.keys), dict(h.deltas), dict(h.values), h.session, h.seq) == stored, "nothing stored is lost"

    # the refused session's data is dropped without touching the host (nor its liveness)
    ing.handle(dt, data(0, [(0, 7.0), (20, 8.0)], session=2))
    assert ing.dropped["refused-session"] == 1 and h.values[0] == 42.0 and h.last_seen == seen
    # the stored session's data still applies, and other hosts are untouched by the refusal
    ing.handle(dt, data(1, [(0, 43.0)]))
    assert h.values[0] == 43.0
    ing.handle(protocol.birth_topic("s", "other"), birth(keys(1)))
    assert len(ing.host("s", "other").keys) == 8
    # a birth within the limit is accepted again
    ing.handle(bt, birth(keys(1), session=2))
    assert h.session == 2 and len(h.keys) == 8 and h.refused_session is None
    ing.handle(dt, data(0, [(0, 5.0)], session=2))
    assert h.values[0] == 5.0


def _retained_after(limit: int, series: list[SeriesKey]) -> tuple[int, DetectorSet, Ingest]:
    """Bytes still held, allocated by the controller's or a plugin's code, after a birth of
    ``series`` and three rows handed to pca-spe as the controller does it (ingest → scope rows →
    detectors) with ``max_series = limit``. Only allocations with a controller or plugins frame
    count: a compiler thread elsewhere in the process does not blur the figure."""
    gc.collect()
    tracemalloc.start(10)
    try:
        ing = Ingest(max_series=limit)
        rows = ScopeRows(max_columns=10**6)
        detectors = DetectorSet({"pca-spe": PcaSpeFactory()}, {})
        ing.handle(protocol.birth_topic("s", "big"), birth(series))
        state = ing.host("s", "big")
        for i in range(3):
            row = rows.row(state, float(i))
            if row is not None:
                detectors.update(row)
        gc.collect()
        ours = [
            tracemalloc.Filter(True, str(Path(package.__file__).parent / "*"), all_frames=True)
            for package in (atomwatch.controller, atomwatch.plugins)
        ]
        held = tracemalloc.take_snapshot().filter_traces(ours)
        return sum(stat.size for stat in held.statistics("filename")), detectors, ing
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_a_refused_birth_allocates_nothing_for_the_host_or_its_detectors():
    kernels.warm_up()  # compile (or load) pca-spe's kernels now, not in a thread under tracemalloc
    series = keys(125)  # 1,000 series
    refused, detectors, ing = _retained_after(999, series)
    assert ing.dropped["too-many-series"] == 1
    assert not detectors.instances, "no row, so no detector was ever created"
    assert ing.host("s", "big").keys == {}
    assert refused < 20_000, f"the refused birth left {refused} bytes behind"
    accepted, detectors, _ = _retained_after(10**6, series)
    assert ("s/big", "pca-spe") in detectors.instances
    assert accepted > 10e6, f"the same birth accepted: pca-spe at d = 1000 holds {accepted / 1e6:.1f} MB"


# --------------------------------------------------------------------------- columns per scope


def _host(ing: Ingest, vms: int, session: int = 1):
    ing.handle(protocol.birth_topic("s", "h"), birth(keys(vms), session=session))
    return ing.host("s", "h")


def test_columns_beyond_the_limit_are_cut_at_a_whole_vm_and_said_once(caplog):
    ing = Ingest()
    rows = ScopeRows(max_columns=20)
    state = _host(ing, 3)  # 24 columns
    with caplog.at_level(logging.INFO, logger="atomwatch.controller.scopes"):
        got = [rows.row(state, float(i)) for i in range(5)]
    said = [r.getMessage() for r in caplog.records if "max_columns_per_scope" in r.getMessage()]
    assert len(said) == 1, said
    assert "s/h: 24 columns" in said[0] and "max_columns_per_scope = 20" in said[0]
    assert "8 columns of 1 VMs left out (vm0002)" in said[0] and "--max-columns-per-scope" in said[0]
    for row in got:  # processing goes on with the first two VMs, whole
        assert len(row.columns) == len(row.values) == len(row.deltas) == 16
        assert {k.vm_name for k in row.columns} == {"vm0000", "vm0001"}
        assert row.values[0] == 1.0  # the birth's value of alias 0
    assert [r.index for r in got] == [0, 1, 2, 3, 4]
    assert rows.capped_rows["s/h"] == 5 and rows.left_out == {"s/h": 8}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="atomwatch.controller.scopes"):
        state = _host(ing, 2, session=2)  # 16 columns: within the limit again
        assert len(rows.row(state, 5.0).columns) == 16 and rows.left_out == {}
        state = _host(ing, 4, session=3)  # 32: cut again, and said again
        assert len(rows.row(state, 6.0).columns) == 16
    messages = [r.getMessage() for r in caplog.records]
    assert any("within max_columns_per_scope again" in m for m in messages)
    assert sum("32 columns, more than max_columns_per_scope" in m for m in messages) == 1
    assert rows.left_out == {"s/h": 16}


def test_cap_columns_keeps_whole_vms_unless_one_vm_alone_is_over():
    cols = tuple(sorted(keys(3), key=lambda k: (k.vm_name, k.vm_uuid, k.metric, k.unit)))
    assert cap_columns(cols, 24) == 24
    assert cap_columns(cols, 23) == 16
    assert cap_columns(cols, 16) == 16
    assert cap_columns(cols, 5) == 5  # the first VM alone has 8: its first 5


# --------------------------------------------------------------------------- through a real broker


def controller(url: str, site: str, **limits) -> Controller:
    config = ControllerConfig(
        broker=BrokerAddress.parse(url), signing_key=SIGNING_KEY, sites=[site], tick=0.1, http=None, **limits
    )
    return Controller(config, PluginManager())


async def test_series_and_column_limits_through_mosquitto(mosquitto, site, caplog):
    c = controller(mosquitto.url, site, max_series_per_host=100, max_columns_per_scope=16)
    rows = []
    c.row_listeners.append(rows.append)
    run = asyncio.create_task(c.run())
    try:
        await asyncio.wait_for(c.connected.wait(), 10)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"{site}-agents") as agents:

            async def tick(host: str, session: int, seq: int) -> None:
                await agents.publish(protocol.data_topic(site, host), data(seq, [(0, seq)], session), qos=1)

            # hv1: 3 VMs, 24 series: accepted, its rows cut to 16 columns
            await agents.publish(protocol.birth_topic(site, "hv1"), birth(keys(3)), qos=1)
            await tick("hv1", 1, 0)
            await until(lambda: any(r.scope == f"{site}/hv1" for r in rows), "hv1's first row", timeout=10)
            hv1 = c.ingest.host(site, "hv1")
            stored = dict(hv1.keys)
            # then a birth of 500 series: refused whole, said once, counted; hv1 keeps its 24 series
            with caplog.at_level(logging.WARNING, logger="atomwatch.controller"):
                await agents.publish(protocol.birth_topic(site, "hv1"), birth(keys(63), session=2), qos=1)
                await until(lambda: c.ingest.dropped["too-many-series"] >= 1, "the refusal", timeout=10)
                # hv2 comes after, and is served: ingest went on
                await agents.publish(protocol.birth_topic(site, "hv2"), birth(keys(1, start=50)), qos=1)
                for seq in range(3):
                    await tick("hv2", 1, seq)
                await until(lambda: any(r.scope == f"{site}/hv2" for r in rows), "hv2's first row", timeout=10)
            said = [r.getMessage() for r in caplog.records if "max_series_per_host" in r.getMessage()]
            assert len(said) == 1 and f"{site}/hv1" in said[0] and "504 series" in said[0], said
            assert hv1.keys == stored and hv1.session == 1
            assert all(len(r.columns) == 16 for r in rows if r.scope == f"{site}/hv1")
            assert all(len(r.columns) == 8 for r in rows if r.scope == f"{site}/hv2")
            text = render_metrics(c).decode()
            assert 'atomwatch_messages_dropped_total{reason="too-many-series"} 1.0' in text
            assert refusals(text, "max_series_per_host") == 1
            assert refusals(text, "max_columns_per_scope") >= 1
            assert f'atomwatch_scope_columns_left_out{{host="hv1",site="{site}"}} 8.0' in text
            assert f'atomwatch_scope_series{{host="hv1",site="{site}"}} 24.0' in text
    finally:
        c.stop()
        await run


class StandInAgent:
    """Subscribes to the commands of a site and answers one when told (``answer``)."""

    def __init__(self, client: aiomqtt.Client, site: str) -> None:
        self.client = client
        self.site = site
        self.commands: list[tuple[str, protocol.Command]] = []
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.client.subscribe(protocol.cmd_topic(self.site, "+", "+"), qos=1)

        async def listen() -> None:
            async for message in self.client.messages:
                t, cmd = protocol.decode(str(message.topic), message.payload)
                self.commands.append((t.host, cmd))

        self.task = asyncio.create_task(listen())

    async def answer(self, host: str, cmd: protocol.Command) -> None:
        reply = protocol.Reply(id=cmd.id, status="ok", ts=time.time(), result={"done": cmd.command})
        await self.client.publish(protocol.reply_topic(self.site, host, cmd.id), protocol.encode(reply), qos=1)


async def test_pending_commands_are_capped_per_host_and_in_all(mosquitto, site, caplog):
    c = controller(mosquitto.url, site, max_pending_commands=3, max_pending_commands_per_host=2)
    run = asyncio.create_task(c.run())
    try:
        await asyncio.wait_for(c.connected.wait(), 10)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"{site}-agent") as client:
            agent = StandInAgent(client, site)
            await agent.start()
            waiting = [asyncio.create_task(c.send_command(site, "hv1", "ping", {"n": i}, timeout=30)) for i in range(2)]
            await until(lambda: len(agent.commands) == 2, "two commands at the agent", timeout=10)
            with caplog.at_level(logging.WARNING, logger="atomwatch.controller.commands"):
                with pytest.raises(CommandFailed) as per_host:
                    await c.send_command(site, "hv1", "ping", {"n": 2}, timeout=30)
                waiting.append(asyncio.create_task(c.send_command(site, "hv2", "ping", {}, timeout=30)))
                await until(lambda: len(agent.commands) == 3, "the command to hv2", timeout=10)
                with pytest.raises(CommandFailed) as in_all:
                    await c.send_command(site, "hv3", "ping", {}, timeout=30)
            assert "ping to " + f"{site}/hv1: refused, 2 commands to {site}/hv1" in str(per_host.value)
            assert "max_pending_commands_per_host = 2" in str(per_host.value)
            assert "--max-pending-commands-per-host" in str(per_host.value)
            assert "3 commands on this controller" in str(in_all.value)
            assert "--max-pending-commands " in str(in_all.value)
            assert len(agent.commands) == 3, "a refused command is never published"
            assert sum("refused" in r.getMessage() for r in caplog.records) == 2
            text = render_metrics(c).decode()
            assert refusals(text, "max_pending_commands_per_host") == 1
            assert refusals(text, "max_pending_commands") == 1

            # the agent answers one of hv1's commands: its slot frees, the next command goes out
            host, cmd = agent.commands[0]
            await agent.answer(host, cmd)
            assert await asyncio.wait_for(waiting[0], 10) == {"done": "ping"}
            waiting.append(asyncio.create_task(c.send_command(site, "hv1", "ping", {"n": 3}, timeout=30)))
            await until(lambda: len(agent.commands) == 4, "the command sent once a slot freed", timeout=10)
            for host, cmd in agent.commands[1:]:
                await agent.answer(host, cmd)
            results = await asyncio.wait_for(asyncio.gather(*waiting[1:]), 10)
            assert results == [{"done": "ping"}] * 3
            assert c.commands.pending == {} and not c.commands.pending_per_host
            agent.task.cancel()
    finally:
        c.stop()
        await run


# --------------------------------------------------------------------------- the options


@pytest.mark.parametrize("name", LIMITS)
@pytest.mark.parametrize("value", [0, -5, 2.5, True, "many"])
def test_a_bad_limit_is_a_clear_error(name, value):
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be a whole number ≥ 1"):
        ControllerConfig(broker=BrokerAddress.parse("mqtt://127.0.0.1:1883"), http=None, **{name: value})


def test_limits_from_the_command_line_and_the_config_file(tmp_path):
    from atomwatch.cli import build_parser
    from atomwatch.cli.controller import build_config
    from atomwatch.config import load_file

    toml = tmp_path / "c.toml"
    toml.write_text("max_columns_per_scope = 640\nmax_pending_commands = 9\n")
    argv = ["controller", "--http", "off", "--config", str(toml)]
    args = build_parser("controller").parse_args(argv + ["--max-series-per-host", "123", "--max-pending-commands", "7"])
    config = build_config(args, load_file(str(toml)), {})
    # the command line over the file over the default
    assert (config.max_series_per_host, config.max_columns_per_scope, config.max_pending_commands) == (123, 640, 7)
    assert config.max_pending_commands_per_host == 32
    c = Controller(config, PluginManager())
    assert c.ingest.max_series == 123 and c.scope_rows.max_columns == 640
    assert (c.commands.max_pending, c.commands.max_pending_per_host) == (7, 32)

"""Helpers to run a real agent and a real controller in one event loop for end-to-end tests.

The agent records, for every tick, the true values and what it published; the controller's
ingest records its rebuilt values after every message. Tests then compare the two.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from conftest import CONTROLLER_KEY, DATA, SIGNING_KEY, until

import atomwatch
from atomwatch import protocol, signing
from atomwatch.agent.config import AgentConfig
from atomwatch.agent.runtime import Agent
from atomwatch.config import BrokerAddress
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.pluginmanager import PluginManager
from atomwatch.series import SeriesKey
from atomwatch.traces import read_trace, write_trace

#: The libvirt collector's Δ for the lab tests. The defaults (CPU 2 %, network 1 KiB/s, disk ops 2/s)
#: suit production guests; the lab's normal work is small (CPU std ≈ 0.8 %, network ≈ 340 B/s,
#: disk ops ≈ 0.5/s), so at the defaults the controller's copies of most columns hold still and
#: pca-spe watches them as quiet columns, not through the PCA. As ATOM chooses Δ well below each
#: metric's normal variation, these keep every varying lab column in the PCA. Memory keeps its
#: default 1 %: it is truly constant in the lab and stays quiet either way.
LAB_DELTAS = {"delta_cpu": 0.2, "delta_network": 64.0, "delta_disk_ops": 0.1, "delta_disk_bytes": 2048.0}


def lab_delta_args() -> list[str]:
    """LAB_DELTAS as the offline commands' ``--delta METRIC=Δ`` arguments (one per metric)."""
    from atomwatch.plugins.libvirt_collector import DELTA_OPTIONS

    return [
        arg
        for option, delta in LAB_DELTAS.items()
        for metric in DELTA_OPTIONS[option]
        for arg in ("--delta", f"{metric}={delta:g}")
    ]


def plugin_manager(*names: str) -> PluginManager:
    """Built-in plugins loaded exactly as in production: entry points, restricted by name."""
    pm = PluginManager()
    pm.load_entry_points(allow=",".join(names))
    return pm


def alibaba_trace(path: Path, machines: int = 4, rows: int = 1200) -> Path:
    """A multi-column trace made of real Alibaba memory-utilisation series, one VM each."""
    files = sorted((DATA / "precog").glob("m_*_train.csv.gz"))[:machines]
    cols, series = [], []
    for i, f in enumerate(files):
        t = read_trace(f)
        series.append(t.values[:rows, 0])
        cols.append(f"vm{i}/MemoryUtilization")
    write_trace(path, cols, np.column_stack(series))
    return path


@dataclass
class TickRecord:
    published: tuple[str, int, int] | None
    truth: dict[SeriesKey, float]
    tracked: dict[SeriesKey, float]
    deltas: dict[SeriesKey, float]
    sent: int
    #: the values sent as lines (trend tracking) this tick
    lines: int = 0


@dataclass
class Pipeline:
    agent: Agent
    controller: Controller
    ticks: list[TickRecord] = field(default_factory=list)
    #: (session, seq) → controller's rebuilt values after that data message
    rebuilt: dict[tuple[int, int], dict[SeriesKey, float]] = field(default_factory=dict)
    births: list[tuple[int, dict[SeriesKey, float]]] = field(default_factory=list)
    values_received: int = 0
    #: of those, the values sent as lines (trend tracking)
    lines_received: int = 0
    #: every message the controller applied: (kind, session, seq or None, host alive, synced)
    events: list[tuple] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    #: the ``secure init`` site's broker (conftest's SecureMosquitto) when the pipeline runs secured
    secured: Any = None

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self.controller.run()), asyncio.create_task(self.agent.run())]
        await asyncio.wait_for(self.controller.connected.wait(), 10)
        await asyncio.wait_for(self.agent.connected.wait(), 10)

    async def stop(self) -> None:
        self.agent.stop()
        self.controller.stop()
        await asyncio.gather(*self.tasks)

    def data_ticks(self) -> list[TickRecord]:
        """The agent's ticks published as data messages."""
        return [t for t in self.ticks if t.published and t.published[0] == "data"]

    async def drain_and_stop(self, timeout: float = 20) -> None:
        """Stop the agent, wait until the controller has every data message it published, stop."""
        self.agent.stop()
        await self.wait_for(
            lambda: len(self.rebuilt) >= len(self.data_ticks()), timeout, "the controller to receive every data message"
        )
        await self.stop()

    async def wait_for(self, predicate, timeout: float, what: str) -> None:
        await until(predicate, what, timeout=timeout)


def live_pipeline(
    broker_url: str,
    site: str,
    plugins: tuple[str, ...] | list[str],
    options: dict[str, Any],
    detectors: list[str],
    agent_tick: float,
    controller_tick: float,
    secured=None,
    tracking: str | dict[str, str] = "atom",
    **controller_config: Any,
) -> Pipeline:
    """An agent (host ``hv1``) and a controller with these built-in plugins and options.

    With ``secured`` (conftest's ``SecureMosquitto`` of a ``secure init`` site), each connects over
    TLS with its own certificate and the site's command-signing keys; ``controller_config`` adds
    ControllerConfig fields (e.g. the HTTP API)."""
    pm = plugin_manager(*plugins)
    if secured is None:
        agent_broker = controller_broker = BrokerAddress.parse(broker_url)
        signing_key, controller_key = SIGNING_KEY, CONTROLLER_KEY
    else:
        agent_broker, controller_broker = secured.address("hv1"), secured.address("controller")
        signing_key = signing.load_private_key(secured.root / "controller" / "command-signing.key")
        controller_key = signing.load_public_key(secured.root / "agents" / "hv1" / "command-signing.pub")
    agent = Agent(
        AgentConfig(
            broker=agent_broker,
            controller_key=controller_key,
            site=site,
            host="hv1",
            tick=agent_tick,
            options=options,
            tracking=tracking,
        ),
        pm,
    )
    controller = Controller(
        ControllerConfig(
            broker=controller_broker,
            signing_key=signing_key,
            sites=[site],
            tick=controller_tick,
            detectors=detectors,
            options=options,
            **controller_config,
        ),
        pm,
    )
    return Pipeline(agent, controller, secured=secured)


def detector_status(controller: Controller, scope: str, detector: str) -> dict[str, Any]:
    """The detector's last status on the scope (empty before its first row)."""
    return controller.scope_status.get(scope, {}).get("detectors", {}).get(detector, {})


def make_pipeline(
    broker_url: str,
    site: str,
    trace: Path,
    agent_tick: float = 0.01,
    controller_tick: float = 0.5,
    delta_rel: float = 0.05,
    detectors: list[str] | None = None,
    options: dict[str, Any] | None = None,
    plugins: tuple[str, ...] = ("replay",),
    tracking: str | dict[str, str] = "atom",
) -> Pipeline:
    opts = {"replay": {"trace": str(trace), "delta_rel": delta_rel}}
    opts.update(options or {})
    pipe = live_pipeline(
        broker_url, site, plugins, opts, detectors or [], agent_tick, controller_tick, tracking=tracking
    )
    agent, controller = pipe.agent, pipe.controller

    def on_tick(a: Agent, f: np.ndarray, send: np.ndarray, published) -> None:
        keys = a.table.keys
        active = a.table.active_aliases()
        pipe.ticks.append(
            TickRecord(
                published=published,
                truth={keys[i]: float(f[i]) for i in active},
                tracked={keys[i]: float(a.tracker.g[i]) for i in active},
                deltas={keys[i]: float(a.deltas[i]) for i in active},
                sent=int(send[active].sum()),
                lines=int((send[active] & (a.tracker.line(active)[1] != 0)).sum()),
            )
        )

    def on_message(state, msg) -> None:
        pipe.events.append(
            (msg.type, getattr(msg, "session", None), getattr(msg, "seq", None), state.alive, state.synced)
        )
        if isinstance(msg, protocol.Data):
            pipe.rebuilt[(msg.session, msg.seq)] = state.snapshot()
            pipe.values_received += len(msg.values)
            pipe.lines_received += len(msg.lines)
        elif isinstance(msg, protocol.Birth):
            pipe.births.append((msg.session, state.snapshot()))

    agent.listeners.append(on_tick)
    controller.ingest.listeners.append(on_message)
    return pipe


def assert_within_delta(record, rebuilt, where: str) -> None:
    assert set(rebuilt) == set(record.truth), f"{where}: controller has other series than the agent"
    for key, truth in record.truth.items():
        got = rebuilt[key]
        delta = record.deltas[key]
        if math.isnan(truth):  # the agent could not read it this tick (e.g. over its time budget)
            assert math.isnan(got), f"{where}: {key.column} stale at the agent, but the controller invented {got}"
            continue
        assert not math.isnan(got), f"{where}: {key.column} unknown at the controller"
        # the controller holds exactly the tracker's value …
        assert got == record.tracked[key], f"{where}: {key.column} controller {got} ≠ tracker {record.tracked[key]}"
        # … and the tracker's value is within Δ of the truth (a few ulps of float rounding allowed)
        assert abs(got - truth) <= delta * (1 + 1e-12) + 1e-12 * abs(truth), (
            f"{where}: {key.column} |{got} − {truth}| > Δ = {delta}"
        )


class Above90:
    """A detector: an anomaly at each row with a column above 90, blaming those columns."""

    name = "above-90"

    def update(self, row):
        hot = [k for k, v in zip(row.columns, row.values, strict=True) if v > 90]
        if hot:
            blame = [atomwatch.Blame(k) for k in hot]
            return atomwatch.Anomaly("above-90", row.scope, row.index, row.ts, 99.0, 90.0, blame)
        return None


class Above90Plugin:
    """A plugin: the test's ``collector`` and the ``above-90`` detector."""

    def __init__(self, collector):
        self.collector = collector

    @atomwatch.hookimpl
    def register_collectors(self, config):
        return [self.collector]

    @atomwatch.hookimpl
    def register_detectors(self):
        class Factory:
            name = "above-90"
            description = "test: a column above 90"

            def create(self, scope, options):
                return Above90()

        return [Factory()]

"""``atomwatch up``: broker, controller and a local agent in one process, nothing to configure.

With no ``--broker`` an embedded amqtt broker is started on 127.0.0.1 (a free port) that admits
only this run's controller and agent (a password made for the run, held in memory). The agent
replays the bundled lab recording (three guests, one ``cryptominer`` attack) through the replay
collector unless ``--trace`` names another trace or ``--no-replay`` is given; every other
collector that can run here (libvirt, CoreDNS with endpoints set) runs as well.

The quick start: while the replay is the only collector, the agent ticks every ``REPLAY_TICK``
seconds (the bundled recording, one row a second, plays ten times faster: its attack at row 90
comes some 9 s after the agent's first row, past pca-spe's warm-up), and the controller takes a host's row as each of
its data messages arrives (``rows = "data"``), so every row the agent sends reaches the detectors
once, however loaded the machine. pca-spe runs with ``confirm=3`` (``UP_DETECTOR_OPTIONS``) unless
given otherwise. When an alarm opens, the operator is told on stdout which VM and metric it
blames and the commands to look at it and give a verdict (:class:`Announcer`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING

import atomwatch
from atomwatch.alarm import Alarm
from atomwatch.config import ConfigError
from atomwatch.options import declared_options

from . import agent as agent_cmd
from . import controller as controller_cmd
from ._api import DEFAULT as DEFAULT_API
from ._common import (
    add_broker_tls_arguments,
    add_plugin_arguments,
    options,
    plugin_manager,
    plugin_problems,
    role_keys,
)

if TYPE_CHECKING:
    from atomwatch.agent.runtime import Agent

log = logging.getLogger(__name__)

BUNDLED_TRACE = "lab-cryptominer.csv"
#: seconds between ticks while the replay is the only collector and no --tick is given
REPLAY_TICK = 0.1
#: seconds the agent waits for the replay's row when it is the only collector (see _up)
REPLAY_BUDGET = 1.0
#: seconds between ticks otherwise (live collectors sample real guests)
LIVE_TICK = 1.0
#: detector options ``up`` sets unless --set/--config give them. The bundled recording's normal
#: work has one- and two-row blips that pca-spe's SPE flags at the default α (a guest's disk
#: read and its write landing in two samples instead of one, rows 47–48 and 63–64; one lone CPU
#: spike, row 83): three consecutive abnormal rows before an alarm keep them out, and cost the
#: attack three rows (docs/pca.md, "confirm").
UP_DETECTOR_OPTIONS = {"pca-spe": {"confirm": 3}}
#: the ``--broker-*`` options, which only an external ``--broker`` can use
TLS_OPTIONS = ("broker_ca", "broker_cert", "broker_key", "broker_username", "broker_password_file")


def _given(args: argparse.Namespace, file_config: dict, name: str):
    """The value of option ``name`` a flag, ``$ATOMWATCH_…`` or the file gives (None: none does)."""
    from atomwatch.settings import resolve

    (key,) = [k for k in role_keys() if k.name == name]
    return resolve([key], args, file_config, getattr(args, "config", None)).get(name)


def bundled_trace() -> str:
    return str(resources.files("atomwatch") / "data" / BUNDLED_TRACE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker", metavar="URL", help="use this MQTT broker (mqtt:// or mqtts://) instead of the embedded one"
    )
    add_broker_tls_arguments(p)
    p.add_argument("--site", help="site name (default: default)")
    p.add_argument("--host", help="the local agent's host name (default: this machine's)")
    p.add_argument(
        "--tick",
        metavar="DURATION",
        help=f"seconds between ticks (default {REPLAY_TICK:g} while the replay is the only collector: the "
        f"recording plays faster than recorded; else {LIVE_TICK:g})",
    )
    p.add_argument("--duration", metavar="DURATION", help="stop after this long: seconds, or e.g. 30s, 5min")
    p.add_argument("--trace", help="CSV trace or recording folder to replay (default: the bundled lab recording)")
    p.add_argument("--speed", type=float, default=1.0, help="trace rows per tick (default 1)")
    p.add_argument("--no-replay", action="store_true", help="replay nothing; run only the live collectors")
    p.add_argument(
        "--detector", dest="detectors", action="append", metavar="NAME", help="run only this detector (repeatable)"
    )
    p.add_argument(
        "--delta", action="append", metavar="[METRIC=]VALUE[%]", help="tracking error Δ (see atomwatch agent)"
    )
    p.add_argument("--gamma", help=argparse.SUPPRESS)
    controller_cmd.add_controller_options(p)
    add_plugin_arguments(p)


async def _up(args: argparse.Namespace) -> None:
    from atomwatch import signing
    from atomwatch.agent.runtime import Agent
    from atomwatch.broker import EmbeddedBroker
    from atomwatch.controller.app import Controller

    file_config, plugin_opts = options(args, role_keys(), "up")
    pm = plugin_manager(args)
    # up's own defaults go to the plugins that are loaded (ATOMWATCH_LOAD_PLUGINS may leave some out)
    declared = declared_options()
    if not args.no_replay and "replay" in declared:
        replay = plugin_opts.setdefault("replay", {})
        replay.setdefault("trace", args.trace or bundled_trace())
        replay.setdefault("speed", args.speed)
        replay.setdefault("loop", True)
    for plugin, defaults in UP_DETECTOR_OPTIONS.items():
        for key, value in defaults.items():
            if plugin in declared:
                plugin_opts.setdefault(plugin, {}).setdefault(key, value)
    problems = plugin_problems(pm, plugin_opts, file_config, getattr(args, "config", None))
    if problems:
        raise ConfigError("\n".join(problems))
    broker = None
    url = _given(args, file_config, "broker")
    if not url:
        given = [f"--{n.replace('_', '-')}" for n in TLS_OPTIONS if _given(args, file_config, n)]
        if given:
            raise ConfigError(f"{', '.join(given)} need --broker: the embedded broker is plain MQTT on 127.0.0.1")
        # a password made for this run only, held in memory: no other local user can reach the broker
        credentials = ("atomwatch", secrets.token_urlsafe(24))
        broker = EmbeddedBroker(users=dict([credentials]))
        await broker.start()
        url = broker.url
    # one process, one run: a fresh command-signing pair in memory, the private half for the
    # controller, the public half for the local agent (nothing to configure, nothing on disk)
    signing_key, controller_key = signing.generate_key_pair()
    try:
        controller_config = controller_cmd.build_config(
            args,
            file_config,
            plugin_opts,
            broker=url,
            signing_key=signing_key,
            rows=_given(args, file_config, "rows") or "data",
        )
        agent_config = agent_cmd.build_config(args, file_config, plugin_opts, broker=url, controller_key=controller_key)
        if broker is not None:
            username, password = credentials
            controller_config.broker = replace(controller_config.broker, username=username, password=password)
            agent_config.broker = replace(agent_config.broker, username=username, password=password)
        announcer = Announcer(controller_config.http, https=bool(controller_config.http_cert))
        pm.register_plugin(announcer, "up", "atomwatch up")
        controller = Controller(controller_config, pm)
        agent = Agent(agent_config, pm)
        tick, replay_only = _choose_tick(args, file_config, agent)
        controller_config.tick = agent_config.tick = tick
        if replay_only and agent_config.collect_budget is None:
            # a replay answers at once unless the machine is starved of CPU: then waiting for it
            # keeps its rows whole instead of reporting them stale
            agent_config.collect_budget = REPLAY_BUDGET
        agent.sampler.budget = agent_config.budget  # (the sampler was made with the config's first tick)
        for plugin, defaults in UP_DETECTOR_OPTIONS.items():
            if plugin in controller.detectors.factories:
                given = ", ".join(f"{k}={plugin_opts[plugin][k]}" for k in defaults)
                log.info(
                    "%s runs with %s (atomwatch up's default; --set %s.KEY=VALUE to change)", plugin, given, plugin
                )
        # --duration stops the agent first (its death published, nothing kept for nobody), then the controller
        controller_config.duration = None
        tasks = [asyncio.create_task(controller.run()), asyncio.create_task(agent.run())]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        agent.stop()
        controller.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if t.exception():
                raise t.exception()
    finally:
        if broker is not None:
            await broker.stop()


def _choose_tick(args: argparse.Namespace, file_config: dict, agent: Agent) -> tuple[float, bool]:
    """(the tick: --tick or the config file's, else REPLAY_TICK while the replay is the only
    collector, else LIVE_TICK; whether the replay is the only collector)."""
    replay_only = [getattr(slot.collector, "name", "?") for slot in agent.sampler.slots] == ["replay"]
    given = _given(args, file_config, "tick")
    if given is not None:
        return given, replay_only
    if replay_only:
        log.info(
            "tick %g s: the replay is the only collector, the recording plays %g× faster than one row a second "
            "(--tick 1 for real time)",
            REPLAY_TICK,
            1 / REPLAY_TICK,
        )
        return REPLAY_TICK, True
    return LIVE_TICK, False


class Announcer:
    """A plugin of this run only: tells the operator on stdout about every alarm that opens —
    what it blames and the commands to look at it and give a verdict."""

    def __init__(self, http: str | None, https: bool = False):
        self.url = None if http is None else f"{'https' if https else 'http'}://{http}"

    def commands(self, alarm_id: int) -> list[tuple[str, str]]:
        controller = "" if self.url in (None, DEFAULT_API) else f" --controller {self.url}"
        return [
            ("look at it", f"atomwatch alarm {alarm_id}{controller}"),
            ("an attack", f"atomwatch verdict {alarm_id} malicious{controller}"),
            ("normal work", f"atomwatch verdict {alarm_id} normal{controller}"),
        ]

    @atomwatch.hookimpl
    def alarm_opened(self, alarm: Alarm, handle: object) -> None:
        from atomwatch.controller.alarm_log import blame_text

        lines = [
            f"alarm {alarm.id}: {alarm.detector} on {alarm.scope} at row {alarm.last_row} "
            f"(score {alarm.score:.4g} > {alarm.threshold:.4g}) blames {blame_text(alarm.blame)}"
        ]
        if self.url is None:
            lines.append("  (--http off: no HTTP API, so the commands below cannot reach this controller)")
        width = max(len(label) for label, _ in self.commands(alarm.id))
        lines += [f"  {label + ':':<{width + 1}}  {command}" for label, command in self.commands(alarm.id)]
        print("\n".join(lines), flush=True)


def run(args: argparse.Namespace) -> int:
    asyncio.run(_up(args))
    return 0

"""``atomwatch up``: broker, controller and a local agent in one process, nothing to configure.

With no ``--broker`` an embedded amqtt broker is started on 127.0.0.1 (a free port) that admits
only this run's controller and agent (a password made for the run, held in memory). The agent
replays the bundled lab recording (three guests, one ``cryptominer`` attack) through the replay
collector unless ``--trace`` names another trace or ``--no-replay`` is given; every other
collector that can run here (libvirt, CoreDNS with endpoints set) runs as well.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
from dataclasses import replace
from importlib import resources

from atomwatch.config import ConfigError

from . import agent as agent_cmd
from . import controller as controller_cmd
from ._common import add_broker_tls_arguments, add_plugin_arguments, options, pick, plugin_manager

log = logging.getLogger(__name__)

BUNDLED_TRACE = "lab-cryptominer.csv"
#: the ``--broker-*`` options, which only an external ``--broker`` can use
TLS_OPTIONS = ("broker_ca", "broker_cert", "broker_key", "broker_username", "broker_password_file")


def bundled_trace() -> str:
    return str(resources.files("atomwatch") / "data" / BUNDLED_TRACE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker", metavar="URL", help="use this MQTT broker (mqtt:// or mqtts://) instead of the embedded one"
    )
    add_broker_tls_arguments(p)
    p.add_argument("--site", help="site name (default: default)")
    p.add_argument("--host", help="the local agent's host name (default: this machine's)")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between ticks (default 1)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--trace", help="CSV trace or recording folder to replay (default: the bundled lab recording)")
    p.add_argument("--speed", type=float, default=1.0, help="trace rows per tick (default 1)")
    p.add_argument("--no-replay", action="store_true", help="replay nothing; run only the live collectors")
    p.add_argument(
        "--detector", dest="detectors", action="append", metavar="NAME", help="run only this detector (repeatable)"
    )
    p.add_argument("--delta", action="append", metavar="[METRIC=]VALUE", help="tracking error Δ (see atomwatch agent)")
    p.add_argument("--gamma", type=float, help=argparse.SUPPRESS)
    controller_cmd.add_controller_options(p)
    add_plugin_arguments(p)


async def _up(args: argparse.Namespace) -> None:
    from atomwatch import signing
    from atomwatch.agent.runtime import Agent
    from atomwatch.broker import EmbeddedBroker
    from atomwatch.controller.app import Controller

    file_config, plugin_opts = options(args)
    if not args.no_replay:
        replay = plugin_opts.setdefault("replay", {})
        replay.setdefault("trace", args.trace or bundled_trace())
        replay.setdefault("speed", args.speed)
        replay.setdefault("loop", True)
    pm = plugin_manager(args, plugin_opts)
    broker = None
    url = args.broker or file_config.get("broker")
    if not url:
        given = [f"--{n.replace('_', '-')}" for n in TLS_OPTIONS if pick(args, file_config, n, None)]
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
            args, file_config, plugin_opts, broker=url, signing_key=signing_key
        )
        agent_config = agent_cmd.build_config(args, file_config, plugin_opts, broker=url, controller_key=controller_key)
        if broker is not None:
            username, password = credentials
            controller_config.broker = replace(controller_config.broker, username=username, password=password)
            agent_config.broker = replace(agent_config.broker, username=username, password=password)
        controller = Controller(controller_config, pm)
        agent = Agent(agent_config, pm)
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


def run(args: argparse.Namespace) -> int:
    asyncio.run(_up(args))
    return 0

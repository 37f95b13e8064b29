"""``atomwatch agent``: the process of one hypervisor."""

from __future__ import annotations

import argparse
import asyncio
import os

from ._common import (
    add_plugin_arguments,
    add_session_arguments,
    broker_address,
    options,
    pick,
    plugin_manager,
    warn_identity,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_session_arguments(p, tick=10.0)
    add_plugin_arguments(p)
    p.add_argument("--host", help="this hypervisor's name in topics (default: the machine's host name)")
    p.add_argument(
        "--delta",
        action="append",
        metavar="[METRIC=]VALUE",
        help="tracking error Δ, in the metric's unit, for one metric or (without METRIC=) every metric",
    )
    p.add_argument("--gamma", type=float, help="resolution that ends a tracking round (default: float resolution)")


def build_config(args: argparse.Namespace, file_config: dict, plugin_opts: dict, **overrides):
    from atomwatch.agent.config import AgentConfig
    from atomwatch.config import parse_deltas

    broker = pick(args, file_config, "broker", os.environ.get("ATOMWATCH_BROKER", "mqtt://127.0.0.1:1883"))
    kwargs = dict(
        broker=broker_address(args, file_config, overrides.pop("broker", broker)),
        site=pick(args, file_config, "site", "default"),
        tick=float(pick(args, file_config, "tick", 10.0)),
        deltas=parse_deltas(getattr(args, "delta", None) or file_config.get("delta")),
        gamma=float(pick(args, file_config, "gamma", 0.0)),
        options=plugin_opts,
        duration=pick(args, file_config, "duration", None),
    )
    host = pick(args, file_config, "host", None)
    if host:
        kwargs["host"] = host
    kwargs.update(overrides)
    config = AgentConfig(**kwargs)
    warn_identity(config.broker, config.host, "agent's --host")
    return config


def run(args: argparse.Namespace) -> int:
    from atomwatch.agent.runtime import Agent

    file_config, plugin_opts = options(args)
    config = build_config(args, file_config, plugin_opts)
    agent = Agent(config, plugin_manager(args, plugin_opts))
    asyncio.run(agent.run())
    return 0

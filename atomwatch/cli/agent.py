"""``atomwatch agent``: the process of one hypervisor."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ._common import (
    add_message_size_argument,
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
    add_key_arguments(p)
    add_message_size_argument(p)
    p.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics (GET /metrics, plain HTTP) on this address; a bare PORT listens on "
        "127.0.0.1 (default: off)",
    )
    p.add_argument(
        "--backlog-frames",
        type=int,
        metavar="N",
        help="while the broker is unreachable keep up to N ticks to send once it is back, oldest dropped first "
        "(default 8640, a day of 10 s ticks; 0: keep none)",
    )
    p.add_argument(
        "--backlog-bytes",
        metavar="SIZE",
        help="… and at most this much memory for them, e.g. 64MiB (default 64MiB)",
    )
    p.add_argument(
        "--backlog-dir",
        metavar="DIR",
        help="also write the backlog to a file in DIR, so that an agent restarted during an outage still sends "
        "it (default: memory only; the systemd unit uses its state directory)",
    )


def add_key_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--controller-key",
        action="append",
        metavar="FILE",
        help="the controller's command-signing public key (PEM), e.g. DIR/agents/HOST/command-signing.pub; "
        "repeatable during a key rotation (default: $ATOMWATCH_CONTROLLER_KEY; none: every command is refused)",
    )
    p.add_argument(
        "--command-lifetime",
        type=float,
        metavar="SECONDS",
        help="refuse a signed command valid for longer than this (+ skew) (default 60)",
    )
    p.add_argument(
        "--command-skew",
        type=float,
        metavar="SECONDS",
        help="clock difference allowed with the controller when checking a command's dates (default 30)",
    )


def controller_keys(args: argparse.Namespace, file_config: dict) -> list:
    """The trusted public keys: --controller-key, else the config file's controller_key (a path or a
    list), else $ATOMWATCH_CONTROLLER_KEY (paths separated by ','); empty if none is given."""
    from atomwatch import signing

    paths = getattr(args, "controller_key", None) or file_config.get("controller_key")
    if not paths:
        paths = os.environ.get("ATOMWATCH_CONTROLLER_KEY") or []
    if isinstance(paths, str):
        paths = [paths]
    return [k for p in paths for k in signing.load_public_keys(p)]


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
    for name in ("command_lifetime", "command_skew"):
        value = pick(args, file_config, name, None)
        if value is not None:
            kwargs[name] = float(value)
    for name in ("max_message_size", "metrics", "backlog_frames", "backlog_bytes", "backlog_dir"):
        value = pick(args, file_config, name, None)
        if value is not None:
            kwargs[name] = value
    if "controller_key" not in overrides:
        kwargs["controller_key"] = controller_keys(args, file_config) or None
    kwargs.update(overrides)
    config = AgentConfig(**kwargs)
    warn_identity(config.broker, config.host, "agent's --host")
    return config


def run(args: argparse.Namespace) -> int:
    from atomwatch.agent.runtime import Agent

    file_config, plugin_opts = options(args)
    config = build_config(args, file_config, plugin_opts)
    agent = Agent(config, plugin_manager(args, plugin_opts))
    if not agent.sampler.slots:
        from atomwatch.plugins.libvirt_collector import INSTALL_HINT

        print(
            "atomwatch agent: no collector can run here, so this agent would send nothing; the warnings above say "
            "why each one did not start. The libvirt collector needs libvirt-python (" + INSTALL_HINT + ") and a "
            "libvirt it can reach (option libvirt.uri, default qemu:///system); the CoreDNS collector needs "
            "--set coredns.endpoints=URL; --set replay.trace=FILE replays a recording instead.",
            file=sys.stderr,
        )
        return 1
    asyncio.run(agent.run())
    return 0

"""``atomwatch agent``: the process of one hypervisor.

Its options (:data:`KEYS`) come from the command line, then ``$ATOMWATCH_KEY_NAME``, then the
``--config`` file, then the defaults of :class:`atomwatch.agent.config.AgentConfig`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import Annotated

from atomwatch.config import DELTA_GRAMMAR, ConfigError, parse_deltas, parse_size
from atomwatch.options import Range
from atomwatch.protocol import MIN_MESSAGE_SIZE
from atomwatch.settings import Key

from ._common import (
    BROKER_KEYS,
    DEFAULT_BROKER,
    DURATION,
    POSITIVE_DURATION,
    SESSION_KEYS,
    add_message_size_argument,
    add_plugin_arguments,
    add_session_arguments,
    broker_address,
    options,
    plugin_manager,
    warn_identity,
)


def _size(value, where: str) -> int:
    return parse_size(value, where, MIN_MESSAGE_SIZE)


def _bytes(value, where: str) -> int:
    return parse_size(value, where, 0)


def _deltas(value, where: str) -> dict:
    return parse_deltas(value, where, relative=False)


#: the names of atomwatch.tracking.RULES (not imported: it loads numpy; tests/test_tracking_option.py
#: checks they agree)
TRACKING_RULES = ("atom", "deadband", "segment", "adaptive", "trend", "center", "lattice")


def parse_tracking(value, where: str) -> dict[str, str]:
    """``[METRIC=]RULE`` items (a list, or one string of comma-separated items as in
    ``$ATOMWATCH_TRACKING``) or a table {METRIC: RULE} as {metric: rule}, ``"*"`` for a bare RULE."""
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (str, list, tuple)) and all(isinstance(i, str) for i in value):
        items = value.split(",") if isinstance(value, str) else value
        pairs = [(m.strip() if eq else "*", r.strip()) for m, eq, r in (i.rpartition("=") for i in items if i.strip())]
    else:
        raise ConfigError(
            f'{where} = {value!r}: expected a rule, a list of "[METRIC=]RULE" or a table {{ METRIC = RULE }}'
        )
    out: dict[str, str] = {}
    for metric, rule in pairs:
        if rule not in TRACKING_RULES:
            raise ConfigError(
                f"{where}: {metric + '=' if metric != '*' else ''}{rule!r} is not a tracking rule; "
                f"choose one of {', '.join(TRACKING_RULES)}"
            )
        out[metric or "*"] = rule
    return out


#: the agent's options: a key of its configuration file each, also ``--KEY-NAME`` and
#: ``$ATOMWATCH_KEY_NAME`` (the flag wins over the variable, which wins over the file)
KEYS = (
    *BROKER_KEYS,
    Key("site", expected="a site name"),
    *SESSION_KEYS,
    Key("host", expected="a host name"),
    Key(
        "delta",
        parse=_deltas,
        expected=f'a table {{ METRIC = VALUE, "*" = VALUE }} or a list of "{DELTA_GRAMMAR}" (no %: the agent '
        "tracks online)",
    ),
    Key("gamma", Annotated[float, Range(ge=0)]),
    Key(
        "tracking",
        parse=parse_tracking,
        expected=f'a rule ({", ".join(TRACKING_RULES)}), a table {{ METRIC = RULE, "*" = RULE }} or a list of '
        '"[METRIC=]RULE"',
    ),
    Key("controller_key", tuple[str, ...], expected="a file, or a list of files (comma-separated in the variable)"),
    Key("command_lifetime", POSITIVE_DURATION),
    Key("command_skew", DURATION),
    Key("max_message_size", parse=_size, expected="a number of bytes, e.g. 524288 or 512KiB"),
    Key("metrics", expected='"[HOST:]PORT", or "off"'),
    Key("backlog_frames", Annotated[int, Range(ge=0)]),
    Key("backlog_bytes", parse=_bytes, expected="a number of bytes, e.g. 67108864 or 64MiB"),
    Key("backlog_dir", expected="a folder"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_session_arguments(p, tick=10.0)
    add_plugin_arguments(p)
    p.add_argument("--host", help="this hypervisor's name in topics (default: the machine's host name)")
    p.add_argument(
        "--delta",
        action="append",
        metavar="[METRIC=]VALUE[%]",
        help="tracking error Δ, in the metric's unit, for one metric or (without METRIC=) every metric (repeatable; "
        "a P%% is refused here: it needs a series' mean, which an agent does not know in advance)",
    )
    p.add_argument("--gamma", help="resolution that ends a tracking round (default: float resolution)")
    p.add_argument(
        "--tracking",
        action="append",
        metavar="[METRIC=]RULE",
        help="which values the agent sends, for one metric or (without METRIC=) every metric (repeatable): atom "
        "(ATOM's Algorithm 1), deadband, segment (greedy segments, the value sent leans the way the series "
        "moves), trend (a line: value and slope), center (the value sent nearest the series' mean) or "
        "adaptive (per series, whichever of these sent fewest lately); every rule keeps the "
        "controller's copy within Δ (default atom)",
    )
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
        metavar="DURATION",
        help="refuse a signed command valid for longer than this (+ skew) (default 60)",
    )
    p.add_argument(
        "--command-skew",
        metavar="DURATION",
        help="clock difference allowed with the controller when checking a command's dates (default 30)",
    )


def controller_keys(paths) -> list:
    """The trusted public keys of ``paths`` (--controller-key, $ATOMWATCH_CONTROLLER_KEY with
    paths separated by ',', or the file's controller_key: a path or a list); empty if none."""
    from atomwatch import signing

    return [k for p in paths or () for k in signing.load_public_keys(p)]


def build_config(args: argparse.Namespace, file_config: dict, plugin_opts: dict, **overrides):
    from atomwatch.agent.config import AgentConfig
    from atomwatch.settings import resolve

    v = resolve(KEYS, args, file_config, getattr(args, "config", None))
    kwargs = dict(
        broker=broker_address(v, overrides.pop("broker", v.get("broker", DEFAULT_BROKER))),
        site=v.get("site", "default"),
        tick=v.get("tick", 10.0),
        deltas=v.get("delta", {}),
        gamma=v.get("gamma", 0.0),
        tracking=v.get("tracking", {}),
        options=plugin_opts,
        duration=v.get("duration"),
    )
    for name in (
        "host",
        "command_lifetime",
        "command_skew",
        "max_message_size",
        "metrics",
        "backlog_frames",
        "backlog_bytes",
        "backlog_dir",
    ):
        if v.get(name) is not None and v.get(name) != "":
            kwargs[name] = v[name]
    if "controller_key" not in overrides:
        kwargs["controller_key"] = controller_keys(v.get("controller_key")) or None
    kwargs.update(overrides)
    config = AgentConfig(**kwargs)
    warn_identity(config.broker, config.host, "agent's --host")
    return config


def run(args: argparse.Namespace) -> int:
    from atomwatch.agent.runtime import Agent

    file_config, plugin_opts = options(args, KEYS, "agent")
    config = build_config(args, file_config, plugin_opts)
    agent = Agent(config, plugin_manager(args, plugin_opts, file_config))
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

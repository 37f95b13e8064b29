"""``atomwatch controller``: watch one or more sites."""

from __future__ import annotations

import argparse
import asyncio
import os

from atomwatch.config import ConfigError
from atomwatch.options import parse_duration
from atomwatch.protocol import CONTROLLER_HOST

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
    p.add_argument(
        "--detector",
        dest="detectors",
        action="append",
        metavar="NAME",
        help="run only this detector (repeatable; default: every detector loaded)",
    )
    add_controller_options(p)
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        help="the command-signing private key (PKCS#8 PEM, mode 0600), e.g. DIR/controller/command-signing.key "
        "(default: $ATOMWATCH_SIGNING_KEY; none: commands go unsigned and agents refuse them)",
    )
    p.add_argument(
        "--command-lifetime", type=float, metavar="SECONDS", help="how long a command stays valid (default 60)"
    )


def add_controller_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="alarms file (default: $ATOMWATCH_DB or ~/.local/state/atomwatch/alarms.sqlite)")
    p.add_argument(
        "--alarm-rows",
        type=int,
        metavar="N",
        help="abnormal rows kept per alarm: the first tenth and the latest (default 1000)",
    )
    p.add_argument(
        "--alarm-retention", type=float, metavar="DAYS", help="keep closed alarms this long (default 30; 0: forever)"
    )
    p.add_argument(
        "--alarm-pending",
        type=int,
        metavar="N",
        help="anomalies kept in memory while the alarms file cannot be written (default 10000)",
    )
    p.add_argument("--http", metavar="HOST:PORT", help="HTTP API and /metrics (default 127.0.0.1:8470; 'off' for none)")
    p.add_argument(
        "--http-tokens",
        metavar="FILE",
        help="the API's bearer tokens, 'NAME TOKEN' per line, chmod 600 "
        "(default: ~/.local/state/atomwatch/api-tokens, created with one token for this user)",
    )
    p.add_argument("--http-cert", metavar="FILE", help="PEM certificate (chain): serve the API over HTTPS")
    p.add_argument("--http-key", metavar="FILE", help="PEM private key of --http-cert")
    p.add_argument(
        "--http-insecure",
        action="store_true",
        default=None,
        help="listen on a non-loopback --http without TLS and a tokens file all the same (not recommended)",
    )
    p.add_argument(
        "--mu", type=float, help="ATOM's deviation μ: derive tracking errors Δ from the model and push them to agents"
    )
    add_message_size_argument(p)
    p.add_argument(
        "--max-reply-size",
        metavar="BYTES",
        help="the largest reply decoded for a command the controller waits for, e.g. an introspection's "
        "result (default 16MiB)",
    )
    add_limit_arguments(p)


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """The controller's resource limits (docs/limits.md); also keys of the ``--config`` file."""
    from atomwatch.controller import config as c

    for flag, default, what in (
        ("--max-series-per-host", c.MAX_SERIES_PER_HOST, "refuse a birth announcing more series than this"),
        ("--max-columns-per-scope", c.MAX_COLUMNS_PER_SCOPE, "hand a scope's detectors at most this many columns"),
        ("--max-pending-commands", c.MAX_PENDING_COMMANDS, "commands awaiting their reply at once, in all"),
        (
            "--max-pending-commands-per-host",
            c.MAX_PENDING_COMMANDS_PER_HOST,
            "commands awaiting their reply at once, to one host",
        ),
    ):
        p.add_argument(flag, type=int, metavar="N", help=f"{what} (default {default})")
    p.add_argument(
        "--rows",
        choices=("tick", "data"),
        help="when a host's row goes to the detectors: every --tick (the controller samples its copies), or as "
        "each data message of the host arrives, one row per agent tick (default tick; atomwatch up: data)",
    )
    p.add_argument(
        "--blas-threads",
        type=int,
        metavar="N",
        help="threads numpy's linear algebra may use in the controller (default 1: its matrices are small and "
        "its scopes are many; more only helps scopes of thousands of columns)",
    )
    p.add_argument(
        "--alarm-log-every",
        metavar="DURATION",
        help="at most one 'alarm N extended' log line per alarm this often: seconds or e.g. 5min, 0 for every "
        "abnormal row (default 5min); opened, verdict and closed are always logged",
    )


def build_config(args: argparse.Namespace, file_config: dict, plugin_opts: dict, **overrides):
    from atomwatch.controller.config import ControllerConfig

    broker = pick(args, file_config, "broker", os.environ.get("ATOMWATCH_BROKER", "mqtt://127.0.0.1:1883"))
    site = pick(args, file_config, "site", "default")
    kwargs = dict(
        broker=broker_address(args, file_config, overrides.pop("broker", broker)),
        sites=[s for s in str(site).split(",") if s],
        tick=float(pick(args, file_config, "tick", 10.0)),
        detectors=list(getattr(args, "detectors", None) or file_config.get("detectors") or []),
        options=plugin_opts,
        duration=pick(args, file_config, "duration", None),
        mu=pick(args, file_config, "mu", None),
    )
    db = pick(args, file_config, "db", None)
    if db:
        kwargs["db"] = db
    for name, kind in (("alarm_rows", int), ("alarm_retention", float), ("alarm_pending", int)):
        value = pick(args, file_config, name, None)
        if value is not None:
            try:
                kwargs[name] = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} = {value!r}: expected a number") from None
    http = pick(args, file_config, "http", "127.0.0.1:8470")
    kwargs["http"] = None if http == "off" else http
    for name in ("http_tokens", "http_cert", "http_key"):
        kwargs[name] = pick(args, file_config, name, None)
    kwargs["http_insecure"] = bool(pick(args, file_config, "http_insecure", False))
    from atomwatch.controller.config import LIMITS

    for name in ("max_message_size", "max_reply_size", *LIMITS):
        value = pick(args, file_config, name, None)
        if value is not None:
            kwargs[name] = value
    rows = pick(args, file_config, "rows", None)
    if rows is not None:
        kwargs["rows"] = rows
    blas = pick(args, file_config, "blas_threads", None)
    if blas is not None:
        kwargs["blas_threads"] = blas
    every = pick(args, file_config, "alarm_log_every", None)
    if every is not None:
        kwargs["alarm_log_every"] = parse_duration(every, "alarm_log_every")
    lifetime = pick(args, file_config, "command_lifetime", None)
    if lifetime is not None:
        kwargs["command_lifetime"] = float(lifetime)
    if "signing_key" not in overrides:
        path = pick(args, file_config, "signing_key", None) or os.environ.get("ATOMWATCH_SIGNING_KEY")
        if path:
            from atomwatch import signing

            kwargs["signing_key"] = signing.load_private_key(path)
    kwargs.update(overrides)
    config = ControllerConfig(**kwargs)
    warn_identity(config.broker, CONTROLLER_HOST, "controller's identity")
    return config


def run(args: argparse.Namespace) -> int:
    from atomwatch.controller.app import Controller

    file_config, plugin_opts = options(args)
    controller = Controller(build_config(args, file_config, plugin_opts), plugin_manager(args, plugin_opts))
    asyncio.run(controller.run())
    return 0

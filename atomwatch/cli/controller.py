"""``atomwatch controller``: watch one or more sites.

Its options (:data:`KEYS`) come from the command line, then ``$ATOMWATCH_KEY_NAME``, then the
``--config`` file, then the defaults of :class:`atomwatch.controller.config.ControllerConfig`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Annotated, Literal

from atomwatch.config import ConfigError, parse_size
from atomwatch.options import Range, parse_duration
from atomwatch.protocol import CONTROLLER_HOST, MIN_MESSAGE_SIZE
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


def _days(value, where: str) -> float:
    """A number of days, or a duration with its unit ('30d', '12h'), as days."""
    expected = "a number of days or a duration such as '30d' or '12h'"
    if isinstance(value, str) and value.strip() and not value.strip().replace(".", "", 1).isdigit():
        try:
            return parse_duration(value, where) / 86400
        except ConfigError:
            raise ConfigError(f"{where}={value!r} is not {expected}") from None
    try:
        if isinstance(value, bool):
            raise ValueError
        days = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={value!r} is not {expected}") from None
    if not days >= 0 or days == float("inf"):
        raise ConfigError(f"{where} must be 0 (keep forever) or a finite number of days, got {value!r}")
    return days


_COUNT = Annotated[int, Range(ge=1)]
_SIZE = "a number of bytes, e.g. 524288 or 512KiB"

#: the controller's options: a key of its configuration file each, also ``--KEY-NAME`` and
#: ``$ATOMWATCH_KEY_NAME`` (the flag wins over the variable, which wins over the file)
KEYS = (
    *BROKER_KEYS,
    Key("site", tuple[str, ...], expected="a site name, or several: a list or a comma-separated string"),
    *SESSION_KEYS,
    Key("detectors", tuple[str, ...], option="--detector"),
    Key("db", expected='a file (SQLite), or ":memory:"'),
    Key("alarm_rows", Annotated[int, Range(ge=10)]),
    Key("alarm_retention", parse=_days, expected="a number of days (0: forever) or a duration such as '30d'"),
    Key("alarm_pending", _COUNT),
    Key("http", expected='"HOST:PORT", or "off"'),
    Key("http_tokens", expected="a file"),
    Key("http_cert", expected="a file (PEM)"),
    Key("http_key", expected="a file (PEM)"),
    Key("http_insecure", bool),
    Key("mu", Annotated[float, Range(gt=0, lt=1)]),
    Key("max_message_size", parse=_size, expected=_SIZE),
    Key("max_reply_size", parse=_size, expected=_SIZE),
    Key("max_series_per_host", _COUNT),
    Key("max_columns_per_scope", _COUNT),
    Key("max_pending_commands", _COUNT),
    Key("max_pending_commands_per_host", _COUNT),
    Key("rows", Literal["tick", "data"]),
    Key("alarm_log_every", DURATION),
    Key("metrics_blame_limit", Annotated[int, Range(ge=0, le=10_000)]),
    Key("blas_threads", Annotated[int, Range(ge=1)]),
    Key("detect_workers", Annotated[int, Range(ge=0, le=256)]),
    Key("signing_key", expected="a file (PEM)"),
    Key("command_lifetime", POSITIVE_DURATION),
    Key("name", expected="a controller name"),
    Key("rank", Annotated[int, Range(ge=0)]),
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
    p.add_argument("--command-lifetime", metavar="DURATION", help="how long a command stays valid (default 60)")
    p.add_argument(
        "--name",
        help="this controller's name, unique among the controllers of its sites (default 'controller')",
    )
    p.add_argument(
        "--rank",
        metavar="N",
        help="hot standby: run as one of several controllers of the same sites, N its election order (lowest "
        "first); one is active, the others watch and take over when it stops (default: none, always active)",
    )


def add_controller_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="alarms file (default: $ATOMWATCH_DB or ~/.local/state/atomwatch/alarms.sqlite)")
    p.add_argument(
        "--alarm-rows",
        metavar="N",
        help="abnormal rows kept per alarm: the first tenth and the latest (default 1000)",
    )
    p.add_argument(
        "--alarm-retention",
        metavar="DAYS",
        help="keep closed alarms this long: days, or e.g. 12h, 2w (default 30; 0: forever)",
    )
    p.add_argument(
        "--alarm-pending",
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
        "--metrics-blame-limit",
        metavar="N",
        help="at most N series on /metrics naming the blamed VM and metric of live alarms, most blamed first "
        "(default 50; 0: no VM names on /metrics)",
    )
    p.add_argument("--mu", help="ATOM's deviation μ: derive tracking errors Δ from the model and push them to agents")
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
        p.add_argument(flag, metavar="N", help=f"{what} (default {default})")
    p.add_argument(
        "--rows",
        choices=("tick", "data"),
        help="when a host's row goes to the detectors: every --tick (the controller samples its copies), or as "
        "each data message of the host arrives, one row per agent tick (default tick; atomwatch up: data)",
    )
    p.add_argument(
        "--blas-threads",
        metavar="N",
        help="threads numpy's linear algebra may use in the controller (default 1: its matrices are small and "
        "its scopes are many; more only helps scopes of thousands of columns)",
    )
    p.add_argument(
        "--detect-workers",
        metavar="N",
        help="score rows in N worker processes, each owning a share of the scopes, so one controller uses "
        "N + 1 cores (default 0: a thread of this process; docs/scale.md)",
    )
    p.add_argument(
        "--alarm-log-every",
        metavar="DURATION",
        help="at most one 'alarm N extended' log line per alarm this often: seconds or e.g. 5min, 0 for every "
        "abnormal row (default 5min); opened, verdict and closed are always logged",
    )


def build_config(args: argparse.Namespace, file_config: dict, plugin_opts: dict, **overrides):
    from atomwatch.controller.config import LIMITS, ControllerConfig
    from atomwatch.settings import resolve

    v = resolve(KEYS, args, file_config, getattr(args, "config", None))
    kwargs = dict(
        broker=broker_address(v, overrides.pop("broker", v.get("broker", DEFAULT_BROKER))),
        sites=list(v.get("site") or ["default"]),
        tick=v.get("tick", 10.0),
        detectors=list(v.get("detectors") or []),
        options=plugin_opts,
        duration=v.get("duration"),
        mu=v.get("mu"),
    )
    http = v.get("http", "127.0.0.1:8470")
    kwargs["http"] = None if http == "off" else http
    kwargs["http_insecure"] = bool(v.get("http_insecure", False))
    names = ("db", "alarm_rows", "alarm_retention", "alarm_pending", "http_tokens", "http_cert", "http_key")
    for name in (
        *names,
        "max_message_size",
        "max_reply_size",
        *LIMITS,
        "rows",
        "alarm_log_every",
        "command_lifetime",
        "metrics_blame_limit",
        "blas_threads",
        "detect_workers",
        "name",
        "rank",
    ):
        if v.get(name) is not None and v.get(name) != "":
            kwargs[name] = v[name]
    if "signing_key" not in overrides and v.get("signing_key"):
        from atomwatch import signing

        kwargs["signing_key"] = signing.load_private_key(v["signing_key"])
    kwargs.update(overrides)
    config = ControllerConfig(**kwargs)
    warn_identity(config.broker, CONTROLLER_HOST, "controller's identity")
    return config


def run(args: argparse.Namespace) -> int:
    from atomwatch.controller.app import Controller

    file_config, plugin_opts = options(args, KEYS, "controller")
    config = build_config(args, file_config, plugin_opts)
    controller = Controller(config, plugin_manager(args, plugin_opts, file_config))
    asyncio.run(controller.run())
    return 0

"""Configuration shared by the agent and the controller: broker address and plugin options.

Plugin options come from ``--set plugin.key=value`` (repeatable) or from the ``[plugins.NAME]``
tables of a TOML file given with ``--config``; the command line wins. Values given on the command
line are parsed as JSON when they parse (numbers, true/false, lists), else kept as strings.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A configuration value that cannot be used; the text names it."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://[user:pass@]host[:port]`` (port 1883 by default)."""
        u = urlparse(url if "://" in url else f"mqtt://{url}")
        if u.scheme not in ("mqtt", "tcp"):
            raise ConfigError(f"--broker {url!r}: scheme must be mqtt://, got {u.scheme}://")
        if not u.hostname:
            raise ConfigError(f"--broker {url!r}: no host name")
        try:
            port = u.port or 1883
        except ValueError:
            raise ConfigError(f"--broker {url!r}: the port is not a number in 1-65535") from None
        return cls(u.hostname, port, u.username, u.password)

    def __str__(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path!r}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path!r}: not valid TOML ({e})") from None


def plugin_options(file_config: dict[str, Any], settings: list[str] | None) -> dict[str, dict[str, Any]]:
    """Merge the file's ``[plugins.*]`` tables with ``--set plugin.key=value`` items."""
    out: dict[str, dict[str, Any]] = {}
    for name, table in (file_config.get("plugins") or {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"config [plugins.{name}] must be a table")
        out[name] = dict(table)
    for item in settings or []:
        key, eq, value = item.partition("=")
        plugin, dot, option = key.partition(".")
        if not eq or not dot or not plugin or not option:
            raise ConfigError(f"--set {item!r}: expected PLUGIN.OPTION=VALUE")
        out.setdefault(plugin, {})[option] = parse_value(value)
    return out


def parse_deltas(items: list[str] | None) -> dict[str, float]:
    """``--delta METRIC=VALUE`` or ``--delta VALUE`` (every metric)."""
    out: dict[str, float] = {}
    for item in items or []:
        metric, eq, value = item.rpartition("=")
        metric = metric if eq else "*"
        try:
            out[metric] = float(value)
        except ValueError:
            raise ConfigError(f"--delta {item!r}: {value!r} is not a number") from None
        if not (out[metric] >= 0 and out[metric] != float("inf")):
            raise ConfigError(f"--delta {item!r}: Δ must be a finite number ≥ 0")
    return out


def add_replay_delta_argument(p: argparse.ArgumentParser, effect: str) -> None:
    """``--delta [METRIC=]VALUE`` of the offline commands: replay the data through ATOM's
    tracking at that Δ before using it (:func:`parse_deltas` reads the list)."""
    p.add_argument(
        "--delta",
        action="append",
        default=None,
        metavar="[METRIC=]VALUE",
        help="track the data with ATOM's rule at this Δ first, as an agent would send it "
        f"(repeatable; a bare VALUE for every other metric): {effect}",
    )

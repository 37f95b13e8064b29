"""Configuration shared by the agent and the controller: broker address and plugin options.

Plugin options come from ``--set PLUGIN.KEY=VALUE`` (repeatable, :func:`parse_settings`) or from
the ``[plugins.NAME]`` tables of a TOML file given with ``--config``; the command line wins.
Values given on the command line are parsed as JSON when they parse (numbers, true/false,
lists), else kept as strings. ``--delta [METRIC=]VALUE[%]`` has one parser too
(:func:`parse_deltas`). What does not live here: the role options' keys, types and precedence
(:mod:`atomwatch.settings`), and the plugin options' value rules (:mod:`atomwatch.options`).
``docs/configuration.md`` has the rules.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


class ConfigError(ValueError):
    """A configuration value that cannot be used; the text names it."""


#: the environment variable a broker password may come from (else ``--broker-password-file``)
PASSWORD_ENV = "ATOMWATCH_BROKER_PASSWORD"

_SCHEMES = {"mqtt": (False, 1883), "tcp": (False, 1883), "mqtts": (True, 8883), "ssl": (True, 8883)}


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and who we are to it.

    ``mqtt://host[:1883]`` is plain TCP; ``mqtts://host[:8883]`` is TLS (1.2 or later, the broker's
    certificate checked against ``ca`` (else the system's CAs) and its host name), with an
    optional client certificate ``cert``/``key``. A username may stand in the URL or come from
    ``--broker-username``; a password never comes from the command line (it would show in ``ps``
    and the shell history): it is read from ``--broker-password-file`` or ``$ATOMWATCH_BROKER_PASSWORD``.

    A clustered broker is several URLs, comma-separated (``mqtt://b1,mqtt://b2:1884``): the nodes
    of one cluster, sharing scheme, credentials and TLS files; ``host``/``port`` is the first and
    ``others`` the rest, tried in turn when the current node fails (:func:`atomwatch.mqtt.stay_connected`).
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    others: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        username: str | None = None,
        password_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> BrokerAddress:
        """``mqtt://[user@]host[:port]`` (port 1883) or ``mqtts://[user@]host[:port]`` (port 8883),
        with the TLS files and credentials of the ``--broker-*`` options; several such URLs,
        comma-separated, for the nodes of a cluster (one scheme, one user). The files are checked
        now, so a wrong one stops the command before it connects."""
        environ = os.environ if environ is None else environ
        if "," in url:
            parts = [x.strip() for x in url.split(",")]
            if not all(parts):
                raise ConfigError(f"--broker {_redact_all(url)}: an empty URL in the comma-separated list")
            first = cls.parse(
                parts[0], ca=ca, cert=cert, key=key, username=username, password_file=password_file, environ=environ
            )
            nodes = [first] + [
                cls.parse(x, ca=ca, cert=cert, key=key, username=username, environ={}) for x in parts[1:]
            ]
            for other, text in zip(nodes[1:], parts[1:], strict=True):
                if other.tls != first.tls or other.username != first.username:
                    raise ConfigError(
                        f"--broker {_redact_all(url)}: {text!r} differs from {parts[0]!r} in scheme or user; "
                        "the nodes of one cluster share both"
                    )
            if len({(n.host, n.port) for n in nodes}) != len(nodes):
                raise ConfigError(f"--broker {_redact_all(url)}: a node is listed twice")
            return replace(first, others=tuple((n.host, n.port) for n in nodes[1:]))
        u = urlparse(url if "://" in url else f"mqtt://{url}")
        if u.password is not None:
            raise ConfigError(
                f"--broker {_redact(url)}: a password in the URL is refused (it would show in the process list and "
                f"the shell history); put it in a file given with --broker-password-file, or in ${PASSWORD_ENV}"
            )
        if u.scheme not in _SCHEMES:
            raise ConfigError(f"--broker {url!r}: scheme must be mqtt:// or mqtts://, got {u.scheme}://")
        tls, default_port = _SCHEMES[u.scheme]
        if not u.hostname:
            raise ConfigError(f"--broker {url!r}: no host name")
        try:
            port = u.port or default_port
        except ValueError:
            raise ConfigError(f"--broker {url!r}: the port is not a number in 1-65535") from None
        if not tls and (ca or cert or key):
            given = ", ".join(f for f, v in (("--broker-ca", ca), ("--broker-cert", cert), ("--broker-key", key)) if v)
            raise ConfigError(f"{given} given but --broker {url!r} is plain MQTT: use mqtts://{u.hostname}:8883")
        if key and not cert:
            raise ConfigError(f"--broker-key {key} given without --broker-cert: the key needs its certificate")
        url_user = unquote(u.username) if u.username else None
        if username and url_user and username != url_user:
            raise ConfigError(f"--broker-username {username!r} and the URL's user {url_user!r} differ: give one")
        user = username or url_user
        password = _read_password(password_file, environ)
        if password is not None and not user:
            raise ConfigError(
                "a broker password was given (--broker-password-file or $" + PASSWORD_ENV + ") but no username: "
                "add --broker-username NAME or mqtts://NAME@host"
            )
        address = cls(u.hostname, port, user, password, tls, ca, cert, key)
        address.ssl_context()  # check the files now
        return address

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings to connect with (None for plain MQTT); :class:`ConfigError` names the
        file that is missing, unreadable, not PEM or whose key does not match its certificate."""
        if not self.tls:
            return None
        if self.ca:
            _check_pem("--broker-ca", self.ca, "CERTIFICATE", "a PEM CA certificate")
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError(f"--broker-ca {self.ca}: not a CA certificate the ssl module can load ({e})") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if self.cert:
            _check_pem("--broker-cert", self.cert, "CERTIFICATE", "a PEM certificate")
            key_flag, key_file = ("--broker-key", self.key) if self.key else ("--broker-cert", self.cert)
            _check_pem(key_flag, key_file, "PRIVATE KEY", "a PEM private key (or give --broker-key)")
            if "ENCRYPTED" in Path(key_file).read_text(errors="replace"):
                raise ConfigError(
                    f"{key_flag} {key_file}: the private key is encrypted; give it unencrypted (mode 0600)"
                )
            try:
                ctx.load_cert_chain(self.cert, self.key, password=_no_password)
            except ssl.SSLError as e:
                if "KEY_VALUES_MISMATCH" in str(e) or e.reason == "KEY_VALUES_MISMATCH":
                    raise ConfigError(
                        f"--broker-key {key_file} does not match the certificate --broker-cert {self.cert}"
                    ) from None
                raise ConfigError(
                    f"--broker-cert {self.cert} / {key_flag} {key_file}: cannot be loaded ({e.reason or e})"
                ) from None
        return ctx

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    @property
    def qos(self) -> int:
        """The QoS to subscribe with: 1 on one broker; 0 on a cluster, where NATS backs each QoS 1
        subscription with a stored consumer that a node's death can silently take away (the
        subscriber stays connected and deaf), while sequence numbers, rebirths and the agents'
        backlog already make up for a message lost to a connection's end (``docs/scale.md``)."""
        return 0 if self.others else 1

    def nodes(self) -> list[BrokerAddress]:
        """One address per node of the cluster, the first one first (just this one when alone)."""
        return [self] + [replace(self, host=h, port=p, others=()) for h, p in self.others]


def _redact_all(urls: str) -> str:
    """A comma-separated list of URLs with every password hidden."""
    return ",".join(_redact(u) if urlparse(u if "://" in u else f"mqtt://{u}").password else u for u in urls.split(","))


def _redact(url: str) -> str:
    u = urlparse(url)
    netloc = u.netloc.rpartition("@")[2]
    return f"{u.scheme}://{u.username or ''}:***@{netloc}"


def _no_password() -> str:
    raise ConfigError("the broker client key is encrypted; give it unencrypted (mode 0600)")


def _read_password(path: str | None, environ: Mapping[str, str]) -> str | None:
    if path:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"--broker-password-file {path}: no such file") from None
        except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
            raise ConfigError(f"--broker-password-file {path}: cannot be read ({e.strerror or e})") from None
        password = text.rstrip("\r\n")
        if not password:
            raise ConfigError(f"--broker-password-file {path}: the file is empty")
        return password
    return environ.get(PASSWORD_ENV) or None


def _check_pem(flag: str, path: str, marker: str, what: str) -> None:
    from .files import read_file  # (files imports ConfigError from here)

    data = read_file(path, flag)
    if b"-----BEGIN " not in data or marker.encode() + b"-----" not in data:
        raise ConfigError(f"{flag} {path}: not {what} (no '-----BEGIN ...{marker}-----' block)")


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


#: the grammar of ``--set``, as its errors and help say it
SET_GRAMMAR = "PLUGIN.KEY=VALUE"


def parse_settings(
    items: list[str] | None, default_plugin: str | None = None, flag: str = "--set"
) -> dict[str, dict[str, Any]]:
    """``--set PLUGIN.KEY=VALUE`` items (repeatable) as {plugin: {key: value}}, in every command.

    The text up to the first ``=`` is the key, the rest the value (parsed as JSON when it parses:
    numbers, true/false, lists; else kept as text); the key's first ``.`` separates the plugin's
    table name from its option. Commands that run one detector named by ``--detector`` (detect,
    plot) pass it as ``default_plugin``: there ``KEY=VALUE`` alone means that detector's option.
    A later item wins over an earlier one."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        plugin, dot, option = key.strip().partition(".")
        if not eq:
            raise ConfigError(f"{flag} {item!r}: expected {SET_GRAMMAR} (no '=')")
        if not dot and default_plugin:
            plugin, option = default_plugin, plugin
        elif not dot:
            raise ConfigError(
                f"{flag} {item!r}: expected {SET_GRAMMAR}: name the plugin whose option it is, e.g. "
                f"pca-spe.{plugin or 'KEY'}={value or 'VALUE'}"
            )
        if not plugin.strip() or not option.strip():
            raise ConfigError(f"{flag} {item!r}: expected {SET_GRAMMAR} (an empty plugin or key)")
        out.setdefault(plugin.strip(), {})[option.strip()] = parse_value(value)
    return out


def file_tables(file_config: Mapping[str, Any], path: str | None = None) -> dict[str, dict[str, Any]]:
    """The ``[plugins.NAME]`` tables of a configuration file (copies)."""
    where = f"{path}: " if path else ""
    plugins = file_config.get("plugins") or {}
    if not isinstance(plugins, dict):
        raise ConfigError(f"{where}plugins = {plugins!r}: expected tables [plugins.NAME], one per plugin")
    out: dict[str, dict[str, Any]] = {}
    for name, table in plugins.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{where}plugins.{name} = {table!r}: expected a table [plugins.{name}] of the plugin's options"
            )
        out[name] = dict(table)
    return out


def plugin_options(
    file_config: Mapping[str, Any],
    settings: list[str] | None,
    default_plugin: str | None = None,
    path: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Merge the file's ``[plugins.*]`` tables with ``--set`` items (:func:`parse_settings`), which win."""
    out = file_tables(file_config, path)
    for plugin, values in parse_settings(settings, default_plugin).items():
        out.setdefault(plugin, {}).update(values)
    return out


_SIZE = re.compile(r"^\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib)\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}


def parse_size(value: Any, option: str, minimum: int = 0) -> int:
    """A byte count (an integer, or text like ``512KiB``, ``16M``; K and M are binary) of at least
    ``minimum``; :class:`ConfigError` naming ``option`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE.match(value) if isinstance(value, str) else None
        if m is None:
            raise ConfigError(f"{option} {value!r}: expected a number of bytes, e.g. 524288 or 512KiB")
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size < minimum:
        raise ConfigError(f"{option} {value!r}: must be at least {minimum} bytes")
    return size


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; any other name counts as exposed (it is not resolved)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: the grammar of ``--delta`` (and of the agent's ``delta`` key), as its errors and help say it
DELTA_GRAMMAR = "[METRIC=]VALUE[%]"


@dataclass(frozen=True)
class Relative:
    """A Δ given as ``P%``: ``fraction`` × the mean magnitude of each series it applies to (the
    series' finite values), which only a command that has the whole series can resolve."""

    fraction: float

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%"

    def __format__(self, spec: str) -> str:  # f"{delta:g}" prints "5%"
        return str(self)


def plain_deltas(deltas: Mapping[str, float | Relative] | None) -> dict[str, float | str] | None:
    """``deltas`` as JSON holds them: a :class:`Relative` Δ as its text (``"5%"``)."""
    if deltas is None:
        return None
    return {k: str(v) if isinstance(v, Relative) else v for k, v in deltas.items()}


def parse_deltas(
    items: Any,
    source: str = "--delta",
    relative: bool = True,
    relative_default: bool = False,
) -> dict[str, float | Relative]:
    """``--delta [METRIC=]VALUE[%]`` items as {metric: Δ}, ``"*"`` for a bare VALUE (every other
    metric): the one grammar of every command's ``--delta``.

    VALUE is a finite number ≥ 0 in the metric's unit, or ``P%``: P percent of each series' mean
    magnitude (a :class:`Relative`; ``relative_default`` makes a bare number a fraction of it,
    ``track --relative``). Commands that track online (agent, up) cannot know a series' mean in
    advance and pass ``relative=False``: a percentage is refused there. ``items`` is a list of
    such strings, one string (commas separate items, as in ``$ATOMWATCH_DELTA``), or a mapping
    {METRIC: VALUE} (the configuration file's ``delta`` table); anything else is refused,
    naming ``source``."""
    if isinstance(items, Mapping):
        pairs = [(str(k), v, f"{k}={v}") for k, v in items.items()]
    elif isinstance(items, str):
        pairs = [_delta_item(t.strip()) for t in items.split(",") if t.strip()]
    elif isinstance(items, (list, tuple)) and all(isinstance(i, str) for i in items):
        pairs = [_delta_item(t) for t in items]
    else:
        raise ConfigError(
            f'{source} = {items!r}: expected a table of Δ by metric, e.g. {{ CPUUtilization = 2.0, "*" = 1.0 }}, '
            f'or a list of {DELTA_GRAMMAR} as --delta takes them, e.g. ["CPUUtilization=2", "NetworkIn=1024"]'
        )
    out: dict[str, float | Relative] = {}
    for metric, value, item in pairs:
        out[metric or "*"] = _delta_value(value, item, source, relative, relative_default)
    return out


def _delta_item(item: str) -> tuple[str, Any, str]:
    metric, eq, value = item.rpartition("=")
    return (metric.strip() if eq else "*", value, item)


def _delta_value(value: Any, item: str, source: str, relative: bool, relative_default: bool) -> float | Relative:
    text = value.strip() if isinstance(value, str) else value
    percent = isinstance(text, str) and text.endswith("%")
    if percent:
        text = text[:-1].strip()
    try:
        if isinstance(text, bool):
            raise ValueError
        number = float(text)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source} {item!r}: {value!r} is not a number (expected {DELTA_GRAMMAR}, e.g. CPUUtilization=2 or 5%)"
        ) from None
    if not (number >= 0 and number != float("inf")):
        raise ConfigError(f"{source} {item!r}: Δ must be a finite number ≥ 0, got {value!r}")
    if not (percent or relative_default):
        return number
    if not relative:
        raise ConfigError(
            f"{source} {item!r}: a Δ in percent of each series' mean needs the whole series, which only the "
            "offline commands (track, detect, train, evaluate) have; give Δ in the metric's unit (e.g. "
            "CPUUtilization=2), or let the controller derive it (--mu)"
        )
    return Relative(number / 100 if percent else number)


def add_replay_delta_argument(p: argparse.ArgumentParser, effect: str) -> None:
    """``--delta [METRIC=]VALUE`` of the offline commands: replay the data through ATOM's
    tracking at that Δ before using it (:func:`parse_deltas` reads the list)."""
    p.add_argument(
        "--delta",
        action="append",
        default=None,
        metavar=DELTA_GRAMMAR,
        help="track the data with ATOM's rule at this Δ first, as an agent would send it "
        f"(repeatable; a bare VALUE for every other metric; P%% of each series' mean magnitude): {effect}",
    )

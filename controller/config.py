"""The controller's configuration."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomwatch import signing
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.protocol import ProtocolError, check_name


def default_db() -> str:
    """``$ATOMWATCH_DB``, else ``$XDG_STATE_HOME/atomwatch/alarms.sqlite`` (~/.local/state)."""
    if os.environ.get("ATOMWATCH_DB"):
        return os.environ["ATOMWATCH_DB"]
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(state / "atomwatch" / "alarms.sqlite")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; any other name counts as exposed (it is not resolved)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ControllerConfig:
    broker: BrokerAddress
    sites: list[str] = field(default_factory=lambda: ["default"])
    #: seconds between two rows handed to the detectors
    tick: float = 10.0
    #: "tick": every ``tick`` seconds a row of each live host's rebuilt values (the controller
    #: samples its copies, ATOM's monitor); "data": a row of a host each time its data message
    #: arrives, one per agent tick (``atomwatch up``: a replay's rows reach the detectors one for one)
    rows: str = "tick"
    #: detector names to run on every scope (empty: every registered detector)
    detectors: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = "controller"
    duration: float | None = None
    #: the alarms file (SQLite); ":memory:" keeps alarms only for the process' life
    db: str = field(default_factory=lambda: default_db())
    #: HTTP API and /metrics, "HOST:PORT" (None: no HTTP server; the command line's default is
    #: 127.0.0.1:8470)
    http: str | None = None
    #: the API's bearer tokens (``NAME TOKEN`` per line, :mod:`atomwatch.apitokens`); None: the
    #: local user's file, created on first start
    http_tokens: str | None = None
    #: PEM certificate (chain) and private key: serve HTTPS (TLS >= 1.2)
    http_cert: str | None = None
    http_key: str | None = None
    #: listen on a non-loopback address without TLS and a tokens file all the same (a warning)
    http_insecure: bool = False
    #: ATOM's user deviation μ: when set, tracking errors Δ are derived from each scope's model
    #: and pushed to its agent with ``set-delta`` every ``mu_every`` rows
    mu: float | None = None
    mu_every: int = 60
    #: anomalies of one (scope, detector) within this many rows extend the same alarm
    merge_gap: int = 3
    #: seconds at least between two "alarm N extended" log lines of one alarm (0: every extension)
    alarm_log_every: float = 300.0
    #: the command-signing private key (Ed25519PrivateKey); None: commands go unsigned and every
    #: agent refuses them (``--signing-key FILE``)
    signing_key: Any = None
    #: seconds a signed command may wait to be accepted by its agent
    command_lifetime: float = signing.DEFAULT_LIFETIME

    def __post_init__(self) -> None:
        try:
            for s in self.sites:
                check_name("site", s)
        except ProtocolError as e:
            raise ConfigError(str(e)) from None
        if not self.tick > 0:
            raise ConfigError(f"--tick must be > 0 seconds, got {self.tick}")
        if self.mu is not None and not 0 < self.mu < 1:
            raise ConfigError(f"--mu must be a deviation between 0 and 1, got {self.mu}")
        if self.signing_key is not None and not isinstance(self.signing_key, signing.Ed25519PrivateKey):
            raise ConfigError(f"signing_key must be an Ed25519 private key, got {type(self.signing_key).__name__}")
        if self.rows not in ("tick", "data"):
            raise ConfigError(f"--rows must be tick or data, got {self.rows!r}")
        if not self.alarm_log_every >= 0:
            raise ConfigError(f"--alarm-log-every must be ≥ 0 seconds, got {self.alarm_log_every}")
        if not self.command_lifetime > 0:
            raise ConfigError(f"command lifetime must be > 0 seconds, got {self.command_lifetime}")
        self.http_address()
        if bool(self.http_cert) != bool(self.http_key):
            raise ConfigError("--http-cert and --http-key go together: give both (or neither, for plain HTTP)")
        if self.http and not self.http_loopback() and not (self.http_cert and self.http_tokens):
            missing = " and ".join(
                what
                for what, ok in (
                    ("--http-cert FILE --http-key FILE (TLS)", self.http_cert),
                    ("--http-tokens FILE", self.http_tokens),
                )
                if not ok
            )
            if not self.http_insecure:
                raise ConfigError(
                    f"--http {self.http}: listening beyond loopback needs TLS and a tokens file; add {missing} "
                    "(atomwatch secure init writes both), listen on 127.0.0.1, or add --http-insecure to accept the risk"
                )

    def http_address(self) -> tuple[str, int] | None:
        if not self.http:
            return None
        host, sep, port = self.http.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            return (host or "127.0.0.1", int(port))
        except ValueError:
            raise ConfigError(f"--http {self.http!r}: expected HOST:PORT") from None

    def http_loopback(self) -> bool:
        """Whether the API listens on loopback only (127.0.0.0/8, ::1, localhost)."""
        address = self.http_address()
        if address is None:
            return True
        return is_loopback(address[0])

    @property
    def http_exposed_insecurely(self) -> bool:
        return bool(self.http) and not self.http_loopback() and not (self.http_cert and self.http_tokens)

    def plugin_options(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name, {}))

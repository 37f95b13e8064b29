"""The controller's configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomwatch import signing
from atomwatch.config import BrokerAddress, ConfigError, is_loopback, parse_size
from atomwatch.protocol import MAX_MESSAGE_SIZE, MAX_REPLY_SIZE, MIN_MESSAGE_SIZE, ProtocolError, check_name

#: Defaults of the resource limits (``docs/limits.md`` says why each is what it is).
#: A birth announcing more series is refused whole: 500 VMs × 8 metrics; ingest keeps ~0.5 kB a series.
MAX_SERIES_PER_HOST = 4000
#: columns a scope hands its detectors (beyond: cut, said once): 300 VMs × 8 metrics; pca-spe
#: holds 10–20 bytes × d² per scope (≈ 60 MB at 2,400 columns).
MAX_COLUMNS_PER_SCOPE = 2400
#: commands awaiting their final reply, on the whole controller and to one host (each holds a task
#: and a future until its reply or timeout; agents carry out a host's commands a few at a time)
MAX_PENDING_COMMANDS = 4096
MAX_PENDING_COMMANDS_PER_HOST = 32


def default_db() -> str:
    """``$ATOMWATCH_DB``, else ``$XDG_STATE_HOME/atomwatch/alarms.sqlite`` (~/.local/state)."""
    if os.environ.get("ATOMWATCH_DB"):
        return os.environ["ATOMWATCH_DB"]
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(state / "atomwatch" / "alarms.sqlite")


#: the limit fields of :class:`ControllerConfig` (each also ``--max-…`` and a config-file key)
LIMITS = ("max_series_per_host", "max_columns_per_scope", "max_pending_commands", "max_pending_commands_per_host")


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
    #: abnormal rows kept per alarm: the first tenth (the onset) and the latest nine tenths
    alarm_rows: int = 1000
    #: days a closed alarm is kept (0: forever)
    alarm_retention: float = 30.0
    #: anomalies kept in memory while the alarms file cannot be written
    alarm_pending: int = 10_000
    #: seconds at least between two "alarm N extended" log lines of one alarm (0: every extension)
    alarm_log_every: float = 300.0
    #: the command-signing private key (Ed25519PrivateKey); None: commands go unsigned and every
    #: agent refuses them (``--signing-key FILE``)
    signing_key: Any = None
    #: seconds a signed command may wait to be accepted by its agent
    command_lifetime: float = signing.DEFAULT_LIFETIME
    #: the largest MQTT payload decoded, in bytes; a larger one is counted (too-large) and dropped
    max_message_size: int = MAX_MESSAGE_SIZE
    #: the largest reply decoded for a command the controller is waiting for (introspection results)
    max_reply_size: int = MAX_REPLY_SIZE
    #: the resource limits: a birth announcing more series than ``max_series_per_host`` is refused
    #: (the host's stored state kept); a scope hands at most ``max_columns_per_scope`` columns to its
    #: detectors; at most ``max_pending_commands`` commands (``max_pending_commands_per_host`` to one
    #: host) wait for their reply at once
    max_series_per_host: int = MAX_SERIES_PER_HOST
    max_columns_per_scope: int = MAX_COLUMNS_PER_SCOPE
    max_pending_commands: int = MAX_PENDING_COMMANDS
    max_pending_commands_per_host: int = MAX_PENDING_COMMANDS_PER_HOST
    #: series on /metrics for the blamed columns (VM, metric) of live alarms, most blamed first;
    #: 0: none (VM names stay off the open /metrics)
    metrics_blame_limit: int = 50
    #: threads numpy's BLAS may use in this process (threadpoolctl): 1 by default, since the
    #: controller's matrices are small (d = 80: an 80 × 80 eigh takes 0.7 ms of one core and 48 ms
    #: of CPU when two threads spin for it on a busy machine) and many scopes are its parallelism
    blas_threads: int = 1
    #: detection in this many worker processes, each owning the scopes whose hash mod N is
    #: its number
    #: (:mod:`.detect_pool`); 0: in a thread of this process
    detect_workers: int = 0
    #: hot standby (controller/election.py): this controller's election order among those of the
    #: same sites, lowest first; None: no election, always active
    rank: int | None = None

    def __post_init__(self) -> None:
        try:
            for s in self.sites:
                check_name("site", s)
            check_name("controller name", self.name)
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
        self.max_message_size = parse_size(self.max_message_size, "--max-message-size", MIN_MESSAGE_SIZE)
        self.max_reply_size = parse_size(self.max_reply_size, "--max-reply-size", MIN_MESSAGE_SIZE)
        if self.max_reply_size < self.max_message_size:
            raise ConfigError(
                f"--max-reply-size {self.max_reply_size} is below --max-message-size {self.max_message_size}: "
                "a reply the controller waits for may be as large as any other message; raise --max-reply-size"
            )
        for name in LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number ≥ 1, got {value!r}")
        if isinstance(self.metrics_blame_limit, bool) or not isinstance(self.metrics_blame_limit, int):
            raise ConfigError(f"--metrics-blame-limit must be a whole number ≥ 0, got {self.metrics_blame_limit!r}")
        if not 0 <= self.metrics_blame_limit <= 10_000:
            raise ConfigError(
                f"--metrics-blame-limit must be between 0 (no VM on /metrics) and 10000 series, got {self.metrics_blame_limit}"
            )
        if isinstance(self.blas_threads, bool) or not isinstance(self.blas_threads, int) or self.blas_threads < 1:
            raise ConfigError(f"--blas-threads must be a whole number ≥ 1, got {self.blas_threads!r}")
        w = self.detect_workers
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 256:
            raise ConfigError(f"--detect-workers must be a whole number from 0 (a thread) to 256, got {w!r}")
        if not self.alarm_rows >= 10:
            raise ConfigError(f"--alarm-rows must be at least 10 (rows kept per alarm), got {self.alarm_rows}")
        if not self.alarm_retention >= 0:
            raise ConfigError(f"--alarm-retention must be 0 (keep forever) or more days, got {self.alarm_retention}")
        if not self.alarm_pending >= 1:
            raise ConfigError(f"--alarm-pending must be at least 1 anomaly, got {self.alarm_pending}")
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

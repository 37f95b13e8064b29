"""The agent's configuration."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from atomwatch import signing
from atomwatch.config import BrokerAddress, ConfigError, parse_size
from atomwatch.protocol import CONTROLLER_HOST, MAX_MESSAGE_SIZE, MIN_MESSAGE_SIZE, ProtocolError, check_name
from atomwatch.tracking import RULES


@dataclass
class AgentConfig:
    broker: BrokerAddress
    site: str = "default"
    host: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    tick: float = 10.0
    #: Δ overrides by metric name (``"*"`` for every metric), in each metric's unit
    deltas: dict[str, float] = field(default_factory=dict)
    #: resolution γ that ends a tracking round (0: float resolution)
    gamma: float = 0.0
    #: the tracking rule by metric name (``"*"`` for every other metric; a bare name: every metric),
    #: names of :data:`atomwatch.tracking.RULES`; default ``atom``
    tracking: dict[str, str] | str = field(default_factory=dict)
    #: seconds a tick's collection may take before a collector's reading is skipped (stale)
    collect_budget: float | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: stop after this many seconds (None: run until signalled)
    duration: float | None = None
    #: the controller's command-signing public key(s) (Ed25519PublicKey, or a list of them during
    #: a key rotation); None: every command is refused (``--controller-key FILE``)
    controller_key: Any = None
    #: a signed command is refused once ``expires`` + skew has passed, or dated more than skew
    #: seconds ahead; one valid for longer than lifetime + skew is refused too
    command_lifetime: float = signing.DEFAULT_LIFETIME
    command_skew: float = signing.DEFAULT_SKEW
    #: the largest MQTT payload decoded (commands, the controller's state), in bytes; a larger one
    #: is counted (too-large) and dropped
    max_message_size: int = MAX_MESSAGE_SIZE
    #: the Prometheus endpoint, "[HOST:]PORT" (a bare port listens on 127.0.0.1); None: none
    metrics: str | None = None
    #: store-and-forward while the broker is unreachable: at most this many ticks (0: none kept) …
    backlog_frames: int = 8640
    #: … and bytes of them (the oldest tick is dropped first, and counted)
    backlog_bytes: int = 64 * 1024 * 1024
    #: a folder where the backlog is also written, so an agent restart does not lose it (None: memory only)
    backlog_dir: str | None = None

    def __post_init__(self) -> None:
        try:
            check_name("site", self.site)
            check_name("host", self.host)
        except ProtocolError as e:
            raise ConfigError(str(e)) from None
        if self.host == CONTROLLER_HOST:
            raise ConfigError(f"host name {CONTROLLER_HOST!r} is reserved for the controller's state topic")
        if not self.tick > 0:
            raise ConfigError(f"--tick must be > 0 seconds, got {self.tick}")
        if not self.command_lifetime > 0 or not self.command_skew >= 0:
            raise ConfigError(
                f"command lifetime must be > 0 and skew ≥ 0 seconds, got {self.command_lifetime}, {self.command_skew}"
            )
        for key in self.controller_keys:
            if not isinstance(key, signing.Ed25519PublicKey):
                raise ConfigError(f"controller_key must be an Ed25519 public key, got {type(key).__name__}")
        if isinstance(self.tracking, str):
            self.tracking = {"*": self.tracking}
        for metric, rule in self.tracking.items():
            if rule not in RULES:
                where = "" if metric == "*" else f"{metric}="
                raise ConfigError(f"--tracking {where}{rule!r} is unknown; choose one of {', '.join(RULES)}")
        for metric, d in self.deltas.items():
            if not d >= 0:
                raise ConfigError(f"Δ for {metric!r} must be ≥ 0, got {d}")
        self.max_message_size = parse_size(self.max_message_size, "--max-message-size", MIN_MESSAGE_SIZE)
        self.metrics_address()
        if isinstance(self.backlog_frames, bool) or not isinstance(self.backlog_frames, int) or self.backlog_frames < 0:
            raise ConfigError(f"--backlog-frames must be a whole number ≥ 0, got {self.backlog_frames!r}")
        self.backlog_bytes = parse_size(self.backlog_bytes, "--backlog-bytes", 0)
        if self.backlog_dir is not None:
            self.backlog_dir = str(self.backlog_dir)
            if not os.path.isdir(self.backlog_dir) or not os.access(self.backlog_dir, os.W_OK | os.X_OK):
                raise ConfigError(f"--backlog-dir {self.backlog_dir!r} is not a folder this agent can write to")

    def metrics_address(self) -> tuple[str, int] | None:
        """Where ``--metrics`` listens: (host, port), or None when off."""
        if self.metrics is None or self.metrics == "off":
            return None
        text = str(self.metrics)
        host, sep, port = text.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            number = int(port)
        except ValueError:
            number = -1
        if not 0 <= number <= 65535 or (sep and not host):
            raise ConfigError(f"--metrics {text!r}: expected [HOST:]PORT, e.g. 9471 or 127.0.0.1:9471")
        return (host or "127.0.0.1", number)

    @property
    def controller_keys(self) -> list[Any]:
        k = self.controller_key
        if k is None:
            return []
        return list(k) if isinstance(k, (list, tuple)) else [k]

    @property
    def budget(self) -> float:
        return self.collect_budget if self.collect_budget is not None else max(0.05, 0.8 * self.tick)

    def tracking_rule(self, metric: str) -> str:
        """The tracking rule of the series of ``metric``."""
        return self.tracking.get(metric, self.tracking.get("*", "atom"))

    @property
    def one_tracking_rule(self) -> str | None:
        """The rule of every series when no metric has its own (one tracker of that rule), else None."""
        rules = set(self.tracking.values()) | ({"atom"} if "*" not in self.tracking else set())
        return rules.pop() if len(rules) == 1 else None

    def plugin_options(self, name: str) -> dict[str, Any]:
        """The options the user gave plugin ``name`` (empty dict if none)."""
        return dict(self.options.get(name, {}))

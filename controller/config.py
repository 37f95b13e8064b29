"""The controller's configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.protocol import ProtocolError, check_name


@dataclass
class ControllerConfig:
    broker: BrokerAddress
    sites: list[str] = field(default_factory=lambda: ["default"])
    #: seconds between two rows handed to the detectors
    tick: float = 10.0
    #: detector names to run on every scope (empty: every registered detector)
    detectors: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = "controller"
    duration: float | None = None

    def __post_init__(self) -> None:
        try:
            for s in self.sites:
                check_name("site", s)
        except ProtocolError as e:
            raise ConfigError(str(e)) from None
        if not self.tick > 0:
            raise ConfigError(f"--tick must be > 0 seconds, got {self.tick}")

    def plugin_options(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name, {}))

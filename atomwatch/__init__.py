"""atomwatch — the shared core that the agent, the controller and every plugin import.

What lives here: the version, the ``hookimpl`` marker plugin authors decorate their functions
with, the series key both sides name a metric by, the wire protocol (:mod:`atomwatch.protocol`),
the plugin manager (:mod:`atomwatch.plugins`), the one parser of plugin options
(:mod:`atomwatch.options`: ``atomwatch.parse_options``), CSV trace reading and the ``atomwatch`` command
line (:mod:`atomwatch.cli`, one module a subcommand in :mod:`atomwatch.commands`).

What does not: anything that runs on only one side (``agent/``, ``controller/``), any concrete
collector, detector or orchestrator (``plugins/``), memory forensics (``introspection/``).

A plugin author writes::

    import atomwatch

    @atomwatch.hookimpl
    def register_detectors():
        return [MyDetectorFactory()]

and declares its options as a frozen dataclass read by ``atomwatch.parse_options(NAME, Options,
raw)`` (see :mod:`atomwatch.options`).
"""

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations, as ``@pytest.hookimpl`` / ``@llm.hookimpl``.
hookimpl = pluggy.HookimplMarker("atomwatch")
#: Marker for hook specifications (used by ``agent.hookspecs`` and ``controller.hookspecs``).
hookspec = pluggy.HookspecMarker("atomwatch")

from .config import ConfigError  # noqa: E402
from .options import (  # noqa: E402
    Check,
    Duration,
    OptionError,
    Range,
    check_options,
    declare_options,
    parse_bool,
    parse_duration,
    parse_options,
)
from .series import SeriesKey  # noqa: E402  (after the markers: plugins import them first)
from .types import (  # noqa: E402
    Anomaly,
    Blame,
    Collector,
    CommandError,
    Detector,
    DetectorFactory,
    NotConfigured,
    Reading,
    Row,
)

__all__ = [
    "__version__",
    "hookimpl",
    "hookspec",
    "SeriesKey",
    "Reading",
    "Collector",
    "CommandError",
    "Row",
    "Anomaly",
    "Blame",
    "Detector",
    "DetectorFactory",
    "NotConfigured",
    "ConfigError",
    "OptionError",
    "parse_options",
    "declare_options",
    "check_options",
    "parse_bool",
    "parse_duration",
    "Duration",
    "Range",
    "Check",
]

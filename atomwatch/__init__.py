"""atomwatch — the shared core that the agent, the controller and every plugin import.

What lives here: the version, the ``hookimpl`` marker plugin authors decorate their functions
with, and the small typed objects plugins exchange with atomwatch: the series key, rows and
anomalies (:mod:`atomwatch.types`), the :class:`ControllerHandle` controller-side hooks receive,
the :class:`Alarm` record and the errors plugins catch. The core's other modules: the wire
protocol (``protocol``), the hook specifications (``hookspecs``), the plugin manager
(``pluginmanager``), the one parser of plugin options (``options``: ``atomwatch.parse_options``), ATOM's tracking (``tracking``), the detector
registry (``detectors``), traces.

What does not: anything that runs on only one side (``atomwatch.agent``, ``atomwatch.controller``),
memory forensics (``atomwatch.introspection``), any concrete plugin (``atomwatch.plugins``), the
lab (``atomwatch.lab``) and the command line (``atomwatch.cli``) — the core imports none of them.

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
#: Marker for hook specifications (used by :mod:`atomwatch.hookspecs`).
hookspec = pluggy.HookspecMarker("atomwatch")

from .alarm import Alarm, AlarmError, AlarmNotFound, AlarmStateError, AlarmStoreUnavailable  # noqa: E402
from .config import ConfigError  # noqa: E402
from .handles import CommandFailed, ControllerHandle, ScopeStatus  # noqa: E402
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
from .subcommands import Subcommand, SubcommandContext  # noqa: E402
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
    "Subcommand",
    "SubcommandContext",
    "Alarm",
    "AlarmError",
    "AlarmNotFound",
    "AlarmStateError",
    "AlarmStoreUnavailable",
    "CommandFailed",
    "ConfigError",
    "ControllerHandle",
    "ScopeStatus",
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

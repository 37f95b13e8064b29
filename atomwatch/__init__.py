"""atomwatch — the shared core that the agent, the controller and every plugin import.

What lives here: the version, the ``hookimpl`` marker plugin authors decorate their functions
with, the series key both sides name a metric by, the plugin contract (:mod:`atomwatch.hookspecs`,
the :class:`ControllerHandle` controller-side hooks receive, the :class:`Alarm` record and the
errors plugins catch), the wire protocol (:mod:`atomwatch.protocol`),
the plugin manager (:mod:`atomwatch.plugins`), CSV trace reading and the ``atomwatch`` command
line (:mod:`atomwatch.cli`, one module a subcommand in :mod:`atomwatch.commands`).

What does not: anything that runs on only one side (``agent/``, ``controller/``), any concrete
collector, detector or orchestrator (``plugins/``), memory forensics (``introspection/``).

A plugin author writes::

    import atomwatch

    @atomwatch.hookimpl
    def register_detectors():
        return [MyDetectorFactory()]
"""

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations, as ``@pytest.hookimpl`` / ``@llm.hookimpl``.
hookimpl = pluggy.HookimplMarker("atomwatch")
#: Marker for hook specifications (used by :mod:`atomwatch.hookspecs`).
hookspec = pluggy.HookspecMarker("atomwatch")

from .alarm import Alarm, AlarmError, AlarmNotFound, AlarmStateError  # noqa: E402
from .config import ConfigError  # noqa: E402
from .handles import CommandFailed, ControllerHandle, ScopeStatus  # noqa: E402
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
    "Alarm",
    "AlarmError",
    "AlarmNotFound",
    "AlarmStateError",
    "CommandFailed",
    "ConfigError",
    "ControllerHandle",
    "ScopeStatus",
]


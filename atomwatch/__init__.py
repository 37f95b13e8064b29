"""atomwatch — the shared core that the agent, the controller and every plugin import.

What lives here: the version, the ``hookimpl`` marker plugin authors decorate their functions
with, the series key both sides name a metric by, the wire protocol (:mod:`atomwatch.protocol`),
the hook specifications (:mod:`atomwatch.hookspecs`), the plugin manager
(:mod:`atomwatch.pluginmanager`), online tracking (:mod:`atomwatch.tracking`), the detector registry
(:mod:`atomwatch.detectors`), plugin options (:mod:`atomwatch.config`) and CSV trace reading. The
``atomwatch`` command line (:mod:`atomwatch.cli`) sits on top of every layer.

What does not: anything that runs on only one side (:mod:`atomwatch.agent`,
:mod:`atomwatch.controller`), any concrete collector, detector or orchestrator
(:mod:`atomwatch.plugins`), memory forensics (:mod:`atomwatch.introspection`), the lab. The core
imports none of them (``tests/test_layers.py``).

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
]

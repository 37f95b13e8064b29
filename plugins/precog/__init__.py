"""The ``precog`` and ``precog-reference`` detector plugins: memory-leak warnings from memory
utilisation alone.

This module holds only the hook implementation. The detector is in :mod:`.detector`, Precog's
algorithm (smoothing, change points, trend windows) in :mod:`.core`. Background: ``docs/precog.md``.
"""

from __future__ import annotations

import atomwatch

from .detector import PrecogFactory


@atomwatch.hookimpl
def register_detectors() -> list[PrecogFactory]:
    return [PrecogFactory("precog", improved=True), PrecogFactory("precog-reference", improved=False)]

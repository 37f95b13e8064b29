"""The deep detector plugins (``ae``, ``cnn``, ``siamese``) and their ``train``, ``evaluate`` and
``retrain`` subcommands.

This module holds only the hook implementations. The live detector is in :mod:`.detector`, the
Keras models in :mod:`.models`, windowing of recordings in :mod:`.windows`, the subcommands in
:mod:`.train`, :mod:`.evaluate` and :mod:`.retrain`. Results: ``docs/evaluation.md``.
"""

from __future__ import annotations

import atomwatch

from .detector import DETECTORS, DeepFactory


@atomwatch.hookimpl
def register_detectors() -> list[DeepFactory]:
    return [DeepFactory(name) for name in DETECTORS]

"""The ``pca-spe`` detector plugin: ATOM's PCA monitoring, SPE against Q_α, 3-step identification.

This module holds only the hook implementation. The detector's life over a stream of rows is in
:mod:`.detector`, the formulas in :mod:`.model`, the per-tick kernels (compiled by numba when
installed) in :mod:`.kernels`. Background and decisions: ``docs/pca.md``.
"""

from __future__ import annotations

import atomwatch

from .detector import PcaSpeFactory


@atomwatch.hookimpl
def register_detectors() -> list[PcaSpeFactory]:
    return [PcaSpeFactory()]

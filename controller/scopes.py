"""Scopes: which columns a detector sees together, and the row of each scope at a tick.

The default scope is one host: every series of every VM on it (``d = metrics × VMs`` columns, as
in ATOM). Columns are ordered by (VM name, metric) so a scope's column order is stable across
births; a VM appearing or leaving changes the tuple, and detectors see that.
"""

from __future__ import annotations

import numpy as np

from atomwatch.types import Row

from .ingest import HostState


class ScopeRows:
    """Numbers each scope's rows from 0 and builds them from the hosts' rebuilt values."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def row(self, state: HostState, ts: float) -> Row | None:
        snap = state.snapshot()
        if not snap:
            return None
        columns = tuple(sorted(snap, key=lambda k: (k.vm_name, k.vm_uuid, k.metric, k.unit)))
        values = np.fromiter((snap[c] for c in columns), dtype=np.float64, count=len(columns))
        known = state.key_deltas()
        deltas = np.fromiter((known.get(c, np.nan) for c in columns), dtype=np.float64, count=len(columns))
        index = self.counts.get(state.scope, 0)
        self.counts[state.scope] = index + 1
        return Row(scope=state.scope, index=index, ts=ts, columns=columns, values=values, deltas=deltas)

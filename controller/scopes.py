"""Scopes: which columns a detector sees together, and the row of each scope at a tick.

The default scope is one host: every series of every VM on it (``d = metrics × VMs`` columns, as
in ATOM). Columns are ordered by (VM name, metric) so a scope's column order is stable across
births; a VM appearing or leaving changes the tuple, and detectors see that.

A scope hands its detectors at most ``max_columns`` columns (the controller's
``--max-columns-per-scope``; a detector such as pca-spe costs memory and time in d²): beyond it the
row keeps whole VMs in that order up to the limit, the cut is said once per scope (again only
after the scope was back within the limit) and counted (:attr:`ScopeRows.capped_rows`,
:attr:`ScopeRows.left_out`).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from atomwatch.series import SeriesKey
from atomwatch.types import Row

from .config import MAX_COLUMNS_PER_SCOPE
from .ingest import HostState

log = logging.getLogger(__name__)


def _vm(key: SeriesKey) -> tuple[str, str]:
    return (key.vm_name, key.vm_uuid)


def cap_columns(columns: tuple[SeriesKey, ...], limit: int) -> int:
    """How many of ``columns`` (sorted by VM) a row keeps under ``limit``: whole VMs only, unless
    the first VM alone has more columns than the limit (then its first ``limit``)."""
    if len(columns) <= limit:
        return len(columns)
    keep = limit
    while keep > 0 and _vm(columns[keep - 1]) == _vm(columns[keep]):
        keep -= 1
    return keep or limit


class ScopeRows:
    """Numbers each scope's rows from 0 and builds them from the hosts' rebuilt values."""

    def __init__(self, max_columns: int = MAX_COLUMNS_PER_SCOPE) -> None:
        self.counts: dict[str, int] = {}
        self.max_columns = max_columns
        #: scope → columns left out of its last row (absent: none)
        self.left_out: dict[str, int] = {}
        #: scope → rows whose columns were cut to ``max_columns``
        self.capped_rows: Counter[str] = Counter()

    def row(self, state: HostState, ts: float, late: bool = False) -> Row | None:
        snap = state.snapshot()
        if not snap:
            return None
        columns = tuple(sorted(snap, key=lambda k: (k.vm_name, k.vm_uuid, k.metric, k.unit)))
        if len(columns) > self.max_columns:
            columns = self._cap(state.scope, columns)
        elif self.left_out.pop(state.scope, None) is not None:
            log.info("%s: %d columns, within max_columns_per_scope again: detectors see all", state.scope, len(columns))
        values = np.fromiter((snap[c] for c in columns), dtype=np.float64, count=len(columns))
        known = state.key_deltas()
        deltas = np.fromiter((known.get(c, np.nan) for c in columns), dtype=np.float64, count=len(columns))
        index = self.counts.get(state.scope, 0)
        self.counts[state.scope] = index + 1
        return Row(scope=state.scope, index=index, ts=ts, columns=columns, values=values, deltas=deltas, late=late)

    def _cap(self, scope: str, columns: tuple[SeriesKey, ...]) -> tuple[SeriesKey, ...]:
        keep = cap_columns(columns, self.max_columns)
        cut = columns[keep:]
        self.capped_rows[scope] += 1
        if scope not in self.left_out:
            vms = list(dict.fromkeys(k.vm_name or k.vm_uuid for k in cut))
            log.warning(
                "%s: %d columns, more than max_columns_per_scope = %d: its detectors see the first %d (whole VMs "
                "in name order); %d columns of %d VMs left out (%s%s). Raise --max-columns-per-scope "
                "(max_columns_per_scope in the config file) to watch them all. Said once for this scope.",
                scope,
                len(columns),
                self.max_columns,
                keep,
                len(cut),
                len(vms),
                ", ".join(vms[:5]),
                ", …" if len(vms) > 5 else "",
            )
        self.left_out[scope] = len(cut)
        return columns[:keep]

"""Scopes: which columns a detector sees together, and the row of each scope at a tick.

The default scope is one host: every series of every VM on it (``d = metrics × VMs`` columns, as
in ATOM). Columns are ordered by (VM name, metric) so a scope's column order is stable across
births; a VM appearing or leaving changes the tuple, and detectors see that.

A scope hands its detectors at most ``max_columns`` columns (the controller's
``--max-columns-per-scope``; a detector such as pca-spe costs memory and time in d²): beyond it the
row keeps whole VMs in that order up to the limit, the cut is said once per scope (again only
after the scope was back within the limit) and counted (:attr:`ScopeRows.capped_rows`,
:attr:`ScopeRows.left_out`).

A scope's column order is worked out once per series table (a birth, a series gone), not per row:
a row is one lookup per column (``docs/scale.md``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter

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


@dataclass(frozen=True)
class _Layout:
    # the host's table it was made from (kept: compared by identity; HostState replaces it whole)
    keys: dict[int, SeriesKey]
    deltas_of: dict[int, float]
    columns: tuple[SeriesKey, ...]
    aliases: tuple[int, ...]  # the alias of each column
    deltas: np.ndarray
    pick: itemgetter  # the columns' values out of the host's values, in one C call (KeyError: one unknown)


class ScopeRows:
    """Numbers each scope's rows from 0 and builds them from the hosts' rebuilt values."""

    def __init__(self, max_columns: int = MAX_COLUMNS_PER_SCOPE) -> None:
        self.counts: dict[str, int] = {}
        self.max_columns = max_columns
        #: scope → columns left out of its last row (absent: none)
        self.left_out: dict[str, int] = {}
        #: scope → rows whose columns were cut to ``max_columns``
        self.capped_rows: Counter[str] = Counter()
        #: scope → its columns' order, as of the host's series table it was made from
        self._layouts: dict[str, _Layout] = {}

    def row(self, state: HostState, ts: float, late: bool = False) -> Row | None:
        if not state.keys:
            return None
        layout = self._layout(state)
        if state.synced:
            n = len(layout.aliases)
            try:
                picked = layout.pick(state.values)
                if n == 1:
                    picked = (picked,)  # (an itemgetter of one key gives the value itself)
            except KeyError:  # a value unknown (stale, unreadable): NaN in its cell
                picked = map(state.values.get, layout.aliases, repeat(np.nan, n))
            values = np.fromiter(picked, dtype=np.float64, count=n)
        else:
            values = np.full(len(layout.aliases), np.nan)
        if state.scope in self.left_out:
            self.capped_rows[state.scope] += 1
        index = self.counts.get(state.scope, 0)
        self.counts[state.scope] = index + 1
        return Row(
            scope=state.scope,
            index=index,
            ts=ts,
            columns=layout.columns,
            values=values,
            deltas=layout.deltas,  # read-only, shared by the rows of one table: detectors may skip a same Δ
            late=late,
        )

    def _layout(self, state: HostState) -> _Layout:
        """The scope's columns in order, and which alias each one reads: made again only when the
        host's series table changed (a birth or a ``gone`` marker replaces ``keys``), so
        a row costs one lookup per column and its columns are the same tuple row after row."""
        known = self._layouts.get(state.scope)
        if known is not None and known.keys is state.keys and known.deltas_of is state.deltas:
            return known
        by_key = {k: a for a, k in state.keys.items()}
        columns = tuple(sorted(by_key, key=lambda k: (k.vm_name, k.vm_uuid, k.metric, k.unit)))
        if len(columns) > self.max_columns:
            columns = self._cap(state.scope, columns)
        elif self.left_out.pop(state.scope, None) is not None:
            log.info("%s: %d columns, within max_columns_per_scope again: detectors see all", state.scope, len(columns))
        if known is not None and known.columns == columns:
            columns = known.columns  # the same tuple: detectors compare it by identity first
        aliases = tuple(by_key[c] for c in columns)
        deltas = np.array([state.deltas.get(a, np.nan) for a in aliases], dtype=np.float64)
        deltas.flags.writeable = False
        layout = _Layout(state.keys, state.deltas, columns, aliases, deltas, itemgetter(*aliases))
        self._layouts[state.scope] = layout
        return layout

    def _cap(self, scope: str, columns: tuple[SeriesKey, ...]) -> tuple[SeriesKey, ...]:
        keep = cap_columns(columns, self.max_columns)
        cut = columns[keep:]
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

"""Aliases for series: the birth's table, and which series are present at each tick.

An alias is a small integer that data messages carry instead of the full series key. Aliases are
never reused within one agent process, so a late message can never be misread as another series.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from atomwatch.series import SeriesKey


@dataclass
class TableChange:
    new: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.gone)


class SeriesTable:
    def __init__(self) -> None:
        self.aliases: dict[SeriesKey, int] = {}
        self.keys: list[SeriesKey] = []
        self.active = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.keys)

    def update(self, present: Iterable[SeriesKey]) -> TableChange:
        """Mark exactly ``present`` as the active series; return what appeared and what went."""
        change = TableChange()
        now = np.zeros(len(self.keys), dtype=bool)
        extra: list[SeriesKey] = []
        for key in present:
            alias = self.aliases.get(key)
            if alias is None:
                extra.append(key)
            else:
                now[alias] = True
        for key in sorted(extra):
            alias = len(self.keys)
            self.aliases[key] = alias
            self.keys.append(key)
            change.new.append(alias)
        now = np.concatenate([now, np.ones(len(extra), dtype=bool)])
        old = np.concatenate([self.active, np.zeros(len(extra), dtype=bool)])
        # a series that went and came back (a VM restarted) keeps its alias but needs a birth
        back = [int(a) for a in np.flatnonzero(now[: len(self.active)] & ~self.active)]
        change.new = back + change.new
        change.gone = [int(a) for a in np.flatnonzero(old & ~now)]
        self.active = now
        return change

    def vector(self, values: dict[SeriesKey, float | None]) -> np.ndarray:
        """The values in alias order; NaN for stale, absent or non-finite values."""
        out = np.full(len(self.keys), np.nan)
        for key, v in values.items():
            if v is not None:
                out[self.aliases[key]] = v
        return out

    def active_aliases(self) -> list[int]:
        return [int(a) for a in np.flatnonzero(self.active)]

"""What the alarms store holds in memory: an alarm's entry (:class:`_Entry`) with its rows not
written yet (:class:`_Row`), what one write transaction takes from memory (:class:`_Batch`), and the
copy of an alarm handed to callers, whose rows are read on first use (:class:`_StoredAlarm`).

What does not live here: the store that fills and reads them (:mod:`.alarms`) and the writer that
writes them (:mod:`.alarm_writer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atomwatch.alarm import Alarm
from atomwatch.series import SeriesKey


class _StoredAlarm(Alarm):
    """An :class:`Alarm` whose ``rows`` are read on first use (a long alarm's rows are the bulk of
    it and most readers never look at them). Otherwise the same record."""

    def __init__(self, *args: Any, loader: Callable[[], list[dict[str, Any]]] | None = None, **kwargs: Any):
        self._loader = loader
        self._rows: list[dict[str, Any]] | None = None
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            loader, self._loader = self._loader, None
            self._rows = loader() if loader is not None else []
        return self._rows

    @rows.setter
    def rows(self, value: list[dict[str, Any]] | None) -> None:
        self._rows = value


@dataclass
class _Row:
    """An abnormal row not written yet."""

    seq: int
    index: int
    ts: float
    score: float
    threshold: float
    columns: tuple[SeriesKey, ...] | None
    values: np.ndarray | None


@dataclass
class _Entry:
    """An alarm held in memory: every open or malicious one, and any other until its changes
    are written. ``alarm`` is the truth (its ``rows`` unused)."""

    alarm: Alarm
    stored: bool
    dirty: set[str] = field(default_factory=set)
    rows: list[_Row] = field(default_factory=list)
    #: seqs of rows lost while the file could not be written (so the cap does not count them twice)
    lost: set[int] = field(default_factory=set)
    #: opened by another controller of the shard (taken over): its row numbers are not ours
    foreign: bool = False


@dataclass
class _Batch:
    """What one write transaction takes from memory."""

    inserts: list[tuple[int, dict[str, Any]]]
    updates: list[tuple[int, dict[str, Any]]]
    rows: list[tuple[int, list[_Row]]]
    audit: list[tuple[int, int, float, str, str, dict[str, Any]]]
    dirty: dict[int, set[str]]
    touched: set[int]
    recorded: int

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.rows or self.audit or self.touched)

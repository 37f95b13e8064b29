"""Precog's per-column state kept on disk (option ``state_dir``), so that a controller restart
neither starts a two-day history again nor forgets a trend already under way.

What lives here: :class:`SavedColumn` (one column: its fit history, its online series as closed
bins and the open bin, its counters), :func:`save` (one ``.npz`` per detector and scope, written
atomically) and :func:`load` (every field checked; a file that is not what it must be raises
:class:`StateError` naming it and what is wrong). The history is stored as one median per closed
5-minute bin, which is all :func:`.core.fit` reads of it, and the raw points of its last bin. What
does not: when the detector saves and how it rebuilds a column (:mod:`.detector`); why
(``docs/precog.md``, "Keeping state across restarts").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomwatch import SeriesKey
from atomwatch.statefiles import (
    StateError,
    columns_from_json,
    columns_to_json,
    header,
    path_for,
    read_state,
    write_npz,
)

from . import core

__all__ = ["FORMAT", "Saved", "SavedColumn", "StateError", "compress_history", "load", "path_for", "save"]

FORMAT = 1
FIELDS = ("columns", "mode", "meta", "hist_t", "hist_v", "hist_len", "r", "r_len", "cur", "cur_len")
#: the most bins between an online series' last closed bin and its open one (a year of 5-minute
#: bins; the next point fills them in, so a damaged file must not ask for more)
MAX_OPEN_GAP = 105_120
#: per column, in this order, in the ``meta`` array
META = ("predicting", "bin0", "cur_bin", "last_raw", "dropped", "rows", "rejected", "alarms", "last_seen")


@dataclass
class SavedColumn:
    key: SeriesKey
    hist_t: np.ndarray  # the fit history (seconds, values), oldest first
    hist_v: np.ndarray
    predicting: bool  # fitted: the online series below is in use
    bin0: int  # the online series: its first bin, its closed bins' resampled values, the open bin
    r: np.ndarray
    cur_bin: int
    cur_vals: np.ndarray
    last_raw: float
    dropped: int
    rows: int
    rejected: int
    alarms: int
    last_seen: float

    @classmethod
    def of(
        cls, key: SeriesKey, hist_t: np.ndarray, hist_v: np.ndarray, series: core.OnlineSeries | None, *counters: Any
    ) -> SavedColumn:
        """A column to save: its history, its online series (None: still learning its history),
        then ``rows, rejected, alarms, last_seen``."""
        if series is None:
            return cls(key, hist_t, hist_v, False, 0, np.zeros(0), 0, np.zeros(0), 0.0, 0, *counters)
        return cls(
            key, hist_t, hist_v, True, series.bin0 or 0, series.r.copy(), series.cur_bin or 0,
            np.array(series.cur_vals, dtype=np.float64), series.last_raw if math.isfinite(series.last_raw) else 0.0,
            series.dropped, *counters,
        )  # fmt: skip


@dataclass
class Saved:
    rows_mode: bool | None  # Row.ts counts rows (True), seconds (False), not yet known (None)
    unit: float | None  # seconds per Row.ts unit
    columns: list[SavedColumn]
    saved_at: float


def compress_history(t: list[float], v: list[float], resample: float) -> tuple[np.ndarray, np.ndarray]:
    """The history as :func:`.core.fit` reads it, in time order: every bin but the last as one
    point (its earliest time, its median), the last bin's points as they are (more may join it)."""
    ta, va = np.asarray(t, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if ta.size == 0:
        return ta, va
    b = np.floor(ta / resample).astype(np.int64)
    last = b == b.max()
    head_b, head_t = b[~last], ta[~last]
    _, med = core.bin_medians(head_t, va[~last], resample)
    order = np.lexsort((head_t, head_b))
    starts = np.flatnonzero(np.r_[True, np.diff(head_b[order]) != 0]) if order.size else order
    tail = np.argsort(ta[last], kind="stable")
    return np.concatenate([head_t[order][starts], ta[last][tail]]), np.concatenate([med, va[last][tail]])


def save(path: Path, scope: str, saved: Saved) -> None:
    """Write atomically: a crash leaves the last complete file."""
    cols = saved.columns

    def cat(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays).astype(np.float64) if arrays else np.zeros(0)

    meta = np.array(
        [
            [c.predicting, c.bin0, c.cur_bin, c.last_raw, c.dropped, c.rows, c.rejected, c.alarms, c.last_seen]
            for c in cols
        ],
        dtype=np.float64,
    ).reshape(len(cols), len(META))
    mode = -1 if saved.rows_mode is None else int(saved.rows_mode)
    write_npz(
        path,
        {
            **header(FORMAT, scope, saved.saved_at),
            "columns": columns_to_json([c.key for c in cols]),
            "mode": np.array([mode, saved.unit if saved.unit is not None else math.nan], dtype=np.float64),
            "meta": meta,
            "hist_t": cat([c.hist_t for c in cols]),
            "hist_v": cat([c.hist_v for c in cols]),
            "hist_len": np.array([c.hist_t.size for c in cols], dtype=np.int64),
            "r": cat([c.r for c in cols]),
            "r_len": np.array([c.r.size for c in cols], dtype=np.int64),
            "cur": cat([c.cur_vals for c in cols]),
            "cur_len": np.array([c.cur_vals.size for c in cols], dtype=np.int64),
        },
    )


def load(path: Path, scope: str, max_age: float, resample: float, now: float | None = None) -> Saved | None:
    """The saved state of ``scope`` (its series on bins of ``resample`` seconds), None when there is
    no file; :class:`StateError` when the file cannot be used (unreadable, another scope's, too
    old, malformed)."""
    got = read_state(path, FIELDS, "Precog state file", FORMAT, scope, max_age, now)
    return None if got is None else _checked(path, *got, resample)


def _checked(path: Path, f: dict[str, Any], saved_at: float, resample: float) -> Saved:
    def bad(what: str) -> StateError:
        return StateError(f"{path}: {what}")

    keys = columns_from_json(path, f["columns"], empty=True)
    n = len(keys)
    mode = f["mode"]
    if mode.shape != (2,) or mode.dtype.kind != "f" or mode[0] not in (-1.0, 0.0, 1.0):
        raise bad("mode is not [-1, 0 or 1, seconds per unit]")
    unit = float(mode[1])
    if mode[0] != -1 and not (math.isfinite(unit) and unit > 0):
        raise bad(f"seconds per Row.ts unit {unit!r} is not a positive number")
    meta = f["meta"]
    if meta.shape != (n, len(META)) or meta.dtype.kind != "f":
        raise bad(f"meta of shape {meta.shape} ({meta.dtype}) for {n} columns")
    parts = {}
    for name, length in (("hist_t", "hist_len"), ("hist_v", "hist_len"), ("r", "r_len"), ("cur", "cur_len")):
        lens, data = f[length], f[name]
        if lens.shape != (n,) or lens.dtype.kind not in "iu" or (lens < 0).any():
            raise bad(f"{length} is not {n} counts")
        if data.ndim != 1 or data.dtype.kind != "f" or data.size != int(lens.sum()) or not np.isfinite(data).all():
            raise bad(f"{name} is not {int(lens.sum())} finite numbers")
        parts[name] = np.split(data.astype(np.float64), np.cumsum(lens)[:-1]) if n else []
    columns = []
    for j, key in enumerate(keys):
        m = meta[j]
        what = f"column {key.column!r}"
        counts = m[[0, 1, 2, 4, 5, 6, 7]]
        if not np.isfinite(m).all() or (counts != np.round(counts)).any() or (m[[0, 4, 5, 6, 7]] < 0).any():
            raise bad(f"{what}: its counters are not whole numbers ≥ 0")
        hist_t, hist_v = parts["hist_t"][j], parts["hist_v"][j]
        if (np.diff(hist_t) < 0).any() or (hist_v < 0).any():
            raise bad(f"{what}: its history is not in time order or holds a negative value")
        predicting = bool(m[0])
        r, cur = parts["r"][j], parts["cur"][j]
        bin0, cur_bin = int(m[1]), int(m[2])
        span = cur_bin - bin0 if r.size else 0  # with no closed bin, the open one is the first
        if predicting and (
            not cur.size
            or not 0 <= r.size <= span <= r.size + MAX_OPEN_GAP
            or cur_bin > math.floor(m[8] / resample)  # the open bin holds points seen, not later ones
            or (r < 0).any()
            or (cur < 0).any()
        ):
            raise bad(
                f"{what}: its online series ({r.size} closed bins from {bin0}, open bin {cur_bin}, last seen "
                f"at {m[8]:.0f} s) is not one"
            )
        if hist_t.size and hist_t[-1] > m[8]:
            raise bad(f"{what}: its history ends after the column was last seen")
        columns.append(
            SavedColumn(
                key, hist_t, hist_v, predicting, bin0, r, cur_bin, cur, float(m[3]), int(m[4]), int(m[5]),
                int(m[6]), int(m[7]), float(m[8]),
            )
        )  # fmt: skip
    rows_mode = None if mode[0] == -1 else bool(mode[0])
    return Saved(rows_mode, unit if rows_mode is not None else None, columns, saved_at)

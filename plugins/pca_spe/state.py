"""pca-spe's normal window M kept on disk (option ``state_dir``), so that a controller restart
neither drops the model nor takes a fresh stretch of rows unjudged.

What lives here: :func:`save` (one ``.npz`` file per scope, written atomically) and :func:`load`
(every field checked; a file that is not what it must be raises :class:`StateError` naming it
and what is wrong). What does not: when the detector saves and what it rebuilds from a file
(:mod:`.detector`); why (``docs/pca.md``, "Keeping M across restarts").
"""

from __future__ import annotations

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
    read_state,
    write_npz,
)
from atomwatch.statefiles import path_for as _path_for

__all__ = ["FORMAT", "Saved", "StateError", "load", "path_for", "save"]

FORMAT = 1
FIELDS = ("columns", "rows", "seen_lo", "seen_hi")


@dataclass
class Saved:
    columns: tuple[SeriesKey, ...]
    rows: np.ndarray  # n × d, finite, oldest first
    seen_lo: np.ndarray
    seen_hi: np.ndarray
    saved_at: float


def path_for(state_dir: str | Path, scope: str) -> Path:
    """The file of ``scope`` in ``state_dir``."""
    return _path_for(state_dir, "pca-spe", scope)


def save(path: Path, scope: str, saved: Saved) -> None:
    """Write atomically: a crash leaves the last complete file."""
    write_npz(
        path,
        {
            **header(FORMAT, scope, saved.saved_at),
            "columns": columns_to_json(saved.columns),
            "rows": np.asarray(saved.rows, dtype=np.float64),
            "seen_lo": np.asarray(saved.seen_lo, dtype=np.float64),
            "seen_hi": np.asarray(saved.seen_hi, dtype=np.float64),
        },
    )


def load(path: Path, scope: str, max_age: float, now: float | None = None) -> Saved | None:
    """The saved window of ``scope``, None when there is no file; :class:`StateError` when the
    file cannot be used (unreadable, another scope's, too old, malformed)."""
    got = read_state(path, FIELDS, "pca-spe state file", FORMAT, scope, max_age, now)
    return None if got is None else _checked(path, *got)


def _checked(path: Path, f: dict[str, Any], saved_at: float) -> Saved:
    def bad(what: str) -> StateError:
        return StateError(f"{path}: {what}")

    columns = columns_from_json(path, f["columns"])
    d = len(columns)
    rows, lo, hi = f["rows"], f["seen_lo"], f["seen_hi"]
    if rows.ndim != 2 or rows.shape[1] != d or rows.shape[0] < 1 or rows.dtype.kind != "f":
        raise bad(f"rows of shape {rows.shape} ({rows.dtype}) for {d} columns")
    if not np.isfinite(rows).all():
        raise bad("a row of M holds a value that is not finite")
    for name, a in (("seen_lo", lo), ("seen_hi", hi)):
        if a.shape != (d,) or a.dtype.kind != "f" or np.isinf(a).any():
            raise bad(f"{name} of shape {a.shape} ({a.dtype}) for {d} columns, or infinite")
    return Saved(columns, rows.astype(np.float64), lo.astype(np.float64), hi.astype(np.float64), saved_at)

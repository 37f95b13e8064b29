"""pca-spe's normal window M kept on disk (option ``state_dir``), so that a controller restart
neither drops the model nor takes a fresh stretch of rows unjudged.

What lives here: :func:`save` (one ``.npz`` file per scope, written atomically) and :func:`load`
(every field checked; a file that is not what it must be raises :class:`StateError` naming it
and what is wrong). What does not: when the detector saves and what it rebuilds from a file
(:mod:`.detector`); why (``docs/pca.md``, "Keeping M across restarts").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomwatch import SeriesKey

FORMAT = 1
#: the largest state file read (M of t = 10,000 rows × 100 columns as float32 is 4 MB)
MAX_BYTES = 64 * 1024 * 1024


class StateError(ValueError):
    """A state file that cannot be used; the message names the file and what is wrong."""


@dataclass
class Saved:
    columns: tuple[SeriesKey, ...]
    rows: np.ndarray  # n × d, finite, oldest first
    seen_lo: np.ndarray
    seen_hi: np.ndarray
    saved_at: float


def path_for(state_dir: str | Path, scope: str) -> Path:
    """The file of ``scope``: its name made safe, and a hash so two scopes never share one."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", scope)[:80]
    digest = hashlib.sha256(scope.encode()).hexdigest()[:12]
    return Path(state_dir) / f"{safe}-{digest}.npz"


def save(path: Path, scope: str, saved: Saved) -> None:
    """Write atomically (a temporary file in the same folder, then a rename): a crash leaves the
    last complete file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    columns = [[c.vm_uuid, c.vm_name, c.metric, c.unit] for c in saved.columns]
    fd, tmp = tempfile.mkstemp(prefix=".pca-spe-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                format=np.int64(FORMAT),
                scope=np.str_(scope),
                columns=np.str_(json.dumps(columns)),
                rows=np.asarray(saved.rows, dtype=np.float64),
                seen_lo=np.asarray(saved.seen_lo, dtype=np.float64),
                seen_hi=np.asarray(saved.seen_hi, dtype=np.float64),
                saved_at=np.float64(saved.saved_at),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, scope: str, max_age: float, now: float | None = None) -> Saved | None:
    """The saved window of ``scope``, None when there is no file; :class:`StateError` when the
    file cannot be used (unreadable, another scope's, too old, malformed)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"{path}: cannot read it ({e})") from None
    if size > MAX_BYTES:
        raise StateError(f"{path}: {size} bytes, more than the {MAX_BYTES} a state file may hold")
    try:
        with np.load(path, allow_pickle=False) as z:
            fields = {k: z[k] for k in ("format", "scope", "columns", "rows", "seen_lo", "seen_hi", "saved_at")}
    except KeyError as e:
        raise StateError(f"{path}: no field {e} (not a pca-spe state file)") from None
    except Exception as e:  # not a zip, a damaged one, a pickled field …
        raise StateError(f"{path}: not a readable state file ({type(e).__name__}: {e})") from None
    return _checked(path, scope, fields, max_age, time.time() if now is None else now)


def _checked(path: Path, scope: str, f: dict[str, Any], max_age: float, now: float) -> Saved:
    def bad(what: str) -> StateError:
        return StateError(f"{path}: {what}")

    if f["format"].shape != () or int(f["format"]) != FORMAT:
        raise bad(f"format {f['format']!r}, this version reads {FORMAT}")
    if str(f["scope"]) != scope:
        raise bad(f"it holds scope {str(f['scope'])!r}, not {scope!r}")
    saved_at = float(f["saved_at"])
    if not np.isfinite(saved_at) or saved_at > now + 60:
        raise bad(f"saved_at {saved_at!r} is not a time in the past")
    if now - saved_at > max_age:
        raise bad(f"saved {now - saved_at:.0f} s ago, older than state_max_age = {max_age:g} s")
    try:
        raw = json.loads(str(f["columns"]))
        ok = isinstance(raw, list) and all(
            isinstance(c, list) and len(c) == 4 and all(isinstance(x, str) for x in c) for c in raw
        )
    except ValueError:
        ok = False
    if not ok or not raw:
        raise bad("its columns are not a list of [uuid, name, metric, unit] strings")
    columns = tuple(SeriesKey(*c) for c in raw)
    if len(set(columns)) != len(columns):
        raise bad("a column is named twice")
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

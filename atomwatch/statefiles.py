"""State files of detectors that keep what they learnt across controller restarts (``state_dir``).

What lives here, shared by every detector that keeps state: :func:`path_for` (one file per
detector and scope in the operator's folder), :func:`write_npz` (atomic: a crash leaves the last
complete file), :func:`read_state` (bounded in size, packed and unpacked; never unpickles; every
field present; the format, scope and age every such file carries; or a :class:`StateError`
naming the file and what is wrong) and the columns a file names, as JSON. What does not: what a
detector stores and how it checks its own fields (``plugins/pca_spe/state.py``,
``plugins/precog/state.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .types import SeriesKey

#: the largest state file read
MAX_BYTES = 64 * 1024 * 1024
#: the fields every state file holds beside its own
HEADER = ("format", "scope", "saved_at")


class StateError(ValueError):
    """A state file that cannot be used; the message names the file and what is wrong."""


def path_for(state_dir: str | Path, detector: str, scope: str) -> Path:
    """The file of ``detector`` on ``scope``: the scope's name made safe, and a hash so two scopes
    never share one (two detectors may share a folder)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", scope)[:80]
    digest = hashlib.sha256(scope.encode()).hexdigest()[:12]
    return Path(state_dir) / f"{detector}-{safe}-{digest}.npz"


def write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to ``path`` atomically (a temporary file in the same folder, then a
    rename); the folder is made, private to the controller's user, when missing."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_npz(path: Path, fields: tuple[str, ...], what: str) -> dict[str, np.ndarray] | None:
    """The arrays ``fields`` (and :data:`HEADER`) of ``path``, None when there is no file;
    :class:`StateError` when it is too large, not a readable ``.npz``, holds a pickled object or
    lacks a field (``what`` names the kind of file expected)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"{path}: cannot read it ({e})") from None
    if size > MAX_BYTES:
        raise StateError(f"{path}: {size} bytes, more than the {MAX_BYTES} a state file may hold")
    try:
        with zipfile.ZipFile(path) as z:  # a compressed member must not unpack past the bound either
            unpacked = sum(m.file_size for m in z.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise StateError(f"{path}: not a readable state file ({type(e).__name__}: {e})") from None
    if unpacked > MAX_BYTES:
        raise StateError(f"{path}: {unpacked} bytes unpacked, more than the {MAX_BYTES} a state file may hold")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in (*HEADER, *fields)}
    except KeyError as e:
        raise StateError(f"{path}: no field {e} (not a {what})") from None
    except Exception as e:  # not a zip, a damaged one, a pickled field …
        raise StateError(f"{path}: not a readable state file ({type(e).__name__}: {e})") from None


def header(fmt: int, scope: str, saved_at: float) -> dict[str, Any]:
    """The :data:`HEADER` arrays of a file written now."""
    return {"format": np.int64(fmt), "scope": np.str_(scope), "saved_at": np.float64(saved_at)}


def check_header(path: Path, f: dict[str, np.ndarray], fmt: int, scope: str, max_age: float, now: float) -> float:
    """When the file was saved, after checking its format, scope and age (``max_age`` seconds, the
    option ``state_max_age``)."""
    if f["format"].shape != () or f["format"].dtype.kind not in "iu" or int(f["format"]) != fmt:
        raise StateError(f"{path}: format {f['format']!r}, this version reads {fmt}")
    if str(f["scope"]) != scope:
        raise StateError(f"{path}: it holds scope {str(f['scope'])!r}, not {scope!r}")
    saved_at = float(f["saved_at"]) if f["saved_at"].shape == () and f["saved_at"].dtype.kind == "f" else np.nan
    if not np.isfinite(saved_at) or saved_at > now + 60:
        raise StateError(f"{path}: saved_at {saved_at!r} is not a time in the past")
    if now - saved_at > max_age:
        raise StateError(f"{path}: saved {now - saved_at:.0f} s ago, older than state_max_age = {max_age:g} s")
    return saved_at


def columns_to_json(columns: tuple[SeriesKey, ...] | list[SeriesKey]) -> np.str_:
    """``columns`` as a JSON list of [uuid, name, metric, unit]."""
    return np.str_(json.dumps([[c.vm_uuid, c.vm_name, c.metric, c.unit] for c in columns]))


def columns_from_json(path: Path, text: np.ndarray, empty: bool = False) -> tuple[SeriesKey, ...]:
    """The columns a state file names (:func:`columns_to_json`), each once; none only when
    ``empty``."""
    try:
        raw = json.loads(str(text))
        ok = isinstance(raw, list) and all(
            isinstance(c, list) and len(c) == 4 and all(isinstance(x, str) for x in c) for c in raw
        )
    except ValueError:
        ok = False
    if not ok or not (raw or empty):
        raise StateError(f"{path}: its columns are not a list of [uuid, name, metric, unit] strings")
    columns = tuple(SeriesKey(*c) for c in raw)
    if len(set(columns)) != len(columns):
        raise StateError(f"{path}: a column is named twice")
    return columns


def read_state(
    path: Path, fields: tuple[str, ...], what: str, fmt: int, scope: str, max_age: float, now: float | None = None
) -> tuple[dict[str, np.ndarray], float] | None:
    """:func:`read_npz` then :func:`check_header`: the fields of ``scope``'s file and when it was
    saved, None when there is no file."""
    f = read_npz(path, fields, what)
    if f is None:
        return None
    return f, check_header(path, f, fmt, scope, max_age, time.time() if now is None else now)

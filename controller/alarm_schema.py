"""The alarms file's layout: the schema, its version (``PRAGMA user_version``) and the migrations,
the integrity check, and how one abnormal row is packed into a table row and back.

Versions: 1 is the first layout (each alarm's rows one JSON array in ``alarms.rows``; files of
that layout say ``user_version`` 0), 2 keeps rows in their own table (``alarm_rows``, one table row
per abnormal row, values packed as little-endian float64, the column list stored once in
``column_sets``) and counts the rows not kept in ``alarms.rows_dropped``.

What lives here: :func:`file_version`, :func:`prepare` (create or migrate), :func:`quick_check`,
the row codec and the SQL column lists. What does not: the store that reads and writes alarms
(:mod:`.alarms`, :mod:`.alarm_reads`, :mod:`.alarm_writer`); the layout's reasons (``docs/alarms.md``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

from atomwatch.series import SeriesKey

#: the layout this code writes
SCHEMA_VERSION = 2

#: an alarm's columns besides ``id`` (version 2; version 1 lacks ``rows_dropped``, has ``rows``)
HEADER = (
    "scope",
    "detector",
    "state",
    "opened_at",
    "updated_at",
    "closed_at",
    "first_row",
    "last_row",
    "level",
    "score",
    "threshold",
    "blame",
    "rows_dropped",
    "verdict",
    "resolution",
    "findings",
)

_ALARMS = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    detector TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    closed_at REAL,
    first_row INTEGER NOT NULL,
    last_row INTEGER NOT NULL,
    level INTEGER NOT NULL,
    score REAL NOT NULL,
    threshold REAL NOT NULL,
    blame TEXT NOT NULL,
    rows_dropped INTEGER NOT NULL DEFAULT 0,
    verdict TEXT,
    resolution TEXT,
    findings TEXT NOT NULL DEFAULT '[]'
)
"""

_V2 = """
CREATE INDEX alarms_state ON alarms(state);
CREATE INDEX alarms_closed ON alarms(closed_at) WHERE state = 'closed';
CREATE TABLE column_sets (
    id INTEGER PRIMARY KEY,
    columns TEXT NOT NULL UNIQUE
);
CREATE TABLE alarm_rows (
    alarm_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    row INTEGER NOT NULL,
    ts REAL NOT NULL,
    score REAL NOT NULL,
    threshold REAL NOT NULL,
    column_set INTEGER,
    "values" BLOB,
    PRIMARY KEY (alarm_id, seq)
);
"""

_AUDIT = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id INTEGER NOT NULL REFERENCES alarms(id),
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_alarm ON audit(alarm_id);
"""


INSERT_ROW = (
    'INSERT OR REPLACE INTO alarm_rows (alarm_id, seq, row, ts, score, threshold, column_set, "values")'
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class SchemaError(Exception):
    """The file's layout is one this code cannot use (made by a newer atomwatch)."""


def file_version(db: sqlite3.Connection) -> int:
    """0: an empty file; 1: the JSON-rows layout; 2: the current one; more: a newer atomwatch's."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version:
        return int(version)
    has_alarms = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alarms'").fetchone()
    return 1 if has_alarms else 0


def quick_check(db: sqlite3.Connection) -> list[str]:
    """SQLite's ``PRAGMA quick_check``: [] when the file is sound, else its first complaints."""
    found = [r[0] for r in db.execute("PRAGMA quick_check(5)").fetchall()]
    return [] if found == ["ok"] else found


def kept_seqs(level: int, head: int, tail: int) -> tuple[int, int]:
    """Rows ``seq < head`` and ``seq >= cut`` of an alarm at ``level`` are kept: (head, cut)."""
    return head, max(head, level - tail)


def prepare(db: sqlite3.Connection, head: int, tail: int) -> int:
    """Bring the file to :data:`SCHEMA_VERSION` (create it, or migrate it in one transaction);
    returns the version found. Raises :class:`SchemaError` for a newer file, ``sqlite3.Error`` when
    it cannot be written (nothing is changed then)."""
    found = file_version(db)
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"its layout is version {found}, written by a newer atomwatch (this one knows up to {SCHEMA_VERSION})"
        )
    if found == SCHEMA_VERSION:
        return found
    db.execute("BEGIN IMMEDIATE")
    try:
        if file_version(db) == 0:
            db.execute(_ALARMS.format(name="alarms"))
            for stmt in _statements(_V2 + _AUDIT):
                db.execute(stmt)
        else:
            _migrate_1_to_2(db, head, tail)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _migrate_1_to_2(db: sqlite3.Connection, head: int, tail: int) -> None:
    """Rows out of the JSON column into ``alarm_rows`` (the cap applied: the first ``head`` and
    the latest ``tail`` rows of each alarm kept, the others counted in ``rows_dropped``)."""
    # a new table renamed over the old one (renaming the old one away would rewrite the audit
    # table's reference to it)
    db.execute(_ALARMS.format(name="alarms_v2"))
    kept_cols = ", ".join(c for c in HEADER if c != "rows_dropped")
    db.execute(f"INSERT INTO alarms_v2 (id, {kept_cols}) SELECT id, {kept_cols} FROM alarms")
    db.execute("CREATE TABLE alarm_rows_v1 (id INTEGER PRIMARY KEY, rows TEXT)")
    db.execute("INSERT INTO alarm_rows_v1 SELECT id, rows FROM alarms")
    db.execute("DROP TABLE alarms")
    db.execute("ALTER TABLE alarms_v2 RENAME TO alarms")
    for stmt in _statements(_V2 + _AUDIT):
        db.execute(stmt)
    sets = ColumnSets()
    ids = [r[0] for r in db.execute("SELECT id FROM alarm_rows_v1 ORDER BY id").fetchall()]
    for alarm_id in ids:
        (text,) = db.execute("SELECT rows FROM alarm_rows_v1 WHERE id = ?", (alarm_id,)).fetchone()
        try:
            rows = json.loads(text or "[]")
        except ValueError:
            rows = []  # an unreadable array of one alarm: its header survives, its rows do not
        rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
        n = len(rows)
        lo, cut = kept_seqs(n, head, tail)
        params = []
        for seq, rec in enumerate(rows):
            if lo <= seq < cut:
                continue
            columns, values = rec.get("columns"), rec.get("values")
            set_id, blob = None, None
            if columns is not None and values is not None:
                set_id = sets.id_of(db, tuple(SeriesKey(*c) for c in columns))
                blob = pack_values(values)
            params.append(
                (
                    alarm_id,
                    seq,
                    int(rec.get("index", 0)),
                    float(rec.get("ts", 0.0)),
                    float(rec.get("score", 0.0)),
                    float(rec.get("threshold", 0.0)),
                    set_id,
                    blob,
                )
            )
        db.executemany(INSERT_ROW, params)
        db.execute("UPDATE alarms SET rows_dropped = ? WHERE id = ?", (n - len(params), alarm_id))
    db.execute("DROP TABLE alarm_rows_v1")


# --------------------------------------------------------------------------- the row codec


def pack_values(values: Any) -> bytes:
    """Values as little-endian float64 (None and NaN both become NaN)."""
    if isinstance(values, np.ndarray):
        return np.asarray(values, dtype="<f8").tobytes()
    return np.array([np.nan if v is None else v for v in values], dtype="<f8").tobytes()


def unpack_values(blob: bytes) -> list[float | None]:
    return [None if v != v else v for v in np.frombuffer(blob, dtype="<f8").tolist()]


def columns_text(columns: Sequence[SeriesKey]) -> str:
    return json.dumps([[c.vm_uuid, c.vm_name, c.metric, c.unit] for c in columns])


def row_record(
    index: int, ts: float, score: float, threshold: float, columns: list[list[str]] | None, values: Any
) -> dict[str, Any]:
    """One abnormal row as ``Alarm.rows`` holds it."""
    rec: dict[str, Any] = {"index": index, "ts": ts, "score": score, "threshold": threshold}
    if columns is not None and values is not None:
        rec["columns"] = columns
        rec["values"] = values
    return rec


class ColumnSets:
    """Column lists stored once each (``column_sets``): their ids, cached, for one connection.
    ``pending`` holds the ids learnt in the open transaction until :meth:`commit`."""

    def __init__(self) -> None:
        self.ids: dict[tuple[SeriesKey, ...], int] = {}
        self.pending: dict[tuple[SeriesKey, ...], int] = {}
        self._last: tuple[tuple[SeriesKey, ...] | None, int] = (None, 0)

    def id_of(self, db: sqlite3.Connection, columns: tuple[SeriesKey, ...]) -> int:
        if columns is self._last[0]:  # a scope's rows share one tuple while its columns stay
            return self._last[1]
        found = self.ids.get(columns)
        if found is not None:
            self._last = (columns, found)
            return found
        found = self.pending.get(columns)
        if found is not None:
            return found
        text = columns_text(columns)
        db.execute("INSERT OR IGNORE INTO column_sets (columns) VALUES (?)", (text,))
        (found,) = db.execute("SELECT id FROM column_sets WHERE columns = ?", (text,)).fetchone()
        self.pending[columns] = found
        return found

    def commit(self) -> None:
        self.ids.update(self.pending)
        self.pending.clear()

    def rollback(self) -> None:
        self.pending.clear()
        self._last = (None, 0)

    def clear(self) -> None:
        self.ids.clear()
        self.pending.clear()
        self._last = (None, 0)

"""Reading the alarms file: the store's reading connection (its own, opened on demand, read-only
if need be; WAL: reads never wait for the writer) and what it reads there — alarm headers and an
alarm's rows as the file's layout version has them.

What lives here: :class:`_FileReads`, a part of :class:`.alarms.AlarmStore`. What does not: merging
the file with what is not written yet (:mod:`.alarms`), writing (:mod:`.alarm_writer`), the layout
(:mod:`.alarm_schema`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from atomwatch.alarm import Alarm, AlarmStoreUnavailable

from . import alarm_schema as schema
from .alarm_errors import _ADVICE, _error_kind

_T = TypeVar("_T")


class _FileReads:
    """The reading side of :class:`.alarms.AlarmStore` (a mixin: the store's ``path``, ``memory``
    and ``_closed`` are read here). It owns ``_read_lock``, the reading connection ``_rdb``, the
    version of the file it reads and the column lists read so far; a failed open is noted in the
    store's ``_problem`` unless something is said there already (the start-up message uses it)."""

    path: str
    memory: bool
    _closed: bool
    _problem: str | None

    def _init_reads(self) -> None:
        #: the reader (API threads, plugins, tools): its own connection, one at a time
        self._read_lock = threading.Lock()
        self._rdb: sqlite3.Connection | None = None
        self._rdb_version = schema.SCHEMA_VERSION
        self._set_lists: dict[int, list[list[str]]] = {}

    def _reader(self) -> sqlite3.Connection | None:
        """The reading connection (the caller holds ``_read_lock`` or is starting), opened on
        demand: read-write if it can, else read-only, else (read-only media, where SQLite cannot
        make its shared-memory file) immutable; None when the file cannot be opened."""
        if self._rdb is not None:
            return self._rdb
        if self.memory:
            return None
        if not Path(self.path).exists():
            return None
        uri = "file:" + quote(os.path.abspath(self.path))
        for suffix in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                db = sqlite3.connect(uri + suffix, uri=True, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA busy_timeout = 200")
                version = schema.file_version(db)
            except sqlite3.Error as e:
                if _error_kind(e) == "damaged":
                    raise
                self._problem = self._problem or str(e)
                continue
            if version > schema.SCHEMA_VERSION:
                db.close()
                raise schema.SchemaError(
                    f"its layout is version {version}, written by a newer atomwatch "
                    f"(this one knows up to {schema.SCHEMA_VERSION})"
                )
            self._rdb, self._rdb_version = db, version
            return db
        return None

    def _header_sql(self) -> str:
        """(under ``_read_lock``) an alarm's columns as the file being read has them."""
        v1 = self._rdb_version < 2
        cols = ", ".join("0 AS rows_dropped" if c == "rows_dropped" and v1 else c for c in schema.HEADER)
        return f"SELECT id, {cols} FROM alarms"

    @staticmethod
    def _alarm_of_row(r: tuple) -> Alarm:
        d = dict(zip(("id", *schema.HEADER), r))
        d["blame"] = json.loads(d["blame"])
        d["findings"] = json.loads(d["findings"])
        return Alarm(rows=[], **d)

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` on the reading connection; AlarmStoreUnavailable when it cannot."""
        with self._read_lock:
            if self._closed and self._rdb is None:
                raise AlarmStoreUnavailable(f"the alarms store {self.path} is shut down")
            for attempt in (1, 2):  # a second time on a new connection (the file may have changed)
                try:
                    db = self._reader()
                    if db is None:
                        raise AlarmStoreUnavailable(f"the alarms file {self.path} cannot be opened")
                    return fn(db)
                except schema.SchemaError as e:
                    raise AlarmStoreUnavailable(f"the alarms file {self.path}: {e}") from None
                except sqlite3.Error as e:
                    self._drop_reader()
                    if attempt == 2 or self.memory:
                        kind = _error_kind(e)
                        advice = _ADVICE.get(kind, "")
                        raise AlarmStoreUnavailable(
                            f"the alarms file {self.path} cannot be read ({e}){': ' + advice if advice else ''}"
                        ) from None
            raise AssertionError("unreachable")

    def _drop_reader(self) -> None:
        """(the caller holds ``_read_lock``) the next read opens a new connection."""
        if not self.memory and self._rdb is not None:
            self._rdb.close()
            self._rdb = None
            self._set_lists.clear()

    def _stored_header(self, alarm_id: int) -> Alarm | None:
        if self.memory or self._reader_exists():
            row = self._read(lambda db: db.execute(self._header_sql() + " WHERE id = ?", (alarm_id,)).fetchone())
            return None if row is None else self._alarm_of_row(row)
        return None

    def _reader_exists(self) -> bool:
        return self._rdb is not None or Path(self.path).exists()

    def _stored_rows(self, db: sqlite3.Connection, alarm_id: int, level: int) -> list[tuple[int, dict[str, Any]]]:
        """(under ``_read_lock``) (seq, row) of the alarm's rows in the file."""
        if self._rdb_version < 2:  # a file not migrated yet (read-only): rows in one JSON array
            found = db.execute("SELECT rows FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
            return list(enumerate(json.loads(found[0]) if found else []))
        out = []
        rows = db.execute(
            'SELECT seq, row, ts, score, threshold, column_set, "values" FROM alarm_rows'
            " WHERE alarm_id = ? AND seq < ? ORDER BY seq",
            (alarm_id, level),
        ).fetchall()
        for seq, index, ts, score, threshold, set_id, blob in rows:
            cols = None
            if set_id is not None:
                cols = self._set_lists.get(set_id)
                if cols is None:
                    (text,) = db.execute("SELECT columns FROM column_sets WHERE id = ?", (set_id,)).fetchone()
                    cols = self._set_lists[set_id] = json.loads(text)
                cols = [list(c) for c in cols]
            vals = None if blob is None else schema.unpack_values(blob)
            out.append((seq, schema.row_record(index, ts, score, threshold, cols, vals)))
        return out

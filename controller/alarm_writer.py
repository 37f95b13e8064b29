"""The alarms store's writer thread: it takes what changed in memory as a batch, writes it in one
transaction, retries while the file is locked, read-only or full (saying so once per outage, and
again when the file takes writes), and deletes closed alarms past their retention.

What lives here: :class:`_Writer`, a part of :class:`.alarms.AlarmStore`. What does not: the changes
in memory it writes (:mod:`.alarms`), reading the file (:mod:`.alarm_reads`), the layout
(:mod:`.alarm_schema`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import alarm_schema as schema
from .alarm_entries import _Batch, _Entry
from .alarm_errors import _ADVICE, _error_kind

#: the store's logger, whichever of its modules says it
log = logging.getLogger("atomwatch.controller.alarms")

#: how long SQLite itself waits for a lock held by another connection (milliseconds)
BUSY_MS = 50
#: the writer's waits between attempts while the file cannot be written (seconds)
RETRY_FIRST, RETRY_MAX = 0.05, 5.0
#: how often closed alarms past their retention are looked for (seconds)
PRUNE_EVERY = 3600.0

_T = TypeVar("_T")


class _Writer:
    """The writing side of :class:`.alarms.AlarmStore` (a mixin: the store's configuration and its
    memory under ``_lock`` are used here, and the reader's ``_read_lock``, ``_drop_reader`` and
    column lists). It owns the writing connection ``_db``, the file's state as
    :meth:`.alarms.AlarmStore.status` says it (``_ok``, ``_problem``, ``_since``, read under
    ``_lock``), the retry and prune schedule, ``_wake`` and the thread."""

    path: str
    memory: bool
    readonly: bool
    head: int
    tail: int
    retention: float
    pending_max: int
    _lock: threading.Lock
    _flushed: threading.Condition
    _mem: dict[int, _Entry]
    _counts: dict[str, int]
    _touched: set[int]
    _audit: list[tuple[int, int, float, str, str, dict[str, Any]]]
    _pending_rows: int
    _recorded: int
    _written: int
    _read_lock: threading.Lock
    _set_lists: dict[int, list[list[str]]]

    _stop_timeout = 5.0

    def _init_writer(self) -> None:
        #: the writer's state (its thread only, but for ``_ok``/``_problem`` read by status())
        self._db: sqlite3.Connection | None = None
        self._sets = schema.ColumnSets()
        self._ok = True
        self._problem: str | None = None
        self._problem_kind: str | None = None
        self._since: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._next_prune = 0.0
        self._stopping = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_writer(self) -> None:
        if not self.readonly:
            self._thread = threading.Thread(target=self._writer, name="alarm-store", daemon=True)
            self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        """The writer's connection, the file brought to the current layout."""
        db = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, check_same_thread=False, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL: a power cut may lose the last commits, never damages the file
            db.execute("PRAGMA synchronous = NORMAL")
            schema.prepare(db, self.head, self.tail)
        except BaseException:
            db.close()
            raise
        self._sets.clear()
        return db

    def _take(self) -> _Batch:
        """What is not written yet (under ``_lock``; the values are not copied, they are never
        changed in place: each change makes new lists)."""
        with self._lock:
            inserts, updates, rows, dirty = [], [], [], {}
            for alarm_id in self._touched:
                e = self._mem.get(alarm_id)
                if e is None:
                    continue
                a = e.alarm
                if not e.stored:
                    inserts.append((alarm_id, {c: getattr(a, c) for c in schema.HEADER}))
                elif e.dirty:
                    updates.append((alarm_id, {c: getattr(a, c) for c in e.dirty}))
                dirty[alarm_id] = e.dirty
                e.dirty = set()
                if e.rows:
                    rows.append((alarm_id, list(e.rows)))
            return _Batch(inserts, updates, rows, list(self._audit), dirty, set(self._touched), self._recorded)

    def _give_back(self, batch: _Batch) -> None:
        """A write failed: what it took is still to write."""
        with self._lock:
            for alarm_id, fields in batch.dirty.items():
                e = self._mem.get(alarm_id)
                if e is not None:
                    e.dirty |= fields
            self._touched |= batch.touched

    def _write(self, db: sqlite3.Connection, batch: _Batch) -> None:
        def enc(col: str, v: Any) -> Any:
            return json.dumps(v, default=str) if col in ("blame", "findings") else v

        db.execute("BEGIN IMMEDIATE")
        try:
            for alarm_id, values in batch.inserts:
                cols = ", ".join(values)
                db.execute(
                    f"INSERT INTO alarms (id, {cols}) VALUES (?{', ?' * len(values)})",
                    (alarm_id, *(enc(c, v) for c, v in values.items())),
                )
            for alarm_id, values in batch.updates:
                sets = ", ".join(f"{c} = ?" for c in values)
                db.execute(
                    f"UPDATE alarms SET {sets} WHERE id = ?", (*(enc(c, v) for c, v in values.items()), alarm_id)
                )
            for alarm_id, rows in batch.rows:
                params = []
                for r in rows:
                    set_id = None if r.columns is None else self._sets.id_of(db, r.columns)
                    blob = None if r.values is None else schema.pack_values(r.values)
                    params.append((alarm_id, r.seq, r.index, r.ts, r.score, r.threshold, set_id, blob))
                db.executemany(schema.INSERT_ROW, params)
                _, cut = schema.kept_seqs(rows[-1].seq + 1, self.head, self.tail)
                if cut > self.head:
                    db.execute(
                        "DELETE FROM alarm_rows WHERE alarm_id = ? AND seq >= ? AND seq < ?", (alarm_id, self.head, cut)
                    )
            db.executemany(
                "INSERT INTO audit (id, alarm_id, ts, actor, action, details) VALUES (?, ?, ?, ?, ?, ?)",
                [(i, a, ts, actor, action, json.dumps(d, default=str)) for i, a, ts, actor, action, d in batch.audit],
            )
            db.execute("COMMIT")
        except BaseException:
            self._sets.rollback()
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._sets.commit()

    def _done(self, batch: _Batch) -> None:
        """The batch is in the file: forget it, and alarms with nothing more to write leave memory."""
        with self._lock:
            for alarm_id, _ in batch.inserts:
                e = self._mem.get(alarm_id)
                if e is not None:
                    e.stored = True
            for alarm_id, rows in batch.rows:
                e = self._mem.get(alarm_id)
                if e is not None:
                    last = rows[-1].seq
                    before = len(e.rows)
                    e.rows = [r for r in e.rows if r.seq > last]
                    self._pending_rows -= before - len(e.rows)
            del self._audit[: len(batch.audit)]
            self._touched -= {i for i in batch.touched if not (i in self._mem and self._mem[i].dirty)}
            for alarm_id in batch.touched:
                e = self._mem.get(alarm_id)
                if (
                    e is not None
                    and e.alarm.state == "closed"
                    and not e.dirty
                    and not e.rows
                    and alarm_id not in self._touched
                ):
                    del self._mem[alarm_id]
            self._written = batch.recorded
            self._flushed.notify_all()

    def _idle(self) -> bool:
        """(the caller holds ``_lock``)"""
        return not self._touched and not self._audit

    def _failed(self, e: BaseException) -> None:
        """A write or an open failed: say so once per outage (a lock held briefly by another
        process is said only when it lasts), then retry later."""
        kind = _error_kind(e)
        if kind in ("cannot open", "error") and not self._writable():
            kind = "read-only"  # SQLite says it cannot open (e.g. its WAL files) where it may not write
        self._failures += 1
        wait = min(RETRY_MAX, RETRY_FIRST * 2 ** min(self._failures - 1, 10))
        self._retry_at = time.monotonic() + wait
        if kind != "locked" and self._db is not None and not self.memory:
            self._db.close()
            self._db = None
        if kind == "locked" and self._failures < 4:
            return
        with self._lock:
            was_ok, old_kind = self._ok, self._problem_kind
            self._ok = False
            self._problem = f"{e}" + (f" ({kind}: {_ADVICE[kind]})" if kind in _ADVICE else "")
            self._problem_kind = kind
            if was_ok:
                self._since = time.time()
            pending = self._recorded - self._written
        if was_ok or old_kind != kind:
            log.error(
                "alarms file %s cannot be written: %s. Anomalies are kept in memory (up to %d rows; %d waiting) "
                "and written when it can be again",
                self.path,
                self._problem,
                self.pending_max,
                pending,
            )

    def _writable(self) -> bool:
        """Whether this process may write the file (or create it in its folder)."""
        where = Path(self.path)
        return os.access(where if where.exists() else where.parent, os.W_OK)

    def _recovered(self, written: int) -> None:
        self._failures = 0
        with self._lock:
            was_ok = self._ok
            self._ok, self._problem, self._problem_kind, self._since = True, None, None, None
        if not was_ok:
            with self._read_lock:  # a reader opened while the file was read-only may be immutable
                self._drop_reader()
            log.warning("alarms file %s takes writes again: %d anomalies kept meanwhile written", self.path, written)

    def _writer(self) -> None:
        deadline: float | None = None
        while True:
            if self._stopping and deadline is None:
                deadline = time.monotonic() + self._stop_timeout
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now < self._retry_at:
                self._wake.clear()
                self._wake.wait(min(self._retry_at, deadline or self._retry_at) - now)
                continue
            with self._lock:
                idle = self._idle()
            if idle and self._stopping:
                break
            if idle and not (self._ok and now >= self._next_prune and self.retention > 0):
                self._wake.wait(1.0 if self._stopping else min(30.0, max(0.01, self._next_prune - now)))
                self._wake.clear()
                continue
            self._wake.clear()
            try:
                if self._db is None:
                    self._db = self._connect()
                    with self._read_lock:  # the file may be another, or migrated, since it was read
                        self._drop_reader()
                batch = self._take()
                try:
                    if batch:
                        self._lock_memory_db(self._write, self._db, batch)
                except BaseException:
                    self._give_back(batch)
                    raise
                written = batch.recorded - self._written
                self._done(batch)
                if not self._ok or self._failures:
                    self._recovered(written)
                if self.retention > 0 and time.monotonic() >= self._next_prune and not self._stopping:
                    self._prune(self._db)
            except sqlite3.Error as e:
                self._failed(e)
            except schema.SchemaError as e:
                self._failed(e)
            except Exception:  # never let the writer die
                log.exception("alarms file %s: the writer failed", self.path)
                self._retry_at = time.monotonic() + RETRY_MAX
        with self._lock:
            left = self._recorded - self._written
            unwritten = not self._idle()
        if unwritten:
            log.error(
                "alarms file %s: %d anomalies (and their audit entries) could not be written before stopping: %s",
                self.path,
                left,
                self._problem or "time ran out",
            )

    def _lock_memory_db(self, fn: Callable[..., _T], *args: Any) -> _T:
        """A ``:memory:`` store has one connection: the writer and the readers take turns."""
        if self.memory:
            with self._read_lock:
                return fn(*args)
        return fn(*args)

    def _prune(self, db: sqlite3.Connection) -> None:
        """Delete closed alarms past their retention (rows, audit trail and all), a few hundred per
        transaction, and column lists no row uses any more."""
        self._next_prune = time.monotonic() + PRUNE_EVERY
        cutoff = time.time() - self.retention
        total = 0
        while not self._stopping:
            with self._lock:
                held = set(self._mem)
            old = self._lock_memory_db(_select_old, db, cutoff)
            ids = [i for (i,) in old if i not in held]
            if not ids:
                break
            self._lock_memory_db(_delete_alarms, db, ids)
            total += len(ids)
            with self._lock:
                self._counts["closed"] -= len(ids)
            if len(ids) < 500:
                break
        if total:
            self._lock_memory_db(
                db.execute,
                "DELETE FROM column_sets WHERE id NOT IN"
                " (SELECT DISTINCT column_set FROM alarm_rows WHERE column_set IS NOT NULL)",
            )
            self._sets.clear()
            with self._read_lock:
                self._set_lists.clear()
            log.info(
                "alarms file %s: %d closed alarms older than %g days deleted", self.path, total, self.retention / 86400
            )


def _select_old(db: sqlite3.Connection, cutoff: float) -> list[tuple[int]]:
    return db.execute(
        "SELECT id FROM alarms WHERE state = 'closed' AND closed_at < ? ORDER BY closed_at LIMIT 500", (cutoff,)
    ).fetchall()


def _delete_alarms(db: sqlite3.Connection, ids: list[int]) -> None:
    """Closed alarms with their rows and audit trail, in one transaction."""
    marks = ", ".join("?" * len(ids))
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, col in (("alarm_rows", "alarm_id"), ("audit", "alarm_id"), ("alarms", "id")):
            db.execute(f"DELETE FROM {table} WHERE {col} IN ({marks})", ids)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise

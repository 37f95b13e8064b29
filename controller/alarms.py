"""Alarms: what an operator sees and decides on, kept in one SQLite file that survives restarts.

An anomaly opens an alarm for its (scope, detector); further anomalies of the same pair within
``merge_gap`` rows extend it (its *level* is the number of abnormal rows, ATOM's A) — while it is
open, and also once judged malicious, while the orchestrators act on it: the anomaly going on
until the guilty process is stopped is the same episode, not a new alarm to introspect and
judge. The alarm keeps those rows (columns and values; of a long alarm the first and the latest
``max_rows``, counting the others), the blamed columns, the latest score and threshold, and the
findings orchestrators attach. Every change is written to the alarm's audit trail with time and
actor, in the same transaction as the change itself.

States::

    open ──verdict normal──────────────► closed (resolution: workload-change)
      │
      └─verdict malicious──► malicious ──(orchestrators act)──► closed (resolution: …)

Orchestrators may also move an alarm to ``closed`` themselves (e.g. after a verified termination
once the score is back under the threshold).

Changes are made in memory, where every open and malicious alarm lives, and return at once (an
alarm's id is handed out by the store); one writer thread writes them to the file
(:mod:`.alarm_writer`). Reads merge the file (:mod:`.alarm_reads`) with what is not written yet.
The reasons and the failure modes: ``docs/alarms.md``.

What lives here: the store (:class:`AlarmStore`): opening the file, the alarms in memory and their
changes, the reads callers make. What does not: the writer thread, the file reads, the records held
in memory (:mod:`.alarm_entries`), the file's layout, versions and migrations (:mod:`.alarm_schema`),
the alarm record and the errors its operations raise (:mod:`atomwatch.alarm`, core, so plugins see
them; re-exported here), and what the controller does on a verdict (:mod:`atomwatch.controller.verdicts`).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from atomwatch.alarm import (
    STATES,
    VERDICTS,
    Alarm,
    AlarmError,
    AlarmNotFound,
    AlarmStateError,
    AlarmStoreUnavailable,
)
from atomwatch.config import ConfigError
from atomwatch.series import SeriesKey
from atomwatch.types import Anomaly

from . import alarm_schema as schema
from .alarm_entries import _Entry, _Row, _StoredAlarm
from .alarm_errors import _error_kind
from .alarm_reads import _FileReads
from .alarm_writer import RETRY_MAX, _Writer

__all__ = [
    "STATES",
    "VERDICTS",
    "Alarm",
    "AlarmError",
    "AlarmNotFound",
    "AlarmStateError",
    "AlarmStore",
    "AlarmStoreUnavailable",
]

#: rows kept per alarm by default: more than PCA-SPE's default window (720 rows), so a normal
#: verdict can refill the whole window from one alarm; 2.5 MB of values at 320 columns
MAX_ROWS = 1000
#: closed alarms are deleted this long after closing by default (seconds; 0: never)
RETENTION = 30 * 86400.0
#: anomalies kept in memory by default while the file cannot be written
PENDING_MAX = 10_000

_LIVE = ("open", "malicious")


def _merge_blame(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per column, the latest numbers, with how many rows blamed it."""
    by_col = {b["column"]: dict(b) for b in old}
    for b in new:
        prev = by_col.get(b["column"])
        merged = dict(b)
        merged["rows"] = (prev.get("rows", 1) if prev else 0) + 1
        by_col[b["column"]] = merged
    return sorted(by_col.values(), key=lambda b: (-b.get("rows", 1), -abs(b.get("score", 0.0))))


class AlarmStore(_FileReads, _Writer):
    """Alarms in memory and in one SQLite file (``":memory:"``: for the process' life only).

    ``max_rows``: abnormal rows kept per alarm (the first tenth and the latest nine tenths);
    ``retention``: seconds a closed alarm is kept (0: forever); ``pending_max``: anomalies kept
    in memory while the file cannot be written; ``readonly``: only read (no writer, no lock: a
    tool reading a running controller's file). Thread-safe; no method waits for the disk except
    the reads of what is only on it (closed alarms, rows, the audit trail), :meth:`flush` and
    :meth:`shutdown`. Raises :class:`ConfigError` when the file is damaged, of a newer
    atomwatch, unreadable or used by another controller."""

    def __init__(
        self,
        path: str | Path,
        merge_gap: int = 3,
        max_rows: int = MAX_ROWS,
        retention: float = RETENTION,
        pending_max: int = PENDING_MAX,
        readonly: bool = False,
    ):
        if max_rows < 10:
            raise ConfigError(f"--alarm-rows must be at least 10, got {max_rows}")
        if retention < 0:
            raise ConfigError(f"--alarm-retention must be 0 (keep forever) or more days, got {retention / 86400:g}")
        if pending_max < 1:
            raise ConfigError(f"--alarm-pending must be at least 1, got {pending_max}")
        self.path = str(path)
        self.memory = self.path == ":memory:"
        self.merge_gap = merge_gap
        self.max_rows = max_rows
        self.head = max(1, max_rows // 10)
        self.tail = max_rows - self.head
        self.retention = retention
        self.pending_max = pending_max
        self.readonly = readonly

        self._lock = threading.Lock()
        self._flushed = threading.Condition(self._lock)
        self._mem: dict[int, _Entry] = {}
        #: the latest open or malicious alarm of each (scope, detector)
        self._live: dict[tuple[str, str], int] = {}
        self._counts = {s: 0 for s in STATES}
        self._touched: set[int] = set()
        self._audit: list[tuple[int, int, float, str, str, dict[str, Any]]] = []
        self._pending_rows = 0
        self._recorded = 0  # anomalies recorded …
        self._written = 0  # … and written
        self.rows_lost = 0  # rows dropped in memory: the file could not be written and memory was full
        self.audit_lost = 0
        self._next_id = 1
        self._next_audit = 1
        self._closed = False
        self._lockfile: int | None = None
        self._taking_over = False
        self._takeover_gap = 0.0
        self._init_writer()
        self._init_reads()

        self._start()
        self._start_writer()

    # ------------------------------------------------------------------ start

    def _start(self) -> None:
        if self.memory:
            db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            schema.prepare(db, self.head, self.tail)
            self._db = self._rdb = db
            return
        where = Path(self.path)
        if where.is_dir():
            raise ConfigError(f"--db {self.path}: is a folder; give the alarms file's path")
        if not self.readonly:
            try:
                where.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # said below, when the file cannot be opened
            self._take_lock()
        existed = where.exists()
        try:
            if not self.readonly:
                try:
                    self._db = self._connect()
                except sqlite3.Error as e:
                    if _error_kind(e) in ("damaged", "newer"):
                        raise
                    self._failed(e)
            reader = self._reader()
            if reader is None:
                if existed:
                    raise ConfigError(
                        f"--db {self.path}: cannot read it ({self._problem or 'unable to open'}); "
                        "make it readable by this user, or move it aside to start with no alarms"
                    )
            else:
                damage = schema.quick_check(reader)
                if damage:
                    lines = [x for d in damage for x in d.splitlines() if not x.startswith("***")]
                    raise ConfigError(self._damaged_message("; ".join(lines[:2]) + ("; …" if len(lines) > 2 else "")))
                self._load(reader)
        except ConfigError:
            self._close_connections()
            raise
        except schema.SchemaError as e:
            self._close_connections()
            raise ConfigError(f"--db {self.path}: {e}; run that atomwatch, or give this one another --db") from None
        except sqlite3.Error as e:
            self._close_connections()
            if _error_kind(e) == "damaged":
                raise ConfigError(self._damaged_message(str(e))) from None
            raise ConfigError(f"--db {self.path}: cannot read it ({e})") from None

    def _damaged_message(self, why: str) -> str:
        return (
            f"--db {self.path}: the alarms file is damaged ({why}). Move it aside "
            f"(mv {self.path} {self.path}.damaged) and start again with a new, empty file; "
            f"'sqlite3 {self.path}.damaged .recover' may save what is left of it"
        )

    def _take_lock(self) -> None:
        """One controller per file (the store hands out alarm ids itself)."""
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return  # a read-only folder: nothing can write the file now, the writer says so
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(
                f"--db {self.path}: another controller{f' (pid {holder})' if holder else ''} uses this alarms "
                "file; give each controller its own --db"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lockfile = fd

    def _load(self, db: sqlite3.Connection) -> None:
        """Ids to hand out, counts by state, every open and malicious alarm into memory."""
        if schema.file_version(db) == 0:
            return
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'alarms'").fetchone()
        top = db.execute("SELECT MAX(id) FROM alarms").fetchone()[0]
        self._next_id = max(seq[0] if seq else 0, top or 0) + 1
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        top = db.execute("SELECT MAX(id) FROM audit").fetchone()[0]
        self._next_audit = max(seq[0] if seq else 0, top or 0) + 1
        for state, n in db.execute("SELECT state, COUNT(*) FROM alarms GROUP BY state"):
            self._counts[state] = n
        if self.readonly:
            return
        for r in db.execute(self._header_sql() + " WHERE state IN ('open', 'malicious') ORDER BY id"):
            alarm = self._alarm_of_row(r)
            self._mem[alarm.id] = _Entry(alarm, stored=True, foreign=self._taking_over)
            self._live[(alarm.scope, alarm.detector)] = alarm.id

    # ------------------------------------------------------------------ hot standby (controller/election.py)

    @property
    def writable(self) -> bool:
        return not self.readonly and not self._closed

    def take_over(self, gap: float, actor: str = "controller") -> None:
        """Become the file's writer (a standby made active): take its lock, load its open and
        malicious alarms as the previous writer left them. Their row numbers are that
        controller's, so an anomaly extends one of them when its row came at most ``gap``
        seconds after the alarm's last change, and is skipped when it came no later (the
        previous writer recorded that row). Each gets ``taken-over`` in its trail, by ``actor``.
        Waits for the disk: call it off the event loop. Raises :class:`ConfigError` while another
        controller holds the file (try again)."""
        if not self.readonly or self.memory or self._closed:
            return
        self._take_lock()
        self._takeover_gap = gap
        self._taking_over = True
        try:
            try:
                self._db = self._connect()
            except sqlite3.Error as e:
                if _error_kind(e) in ("damaged", "newer"):
                    raise
                self._failed(e)
            with self._read_lock:
                reader = self._reader()
                with self._lock:
                    self.readonly = False
                    self._mem.clear()
                    self._live.clear()
                    if reader is not None:
                        self._load(reader)
                    now = time.time()
                    for alarm_id in self._live.values():
                        self._log(alarm_id, actor, "taken-over", {"controller": actor}, now)
        except BaseException:
            self.readonly = True
            self._close_connections()
            raise
        finally:
            self._taking_over = False
        self._stopping = False
        self._start_writer()

    def release(self, timeout: float = 5.0) -> None:
        """Stop writing (an active controller made standby): write what is pending, stop the
        writer, let the file's lock go, and read only from now on. Waits: off the event loop."""
        if self.readonly or self.memory or self._closed:
            return
        self.flush(timeout)
        self._stop_timeout = timeout
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 2 * RETRY_MAX)
            self._thread = None
        with self._lock:
            self.readonly = True
            self._mem.clear()
            self._live.clear()
            self._touched.clear()
        self._close_connections()

    # ------------------------------------------------------------------ copies for callers

    def _public(self, a: Alarm) -> Alarm:
        """A copy for callers (the caller holds ``_lock`` if ``a`` lives in memory), rows read
        when first used: those up to its level as of now."""
        fields = {k: getattr(a, k) for k in a.__dataclass_fields__ if k != "rows"}
        fields["blame"] = list(a.blame)
        fields["findings"] = list(a.findings)
        alarm_id, level = a.id, a.level
        return _StoredAlarm(rows=None, loader=lambda: self._rows_of(alarm_id, level), **fields)

    # ------------------------------------------------------------------ reading (memory and the file)

    def get(self, alarm_id: int) -> Alarm:
        """The alarm as it is now (its rows are read when first used)."""
        with self._lock:
            e = self._mem.get(alarm_id)
            if e is not None:
                return self._public(e.alarm)
        alarm = self._stored_header(alarm_id)
        if alarm is None:
            with self._lock:  # written and evicted meanwhile? then it is in the file
                e = self._mem.get(alarm_id)
                if e is not None:
                    return self._public(e.alarm)
            raise AlarmNotFound(f"no alarm {alarm_id}")
        return self._public(alarm)

    def _rows_of(self, alarm_id: int, level: int) -> list[dict[str, Any]]:
        """The rows kept of the alarm at ``level``: the file's and those not written yet."""
        with self._lock:
            e = self._mem.get(alarm_id)
            pending = list(e.rows) if e is not None else []
        by_seq: dict[int, dict[str, Any]] = {}
        if self.memory or self._reader_exists():
            by_seq.update(self._read(lambda db: self._stored_rows(db, alarm_id, level)))
        for r in pending:
            cols = None if r.columns is None else [[c.vm_uuid, c.vm_name, c.metric, c.unit] for c in r.columns]
            vals = None if r.values is None else [None if v != v else v for v in r.values.tolist()]
            by_seq[r.seq] = schema.row_record(r.index, r.ts, r.score, r.threshold, cols, vals)
        head, cut = schema.kept_seqs(level, self.head, self.tail)
        return [by_seq[s] for s in sorted(by_seq) if s < level and (s < head or s >= cut)]

    def list(
        self, state: str | None = None, scope: str | None = None, limit: int = 200, load_rows: bool = False
    ) -> list[Alarm]:
        """Alarms, newest first. Their rows are read when first used, or now with ``load_rows``
        (for a caller that closes the store before using them)."""
        if state and state not in STATES:
            raise AlarmError(f"state {state!r} is not one of {', '.join(STATES)}")

        def wanted(a: Alarm) -> bool:
            return (not state or a.state == state) and (not scope or a.scope == scope)

        with self._lock:
            in_memory = {i: self._public(e.alarm) for i, e in self._mem.items()}
        found = [a for a in in_memory.values() if wanted(a)]
        if self.memory or self._reader_exists():
            where, args = "WHERE 1=1", []
            if state:
                where += " AND state = ?"
                args.append(state)
            if scope:
                where += " AND scope = ?"
                args.append(scope)
            args.append(limit + len(in_memory))
            sql = " ".join((where, "ORDER BY id DESC LIMIT ?"))
            rows = self._read(lambda db: db.execute(f"{self._header_sql()} {sql}", args).fetchall())
            found += [self._public(self._alarm_of_row(r)) for r in rows if r[0] not in in_memory]
        found.sort(key=lambda a: -a.id)
        found = found[:limit]
        if load_rows:
            for a in found:
                a.rows  # noqa: B018 (read now)
        return found

    def audit(self, alarm_id: int) -> list[dict[str, Any]]:
        with self._lock:
            pending = {e[0]: e for e in self._audit if e[1] == alarm_id}
        stored: list[tuple] = []
        if self.memory or self._reader_exists():
            stored = self._read(
                lambda db: db.execute(
                    "SELECT id, ts, actor, action, details FROM audit WHERE alarm_id = ? ORDER BY id", (alarm_id,)
                ).fetchall()
            )
        out = {
            i: {"ts": ts, "actor": actor, "action": action, "details": json.loads(d)}
            for i, ts, actor, action, d in stored
        }
        for i, (_, _, ts, actor, action, details) in pending.items():
            out[i] = {
                "ts": ts,
                "actor": actor,
                "action": action,
                "details": json.loads(json.dumps(details, default=str)),
            }
        return [out[i] for i in sorted(out)]

    def live(self) -> list[Alarm]:
        """The open and malicious alarms, newest first (from memory: never waits for the file;
        their rows are read only if used)."""
        with self._lock:
            found = [self._public(e.alarm) for e in self._mem.values() if e.alarm.state in _LIVE]
        found.sort(key=lambda a: -a.id)
        return found

    def counts(self) -> dict[str, int]:
        """Alarms by state (from memory: never waits for the file)."""
        with self._lock:
            return dict(self._counts)

    def status(self) -> dict[str, Any]:
        """Whether the file takes writes, why not, since when, and what waits in memory."""
        with self._lock:
            return {
                "ok": self._ok,
                "problem": self._problem if not self._ok else None,
                "since": self._since if not self._ok else None,
                "pending": self._recorded - self._written,
                "rows_lost": self.rows_lost,
            }

    # ------------------------------------------------------------------ changing (memory, then the writer)

    def _check_writable(self) -> None:
        if self.readonly:
            raise AlarmError(f"the alarms store {self.path} was opened read-only")
        if self._closed:
            raise AlarmStoreUnavailable(f"the alarms store {self.path} is shut down")

    def _log(self, alarm_id: int, actor: str, action: str, details: dict[str, Any], ts: float) -> None:
        """Queue an audit entry (the caller holds ``_lock``)."""
        if action == "extended" and len(self._audit) >= self.pending_max:
            self.audit_lost += 1  # the alarm's level and rows tell the same
            return
        self._audit.append((self._next_audit, alarm_id, ts, actor, action, details))
        self._next_audit += 1

    def _keep_row(self, e: _Entry, seq: int, anomaly: Anomaly, columns: Any, values: Any) -> None:
        """Queue the row of ``seq`` and count what the cap drops (the caller holds ``_lock``)."""
        a = e.alarm
        if self._pending_rows >= self.pending_max:
            self.rows_lost += 1
            e.lost.add(seq)
            a.rows_dropped += 1
        else:
            e.rows.append(_Row(seq, anomaly.index, anomaly.ts, anomaly.score, anomaly.threshold, columns, values))
            self._pending_rows += 1
        leaving = seq - self.tail  # the row that leaves the latest rows kept as this one comes
        if leaving >= self.head:
            if leaving in e.lost:
                e.lost.discard(leaving)
            else:
                a.rows_dropped += 1
            if len(e.rows) > 2 * self.max_rows:  # the file is away: drop in memory what it would drop
                head, cut = schema.kept_seqs(a.level, self.head, self.tail)
                kept = [r for r in e.rows if r.seq < head or r.seq >= cut]
                self._pending_rows -= len(e.rows) - len(kept)
                e.rows = kept

    def record(
        self, anomaly: Anomaly, columns: tuple[SeriesKey, ...] | None = None, values: Any = None
    ) -> tuple[Alarm, bool | None]:
        """Open an alarm for this anomaly, or extend the open one of its (scope, detector).
        Returns (alarm, opened) at once: the writer thread writes it; opened is None when the
        anomaly's row was recorded by the controller this one took the file over from."""
        now = time.time()
        blame = [b.to_dict() for b in anomaly.blame]
        cols, vals = None, None
        if columns is not None and values is not None:
            cols, vals = tuple(columns), np.array(values, dtype=np.float64)
        with self._lock:
            self._check_writable()
            key = (anomaly.scope, anomaly.detector)
            e = self._mem.get(self._live.get(key, -1))
            if e is not None and e.foreign:  # taken over from another controller: compare times
                if anomaly.ts <= e.alarm.updated_at:
                    return self._public(e.alarm), None  # that controller recorded this row
                if anomaly.ts - e.alarm.updated_at <= self._takeover_gap:
                    e.foreign = False
                    e.alarm.last_row = anomaly.index - 1
            if e is not None and not e.foreign and 0 <= anomaly.index - e.alarm.last_row <= self.merge_gap:
                a = e.alarm
                seq = a.level
                a.level += 1
                a.updated_at, a.last_row = now, anomaly.index
                a.score, a.threshold = anomaly.score, anomaly.threshold
                a.blame = _merge_blame(a.blame, blame)
                e.dirty |= {"updated_at", "last_row", "level", "score", "threshold", "blame", "rows_dropped"}
                self._log(
                    a.id,
                    anomaly.detector,
                    "extended",
                    {"row": anomaly.index, "score": anomaly.score, "level": a.level}
                    | ({"late": True} if anomaly.details.get("late") else {}),
                    now,
                )
                opened = False
            else:
                a = Alarm(
                    id=self._next_id,
                    scope=anomaly.scope,
                    detector=anomaly.detector,
                    state="open",
                    opened_at=now,
                    updated_at=now,
                    closed_at=None,
                    first_row=anomaly.index,
                    last_row=anomaly.index,
                    level=1,
                    score=anomaly.score,
                    threshold=anomaly.threshold,
                    blame=_merge_blame([], blame),
                    rows=[],
                )
                self._next_id += 1
                seq = 0
                e = self._mem[a.id] = _Entry(a, stored=False)
                self._live[key] = a.id
                self._counts["open"] += 1
                self._log(
                    a.id,
                    anomaly.detector,
                    "opened",
                    {
                        "row": anomaly.index,
                        "score": anomaly.score,
                        "threshold": anomaly.threshold,
                        "blame": [b["column"] for b in blame],
                        "details": anomaly.details,
                    },
                    now,
                )
                opened = True
            self._keep_row(e, seq, anomaly, cols, vals)
            self._touched.add(a.id)
            self._recorded += 1
            out = self._public(a)
        self._wake.set()
        return out, opened

    def _entry(self, alarm_id: int) -> _Entry:
        """The alarm's memory entry, brought in from the file when it is not there."""
        with self._lock:
            e = self._mem.get(alarm_id)
            if e is not None:
                return e
        alarm = self._stored_header(alarm_id)
        with self._lock:
            e = self._mem.get(alarm_id)
            if e is not None:
                return e
            if alarm is None:
                raise AlarmNotFound(f"no alarm {alarm_id}")
            e = self._mem[alarm_id] = _Entry(alarm, stored=True)
            self._touched.add(alarm_id)  # leaves memory once written
            return e

    def _set_state(self, e: _Entry, state: str) -> None:
        """(the caller holds ``_lock``)"""
        a = e.alarm
        self._counts[a.state] -= 1
        self._counts[state] += 1
        a.state = state
        if state == "closed":
            key = (a.scope, a.detector)
            if self._live.get(key) == a.id:
                del self._live[key]
                others = [
                    i
                    for i, x in self._mem.items()
                    if (x.alarm.scope, x.alarm.detector) == key and x.alarm.state in _LIVE
                ]
                if others:
                    self._live[key] = max(others)

    def _changed(self, e: _Entry, fields: Iterable[str]) -> Alarm:
        """(the caller holds ``_lock``) mark, wake the writer after the lock is left, copy."""
        e.dirty.update(fields)
        self._touched.add(e.alarm.id)
        self._wake.set()
        return self._public(e.alarm)

    def verdict(self, alarm_id: int, verdict: str, actor: str, params: dict[str, Any] | None = None) -> Alarm:
        if verdict not in VERDICTS:
            raise AlarmError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if not actor:
            raise AlarmError("a verdict needs an actor (who gives it)")
        self._check_writable()
        now = time.time()
        e = self._entry(alarm_id)
        with self._lock:
            a = e.alarm
            if a.state != "open" and not (a.state == "malicious" and verdict == "malicious"):
                raise AlarmStateError(f"alarm {alarm_id} is {a.state}: a verdict is given only on an open alarm")
            a.verdict, a.updated_at = verdict, now
            if verdict == "normal":
                a.resolution, a.closed_at = "workload-change", now
                self._set_state(e, "closed")
            else:
                self._set_state(e, "malicious")
            self._log(alarm_id, actor, f"verdict {verdict}", dict(params or {}), now)
            return self._changed(e, ("state", "verdict", "resolution", "updated_at", "closed_at"))

    def add_findings(self, alarm_id: int, actor: str, finding: dict[str, Any]) -> Alarm:
        self._check_writable()
        now = time.time()
        e = self._entry(alarm_id)
        with self._lock:
            a = e.alarm
            a.findings = [*a.findings, dict(finding, ts=now, by=actor)]
            a.updated_at = now
            self._log(
                alarm_id, actor, "findings", {"kind": finding.get("kind"), "summary": finding.get("summary")}, now
            )
            return self._changed(e, ("findings", "updated_at"))

    def note(self, alarm_id: int, actor: str, action: str, details: dict[str, Any] | None = None) -> None:
        """Write an action to the audit trail without changing the alarm."""
        self._check_writable()
        with self._lock:
            known = alarm_id in self._mem
        if not known and self._stored_header(alarm_id) is None:
            raise AlarmNotFound(f"no alarm {alarm_id}")
        with self._lock:
            self._log(alarm_id, actor, action, dict(details or {}), time.time())
        self._wake.set()

    def close(self, alarm_id: int, actor: str, resolution: str, details: dict[str, Any] | None = None) -> Alarm:
        self._check_writable()
        now = time.time()
        e = self._entry(alarm_id)
        with self._lock:
            a = e.alarm
            if a.state == "closed":
                raise AlarmStateError(f"alarm {alarm_id} is already closed")
            a.resolution, a.updated_at, a.closed_at = resolution, now, now
            self._set_state(e, "closed")
            self._log(alarm_id, actor, "closed", dict(details or {}, resolution=resolution), now)
            return self._changed(e, ("state", "resolution", "updated_at", "closed_at"))

    # ------------------------------------------------------------------ flushing and stopping

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (not on an event loop) until every change is written; False when time ran out."""
        if self.readonly:
            return True
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._lock:
            while not self._idle():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._flushed.wait(min(left, 0.1))
                self._wake.set()
            return True

    def shutdown(self, timeout: float = 5.0) -> None:
        """Write what is pending (for up to ``timeout`` seconds; what is left is said and lost),
        then close the file. Waits: call it off the event loop."""
        if self._closed:
            return
        self._closed = True
        self._stop_timeout = timeout
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 2 * RETRY_MAX)
        self._close_connections()

    def _close_connections(self) -> None:
        with self._read_lock:
            # the reader first: the last connection to close folds the WAL into the file, and a
            # read-only one cannot
            for db in {id(d): d for d in (self._rdb, self._db) if d is not None}.values():
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._db = self._rdb = None
        if self._lockfile is not None:
            os.close(self._lockfile)
            self._lockfile = None

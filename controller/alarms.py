"""Alarms: what an operator sees and decides on, kept in one SQLite file that survives restarts.

An anomaly opens an alarm for its (scope, detector); further anomalies of the same pair within
``merge_gap`` rows extend it (its *level* is the number of abnormal rows, ATOM's A) — while it is
open, and also once judged malicious, while the orchestrators act on it: the anomaly going on
until the guilty process is stopped is the same episode, not a new alarm to introspect and
judge. The alarm keeps those rows (columns and values), the blamed columns, the latest score
and threshold, and the findings orchestrators attach. Every change is written to the alarm's
audit trail with time and actor, in the same transaction as the change itself.

States::

    open ──verdict normal──────────────► closed (resolution: workload-change)
      │
      └─verdict malicious──► malicious ──(orchestrators act)──► closed (resolution: …)

Orchestrators may also move an alarm to ``closed`` themselves (e.g. after a verified termination
once the score is back under the threshold).

What lives here: the store (:class:`AlarmStore`). What does not: the alarm record and the errors
its operations raise (:mod:`atomwatch.alarm`, core, so plugins see them; re-exported here), and
what the controller does on a verdict (:mod:`atomwatch.controller.verdicts`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atomwatch.alarm import STATES, VERDICTS, Alarm, AlarmError, AlarmNotFound, AlarmStateError
from atomwatch.series import SeriesKey
from atomwatch.types import Anomaly

__all__ = ["STATES", "VERDICTS", "Alarm", "AlarmError", "AlarmNotFound", "AlarmStateError", "AlarmStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
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
    rows TEXT NOT NULL,
    verdict TEXT,
    resolution TEXT,
    findings TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS alarms_state ON alarms(state);
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


def _row_record(anomaly: Anomaly, columns: tuple[SeriesKey, ...] | None, values: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "index": anomaly.index,
        "ts": anomaly.ts,
        "score": anomaly.score,
        "threshold": anomaly.threshold,
    }
    if columns is not None and values is not None:
        rec["columns"] = [[c.vm_uuid, c.vm_name, c.metric, c.unit] for c in columns]
        rec["values"] = [None if v != v else float(v) for v in values]
    return rec


def _merge_blame(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per column, the latest numbers, with how many rows blamed it."""
    by_col = {b["column"]: dict(b) for b in old}
    for b in new:
        prev = by_col.get(b["column"])
        merged = dict(b)
        merged["rows"] = (prev.get("rows", 1) if prev else 0) + 1
        by_col[b["column"]] = merged
    return sorted(by_col.values(), key=lambda b: (-b.get("rows", 1), -abs(b.get("score", 0.0))))


class AlarmStore:
    """Thread-safe (one lock) access to the alarms file."""

    def __init__(self, path: str | Path, merge_gap: int = 3):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.merge_gap = merge_gap
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def shutdown(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction (the caller holds the lock)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ reading

    def _alarm(self, r: sqlite3.Row) -> Alarm:
        return Alarm(
            id=r["id"],
            scope=r["scope"],
            detector=r["detector"],
            state=r["state"],
            opened_at=r["opened_at"],
            updated_at=r["updated_at"],
            closed_at=r["closed_at"],
            first_row=r["first_row"],
            last_row=r["last_row"],
            level=r["level"],
            score=r["score"],
            threshold=r["threshold"],
            blame=json.loads(r["blame"]),
            rows=json.loads(r["rows"]),
            verdict=r["verdict"],
            resolution=r["resolution"],
            findings=json.loads(r["findings"]),
        )

    def get(self, alarm_id: int) -> Alarm:
        with self.lock:
            r = self.db.execute("SELECT * FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        if r is None:
            raise AlarmNotFound(f"no alarm {alarm_id}")
        return self._alarm(r)

    def list(self, state: str | None = None, scope: str | None = None, limit: int = 200) -> list[Alarm]:
        q, args = "SELECT * FROM alarms WHERE 1=1", []
        if state:
            if state not in STATES:
                raise AlarmError(f"state {state!r} is not one of {', '.join(STATES)}")
            q += " AND state = ?"
            args.append(state)
        if scope:
            q += " AND scope = ?"
            args.append(scope)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self.lock:
            return [self._alarm(r) for r in self.db.execute(q, args).fetchall()]

    def audit(self, alarm_id: int) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT ts, actor, action, details FROM audit WHERE alarm_id = ? ORDER BY id", (alarm_id,)
            ).fetchall()
        return [
            {"ts": r["ts"], "actor": r["actor"], "action": r["action"], "details": json.loads(r["details"])}
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute("SELECT state, COUNT(*) AS n FROM alarms GROUP BY state").fetchall()
        out = {s: 0 for s in STATES}
        out.update({r["state"]: r["n"] for r in rows})
        return out

    # ------------------------------------------------------------------ writing

    def _log(self, alarm_id: int, actor: str, action: str, details: dict[str, Any], ts: float) -> None:
        self.db.execute(
            "INSERT INTO audit (alarm_id, ts, actor, action, details) VALUES (?, ?, ?, ?, ?)",
            (alarm_id, ts, actor, action, json.dumps(details, default=str)),
        )

    def record(
        self, anomaly: Anomaly, columns: tuple[SeriesKey, ...] | None = None, values: Any = None
    ) -> tuple[Alarm, bool]:
        """Open an alarm for this anomaly, or extend the open one of its (scope, detector).
        Returns (alarm, opened)."""
        now = time.time()
        blame = [b.to_dict() for b in anomaly.blame]
        row = _row_record(anomaly, columns, values)
        with self.lock, self._tx():
            r = self.db.execute(
                "SELECT * FROM alarms WHERE scope = ? AND detector = ? AND state IN ('open', 'malicious')"
                " ORDER BY id DESC LIMIT 1",
                (anomaly.scope, anomaly.detector),
            ).fetchone()
            if r is not None and 0 <= anomaly.index - r["last_row"] <= self.merge_gap:
                alarm = self._alarm(r)
                alarm.rows.append(row)
                alarm.level += 1
                alarm.blame = _merge_blame(alarm.blame, blame)
                self.db.execute(
                    "UPDATE alarms SET updated_at = ?, last_row = ?, level = ?, score = ?, threshold = ?, blame = ?,"
                    " rows = ? WHERE id = ?",
                    (
                        now,
                        anomaly.index,
                        alarm.level,
                        anomaly.score,
                        anomaly.threshold,
                        json.dumps(alarm.blame, default=str),
                        json.dumps(alarm.rows),
                        alarm.id,
                    ),
                )
                self._log(
                    alarm.id,
                    anomaly.detector,
                    "extended",
                    {"row": anomaly.index, "score": anomaly.score, "level": alarm.level},
                    now,
                )
                alarm_id, opened = alarm.id, False
            else:
                cur = self.db.execute(
                    "INSERT INTO alarms (scope, detector, state, opened_at, updated_at, first_row, last_row, level,"
                    " score, threshold, blame, rows) VALUES (?, ?, 'open', ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                    (
                        anomaly.scope,
                        anomaly.detector,
                        now,
                        now,
                        anomaly.index,
                        anomaly.index,
                        anomaly.score,
                        anomaly.threshold,
                        json.dumps(_merge_blame([], blame), default=str),
                        json.dumps([row]),
                    ),
                )
                alarm_id, opened = int(cur.lastrowid), True
                self._log(
                    alarm_id,
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
        return self.get(alarm_id), opened

    def verdict(self, alarm_id: int, verdict: str, actor: str, params: dict[str, Any] | None = None) -> Alarm:
        if verdict not in VERDICTS:
            raise AlarmError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if not actor:
            raise AlarmError("a verdict needs an actor (who gives it)")
        now = time.time()
        with self.lock:
            alarm = self.get(alarm_id)
            if alarm.state != "open" and not (alarm.state == "malicious" and verdict == "malicious"):
                raise AlarmStateError(f"alarm {alarm_id} is {alarm.state}: a verdict is given only on an open alarm")
            with self._tx():
                if verdict == "normal":
                    self.db.execute(
                        "UPDATE alarms SET state = 'closed', verdict = 'normal', resolution = 'workload-change',"
                        " updated_at = ?, closed_at = ? WHERE id = ?",
                        (now, now, alarm_id),
                    )
                else:
                    self.db.execute(
                        "UPDATE alarms SET state = 'malicious', verdict = 'malicious', updated_at = ? WHERE id = ?",
                        (now, alarm_id),
                    )
                self._log(alarm_id, actor, f"verdict {verdict}", dict(params or {}), now)
            return self.get(alarm_id)

    def add_findings(self, alarm_id: int, actor: str, finding: dict[str, Any]) -> Alarm:
        now = time.time()
        with self.lock:
            alarm = self.get(alarm_id)
            alarm.findings.append(dict(finding, ts=now, by=actor))
            with self._tx():
                self.db.execute(
                    "UPDATE alarms SET findings = ?, updated_at = ? WHERE id = ?",
                    (json.dumps(alarm.findings, default=str), now, alarm_id),
                )
                self._log(
                    alarm_id, actor, "findings", {"kind": finding.get("kind"), "summary": finding.get("summary")}, now
                )
            return alarm

    def note(self, alarm_id: int, actor: str, action: str, details: dict[str, Any] | None = None) -> None:
        """Write an action to the audit trail without changing the alarm."""
        with self.lock:
            self.get(alarm_id)
            self._log(alarm_id, actor, action, dict(details or {}), time.time())

    def close(self, alarm_id: int, actor: str, resolution: str, details: dict[str, Any] | None = None) -> Alarm:
        now = time.time()
        with self.lock:
            alarm = self.get(alarm_id)
            if alarm.state == "closed":
                raise AlarmStateError(f"alarm {alarm_id} is already closed")
            with self._tx():
                self.db.execute(
                    "UPDATE alarms SET state = 'closed', resolution = ?, updated_at = ?, closed_at = ? WHERE id = ?",
                    (resolution, now, now, alarm_id),
                )
                self._log(alarm_id, actor, "closed", dict(details or {}, resolution=resolution), now)
            return self.get(alarm_id)

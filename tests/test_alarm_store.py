"""The alarms store built for a long incident (issue 14): rows in their own table with a cap per
alarm, retention of closed alarms, the layout's version and the migration of a file of the JSON-rows
layout, and the file's failures — damaged (refused at start with what to do), locked by another
process (the event loop keeps running), read-only and full (said once, anomalies kept in memory
and written when the file is back, /metrics answering all along).

Real SQLite files throughout; the lock is held by another process; read-only and full are a real
tmpfs remounted read-only or filled (root only: mounting needs it), or as a plain user a folder
without write permission.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import free_port, wait_until

import atomwatch
from atomwatch.config import ConfigError
from atomwatch.controller.alarms import AlarmNotFound, AlarmStore
from atomwatch.controller.commands import AgentCommands
from atomwatch.controller.history import History
from atomwatch.controller.ingest import Ingest
from atomwatch.controller.scopes import ScopeRows
from atomwatch.controller.timing import TickTiming
from atomwatch.mqtt import Faults
from atomwatch.series import SeriesKey

COLS = tuple(SeriesKey(f"u{i}", f"vm{i}", "CPUUtilization", "%") for i in range(8))
WIDE = tuple(SeriesKey(f"u{i // 8}", f"vm{i // 8}", f"Metric{i % 8}", "%") for i in range(320))


def anomaly(index: int, detector: str = "d", scope: str = "s/h", cols=COLS) -> atomwatch.Anomaly:
    return atomwatch.Anomaly(
        detector=detector,
        scope=scope,
        index=index,
        ts=1000.0 + index,
        score=10.0 + index,
        threshold=5.0,
        blame=[atomwatch.Blame(column=cols[index % len(cols)], direction="up", score=10.0)],
    )


def values(index: int, n: int = len(COLS)) -> np.ndarray:
    v = np.arange(n, dtype=float) + index
    v[0] = np.nan  # a stale cell: stored as None
    return v


def stored(path: Path, sql: str, args=()) -> list[tuple]:
    """Read the file with a connection of its own (what is really on disk)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


# --------------------------------------------------------------------------- the layout before issue 14
# As controller/alarms.py created and wrote it: each alarm's rows one JSON array, user_version 0.

OLD_SCHEMA = """
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


def old_row(index: int) -> dict:
    """A row as the old store's ``_row_record`` wrote it."""
    return {
        "index": index,
        "ts": 1000.0 + index,
        "score": 10.0 + index,
        "threshold": 5.0,
        "columns": [[c.vm_uuid, c.vm_name, c.metric, c.unit] for c in COLS],
        "values": [None if v != v else float(v) for v in values(index)],
    }


def old_file(path: Path, open_rows: int = 30) -> list[dict]:
    """A file of the JSON-rows layout: alarm 1 open with ``open_rows`` rows, alarm 2 closed as a
    workload change with 2 rows and a finding; the rows of alarm 1 are returned."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    rows = [old_row(i) for i in range(open_rows)]
    blame = json.dumps([{"column": "vm1/CPUUtilization", "vm_uuid": "u1", "rows": open_rows}])
    ins = (
        "INSERT INTO alarms (scope, detector, state, opened_at, updated_at, closed_at, first_row, last_row, level,"
        " score, threshold, blame, rows, verdict, resolution, findings) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    db.execute(ins, ("s/h", "d", "open", 1.0, 2.0, None, 0, open_rows - 1, open_rows, 39.0, 5.0, blame,
                     json.dumps(rows), None, None, "[]"))  # fmt: skip
    finding = json.dumps([{"kind": "introspection", "summary": "2 new processes", "by": "introspect", "ts": 3.0}])
    now = time.time()
    db.execute(ins, ("s/h", "other", "closed", now, now, now, 500, 501, 2, 12.0, 5.0, "[]",
                     json.dumps([old_row(500), old_row(501)]), "normal", "workload-change", finding))  # fmt: skip
    for alarm_id, action in ((1, "opened"), (1, "extended"), (2, "opened"), (2, "verdict normal")):
        db.execute(
            "INSERT INTO audit (alarm_id, ts, actor, action, details) VALUES (?, ?, ?, ?, ?)",
            (alarm_id, 1.5, "d", action, json.dumps({"row": 0})),
        )
    db.close()
    return rows


# --------------------------------------------------------------------------- cap, retention, migration


def test_a_long_alarm_keeps_its_first_and_latest_rows_and_counts_the_others(tmp_path):
    path = tmp_path / "alarms.sqlite"
    store = AlarmStore(path, max_rows=20)  # the first 2 rows and the latest 18
    for i in range(50):
        alarm, opened = store.record(anomaly(i), COLS, values(i))
        assert opened == (i == 0)
    assert (alarm.level, alarm.rows_dropped) == (50, 30)
    assert [r["index"] for r in alarm.rows] == [0, 1, *range(32, 50)], "before the writer wrote them"
    assert store.flush()
    assert stored(path, "SELECT COUNT(*) FROM alarm_rows") == [(20,)]
    assert stored(path, "SELECT level, rows_dropped FROM alarms") == [(50, 30)]
    again = store.get(alarm.id)
    assert [r["index"] for r in again.rows] == [0, 1, *range(32, 50)]
    assert again.rows[-1]["values"] == [None, *(float(x) for x in values(49)[1:])]
    assert again.rows[0]["columns"][3] == ["u3", "vm3", "CPUUtilization", "%"]
    store.shutdown()

    store = AlarmStore(path, max_rows=20)  # a restart: the open alarm goes on where it was
    alarm, opened = store.record(anomaly(50), COLS, values(50))
    assert not opened and (alarm.level, alarm.rows_dropped) == (51, 31)
    assert [r["index"] for r in alarm.rows] == [0, 1, *range(33, 51)]
    store.shutdown()
    assert stored(path, "SELECT COUNT(*), MIN(seq), MAX(seq) FROM alarm_rows") == [(20, 0, 50)]


def test_closed_alarms_past_their_retention_are_deleted_with_their_rows_and_trail(tmp_path):
    path = tmp_path / "alarms.sqlite"
    store = AlarmStore(path)
    old, _ = store.record(anomaly(0), COLS, values(0))
    store.close(old.id, "operator", "terminated")
    recent, _ = store.record(anomaly(0, detector="x"), COLS, values(0))
    store.close(recent.id, "operator", "terminated")
    live, _ = store.record(anomaly(100), COLS, values(100))
    store.shutdown()
    db = sqlite3.connect(path)
    db.execute("UPDATE alarms SET closed_at = closed_at - 31 * 86400 WHERE id = ?", (old.id,))
    db.commit()
    db.close()

    kept = AlarmStore(path, retention=0)  # 0: keep forever
    assert kept.flush() and kept.counts()["closed"] == 2
    kept.shutdown()
    assert stored(path, "SELECT COUNT(*) FROM alarms") == [(3,)]

    store = AlarmStore(path, retention=30 * 86400)  # looked for at start, then every hour
    wait_until(lambda: store.counts()["closed"] == 1, "the old alarm to be deleted", timeout=10)
    with pytest.raises(AlarmNotFound):
        store.get(old.id)
    assert store.get(recent.id).state == "closed" and store.get(live.id).state == "open"
    assert store.audit(old.id) == []
    assert stored(path, "SELECT COUNT(*) FROM alarm_rows WHERE alarm_id = ?", (old.id,)) == [(0,)]
    assert stored(path, "SELECT COUNT(*) FROM audit WHERE alarm_id = ?", (old.id,)) == [(0,)]
    assert len(store.get(recent.id).rows) == 1, "the rows of kept alarms stay (and their column list)"
    nxt, _ = store.record(anomaly(0, detector="y"))
    assert nxt.id > live.id, "ids are never handed out twice"
    store.shutdown()


def test_a_file_of_the_json_rows_layout_is_migrated(tmp_path):
    path = tmp_path / "alarms.sqlite"
    rows = old_file(path, open_rows=30)
    assert stored(path, "PRAGMA user_version") == [(0,)]

    store = AlarmStore(path, max_rows=20)
    assert stored(path, "PRAGMA user_version") == [(2,)]
    assert "rows" not in [r[1] for r in stored(path, "PRAGMA table_info(alarms)")]
    a1 = store.get(1)
    assert (a1.state, a1.level, a1.rows_dropped) == ("open", 30, 10)
    assert a1.rows == rows[:2] + rows[12:], "the first and the latest rows, exactly as they were"
    a2 = store.get(2)
    assert (a2.state, a2.verdict, a2.resolution, a2.rows_dropped) == ("closed", "normal", "workload-change", 0)
    assert a2.rows == [old_row(500), old_row(501)] and a2.findings[0]["summary"] == "2 new processes"
    assert [e["action"] for e in store.audit(2)] == ["opened", "verdict normal"]
    assert store.counts() == {"open": 1, "malicious": 0, "closed": 1}
    extended, opened = store.record(anomaly(30), COLS, values(30))
    assert not opened and extended.id == 1 and (extended.level, extended.rows_dropped) == (31, 11)
    new, opened = store.record(anomaly(40, detector="fresh"))
    assert opened and new.id == 3
    store.shutdown()
    assert stored(path, "PRAGMA quick_check") == [("ok",)]
    assert stored(path, "SELECT COUNT(*) FROM alarm_rows WHERE alarm_id = 1") == [(20,)]


def test_a_file_of_a_newer_layout_or_another_controllers_is_refused(tmp_path):
    newer = tmp_path / "newer.sqlite"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(ConfigError, match=r"version 7, written by a newer atomwatch.*another --db"):
        AlarmStore(newer)
    path = tmp_path / "alarms.sqlite"
    first = AlarmStore(path)
    with pytest.raises(ConfigError, match=rf"--db {path}: another controller \(pid {os.getpid()}\) uses this"):
        AlarmStore(path)
    reader = AlarmStore(path, readonly=True)  # a tool reading a running controller's file
    reader.shutdown()
    first.shutdown()
    AlarmStore(path).shutdown()


# --------------------------------------------------------------------------- a damaged file


def damage(path: Path) -> None:
    """Overwrite the middle of every page but the first (the file header and the schema)."""
    data = bytearray(path.read_bytes())
    page = 4096
    rng = np.random.default_rng(3)
    for start in range(page, len(data), page):
        data[start + 8 : start + 1000] = rng.integers(0, 256, 992, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def controller_cli(db: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATOMWATCH_LOAD_PLUGINS": "replay"}
    cmd = [sys.executable, "-m", "atomwatch", "controller", "--db", str(db), "--broker", "mqtt://127.0.0.1:1"]
    return subprocess.run(
        [*cmd, "--http", "off", "--duration", "1", *extra], capture_output=True, text=True, env=env, timeout=60
    )


def test_a_damaged_file_is_refused_at_start_with_what_to_do(tmp_path):
    path = tmp_path / "alarms.sqlite"
    store = AlarmStore(path)
    for i in range(60):
        store.record(anomaly(i, detector=f"d{i % 3}"), WIDE, values(i, len(WIDE)))
    store.shutdown()
    damage(path)
    result = controller_cli(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"--db {path}: the alarms file is damaged" in result.stderr
    assert f"mv {path} {path}.damaged" in result.stderr

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all\n" * 500)
    result = controller_cli(garbage)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is damaged (file is not a database)" in result.stderr and f"mv {garbage} {garbage}.damaged" in result.stderr

    result = controller_cli(tmp_path / "fine.sqlite", "--alarm-rows", "3")
    assert result.returncode == 2 and "--alarm-rows must be ≥ 10, got '3'" in result.stderr


# --------------------------------------------------------------------------- locked by another process

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


async def test_a_write_lock_held_by_another_process_never_stalls_the_event_loop(tmp_path, caplog):
    path = tmp_path / "alarms.sqlite"
    store = AlarmStore(path)
    first, _ = store.record(anomaly(0), COLS, values(0))
    assert await asyncio.to_thread(store.flush)
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert await asyncio.to_thread(locker.stdout.readline) == "locked\n"
        loop = asyncio.get_running_loop()
        gaps: list[float] = []

        async def heartbeat() -> None:
            last = loop.time()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(loop.time() - last)
                last = loop.time()

        beat = asyncio.create_task(heartbeat())
        for i in range(1, 101):  # two seconds of ticks, each extending the alarm
            alarm, opened = store.record(anomaly(i), COLS, values(i))
            assert not opened and alarm.id == first.id
            await asyncio.sleep(0.02)
        other, opened = store.record(anomaly(5, detector="other"))  # a new alarm gets its id all the same
        assert opened and other.id == first.id + 1
        status = store.status()
        assert not status["ok"] and "locked" in status["problem"] and status["pending"] >= 100
        # reads go on beside the lock (WAL) and see what is not written yet
        assert store.get(first.id).level == 101 and len(store.get(first.id).rows) == 101
        assert stored(path, "SELECT level FROM alarms WHERE id = ?", (first.id,)) == [(1,)]
        locker.stdin.write("\n")
        locker.stdin.flush()
        assert await asyncio.to_thread(locker.wait, 10) == 0
        assert await asyncio.to_thread(store.flush, 30)
        beat.cancel()
    finally:
        locker.kill()
    assert max(gaps) < 0.5, f"the event loop stalled {max(gaps):.2f} s (the lock was held for 2 s)"
    assert store.status() == {"ok": True, "problem": None, "since": None, "pending": 0, "rows_lost": 0}
    assert stored(path, "SELECT level FROM alarms WHERE id = ?", (first.id,)) == [(101,)]
    assert stored(path, "SELECT COUNT(*) FROM alarm_rows WHERE alarm_id = ?", (first.id,)) == [(101,)]
    assert stored(path, "SELECT COUNT(*) FROM alarms") == [(2,)]
    reports = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(reports) == 1, "said once, not per retry"
    store.shutdown()


# --------------------------------------------------------------------------- read-only and full


@contextlib.contextmanager
def small_fs(folder: Path, size: str):
    """A tmpfs of ``size`` at ``folder`` (root only); yields a function (read_only: bool) that
    remounts it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode:
        pytest.skip("cannot mount a tmpfs here")

    def read_only(on: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(folder)], check=True)

    try:
        yield read_only
    finally:
        subprocess.run(["umount", "-l", str(folder)])


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """A folder that can be made read-only: a tmpfs remounted read-only as root (who writes
    through permissions), else permissions."""
    if os.geteuid() == 0:
        with small_fs(folder, "8m") as read_only:
            yield read_only
        return
    folder.mkdir()

    def read_only(on: bool) -> None:
        for p in [folder, *folder.iterdir()]:
            p.chmod((0o555 if p.is_dir() else 0o444) if on else (0o755 if p.is_dir() else 0o644))

    try:
        yield read_only
    finally:
        read_only(False)


class _Backend(SimpleNamespace):
    """What the HTTP API needs of a controller, around a bare store."""


@contextlib.contextmanager
def api_for(store: AlarmStore, tmp_path: Path):
    from atomwatch.controller.api import ApiServer

    tokens = tmp_path / "tokens"
    tokens.write_text("ops " + "t" * 40 + "\n")
    tokens.chmod(0o600)
    backend = _Backend(
        alarms=store,
        ingest=Ingest(),
        scope_status={},
        rows_handled=0,
        rows_late=0,
        history=History(),
        timing=TickTiming(),
        connected=asyncio.Event(),
        loop=None,
        faults=Faults(logging.getLogger("test-alarm-store")),
        scope_rows=ScopeRows(),
        commands=AgentCommands(lambda: None, lambda aw, name: None),
        config=SimpleNamespace(metrics_blame_limit=50),
    )
    server = ApiServer(backend, ("127.0.0.1", free_port()), tokens=str(tokens))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("atomwatch_alarm"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_read_only_folder_is_said_once_and_anomalies_wait_in_memory(tmp_path, caplog):
    caplog.set_level(logging.INFO, "atomwatch.controller.alarms")
    with read_only_folder(tmp_path / "ro") as read_only:
        path = tmp_path / "ro" / "alarms.sqlite"
        rows = old_file(path, open_rows=3)  # not migrated yet either: read as it stands
        read_only(True)
        store = AlarmStore(path, pending_max=100)
        try:
            assert store.get(1).rows == rows and store.counts() == {"open": 1, "malicious": 0, "closed": 1}
            wait_until(lambda: not store.status()["ok"], "the store to find it cannot write", timeout=10)
            assert "read-only" in store.status()["problem"] or "readonly" in store.status()["problem"]
            for i in range(3, 23):
                alarm, opened = store.record(anomaly(i), COLS, values(i))
                assert not opened
            new, opened = store.record(anomaly(9, detector="fresh"))
            assert opened and new.id == 3, "ids go on after the file's"
            assert len(store.get(1).rows) == 23 and store.get(1).rows[:3] == rows
            store.add_findings(1, "introspect", {"kind": "introspection", "summary": "a miner"})
            with api_for(store, tmp_path) as url:
                m = metrics(url)
                assert m["atomwatch_alarm_store_ok"] == 0 and m["atomwatch_alarm_store_pending"] == 21
                assert m['atomwatch_alarms{state="open"}'] == 2
                time.sleep(1.0)  # several more attempts
                reports = [r for r in caplog.records if "cannot be written" in r.getMessage()]
                assert len(reports) == 1 and reports[0].levelname == "ERROR"
                read_only(False)
                assert store.flush(30)
                m = metrics(url)
                assert m["atomwatch_alarm_store_ok"] == 1 and m["atomwatch_alarm_store_pending"] == 0
            assert any("takes writes again" in r.getMessage() for r in caplog.records)
        finally:
            store.shutdown()
        assert stored(path, "PRAGMA user_version") == [(2,)]
        assert stored(path, "SELECT id, level FROM alarms ORDER BY id") == [(1, 23), (2, 2), (3, 1)]
        assert stored(path, "SELECT COUNT(*) FROM alarm_rows WHERE alarm_id = 1") == [(23,)]
        assert json.loads(stored(path, "SELECT findings FROM alarms WHERE id = 1")[0][0])[0]["summary"] == "a miner"


def test_a_full_disk_keeps_a_bounded_number_of_rows_in_memory_until_space_is_back(tmp_path, caplog):
    with small_fs(tmp_path / "small", "4m"):
        folder = tmp_path / "small"
        path = folder / "alarms.sqlite"
        store = AlarmStore(path, pending_max=50)
        try:
            first, _ = store.record(anomaly(0, cols=WIDE), WIDE, values(0, len(WIDE)))
            assert store.flush()
            filler = folder / "filler"
            with contextlib.suppress(OSError), open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            for i in range(1, 200):  # 2.5 KB of values each
                store.record(anomaly(i, cols=WIDE), WIDE, values(i, len(WIDE)))
            wait_until(lambda: not store.status()["ok"], "the store to find the disk full", timeout=10)
            status = store.status()
            assert "full" in status["problem"] and status["pending"] > 0
            assert status["rows_lost"] > 0, "beyond 50 rows waiting, rows are dropped, not kept"
            held = sum(len(e.rows) for e in store._mem.values())
            assert held <= 50
            alarm = store.get(first.id)
            assert alarm.level == 200 and len(alarm.rows) + alarm.rows_dropped == 200
            filler.unlink()
            assert store.flush(30)
            assert store.status()["ok"]
            lost = store.status()["rows_lost"]
        finally:
            store.shutdown()
        assert stored(path, "SELECT level, rows_dropped FROM alarms") == [(200, lost)]
        assert stored(path, "SELECT COUNT(*) FROM alarm_rows") == [(200 - lost,)]
        assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1


# --------------------------------------------------------------------------- in the controller


def test_the_tick_records_in_memory_and_hooks_get_the_alarm_id_while_the_file_is_locked(tmp_path):
    """``record`` never waits for the file: an alarm opened while another process holds the lock
    has its id at once, and the plugin's calls on it (note, findings) are written once it is free."""
    path = tmp_path / "alarms.sqlite"
    AlarmStore(path).shutdown()
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout.readline() == "locked\n"
        store = AlarmStore(path)
        alarm, opened = store.record(anomaly(1), COLS, values(1))
        assert opened and alarm.id == 1 and len(alarm.rows) == 1
        store.note(alarm.id, "orchestrate", "introspection requested", {"vm": "u1"})
        store.add_findings(alarm.id, "orchestrate", {"kind": "introspection", "summary": "nothing"})
        assert [e["action"] for e in store.audit(alarm.id)] == ["opened", "introspection requested", "findings"]
        locker.stdin.write("\n")
        locker.stdin.flush()
        assert locker.wait(10) == 0
        assert store.flush(30)
        store.shutdown()
    finally:
        locker.kill()
    assert [a for (a,) in stored(path, "SELECT action FROM audit ORDER BY id")] == [
        "opened",
        "introspection requested",
        "findings",
    ]


def test_pages_damaged_while_running_keep_anomalies_in_memory_and_metrics_answering(tmp_path, caplog):
    path = tmp_path / "alarms.sqlite"
    store = AlarmStore(path)
    try:
        for i in range(60):
            first, _ = store.record(anomaly(i), WIDE, values(i, len(WIDE)))
        assert store.flush()
        db = sqlite3.connect(path)  # the pages into the file itself, then damage them
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        damage(path)
        for i in range(60, 90):
            store.record(anomaly(i), WIDE, values(i, len(WIDE)))
        wait_until(lambda: not store.status()["ok"], "the store to find the damage", timeout=10)
        assert "damaged" in store.status()["problem"] and store.status()["pending"] == 30
        assert store.get(first.id).level == 90, "the alarm goes on in memory"
        with api_for(store, tmp_path) as url:
            m = metrics(url)
        assert m["atomwatch_alarm_store_ok"] == 0 and m["atomwatch_alarm_store_pending"] == 30
        assert m['atomwatch_alarms{state="open"}'] == 1
        assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1
    finally:
        store.shutdown(timeout=0.5)
    with pytest.raises(ConfigError, match="is damaged"):
        AlarmStore(path)

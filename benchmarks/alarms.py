"""What a long alarm costs the controller: one alarm extended for ``--rows`` rows (default 2,000) at
``--columns`` columns (default 320), today's store against the one before it, in one run.

Baseline (:class:`BaselineJsonRowsStore`, a copy of the store as it was before issue 14): an
alarm's rows are one JSON array in ``alarms.rows``, decoded and rewritten by every ``record``, on
the caller's thread. Its cost grows with the alarm (about a second per tick at 300 rows here), so
running it for 2,000 rows takes hours: it is timed at ``--samples`` ticks at each length of
``--lengths`` (an alarm of that length made directly in its file) and the time of the whole
extension is the integral of that per-tick cost (``"estimated"``; ``--full-baseline`` runs it).

New store (:class:`atomwatch.controller.alarms.AlarmStore`, a file in a temporary folder, the
default cap of 1,000 rows kept): ``ticks_per_second`` is measured over the whole extension, from
the first ``record`` to the last row written (``flush``); ``per_tick_ms`` gives, at the same
lengths, the time of one ``record`` followed by ``flush`` (the tick and its write, like the
baseline's synchronous ``record``) and of ``record`` alone (what the event loop pays).

    python -m benchmarks.alarms [--rows 2000] [--columns 320] [--samples 3] [--full-baseline]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import atomwatch
from atomwatch.alarm import Alarm
from atomwatch.controller.alarms import AlarmStore, _merge_blame  # the blame merge is unchanged since then
from atomwatch.series import SeriesKey
from benchmarks._common import emit, machine

# --------------------------------------------------------------------------- the baseline
# The alarms store before issue 14 (controller/alarms.py at that time), reduced to what
# ``record`` runs: kept here, unchanged in what it does, as the figure to beat.

_BASELINE_SCHEMA = """
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


def _baseline_row_record(anomaly: atomwatch.Anomaly, columns: Any, values: Any) -> dict[str, Any]:
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


class BaselineJsonRowsStore:
    """The store before issue 14: every ``record`` decodes the alarm's rows, appends one and
    rewrites them all, then reads the alarm back (one lock, the caller's thread)."""

    def __init__(self, path: str, merge_gap: int = 3):
        self.merge_gap = merge_gap
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_BASELINE_SCHEMA)

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
        return self._alarm(r)

    def _log(self, alarm_id: int, actor: str, action: str, details: dict[str, Any], ts: float) -> None:
        self.db.execute(
            "INSERT INTO audit (alarm_id, ts, actor, action, details) VALUES (?, ?, ?, ?, ?)",
            (alarm_id, ts, actor, action, json.dumps(details, default=str)),
        )

    def record(self, anomaly: atomwatch.Anomaly, columns: Any = None, values: Any = None) -> tuple[Alarm, bool]:
        now = time.time()
        blame = [b.to_dict() for b in anomaly.blame]
        row = _baseline_row_record(anomaly, columns, values)
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
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
                        "UPDATE alarms SET updated_at = ?, last_row = ?, level = ?, score = ?, threshold = ?,"
                        " blame = ?, rows = ? WHERE id = ?",
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
                    details = {"row": anomaly.index, "score": anomaly.score, "level": alarm.level}
                    self._log(alarm.id, anomaly.detector, "extended", details, now)
                    alarm_id, opened = alarm.id, False
                else:
                    cur = self.db.execute(
                        "INSERT INTO alarms (scope, detector, state, opened_at, updated_at, first_row, last_row,"
                        " level, score, threshold, blame, rows) VALUES (?, ?, 'open', ?, ?, ?, ?, 1, ?, ?, ?, ?)",
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
                    self._log(alarm_id, anomaly.detector, "opened", {"row": anomaly.index}, now)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        return self.get(alarm_id), opened

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- the workload


def columns(n: int) -> tuple[SeriesKey, ...]:
    """``n`` columns of a host: 8 metrics per VM."""
    return tuple(
        SeriesKey(f"{i // 8:08d}-0000-4000-8000-000000000000", f"vm{i // 8}", f"Metric{i % 8}", "%") for i in range(n)
    )


def anomaly(index: int, cols: tuple[SeriesKey, ...]) -> atomwatch.Anomaly:
    blamed = [atomwatch.Blame(column=cols[(index * 7 + k) % len(cols)], direction="up", score=9.0) for k in range(3)]
    return atomwatch.Anomaly("pca-spe", "bench/hv1", index, 1000.0 + index, 12.0, 5.0, blamed)


def baseline_tick_ms(folder: Path, length: int, cols: tuple[SeriesKey, ...], samples: int, rng: Any) -> float:
    """Median ms of the baseline's ``record`` extending an alarm of ``length`` rows."""
    path = folder / f"baseline-{length}.sqlite"
    store = BaselineJsonRowsStore(str(path))
    rows = [_baseline_row_record(anomaly(i, cols), cols, rng.random(len(cols))) for i in range(length)]
    blame = _merge_blame([], [b.to_dict() for b in anomaly(0, cols).blame])
    store.db.execute(
        "INSERT INTO alarms (scope, detector, state, opened_at, updated_at, first_row, last_row, level, score,"
        " threshold, blame, rows) VALUES ('bench/hv1', 'pca-spe', 'open', 0, 0, 0, ?, ?, 12, 5, ?, ?)",
        (length - 1, length, json.dumps(blame), json.dumps(rows)),
    )
    del rows
    times = []
    for k in range(samples):
        a = anomaly(length + k, cols)
        v = rng.random(len(cols))
        start = time.perf_counter()
        store.record(a, cols, v)
        times.append(time.perf_counter() - start)
    store.close()
    path.unlink()
    return float(np.median(times)) * 1e3


def baseline_full(folder: Path, rows: int, cols: tuple[SeriesKey, ...], rng: Any) -> float:
    """Seconds the baseline takes to extend one alarm for ``rows`` rows (really)."""
    store = BaselineJsonRowsStore(str(folder / "baseline-full.sqlite"))
    start = time.perf_counter()
    for i in range(rows):
        store.record(anomaly(i, cols), cols, rng.random(len(cols)))
    took = time.perf_counter() - start
    store.close()
    return took


def store_run(folder: Path, rows: int, cols: tuple[SeriesKey, ...], rng: Any) -> dict[str, Any]:
    """The new store over the whole extension: wall time to the last row written."""
    store = AlarmStore(folder / "store-run.sqlite")
    values = [rng.random(len(cols)) for _ in range(rows)]
    anomalies = [anomaly(i, cols) for i in range(rows)]
    start = time.perf_counter()
    loop = 0.0
    for a, v in zip(anomalies, values):
        t = time.perf_counter()
        alarm, _ = store.record(a, cols, v)
        loop += time.perf_counter() - t
    assert store.flush(600), "the store did not write everything"
    took = time.perf_counter() - start
    final = store.get(alarm.id)
    kept = len(final.rows)
    store.shutdown()
    assert final.level == rows and kept + final.rows_dropped == rows
    return {
        "seconds": took,
        "loop_us_per_tick": loop / rows * 1e6,
        "rows_kept": kept,
        "rows_dropped": final.rows_dropped,
    }


def store_ticks_ms(folder: Path, lengths: list[int], cols: tuple[SeriesKey, ...], samples: int, rng: Any):
    """At each length: median ms of ``record`` + ``flush``, and of ``record`` alone."""
    store = AlarmStore(folder / "store-ticks.sqlite")
    synced, loop = {}, {}
    index = 0
    for length in lengths:
        while index < length:
            store.record(anomaly(index, cols), cols, rng.random(len(cols)))
            index += 1
        store.flush(600)
        both, alone = [], []
        for _ in range(samples):
            a, v = anomaly(index, cols), rng.random(len(cols))
            start = time.perf_counter()
            store.record(a, cols, v)
            mid = time.perf_counter()
            store.flush(600)
            both.append(time.perf_counter() - start)
            alone.append(mid - start)
            index += 1
        synced[length], loop[length] = float(np.median(both)) * 1e3, float(np.median(alone)) * 1e3
    store.shutdown()
    return synced, loop


def integrate(lengths: list[int], per_tick_ms: list[float], rows: int) -> float:
    """Seconds for ticks 0 … rows-1 at the per-tick cost interpolated between the sampled lengths."""
    return float(np.interp(np.arange(rows), lengths, per_tick_ms).sum()) / 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--columns", type=int, default=320)
    p.add_argument("--samples", type=int, default=3, help="ticks timed per length (median)")
    p.add_argument("--lengths", default="1,250,500,1000,1500,2000", help="alarm lengths the per-tick cost is timed at")
    p.add_argument("--full-baseline", action="store_true", help="run the baseline for all rows (hours)")
    args = p.parse_args(argv)
    cols = columns(args.columns)
    lengths = sorted({min(int(x), args.rows) for x in args.lengths.split(",")})
    rng = np.random.default_rng(14)
    with tempfile.TemporaryDirectory(prefix="atomwatch-bench-alarms-") as tmp:
        folder = Path(tmp)
        run = store_run(folder, args.rows, cols, rng)
        synced, loop = store_ticks_ms(folder, lengths, cols, args.samples, rng)
        baseline = [baseline_tick_ms(folder, n, cols, args.samples, rng) for n in lengths]
        if args.full_baseline:
            baseline_seconds, how = baseline_full(folder, args.rows, cols, rng), "measured"
        else:
            baseline_seconds, how = integrate(lengths, baseline, args.rows), "estimated"
    baseline_tps = args.rows / baseline_seconds
    store_tps = args.rows / run["seconds"]
    emit(
        {
            "benchmark": "alarms",
            "workload": f"one alarm extended for {args.rows} rows at {args.columns} columns",
            "ticks_per_second": {
                "baseline_json_rows": round(baseline_tps, 3),
                "baseline_how": how,
                "store": round(store_tps, 1),
                "ratio": round(store_tps / baseline_tps, 1),
            },
            "seconds_for_all_rows": {
                "baseline_json_rows": round(baseline_seconds, 1),
                "store": round(run["seconds"], 3),
            },
            "per_tick_ms": {
                "alarm_length": lengths,
                "baseline_json_rows": [round(x, 2) for x in baseline],
                "store_record_and_write": [round(synced[n], 3) for n in lengths],
                "store_record_only": [round(loop[n], 3) for n in lengths],
            },
            "store_loop_us_per_tick_in_the_run": round(run["loop_us_per_tick"], 1),
            "store_rows_kept": run["rows_kept"],
            "store_rows_dropped": run["rows_dropped"],
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()

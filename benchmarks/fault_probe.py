"""The fault harness's probe: a plugin file its agents and its controller load with ``--plugins-dir``.

What lives here: agent side, the ``truth`` collector (``clock`` and ``counter``, Δ = 0) and the replay
collector wrapped so the trace row of every tick is written down; controller side, detector
``faultprobe``, which writes down every row it is handed, and an ``alarm_opened`` hook writing down every
alarm opened. Each record is one JSON line appended to ``faultprobe.out`` in one ``write``. What does
not: running the processes and judging the records (:mod:`benchmarks.fault_scenarios`,
``docs/fault-harness.md``).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import atomwatch

NAME = "faultprobe"
TRUTH_VM = "probe"


@atomwatch.declare_options(NAME)
@dataclass(frozen=True)
class ProbeOptions:
    """``--set faultprobe.KEY=VALUE``."""

    out: str | None = None  # the JSON-lines file this process appends its records to
    role: Literal["truth", "replay"] | None = None  # agent side: which collector runs (none without)
    trace: str | None = None  # role=replay: the trace to replay
    start: int = 0  # role=replay: the trace row of the first tick
    delta_rel: float = 0.01  # role=replay: Δ as a fraction of each column's mean absolute value


class Records:
    """Appends one JSON object per line, each with one ``write`` of the whole line (O_APPEND)."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, allow_nan=False) + "\n").encode()
        with self.lock:
            os.write(self.fd, line)

    def close(self) -> None:
        os.close(self.fd)


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# --------------------------------------------------------------------------- agent side


class TruthCollector:
    name = "faultprobe-truth"

    def __init__(self, out: Records):
        self.out = out
        self.counter = 0
        self.clock_key = atomwatch.SeriesKey(TRUTH_VM, TRUTH_VM, "clock", "s")
        self.counter_key = atomwatch.SeriesKey(TRUTH_VM, TRUTH_VM, "counter", "")

    def collect(self) -> atomwatch.Reading:
        clock = time.time()
        self.counter += 1
        self.out.write({"pid": os.getpid(), "t": clock, "clock": clock, "counter": self.counter})
        return atomwatch.Reading(
            values={self.clock_key: clock, self.counter_key: float(self.counter)},
            deltas={self.clock_key: 0.0, self.counter_key: 0.0},
        )

    def close(self) -> None:
        self.out.close()


class ReplayProbe:
    """The replay collector itself, with the trace row of each tick written down."""

    name = "faultprobe-replay"

    def __init__(self, out: Records, trace: str, start: int, delta_rel: float):
        from atomwatch.plugins.replay import ReplayCollector

        self.out = out
        self.replay = ReplayCollector(trace, loop=True, delta_rel=delta_rel)
        self.replay.position = float(start % self.replay.trace.rows)

    def collect(self) -> atomwatch.Reading:
        t = time.time()
        reading = self.replay.collect()
        self.out.write({"pid": os.getpid(), "t": t, "row": self.replay.last_row})
        return reading

    def close(self) -> None:
        self.out.close()


@atomwatch.hookimpl
def register_collectors(config):
    opts = atomwatch.parse_options(NAME, ProbeOptions, config.plugin_options(NAME))
    if opts.role is None:
        return None
    if not opts.out:
        raise atomwatch.ConfigError("faultprobe.out is needed with faultprobe.role")
    out = Records(opts.out)
    if opts.role == "truth":
        return [TruthCollector(out)]
    if not opts.trace:
        raise atomwatch.ConfigError("faultprobe.trace is needed with faultprobe.role=replay")
    return [ReplayProbe(out, opts.trace, opts.start, opts.delta_rel)]


# --------------------------------------------------------------------------- controller side


class Recorder:
    name = NAME

    def __init__(self, scope: str, out: Records):
        self.scope = scope
        self.out = out

    def update(self, row) -> None:
        deltas = row.deltas if row.deltas is not None else [math.nan] * len(row.columns)
        self.out.write(
            {
                "pid": os.getpid(),
                "scope": row.scope,
                "index": row.index,
                "ts": row.ts,
                "late": bool(getattr(row, "late", False)),
                "values": {c.column: _num(v) for c, v in zip(row.columns, row.values)},
                "deltas": {c.column: _num(d) for c, d in zip(row.columns, deltas)},
            }
        )
        return None


class RecorderFactory:
    name = NAME
    description = "writes every row it is handed to faultprobe.out (the fault harness's record)"

    def create(self, scope: str, options: dict[str, Any]) -> Recorder:
        opts = atomwatch.parse_options(NAME, ProbeOptions, options)
        if not opts.out:
            raise atomwatch.NotConfigured("faultprobe: needs the option out=FILE")
        return Recorder(scope, Records(opts.out))


@atomwatch.hookimpl
def register_detectors():
    return [RecorderFactory()]


_alarms: Records | None = None


@atomwatch.hookimpl
def alarm_opened(alarm, handle) -> None:
    global _alarms
    out = handle.plugin_options(NAME).get("out")
    if not out:
        return None
    if _alarms is None:
        _alarms = Records(out)
    _alarms.write(
        {
            "pid": os.getpid(),
            "alarm": alarm.id,
            "opened_at": alarm.opened_at,
            "scope": alarm.scope,
            "detector": alarm.detector,
            "first_row": alarm.first_row,
            "late": getattr(alarm, "late", None),
        }
    )
    return None

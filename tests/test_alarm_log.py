"""The operator's log: one line per alarm event (opened, extended at most every N seconds,
verdict, closed), and the controller's rows taken one per data message (``rows = "data"``,
what ``atomwatch up`` runs with)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from conftest import ROOT
from pipeline import live_pipeline

from atomwatch import protocol
from atomwatch.controller.alarm_log import AlarmLog
from atomwatch.controller.alarms import AlarmStore
from atomwatch.controller.detection import DetectorSet
from atomwatch.controller.verdicts import Verdicts
from atomwatch.series import SeriesKey
from atomwatch.types import Anomaly, Blame

CPU = SeriesKey("uuid-2", "vm2", "CPUUtilization", "%")
LOGGER = "atomwatch.controller.alarm_log"


def anomaly(row: int, blame: bool = True) -> Anomaly:
    return Anomaly(
        detector="pca-spe",
        scope="s1/hv1",
        index=row,
        ts=float(row),
        score=120.0 + row,
        threshold=8.0,
        blame=[Blame(column=CPU, direction="up", score=30.0)] if blame else [],
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


async def test_one_line_per_alarm_event(caplog):
    """A 60-row episode in a real alarms store: one WARNING when it opens (with its blame), no
    line per abnormal row, one INFO line with the count once ``every`` has passed, then one each
    for the verdict and the close (with the resolution); every line carries its event fields."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    store = AlarmStore(":memory:")
    clock = Clock()
    alarm_log = AlarmLog(every=300.0, clock=clock)
    seen = []
    verdicts = Verdicts(store, lambda: DetectorSet({}, {}), None, lambda hook, **kw: seen.append(hook), alarm_log)
    try:
        alarm, opened = store.record(anomaly(100))
        assert opened
        alarm_log.opened(alarm)
        for row in range(101, 160):
            clock.now += 2.0  # 59 rows in 118 s: no line
            alarm, opened = store.record(anomaly(row))
            assert not opened
            alarm_log.extended(alarm)
        records = lines(caplog)
        assert len(records) == 1 and records[0].levelno == logging.WARNING
        assert records[0].getMessage() == (
            f"alarm {alarm.id} opened: pca-spe on s1/hv1 at row 100, score 220 > 8; blames vm2/CPUUtilization up"
        )
        assert records[0].event == "alarm-opened" and records[0].alarm["blame"] == ["vm2/CPUUtilization"]

        clock.now += 300.0
        alarm, _ = store.record(anomaly(160))
        alarm_log.extended(alarm)
        alarm, _ = store.record(anomaly(161))
        alarm_log.extended(alarm)  # right after a line: none
        records = lines(caplog)
        assert len(records) == 2 and records[1].levelno == logging.INFO
        assert records[1].getMessage() == (
            f"alarm {alarm.id} extended: 60 more abnormal rows, 61 in all (rows 100–160), score 280 > 8; "
            "blames vm2/CPUUtilization up"
        )
        assert records[1].event == "alarm-extended" and records[1].alarm["rows_since_last_line"] == 60

        await verdicts.give_verdict(alarm.id, "normal", "alice")
        records = lines(caplog)
        assert [r.event for r in records[2:]] == ["alarm-verdict", "alarm-closed"]
        assert records[2].getMessage() == f"alarm {alarm.id} verdict normal by alice: closes it as a workload change"
        assert records[3].getMessage() == (
            f"alarm {alarm.id} closed by alice: workload-change (62 abnormal rows, rows 100–161)"
        )
        assert records[3].alarm["resolution"] == "workload-change" and records[3].alarm["actor"] == "alice"
        assert alarm.id not in alarm_log.last
        assert "verdict_given" in seen
    finally:
        store.shutdown()


def test_an_alarm_that_blames_no_column_says_what_that_means(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = AlarmStore(":memory:")
    try:
        alarm, _ = store.record(anomaly(63, blame=False))
        AlarmLog().opened(alarm)
    finally:
        store.shutdown()
    text = lines(caplog)[0].getMessage()
    assert text.endswith(
        "blames no single column (the row breaks the model's correlations; see the alarm's residual_top)"
    )


def test_every_zero_logs_each_extension_and_bounded_memory(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = AlarmStore(":memory:")
    alarm_log = AlarmLog(every=0)
    try:
        alarm, _ = store.record(anomaly(1))
        alarm_log.opened(alarm)
        for row in (2, 3, 4):
            alarm, _ = store.record(anomaly(row))
            alarm_log.extended(alarm)
    finally:
        store.shutdown()
    assert [r.getMessage().split(":")[0] for r in lines(caplog)] == [
        f"alarm {alarm.id} {w}" for w in ("opened", "extended", "extended", "extended")
    ]
    assert all("1 more abnormal row," in r.getMessage() for r in lines(caplog)[1:])


async def test_rows_on_data_take_one_row_per_data_message(mosquitto, site):
    """``rows = "data"``: with the agent ticking every 5 ms and the controller's clock at 60 s,
    the detectors still get one row per data message, in order, each holding the values that
    message left — none twice, none skipped."""
    trace = ROOT / "atomwatch" / "data" / "lab-cryptominer.csv"
    pipe = live_pipeline(
        mosquitto.url,
        site,
        ("replay",),
        {"replay": {"trace": str(trace), "loop": True}},
        [],
        agent_tick=0.005,
        controller_tick=60.0,
        rows="data",
    )
    rows, snapshots = [], []

    def on_message(state, msg) -> None:
        if isinstance(msg, protocol.Data) and state.synced:
            snapshots.append((msg.seq, state.snapshot()))

    pipe.controller.ingest.listeners.append(on_message)
    pipe.controller.row_listeners.append(rows.append)
    await pipe.start()
    await pipe.wait_for(lambda: sum(not r.late for r in rows) >= 300, 120, "300 live rows")
    await pipe.stop()
    await asyncio.sleep(0)
    assert [r.index for r in rows] == list(range(len(rows))), "rows numbered without gaps"
    # a tick sampled before the agent's first connection comes as a late row: the live ones here
    rows = [r for r in rows if not r.late]
    n = min(len(rows), len(snapshots))
    assert n >= 300
    seqs = [s for s, _ in snapshots[:n]]
    assert seqs == list(range(seqs[0], seqs[0] + n)), "one row per data message, none skipped"
    for row, (_, snap) in zip(rows[:n], snapshots[:n]):
        expected = np.array([snap[c] for c in row.columns])
        np.testing.assert_array_equal(row.values, expected)
    assert pipe.controller.rows_skipped == 0

"""Verdicts and the other alarm changes that tell the plugins: the operator's verdict, findings,
closing an alarm.

What lives here: :class:`Verdicts` — ``give_verdict`` (on *normal* the alarm's rows, ATOM's A,
are folded into the detector's normal model, which refits), ``add_findings`` and ``close_alarm``,
each followed by the ``verdict_given`` / ``alarm_updated`` hooks and a line of the alarm log
(:mod:`.alarm_log`) — and :func:`alarm_rows`, an
alarm's abnormal rows as detector rows. What does not: storing alarms (:mod:`.alarms`), opening
and extending them from anomalies (the detection tick in :mod:`.app`), acting on a malicious
verdict (orchestrator plugins).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from atomwatch.alarm import Alarm
from atomwatch.series import SeriesKey
from atomwatch.types import Row

from .alarm_log import AlarmLog
from .alarms import AlarmStore
from .detection import Detection, NoSuchMethod

log = logging.getLogger(__name__)

#: ``dispatch(hook, **kwargs)``: call an event hook on every plugin
Dispatch = Callable[..., None]


def alarm_rows(alarm: Alarm) -> list[Row]:
    """The alarm's abnormal rows (ATOM's A) as detector rows."""
    out = []
    for rec in alarm.rows:
        if "columns" not in rec:
            continue
        columns = tuple(SeriesKey(*c) for c in rec["columns"])
        values = np.array([np.nan if v is None else v for v in rec["values"]], dtype=np.float64)
        out.append(Row(scope=alarm.scope, index=rec["index"], ts=rec["ts"], columns=columns, values=values))
    return out


class Verdicts:
    """Alarm changes made by operators and orchestrators. ``detectors`` returns the controller's
    current detector set; ``executor`` is the detection thread: a refit never runs beside a
    detector's ``update``."""

    def __init__(
        self,
        alarms: AlarmStore,
        detectors: Callable[[], Detection],
        executor: Executor,
        dispatch: Dispatch,
        alarm_log: AlarmLog | None = None,
    ) -> None:
        self.alarms = alarms
        self.detectors = detectors
        self.executor = executor
        self.dispatch = dispatch
        self.alarm_log = alarm_log or AlarmLog()

    async def give_verdict(
        self, alarm_id: int, verdict: str, actor: str, params: dict[str, Any] | None = None
    ) -> Alarm:
        """The operator's verdict. *normal*: the alarm's rows join the detector's normal model
        (which refits) and the alarm closes as a workload change; *malicious*: the alarm goes to
        the orchestrators through ``verdict_given``. Raises :class:`AlarmError`."""
        params = dict(params or {})
        alarm = self.alarms.verdict(alarm_id, verdict, actor, params)
        self.alarm_log.verdict(alarm, verdict, actor)
        if verdict == "normal":
            detection = self.detectors()

            def fold() -> int:  # the alarm's rows are read from the file here, off the event loop
                rows = alarm_rows(alarm)
                folded = detection.call(alarm.scope, alarm.detector, "accept_normal", rows)
                return folded if isinstance(folded, int) else len(rows)

            try:
                folded = await asyncio.get_running_loop().run_in_executor(self.executor, fold)
                self.alarms.note(alarm.id, "controller", "model refit", {"rows_folded": folded})
            except NoSuchMethod:
                self.alarms.note(
                    alarm.id, "controller", "model not refit", {"why": "the detector keeps no normal model"}
                )
            except Exception as e:
                log.exception("accept_normal of %s on %s failed", alarm.detector, alarm.scope)
                self.alarms.note(alarm.id, "controller", "model refit failed", {"error": f"{type(e).__name__}: {e}"})
        elif verdict == "malicious":
            detection = self.detectors()

            def unlearn() -> int:  # rows the detector had learnt without a verdict leave its model
                removed = detection.call(alarm.scope, alarm.detector, "reject", alarm_rows(alarm))
                return removed if isinstance(removed, int) else 0

            try:
                removed = await asyncio.get_running_loop().run_in_executor(self.executor, unlearn)
                if removed:
                    self.alarms.note(alarm.id, "controller", "model restored", {"rows_removed": removed})
            except NoSuchMethod:
                pass
            except Exception as e:
                log.exception("reject of %s on %s failed", alarm.detector, alarm.scope)
                self.alarms.note(alarm.id, "controller", "model restore failed", {"error": f"{type(e).__name__}: {e}"})
        self.dispatch("verdict_given", alarm=alarm, verdict=verdict, actor=actor, params=params)
        self.dispatch("alarm_updated", alarm=alarm, change=f"verdict {verdict}")
        return alarm

    def add_findings(self, alarm_id: int, actor: str, finding: dict[str, Any]) -> Alarm:
        alarm = self.alarms.add_findings(alarm_id, actor, finding)
        self.dispatch("alarm_updated", alarm=alarm, change="findings")
        return alarm

    def close_alarm(self, alarm_id: int, actor: str, resolution: str, details: dict[str, Any] | None = None) -> Alarm:
        alarm = self.alarms.close(alarm_id, actor, resolution, details)
        self.alarm_log.closed(alarm, actor)
        self.dispatch("alarm_updated", alarm=alarm, change="closed")
        return alarm

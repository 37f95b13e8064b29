"""The operator's log of alarms: one line per alarm event, not one per abnormal row.

What lives here: :class:`AlarmLog` — ``opened`` (WARNING, with the blamed columns and the
score against its threshold), ``extended`` (INFO, at most once every ``every`` seconds per
alarm, with how many abnormal rows came since the last line), ``verdict`` and ``closed`` (INFO,
with the actor and the resolution). Every line carries the structured fields ``event``
(``alarm-opened``, ``alarm-extended``, ``alarm-verdict``, ``alarm-closed``) and ``alarm`` (id,
scope, detector, rows, level, blame …), which ``--log-format json`` writes out. What does not:
the per-row anomaly lines (DEBUG, in the detection tick of :mod:`.app`), the alarm store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from atomwatch.alarm import Alarm

log = logging.getLogger(__name__)

#: alarms whose last line is remembered (the oldest are forgotten beyond: they log at once again)
REMEMBERED = 4096


def blame_text(blame: list[dict[str, Any]], limit: int = 4) -> str:
    """``vm2/CPUUtilization up, vm2/NetworkIn down`` (the most blamed first), or what it means
    that nothing is blamed."""
    if not blame:
        return "no single column (the row breaks the model's correlations; see the alarm's residual_top)"
    parts = [f"{b.get('column', '?')} {b.get('direction', '')}".strip() for b in blame[:limit]]
    if len(blame) > limit:
        parts.append(f"… {len(blame) - limit} more")
    return ", ".join(parts)


def _fields(alarm: Alarm) -> dict[str, Any]:
    return {
        "id": alarm.id,
        "scope": alarm.scope,
        "detector": alarm.detector,
        "state": alarm.state,
        "first_row": alarm.first_row,
        "last_row": alarm.last_row,
        "level": alarm.level,
        "score": alarm.score,
        "threshold": alarm.threshold,
        "blame": [b.get("column") for b in alarm.blame],
        "verdict": alarm.verdict,
        "resolution": alarm.resolution,
    }


class AlarmLog:
    """Logs alarm events; ``every`` seconds at least between two ``extended`` lines of one alarm
    (0: one per extension). ``clock`` is :func:`time.monotonic` unless a test gives another."""

    def __init__(self, every: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.every = float(every)
        self.clock = clock
        #: alarm id → (time of its last line, its level then)
        self.last: dict[int, tuple[float, int]] = {}

    def _remember(self, alarm: Alarm, at: float) -> None:
        self.last[alarm.id] = (at, alarm.level)
        if len(self.last) > REMEMBERED:
            for alarm_id, _ in sorted(self.last.items(), key=lambda kv: kv[1][0])[: len(self.last) - REMEMBERED]:
                del self.last[alarm_id]

    def opened(self, alarm: Alarm, late_by: float | None = None) -> None:
        """``late_by``: seconds between the row's tick and its scoring, for a row of an agent's
        outage sent afterwards (None: a live row)."""
        self._remember(alarm, self.clock())
        late = "" if late_by is None else f" (late: a row of {late_by:.1f} s ago, kept by its agent during an outage)"
        log.warning(
            "alarm %d opened: %s on %s at row %d, score %.4g > %.4g; blames %s%s",
            alarm.id,
            alarm.detector,
            alarm.scope,
            alarm.last_row,
            alarm.score,
            alarm.threshold,
            blame_text(alarm.blame),
            late,
            extra={"event": "alarm-opened", "alarm": _fields(alarm)} | ({"late_by": late_by} if late else {}),
        )

    def extended(self, alarm: Alarm) -> None:
        now = self.clock()
        since, level = self.last.get(alarm.id, (None, alarm.level - 1))
        if since is not None and now - since < self.every:
            return
        self._remember(alarm, now)
        added = alarm.level - level
        log.info(
            "alarm %d extended: %d more abnormal row%s, %d in all (rows %d–%d), score %.4g > %.4g; blames %s",
            alarm.id,
            added,
            "" if added == 1 else "s",
            alarm.level,
            alarm.first_row,
            alarm.last_row,
            alarm.score,
            alarm.threshold,
            blame_text(alarm.blame),
            extra={"event": "alarm-extended", "alarm": dict(_fields(alarm), rows_since_last_line=added)},
        )

    def verdict(self, alarm: Alarm, verdict: str, actor: str) -> None:
        what = "closes it as a workload change" if verdict == "normal" else "the orchestrators act on it"
        log.info(
            "alarm %d verdict %s by %s: %s",
            alarm.id,
            verdict,
            actor,
            what,
            extra={"event": "alarm-verdict", "alarm": dict(_fields(alarm), actor=actor)},
        )
        if alarm.state == "closed":
            self.closed(alarm, actor)

    def closed(self, alarm: Alarm, actor: str) -> None:
        self.last.pop(alarm.id, None)
        log.info(
            "alarm %d closed by %s: %s (%d abnormal rows, rows %d–%d)",
            alarm.id,
            actor,
            alarm.resolution or "no resolution given",
            alarm.level,
            alarm.first_row,
            alarm.last_row,
            extra={"event": "alarm-closed", "alarm": dict(_fields(alarm), actor=actor)},
        )

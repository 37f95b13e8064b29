"""Collect stage of the tick: every collector in its own worker thread, under a time budget.

A collector that raises, returns something that is not a Reading, or overruns the budget does not
stop the tick: its series are reported stale this tick (never invented), and the failure is
logged once per kind until the collector recovers. A collector still busy from an earlier tick is
not called again until it returns. Failures are counted by collector and kind (``raised``,
``not-a-reading``, ``over-budget``: ``atomwatch_collector_errors_total`` on ``--metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from atomwatch.series import SeriesKey
from atomwatch.types import Collector, Reading

log = logging.getLogger(__name__)

#: the kinds of a collector's failure, counted apart
FAILURE_KINDS = ("raised", "not-a-reading", "over-budget")


@dataclass
class _Slot:
    collector: Collector
    pool: ThreadPoolExecutor
    pending: Future | None = None
    last_keys: set[SeriesKey] = field(default_factory=set)
    failing: str | None = None


class Sampler:
    def __init__(self, collectors: list[Collector], budget: float):
        self.budget = budget
        self.slots = [
            _Slot(c, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"collect-{getattr(c, 'name', '?')}"))
            for c in collectors
        ]
        self.errors = 0
        #: failures by (collector name, kind: raised, not-a-reading, over-budget)
        self.failures: Counter[tuple[str, str]] = Counter()
        for slot in self.slots:  # every series exists from the start (at 0), so a rate of it has data
            for kind in FAILURE_KINDS:
                self.failures[(getattr(slot.collector, "name", type(slot.collector).__name__), kind)] = 0

    async def sample(self) -> Reading:
        loop = asyncio.get_running_loop()
        for slot in self.slots:
            if slot.pending is None or slot.pending.done():
                slot.pending = slot.pool.submit(slot.collector.collect)
        futures = [asyncio.wrap_future(s.pending, loop=loop) for s in self.slots if s.pending is not None]
        if futures:
            await asyncio.wait(futures, timeout=self.budget)
        merged = Reading(values={}, deltas={})
        for slot in self.slots:
            name = getattr(slot.collector, "name", type(slot.collector).__name__)
            reading, problem, kind = None, None, "over-budget"
            if slot.pending is not None and slot.pending.done():
                fut, slot.pending = slot.pending, None
                try:
                    reading = fut.result()
                    if not isinstance(reading, Reading):
                        problem = f"returned {type(reading).__name__}, not atomwatch.Reading"
                        reading, kind = None, "not-a-reading"
                except Exception as e:  # a collector bug must not stop the agent
                    problem, kind = f"raised {type(e).__name__}: {e}", "raised"
            else:
                problem = f"did not answer within the {self.budget:.2f} s budget"
            if reading is None:
                self.errors += 1
                self.failures[(name, kind)] += 1
                if slot.failing != problem:
                    log.warning("collector %s %s; its series are stale this tick", name, problem)
                slot.failing = problem
                for key in slot.last_keys:
                    merged.values.setdefault(key, None)
                continue
            if slot.failing:
                log.info("collector %s recovered", name)
                slot.failing = None
            clean: dict[SeriesKey, float | None] = {}
            for key, v in reading.values.items():
                if not isinstance(key, SeriesKey):
                    log.warning("collector %s gave a key that is not a SeriesKey: %r (dropped)", name, key)
                    continue
                if v is not None:
                    try:
                        v = float(v)
                    except (TypeError, ValueError):
                        log.warning("collector %s gave %s a non-numeric value %r (stale)", name, key.column, v)
                        v = None
                    else:
                        if not math.isfinite(v):
                            v = None
                clean[key] = v
            slot.last_keys = set(clean)
            merged.values.update(clean)
            merged.deltas.update({k: float(d) for k, d in reading.deltas.items() if k in clean})
        return merged

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot.collector.close()
            except Exception:
                log.exception("collector %s failed to close", getattr(slot.collector, "name", "?"))
            slot.pool.shutdown(wait=False, cancel_futures=True)

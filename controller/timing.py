"""The detection tick's timing: whether one controller keeps up with its hosts.

Kept per controller (:class:`TickTiming`): how late the tick loop starts each tick, the ticks it
skips because the previous one ran over, how long a tick takes (rows built and through the
detectors), and each row's delay from the newest sample in it (the agent's timestamp of the
host's last data message) to the row scored — the publish → detection latency, waiting for the
tick included. Histograms have fixed buckets and take many values in one call (a tick observes
one delay per host). What does not live here: exposing them (:mod:`.metrics`), the tick loop
(:mod:`.app`); what the figures look like at scale: ``docs/scale.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: upper bounds (seconds) of the buckets: fine enough that a p99 read back from them is within
#: about a third of the true one, from a millisecond to a minute
BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
)


class Histogram:
    """Counts of observed values by bucket (``le`` bounds, the last one +Inf), their sum and count."""

    def __init__(self, buckets: Iterable[float] = BUCKETS) -> None:
        self.bounds = np.asarray(tuple(buckets), dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self.sum = 0.0
        self.count = 0

    def observe(self, values: float | Iterable[float]) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if not v.size:
            return
        self.counts += np.bincount(np.searchsorted(self.bounds, v, side="left"), minlength=len(self.counts))
        self.sum += float(v.sum())
        self.count += int(v.size)

    def cumulative(self) -> list[tuple[str, int]]:
        """(``le`` label, values at most that) for each bucket and +Inf, as Prometheus shows them."""
        totals = np.cumsum(self.counts).tolist()
        labels = [f"{b:g}" for b in self.bounds.tolist()] + ["+Inf"]
        return list(zip(labels, totals, strict=True))


class TickTiming:
    """The tick loop's figures (written on the event loop, read by /metrics)."""

    def __init__(self) -> None:
        #: seconds each tick started after its scheduled time
        self.lateness = Histogram()
        #: seconds from a tick's start to its rows through the detectors
        self.duration = Histogram()
        #: per row: seconds from the agent's timestamp of the host's newest data to the row scored
        self.row_delay = Histogram()
        self.ticks = 0
        #: ticks not run because the one before ran past them
        self.skipped = 0

"""Replay collector: plays a CSV trace through the full pipeline as if it were live.

Options (``--set replay.KEY=VALUE``; the fields of :class:`ReplayOptions`):

``trace``      the trace file or recording folder (without it the plugin runs no collector)
``speed``      trace rows per agent tick (default 1; 0.5 holds each row two ticks, 10 skips nine)
``loop``       start again at the end (default false: at the end every series is reported stale)
``delta``      absolute tracking error Δ for every series, in the series' unit; or
``delta_rel``  Δ as a fraction of each column's mean absolute value (default 0.01)

Columns named ``<vm>/<metric>`` become series of that VM; a bare ``<metric>`` column belongs to
a VM named ``replay``.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Annotated

import atomwatch
from atomwatch import Range
from atomwatch.config import ConfigError
from atomwatch.lazy import lazy_import
from atomwatch.traces import TraceError, read_trace

np = lazy_import("numpy", globals(), "np")  # on first use: `atomwatch --help` loads this plugin

log = logging.getLogger(__name__)


class ReplayCollector:
    name = "replay"

    def __init__(
        self, trace: str, speed: float = 1.0, loop: bool = False, delta: float | None = None, delta_rel: float = 0.01
    ):
        if not speed > 0:
            raise ConfigError(f"replay.speed must be > 0, got {speed!r}")
        try:
            self.trace = read_trace(trace)
        except TraceError as e:
            raise ConfigError(f"replay.trace: {e}") from None
        if self.trace.rows == 0:
            raise ConfigError(f"replay.trace {trace!r} has no rows")
        self.speed = float(speed)
        self.loop = bool(loop)
        self.keys = []
        for column in self.trace.columns:
            key = atomwatch.SeriesKey.from_column(column)
            if not key.vm_name:
                key = atomwatch.SeriesKey("replay", "replay", key.metric, key.unit)
            self.keys.append(key)
        if delta is not None:
            if not delta >= 0:
                raise ConfigError(f"replay.delta must be ≥ 0, got {delta!r}")
            deltas = np.full(len(self.keys), float(delta))
        else:
            if not delta_rel >= 0:
                raise ConfigError(f"replay.delta_rel must be ≥ 0, got {delta_rel!r}")
            with np.errstate(all="ignore"):
                means = np.nanmean(np.abs(self.trace.values), axis=0)
            deltas = np.nan_to_num(means * float(delta_rel))
        self.deltas = dict(zip(self.keys, (float(d) for d in deltas)))
        self.position = 0.0  # fractional row of the next reading
        self.lock = threading.Lock()
        self.last_row: int | None = None

    def collect(self) -> atomwatch.Reading:
        with self.lock:
            row = int(math.floor(self.position))
            if row >= self.trace.rows:
                if not self.loop:
                    self.last_row = None
                    return atomwatch.Reading(values={k: None for k in self.keys})
                self.position -= self.trace.rows
                row = int(math.floor(self.position))
            self.position += self.speed
            self.last_row = row
        values = self.trace.values[row]
        return atomwatch.Reading(
            values={k: (None if math.isnan(v) else float(v)) for k, v in zip(self.keys, values)},
            deltas=self.deltas,
        )

    def close(self) -> None:
        pass


@atomwatch.declare_options("replay")
@dataclass(frozen=True)
class ReplayOptions:
    """``--set replay.KEY=VALUE``, read by :func:`atomwatch.parse_options`."""

    trace: str | None = None
    speed: Annotated[float, Range(gt=0)] = 1.0
    loop: bool = False
    delta: Annotated[float, Range(ge=0)] | None = None
    delta_rel: Annotated[float, Range(ge=0)] = 0.01


@atomwatch.hookimpl
def register_collectors(config):
    opts = atomwatch.parse_options("replay", ReplayOptions, config.plugin_options("replay"))
    if not opts.trace:
        return None
    collector = ReplayCollector(
        opts.trace, speed=opts.speed, loop=opts.loop, delta=opts.delta, delta_rel=opts.delta_rel
    )
    log.info("replaying %s: %d rows × %d series", collector.trace.path, collector.trace.rows, len(collector.keys))
    return [collector]

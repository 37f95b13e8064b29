"""The name of one tracked series: which VM (or DNS server), which metric, in which unit.

Also :func:`columns_seen`, how a detector that matched no column says which ones it saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: the unit of each metric atomwatch's collectors know (CloudWatch names for VM metrics)
METRIC_UNITS = {
    "CPUUtilization": "%",
    "NetworkIn": "bytes/s",
    "NetworkOut": "bytes/s",
    "DiskReadOps": "ops/s",
    "DiskWriteOps": "ops/s",
    "DiskReadBytes": "bytes/s",
    "DiskWriteBytes": "bytes/s",
    "MemoryUtilization": "%",
}


@dataclass(frozen=True, order=True)
class SeriesKey:
    """One series as both sides name it.

    ``vm_uuid`` identifies the monitored entity (a libvirt domain UUID, or ``coredns:<endpoint>``
    for a DNS server); ``vm_name`` is its human name; ``metric`` follows CloudWatch naming for VM
    metrics (``CPUUtilization``, ``NetworkIn`` …); ``unit`` is free text (``%``, ``bytes/s`` …).
    """

    vm_uuid: str
    vm_name: str
    metric: str
    unit: str = ""

    @property
    def column(self) -> str:
        """The CSV column name of this series: ``<vm_name>/<metric>``."""
        return f"{self.vm_name}/{self.metric}" if self.vm_name else self.metric

    @classmethod
    def from_column(cls, column: str, unit: str | None = None) -> SeriesKey:
        """The key of a CSV column ``<vm>/<metric>`` (or a bare ``<metric>``); the unit defaults
        to the metric's known unit."""
        vm, sep, metric = column.rpartition("/")
        unit = METRIC_UNITS.get(metric, "") if unit is None else unit
        if not sep:
            return cls(vm_uuid="", vm_name="", metric=column, unit=unit)
        return cls(vm_uuid=vm, vm_name=vm, metric=metric, unit=unit)


def columns_seen(columns: Sequence[SeriesKey], wanted: Iterable[str] = (), shown: int = 5) -> str:
    """A few of ``columns`` by name, for a detector that matched none of them to say what it saw:
    ``vm1.MemoryUtilization, vm1.CPUUtilization (2 columns)``; when a name ends with one of the
    ``wanted`` metrics without being ``VM/METRIC``, a hint that the separator is ``/``."""
    names = [c.column for c in columns]
    text = ", ".join(names[:shown]) + (", …" if len(names) > shown else "")
    text = f"{text or 'none'} ({len(names)} column{'s' if len(names) != 1 else ''})"
    near = [c.column for c in columns for m in wanted if c.metric != m and c.column.endswith(m)]
    if near:
        text += f"; {near[0]!r} names the metric {next(m for m in wanted if near[0].endswith(m))!r} without "
        text += "'/': a column is named VM/METRIC"
    return text

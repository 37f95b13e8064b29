"""Which Volatility 3 plugins to run, from the metrics an anomaly blamed (ATOM's hint).

CPU → the process list, tree and command lines; network → sockets, open files and interfaces;
memory → process maps (their sizes); disk → open files; the process list always (suspects are
ranked from it). Metric names are matched by their family (``CPUUtilization`` → cpu,
``NetworkIn`` → network, ``DiskReadOps`` → disk, ``MemoryUtilization`` → memory), so a collector
with other names still gets a sensible choice; an unknown metric adds nothing beyond the process
list.

What does not live here: running the plugins (:mod:`atomwatch.introspection.volatility`).
"""

from __future__ import annotations

from collections.abc import Iterable

PSLIST = "linux.pslist"
PSTREE = "linux.pstree"
PSAUX = "linux.psaux"
SOCKSTAT = "linux.sockstat"
LSOF = "linux.lsof"
IP_ADDR = "linux.ip.Addr"
MAPS = "linux.proc.Maps"

BY_FAMILY: dict[str, tuple[str, ...]] = {
    "cpu": (PSLIST, PSTREE, PSAUX),
    "network": (SOCKSTAT, LSOF, IP_ADDR),
    "memory": (MAPS,),
    "disk": (LSOF,),
}

#: every plugin this module may choose (the agent accepts only these unless configured otherwise)
KNOWN = (PSLIST, PSTREE, PSAUX, SOCKSTAT, LSOF, IP_ADDR, MAPS)


def family(metric: str) -> str | None:
    """``cpu``, ``network``, ``memory``, ``disk`` or None for a metric name."""
    m = metric.lower()
    if m.startswith("cpu") or "cpu" in m:
        return "cpu"
    if m.startswith(("net", "network")) or "packets" in m or "network" in m:
        return "network"
    if m.startswith(("disk", "block")) or "disk" in m:
        return "disk"
    if m.startswith("mem") or "memory" in m or "rss" in m:
        return "memory"
    return None


def choose(metrics: Iterable[str]) -> list[str]:
    """The plugins worth running for these blamed metrics, process list first, no duplicates."""
    chosen = [PSLIST]
    for metric in metrics:
        for plugin in BY_FAMILY.get(family(metric) or "", ()):
            if plugin not in chosen:
                chosen.append(plugin)
    return chosen

"""libvirt collector: the per-VM CloudWatch metrics of every running domain of a hypervisor.

What lives here: one ``getAllDomainStats`` call per tick (with the no-wait flag, so a domain
whose job lock is held never stalls the tick), a second call when the first stalls on a hung
domain (so the others keep their values), the rates of CPU, network in/out, disk read/write
ops and bytes from two samples of the counters, memory from the balloon stats, and the plugin's
options (:class:`LibvirtOptions`). A value is never invented: it is ``None`` (stale) when a stat
group or counter is missing, on a domain's first tick, after a counter went backwards, for every
series of a hung domain, and when libvirt cannot be reached or overruns the budget. What does
not: tracking and publishing (the agent). The metric table with each formula, and the staleness
rules: ``docs/libvirt.md``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Annotated, Any

import atomwatch
from atomwatch import Check, Duration, Range
from atomwatch.config import ConfigError
from atomwatch.series import METRIC_UNITS, SeriesKey

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"

#: metric → unit, in the order the columns appear (the project's own table)
METRICS: dict[str, str] = METRIC_UNITS
#: rate metric → (stat group prefix, counter suffix, count key)
COUNTERS: dict[str, tuple[str, str, str]] = {
    "NetworkIn": ("net", "rx.bytes", "net.count"),
    "NetworkOut": ("net", "tx.bytes", "net.count"),
    "DiskReadOps": ("block", "rd.reqs", "block.count"),
    "DiskWriteOps": ("block", "wr.reqs", "block.count"),
    "DiskReadBytes": ("block", "rd.bytes", "block.count"),
    "DiskWriteBytes": ("block", "wr.bytes", "block.count"),
}
DEFAULT_DELTAS: dict[str, float] = {
    "CPUUtilization": 2.0,
    "MemoryUtilization": 1.0,
    "NetworkIn": 1024.0,
    "NetworkOut": 1024.0,
    "DiskReadOps": 2.0,
    "DiskWriteOps": 2.0,
    "DiskReadBytes": 8192.0,
    "DiskWriteBytes": 8192.0,
}

#: each Δ option of this collector and the metrics it sets
DELTA_OPTIONS = {
    "delta_cpu": ("CPUUtilization",),
    "delta_memory": ("MemoryUtilization",),
    "delta_network": ("NetworkIn", "NetworkOut"),
    "delta_disk_ops": ("DiskReadOps", "DiskWriteOps"),
    "delta_disk_bytes": ("DiskReadBytes", "DiskWriteBytes"),
}


#: how to get libvirt-python on a Debian hypervisor (README, "Hypervisor install", says the same)
INSTALL_HINT = (
    "sudo apt-get install gcc pkg-config libvirt-dev python3-dev python3-venv, then install atomwatch with "
    "its agent extra (pip install '.[agent]' in its checkout); or sudo apt-get install python3-libvirt "
    "and run atomwatch from a virtual environment made with python3 -m venv --system-site-packages "
    "(README: Hypervisor install)"
)


#: stats calls that may run at once: one stuck on a hung domain, the next tick's, one spare
#: (libvirtd serves 5 calls at once per client by default, ``max_client_requests``)
MAX_CALLS = 3

#: one record of a stats call: (UUID, name, stats, seconds its QEMU monitor has been stuck or None)
Record = tuple[str, str, dict[str, Any], float | None]


class LibvirtUnavailable(RuntimeError):
    """libvirt-python is missing or the URI does not connect; the text says which."""


# --------------------------------------------------------------------------- pure computation


def _sum_counters(stats: dict[str, Any], prefix: str, suffix: str, count_key: str) -> int | None:
    """Σ over ``prefix.N.suffix``; None when the group or any device's counter is missing."""
    count = stats.get(count_key)
    if count is None:
        return None
    total = 0
    for i in range(int(count)):
        v = stats.get(f"{prefix}.{i}.{suffix}")
        if v is None:
            return None
        total += int(v)
    return total


def cpu_counter(stats: dict[str, Any]) -> tuple[int, int] | None:
    """(busy nanoseconds, vCPUs): Σ ``vcpu.N.time`` when every vCPU reports it, else ``cpu.time``."""
    n = stats.get("vcpu.current")
    if n:
        times = [stats.get(f"vcpu.{i}.time") for i in range(int(n))]
        if all(t is not None for t in times):
            return sum(int(t) for t in times), int(n)  # type: ignore[arg-type]
    if stats.get("cpu.time") is not None:
        return int(stats["cpu.time"]), int(n or stats.get("vcpu.maximum") or 1)
    return None


def memory_utilization(stats: dict[str, Any]) -> float | None:
    available = stats.get("balloon.available")
    if not available:
        return None
    free = stats.get("balloon.usable")
    if free is None:
        free = stats.get("balloon.unused")
    if free is None:
        return None
    used = max(0.0, float(available) - float(free))
    return min(100.0, 100.0 * used / float(available))


@dataclass
class Sample:
    """The counters of one domain at one instant (monotonic seconds)."""

    t: float
    counters: dict[str, int | None] = field(default_factory=dict)
    cpu: tuple[int, int] | None = None


def lacks_job_stats(stats: dict[str, Any]) -> bool:
    """True when the record misses what libvirt reads through the domain's job (QEMU's monitor):
    the balloon's memory statistics or a disk's counters — skipped under the no-wait flag."""
    if "balloon.usable" not in stats and "balloon.unused" not in stats:
        return True
    return bool(stats.get("block.count")) and "block.0.rd.reqs" not in stats


def sample_of(stats: dict[str, Any], t: float) -> Sample:
    return Sample(
        t=t,
        counters={m: _sum_counters(stats, *spec) for m, spec in COUNTERS.items()},
        cpu=cpu_counter(stats),
    )


#: per metric, the last good reading of its counter: (time, value[, vCPUs])
LastGood = dict[str, tuple]


def rates(last: LastGood, cur: Sample) -> dict[str, float | None]:
    """Rate metrics from the last good counter of each metric to ``cur``; updates ``last``.

    A metric whose counter is missing now is None and keeps its last good reading, so the next
    tick's rate averages over both intervals (still a measured value). A counter that went
    backwards (the domain restarted) is None and restarts from the new value.
    """
    out: dict[str, float | None] = {}
    now: dict[str, tuple | None] = {m: (cur.t, v) for m, v in cur.counters.items() if v is not None}
    if cur.cpu is not None:
        now["CPUUtilization"] = (cur.t, cur.cpu[0], cur.cpu[1])
    for m in (*COUNTERS, "CPUUtilization"):
        new = now.get(m)
        old = last.get(m)
        out[m] = None
        if new is None:
            continue  # keep the last good reading
        if old is not None:
            dt = new[0] - old[0]
            same_shape = len(new) == 2 or new[2] == old[2]
            if dt > 0 and new[1] >= old[1] and same_shape:
                out[m] = (new[1] - old[1]) / dt
                if m == "CPUUtilization":
                    # the stats' own sampling instants jitter against ours: cap at all vCPUs busy
                    out[m] = min(100.0, 100.0 * out[m] / (1e9 * new[2]))  # type: ignore[operator]
        last[m] = new
    return out


# --------------------------------------------------------------------------- collector


class LibvirtCollector:
    """Reads all running domains of one libvirt connection, once per :meth:`collect`."""

    name = "libvirt"

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        budget: float = 2.0,
        domains: str | None = None,
        deltas: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"libvirt.uri must be a libvirt URI such as {DEFAULT_URI!r}, got {uri!r}")
        try:
            budget = float(budget)
        except (TypeError, ValueError):
            raise ConfigError(f"libvirt.budget must be a number of seconds, got {budget!r}") from None
        if not budget > 0:
            raise ConfigError(f"libvirt.budget must be > 0 seconds, got {budget!r}")
        try:
            self.domain_filter = re.compile(domains) if domains else None
        except re.error as e:
            raise ConfigError(f"libvirt.domains {domains!r} is not a regular expression: {e}") from None
        try:
            import libvirt  # type: ignore[import-not-found]
        except ImportError:
            raise LibvirtUnavailable(f"the libvirt Python module is missing: {INSTALL_HINT}") from None
        self.libvirt = libvirt
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.uri = uri
        self.budget = budget
        self.clock = clock
        self.deltas = dict(DEFAULT_DELTAS, **(deltas or {}))
        # cpu.time (CPU_TOTAL) is only a fallback for vCPU times: asked for once a domain lacks them
        self.stats_mask = (
            libvirt.VIR_DOMAIN_STATS_STATE
            | libvirt.VIR_DOMAIN_STATS_BALLOON
            | libvirt.VIR_DOMAIN_STATS_VCPU
            | libvirt.VIR_DOMAIN_STATS_INTERFACE
            | libvirt.VIR_DOMAIN_STATS_BLOCK
        )
        self.flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
        self.flags |= getattr(libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0)
        #: a domain whose QEMU monitor has run one command this long is hung (its series stale)
        self.hang_after = budget / 4
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=MAX_CALLS, thread_name_prefix="libvirt-stats")
        self._running: set[Future] = set()
        self._conns_lock = threading.Lock()
        self._idle: list = []  # connections no call uses now
        self._closed = False
        self._prev: dict[str, LastGood] = {}
        self._known: dict[str, set[SeriesKey]] = {}
        self._problem: str | None = None
        #: hung domains now: UUID → name
        self.hung: dict[str, str] = {}
        self.ticks = 0
        #: ticks whose every series was stale (libvirt unreachable, calls overran)
        self.stale_ticks = 0
        #: times a domain was found hung (once per episode), and domain-ticks stale for it
        self.hangs = 0
        self.hung_ticks = 0
        #: stats calls issued
        self.calls = 0
        self._idle.append(self._open())  # raises LibvirtUnavailable: the plugin then runs no collector

    # ---------------------------------------------------------------- connection

    def _open(self):
        try:
            return self.libvirt.open(self.uri)
        except self.libvirt.libvirtError as e:
            raise LibvirtUnavailable(f"cannot connect to {self.uri}: {e.get_error_message()}") from None

    def _checkout(self):
        """A connection for one call: an idle one that is alive, else a new one. Calls never share
        one: measured on libvirt 9.0, a call's reply on a connection where another call is stuck
        waited until a third call came (seconds), so a call stuck on a hung domain keeps its own."""
        with self._conns_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except self.libvirt.libvirtError:
                pass
            self._drop(conn)
            log.warning("libvirt connection to %s dropped; reconnecting", self.uri)
        return self._open()

    def _checkin(self, conn) -> None:
        with self._conns_lock:
            if not self._closed:
                self._idle.append(conn)
                return
        self._drop(conn)

    def _drop(self, conn) -> None:
        try:
            conn.close()
        except self.libvirt.libvirtError:
            pass

    def _fetch(self) -> list[Record]:
        conn = self._checkout()
        try:
            records = self._stats(conn)
        except self.libvirt.libvirtError:
            self._drop(conn)  # the next call opens a new one
            raise
        self._checkin(conn)
        out: list[Record] = []
        for dom, stats in records:
            name = dom.name()
            if self.domain_filter is not None and not self.domain_filter.search(name):
                continue
            stuck = self._monitor_stuck(dom) if lacks_job_stats(stats) else None
            out.append((dom.UUIDString(), name, stats, stuck))
        return out

    def _stats(self, conn) -> list[tuple[Any, dict[str, Any]]]:
        return conn.getAllDomainStats(self.stats_mask, self.flags)

    def _monitor_stuck(self, dom) -> float | None:
        """Seconds the domain's QEMU monitor has been stuck on one command (≥ ``hang_after``), or
        None. libvirt's control info needs no job: it answers while the monitor does not."""
        try:
            state, _details, ms = dom.controlInfo()
        except self.libvirt.libvirtError:
            return None
        if state == self.libvirt.VIR_DOMAIN_CONTROL_ERROR:
            return ms / 1000.0
        if state == self.libvirt.VIR_DOMAIN_CONTROL_OCCUPIED and ms >= 1000.0 * self.hang_after:
            return ms / 1000.0
        return None

    # ---------------------------------------------------------------- collect

    def _stale_reading(self, problem: str) -> atomwatch.Reading:
        if problem != self._problem:
            log.warning("libvirt collector: %s; every known series is stale this tick", problem)
            self._problem = problem
        self.stale_ticks += 1
        values: dict[SeriesKey, float | None] = {k: None for keys in self._known.values() for k in keys}
        return atomwatch.Reading(values=values, deltas={k: self.deltas[k.metric] for k in values})

    def _submit(self) -> Future:
        self.calls += 1
        future = self._pool.submit(self._fetch)
        self._running.add(future)
        return future

    def collect(self) -> atomwatch.Reading:
        """One tick. A call stuck on a hung domain holds that domain's job; a second call (no-wait)
        then skips it and reads the others, so a hung domain costs only its own series. When no
        call runs, the first gets half the budget before the second is sent; while one still runs,
        the tick's call is sent at once. At most :data:`MAX_CALLS` run; beyond, the tick is stale."""
        with self._lock:
            self.ticks += 1
            deadline = time.monotonic() + self.budget
            self._running = {f for f in self._running if not f.done()}
            if len(self._running) >= MAX_CALLS:
                return self._stale_reading(
                    f"{len(self._running)} stats calls still run (> {self.budget:.2f} s each); no more are sent"
                )
            calls = [self._submit()]
            if len(self._running) == 1:
                done, _ = wait(calls, timeout=self.budget / 2)
                if not done:
                    calls.append(self._submit())
            done, _ = wait(calls, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
            if not done:
                return self._stale_reading(f"getAllDomainStats did not return within {self.budget:.2f} s")
            future = next((f for f in calls if f in done and f.exception() is None), None)
            if future is None:
                e = next(f for f in calls if f in done).exception()
                if isinstance(e, self.libvirt.libvirtError):
                    return self._stale_reading(f"getAllDomainStats on {self.uri}: {e.get_error_message()}")
                if isinstance(e, LibvirtUnavailable):
                    return self._stale_reading(str(e))
                raise e  # type: ignore[misc]
            records = future.result()
            t = self.clock()
            if self._problem:
                log.info("libvirt collector recovered")
                self._problem = None
            return self._reading(records, t)

    def _reading(self, records: list[Record], t: float) -> atomwatch.Reading:
        values: dict[SeriesKey, float | None] = {}
        seen: dict[str, set[SeriesKey]] = {}
        hung: dict[str, str] = {}
        for uuid, name, stats, stuck in records:
            if stuck is not None:
                # every series stale; its last good counters stay, so its next rate spans the hang
                keys = self._known.get(uuid) or {SeriesKey(uuid, name, m, u) for m, u in METRICS.items()}
                values.update(dict.fromkeys(keys))
                seen[uuid] = keys
                hung[uuid] = name
                if uuid not in self.hung:
                    self.hangs += 1
                    log.warning(
                        "libvirt collector: domain %s is hung (its QEMU monitor has not answered one command "
                        "for %.1f s); its series are stale until it answers, the other domains are read",
                        name,
                        stuck,
                    )
                continue
            if uuid in self.hung:
                log.info("libvirt collector: domain %s answers again", name)
            cur = sample_of(stats, t)
            if cur.cpu is None and not self.stats_mask & self.libvirt.VIR_DOMAIN_STATS_CPU_TOTAL:
                self.stats_mask |= self.libvirt.VIR_DOMAIN_STATS_CPU_TOTAL  # from the next tick on
            vm = rates(self._prev.setdefault(uuid, {}), cur)
            vm["MemoryUtilization"] = memory_utilization(stats)
            keys = set()
            for metric, unit in METRICS.items():
                key = SeriesKey(uuid, name, metric, unit)
                values[key] = vm.get(metric)
                keys.add(key)
            seen[uuid] = keys
        for uuid in set(self._prev) - set(seen):
            del self._prev[uuid]  # gone: a later return starts again from a first (stale) sample
        self._known = seen
        self.hung = hung
        self.hung_ticks += len(hung)
        return atomwatch.Reading(values=values, deltas={k: self.deltas[k.metric] for k in values})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._conns_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:  # a call still running closes its own when it returns
            self._drop(conn)


# --------------------------------------------------------------------------- plugin hook


def _regex(text: str) -> bool:
    re.compile(text)
    return True


@atomwatch.declare_options("libvirt")
@dataclass(frozen=True)
class LibvirtOptions:
    """``--set libvirt.KEY=VALUE``, read by :func:`atomwatch.parse_options`."""

    enabled: bool = True
    uri: str = DEFAULT_URI
    #: seconds one tick's stats call may take (None: 80 % of the agent's budget)
    budget: Annotated[float, Duration, Range(gt=0)] | None = None
    #: only domains whose name matches this regular expression are collected
    domains: Annotated[str, Check(_regex, "a regular expression")] | None = None
    delta_cpu: Annotated[float, Range(ge=0)] | None = None
    delta_memory: Annotated[float, Range(ge=0)] | None = None
    delta_network: Annotated[float, Range(ge=0)] | None = None
    delta_disk_ops: Annotated[float, Range(ge=0)] | None = None
    delta_disk_bytes: Annotated[float, Range(ge=0)] | None = None


def collector_from_options(opts: dict[str, Any] | LibvirtOptions, default_budget: float = 2.0) -> LibvirtCollector:
    if not isinstance(opts, LibvirtOptions):
        opts = atomwatch.parse_options("libvirt", LibvirtOptions, opts)
    deltas: dict[str, float] = {}
    for option, metrics in DELTA_OPTIONS.items():
        d = getattr(opts, option)
        if d is not None:
            deltas.update({m: d for m in metrics})
    return LibvirtCollector(
        uri=opts.uri,
        budget=opts.budget if opts.budget is not None else default_budget,
        domains=opts.domains,
        deltas=deltas,
    )


@atomwatch.hookimpl
def register_collectors(config) -> list[LibvirtCollector] | None:
    """Run the libvirt collector when libvirt-python imports and the URI connects; else warn once."""
    opts = atomwatch.parse_options(
        "libvirt", LibvirtOptions, config.plugin_options("libvirt") if config is not None else {}
    )
    if not opts.enabled:
        log.info("libvirt collector disabled (libvirt.enabled=false)")
        return None
    agent_budget = getattr(config, "budget", None)
    default_budget = 0.8 * float(agent_budget) if agent_budget else 2.0
    try:
        collector = collector_from_options(opts, default_budget)
    except LibvirtUnavailable as e:
        log.warning("libvirt collector not running: %s", e)
        return None
    log.info("libvirt collector reads %s (budget %.2f s per tick)", collector.uri, collector.budget)
    return [collector]

"""Shards with hot standbys on a clustered broker, with real processes: what ``tests/test_shards.py``
and ``python -m benchmarks.shards`` run.

What lives here: :class:`ShardRun` — a three-node NATS cluster on loopback (:mod:`atomwatch.lab.broker_cluster`),
two shards (site ``s1``: hosts ``hv-a`` and ``hv-b``; site ``s2``: host ``hv-c``) of two ``atomwatch
controller`` processes each (ranks 0 and 1, one alarms file per shard), three ``atomwatch agent``
processes replaying the bundled cryptominer recording, each given the three nodes in another order —
and its judge: alarms per host in each shard's file, values off by more than Δ in any controller's
rows, seconds from a kill to the standby acting. The records come from the fault harness's probe
plugin (:mod:`benchmarks.fault_probe`). What does not: the fault harness's single-broker scenarios
(:mod:`benchmarks.fault_scenarios`); the figures and the layout they lead to (``docs/scale.md``).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.fault_scenarios import HarnessError, Process, Tail, attack_rows, bundled_trace, prepare

#: seconds between two agent ticks; the controllers make a row per data message (rows = "data")
AGENT_TICK = 0.2
#: the trace row each agent starts at (the recording's attack runs from row 90 to 239): 120 rows
#: before hv-a's attack, enough for pca-spe's 48-row warm-up on every controller even when a
#: broker node's death cost one 10 s of rows; hv-b's attack comes 4 s after hv-a's, once the
#: active controller of their shard is killed, so the standby opens that alarm
START = {"hv-a": 270, "hv-b": 250, "hv-c": 270}
SHARDS = {"s1": ["hv-a", "hv-b"], "s2": ["hv-c"]}
RANKS = ("a", "b")
#: Δ of each replayed column as a fraction of its mean absolute value
DELTA_REL = 0.01


class ShardRun:
    """The processes of one run in ``workdir``; :meth:`cleanup` leaves nothing running."""

    def __init__(self, workdir: Path, nodes: int = 3):
        from atomwatch.lab.broker_cluster import NatsCluster

        self.dir = workdir
        self.cluster = NatsCluster(nodes, workdir / "nats")
        plugins, key, pub, base = prepare(workdir)
        self.trace, labels = bundled_trace()
        self.attack = attack_rows(labels)
        py = [sys.executable, "-m", "atomwatch", "--log-level", "info"]
        self.files: dict[str, Path] = {}
        self.controllers: dict[str, Process] = {}
        self.agents: dict[str, Process] = {}
        self._argv: dict[str, list[str]] = {}
        urls = self.cluster.urls
        n = 0
        for site, hosts in SHARDS.items():
            for rank, tag in enumerate(RANKS):
                name = f"{site}-{tag}"
                self.files[name] = workdir / f"{name}.jsonl"
                self._argv[name] = [
                    *py,
                    "controller",
                    "--broker",
                    ",".join(urls[(n + i) % len(urls)] for i in range(len(urls))),
                    "--site",
                    site,
                    "--name",
                    name,
                    "--rank",
                    str(rank),
                    "--plugins-dir",
                    str(plugins),
                    "--tick",
                    str(AGENT_TICK),
                    "--rows",
                    "data",
                    "--db",
                    str(self.db(site)),
                    "--http",
                    "off",
                    "--signing-key",
                    str(key),
                    "--set",
                    f"faultprobe.out={self.files[name]}",
                    "--set",
                    "pca-spe.confirm=3",
                ]
                self.controllers[name] = Process(
                    name, self._argv[name], dict(base, ATOMWATCH_LOAD_PLUGINS="pca-spe"), workdir / f"{name}.log"
                )
                n += 1
            for host in hosts:
                self.files[host] = workdir / f"{host}.jsonl"
                argv = [
                    *py,
                    "agent",
                    "--broker",
                    ",".join(urls[(n + i) % len(urls)] for i in range(len(urls))),
                    "--site",
                    site,
                    "--host",
                    host,
                    "--plugins-dir",
                    str(plugins),
                    "--tick",
                    str(AGENT_TICK),
                    "--controller-key",
                    str(pub),
                    "--set",
                    "faultprobe.role=replay",
                    "--set",
                    f"faultprobe.trace={self.trace}",
                    "--set",
                    f"faultprobe.start={START[host]}",
                    "--set",
                    f"faultprobe.delta_rel={DELTA_REL}",
                    "--set",
                    f"faultprobe.out={self.files[host]}",
                    "--backlog-dir",
                    str(workdir / f"backlog-{host}"),
                ]
                (workdir / f"backlog-{host}").mkdir()
                self.agents[host] = Process(host, argv, dict(base, ATOMWATCH_LOAD_PLUGINS=""), workdir / f"{host}.log")
                n += 1
        self.tails = {name: Tail(path) for name, path in self.files.items()}
        self.records: dict[str, list[dict[str, Any]]] = {name: [] for name in self.files}
        self.expected_down: set[str] = set()

    def db(self, site: str) -> Path:
        return self.dir / f"{site}.sqlite"

    def processes(self) -> list[Process]:
        return [*self.controllers.values(), *self.agents.values()]

    def start(self) -> None:
        self.cluster.start()
        for p in self.processes():
            p.start()

    def poll(self) -> dict[str, list[dict[str, Any]]]:
        for name, tail in self.tails.items():
            self.records[name] += tail.new()
        for p in self.processes():
            if p.name not in self.expected_down and p.proc is not None and p.proc.poll() is not None:
                raise HarnessError(f"{p.name} exited with status {p.proc.returncode}; its log ends:\n{p.tail()}")
        return self.records

    def wait(self, what: str, ready: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            found = ready()
            if found:
                return found
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}:\n{p.tail(20)}" for p in self.processes())
                raise HarnessError(f"timed out after {timeout:g} s waiting for {what}; logs:\n{logs}")
            time.sleep(0.02)

    def active(self, site: str) -> str | None:
        """The controller of ``site`` whose log says last that it became the active one."""
        found = None
        for name, p in self.controllers.items():
            if not name.startswith(f"{site}-") or p.name in self.expected_down:
                continue
            text = p.log.read_text(errors="replace") if p.log.exists() else ""
            if "is now the active one" in text.rsplit("is now a standby", 1)[-1]:
                found = name
        return found

    def rows(self, controller: str, host: str, after: float = 0.0) -> list[dict[str, Any]]:
        scope = f"{host_site(host)}/{host}"
        records = self.records.get(controller, [])
        return [r for r in records if "index" in r and r.get("scope") == scope and r["ts"] >= after]

    def alarms(self, site: str) -> list[tuple[str, int, str]]:
        """(scope, alarm id, state) of every alarm in the shard's file."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db(site)}?mode=ro", uri=True)) as db:
            return [tuple(r) for r in db.execute("SELECT scope, id, state FROM alarms ORDER BY id")]

    def stop(self) -> None:
        for p in self.agents.values():
            p.stop()
        for p in self.controllers.values():
            p.stop()
        self.cluster.stop()

    def cleanup(self) -> None:
        for p in self.processes():
            p.cleanup()
        with contextlib.suppress(Exception):
            self.cluster.stop()


def host_site(host: str) -> str:
    return next(site for site, hosts in SHARDS.items() if host in hosts)


class TraceTruth:
    """The values the replay collector reads at each trace row, stepped from ``start`` as an
    agent steps (a row's values may depend on the row read before it, e.g. where the loop wraps)."""

    def __init__(self, trace: Path, start: int):
        from atomwatch.plugins.replay import ReplayCollector

        self.replay = ReplayCollector(str(trace), loop=True, delta_rel=DELTA_REL)
        self.replay.position = float(start % self.replay.trace.rows)
        self.cache: dict[int, dict[str, float]] = {}

    def at(self, row: int) -> dict[str, float]:
        for _ in range(2 * self.replay.trace.rows):
            if row in self.cache:
                break
            reading = self.replay.collect()
            self.cache.setdefault(
                self.replay.last_row, {k.column: float(v) for k, v in reading.values.items() if v is not None}
            )
        return self.cache.get(row, {})


def values_off(run: ShardRun) -> dict[str, int]:
    """Per controller, its live rows no trace row the agent had read by then explains within Δ
    (the agent's latest tick before the row, or the one before it, still in flight)."""
    off: dict[str, int] = {}
    for name in run.controllers:
        bad = 0
        for host in run.agents:
            truth = TraceTruth(run.trace, START[host])
            ticks = [(r["t"], r["row"]) for r in run.records[host] if r.get("row") is not None]
            times = [t for t, _ in ticks]
            for row in run.rows(name, host):
                if row["late"]:
                    continue
                k = bisect.bisect_right(times, row["ts"]) - 1
                candidates = [ticks[i][1] for i in (k, k - 1) if i >= 0]
                if not candidates:
                    continue
                if not any(_within(row, truth.at(r)) for r in candidates):
                    bad += 1
        off[name] = bad
    return off


def _within(row: dict[str, Any], truth: dict[str, float]) -> bool:
    for column, value in row["values"].items():
        delta = row["deltas"].get(column)
        want = truth.get(column)
        if value is None or want is None or delta is None or math.isnan(delta):
            continue
        if abs(value - want) > delta * (1 + 1e-9) + 1e-9:
            return False
    return True


def _opened(run: ShardRun, controller: str, scope: str) -> bool:
    return any(r.get("alarm") is not None and r.get("scope") == scope for r in run.records[controller])


def run_failover(workdir: Path | None = None, kill_node: bool = True) -> dict[str, Any]:
    """Start everything; kill -9 broker node 0, then (right after it opened the alarm of hv-a)
    the active controller of shard s1; run until hv-b's and hv-c's alarms are open; stop and
    judge. Every process is gone when it returns."""
    import tempfile
    from collections import Counter

    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="atomwatch-shards-")))
        run = ShardRun(workdir)
        stack.callback(run.cleanup)
        run.start()
        run.wait("an active controller on each shard", lambda: all(run.active(s) for s in SHARDS), 60)

        def live_everywhere(after: float) -> bool:
            return all(run.rows(run.active(host_site(h)) or "", h, after) for h in run.agents)

        run.wait("live rows of every host at its shard's active controller", lambda: live_everywhere(0.0), 60)
        node_resume = None
        if kill_node:
            node_killed = time.time()
            run.cluster.kill_node(0)
            run.wait("live rows again after broker node 0 died", lambda: live_everywhere(node_killed + AGENT_TICK), 60)
            node_resume = round(time.time() - node_killed, 3)

        # (an alarm is written within milliseconds of being opened; the kill comes after it is)
        run.wait("the alarm of hv-a in its file", lambda: any(a[0] == "s1/hv-a" for a in run.alarms("s1")), 120)
        first = run.active("s1") or ""
        standby = next(n for n in run.controllers if n.startswith("s1-") and n != first)
        run.expected_down.add(first)
        killed = time.time()
        run.controllers[first].kill9()
        run.wait(f"{standby} active", lambda: run.active("s1") == standby, 30)
        failover = time.time() - killed
        s2 = run.active("s2") or ""
        run.wait(
            "the alarms of hv-b and hv-c",
            lambda: (
                (_opened(run, standby, "s1/hv-b") or _opened(run, first, "s1/hv-b")) and _opened(run, s2, "s2/hv-c")
            ),
            120,
        )
        time.sleep(10 * AGENT_TICK)
        run.stop()
        run.poll()
        per_host = Counter(scope for site in SHARDS for scope, _, _ in run.alarms(site))
        return {
            "agent_tick_s": AGENT_TICK,
            "alarms_per_host": {f"{host_site(h)}/{h}": per_host.get(f"{host_site(h)}/{h}", 0) for h in run.agents},
            "alarms_elsewhere": sum(n for scope, n in per_host.items() if scope.split("/")[1] not in run.agents),
            "values_off_by_more_than_delta": values_off(run),
            "rows": {name: sum("index" in r for r in run.records[name]) for name in run.controllers},
            "node_kill_to_live_rows_s": node_resume,
            "controller_kill_to_standby_active_s": round(failover, 3),
            "failover_ticks": round(failover / AGENT_TICK, 2),
            "killed": {"broker_node": 0 if kill_node else None, "controller": first, "took_over": standby},
        }

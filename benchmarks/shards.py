"""Shards on a clustered broker: hosts kept up with for 1, 2 and 4 shards, failover in ticks, and
the cluster's message rate against one Mosquitto, in one run.

*Shards.* Each trial runs S shards (sites ``scale0`` … ``scale<S-1>``), each one ``atomwatch
controller`` (pca-spe only, its own alarms file and /metrics) and one fleet process of N simulated
hosts (:mod:`benchmarks._fleet`: 10 VMs × 8 metrics, ATOM's tracking, real births and data
messages at QoS 1), on a three-node NATS cluster (:mod:`atomwatch.lab.broker_cluster`; shard k's
controller and fleet on node k mod 3) — and, as the baseline, one shard on one Mosquitto. Time is
compressed as in ``benchmarks/scale.py``: a tick of ``--tick`` seconds stands for 10 s, so N hosts
stand for ``N × 10 / tick`` hosts of a deployment. A shard *keeps up* when its controller made a
row of each host at every tick of the measured window (≥ 97 %), skipped no tick, its tick loop
was late by less than a tick at p99, and the messages it had not taken did not grow. No standby
runs here: a standby does the active one's work (it makes the same rows and runs the same
detectors), so it costs what the active controller costs.

*Failover* (:func:`benchmarks.shard_scenarios.run_failover`): broker node 0 killed -9, then the
active controller of a shard; seconds and ticks until the standby acts, alarms per host, values
off by more than Δ.

*Message rate* (:func:`message_rate`, with :mod:`benchmarks.brokers`): QoS 1 messages of 300 bytes
per second across nodes of the cluster and through one Mosquitto, in the same run.

    python -m benchmarks.shards [--quick] [--tick 1.0] [--hosts-per-shard 150] [--shards 1,2,4] [--up-to N]

``--up-to N``: for each shard count, double the hosts per shard from ``--hosts-per-shard`` while
every shard keeps up, up to N; the largest N kept up is the figure (``largest_kept_up``).

Prints one JSON object. The machine is shared (2 cores): CPU figures are the processes' own CPU
time, and ``hosts_at_10s_per_core`` is what one whole core would take at the measured cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import emit, free_port, machine
from benchmarks.scale import Lines, quantile, read_metrics, wait_fleet_tick


class ShardTrial:
    """S controllers and S fleet processes on ``urls`` (one broker, or a cluster's nodes)."""

    def __init__(self, urls: list[str], shards: int, hosts: int, tick: float, min_rows: int, ticks: int):
        self.tmp = Path(tempfile.mkdtemp(prefix="atomwatch-shards-"))
        self.procs: list[subprocess.Popen] = []
        self.shards, self.hosts, self.tick = shards, hosts, tick
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMWATCH_")}
        env.update(XDG_STATE_HOME=str(self.tmp), ATOMWATCH_LOAD_PLUGINS="pca-spe", ATOMWATCH_NO_JIT="1")
        self.http: list[int] = []
        self.cprocs: list[psutil.Process] = []
        self.fleet: list[Lines] = []
        for k in range(shards):
            nodes = [urls[(k + i) % len(urls)] for i in range(len(urls))]
            port = free_port()
            self.http.append(port)
            log = (self.tmp / f"controller{k}.log").open("wb")
            proc = self._start(
                [sys.executable, "-m", "atomwatch", "controller", "--broker", ",".join(nodes), "--site", f"scale{k}"]
                + ["--tick", str(tick), "--db", str(self.tmp / f"alarms{k}.sqlite"), "--http", f"127.0.0.1:{port}"]
                + ["--detector", "pca-spe", "--set", f"pca-spe.min_rows={min_rows}", "--name", f"shard{k}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.cprocs.append(psutil.Process(proc.pid))
        for k in range(shards):
            self._wait_log(self.tmp / f"controller{k}.log", "connected to", 60)
        for k in range(shards):
            node_port = int(urls[k % len(urls)].rsplit(":", 1)[1])
            fcmd = [sys.executable, "-m", "benchmarks._fleet", "--port", str(node_port), "--site", f"scale{k}"]
            fcmd += ["--first", "0", "--count", str(hosts), "--tick", str(tick), "--ticks", str(ticks)]
            self.fleet.append(Lines(self._start(fcmd, stdout=subprocess.PIPE, text=True)))

    def _start(self, cmd: list[str], **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, **kw)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _wait_log(path: Path, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while text not in path.read_text(errors="replace"):
            if time.monotonic() > end:
                raise RuntimeError(f"{path.name}: no {text!r} within {timeout:g} s:\n{path.read_text()[-2000:]}")
            time.sleep(0.1)

    def scrape(self, k: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http[k]}/metrics", timeout=30) as r:
            text = r.read().decode()
        out: dict[str, Any] = {"cpu": sum(self.cprocs[k].cpu_times()[:2]), "at": time.monotonic()}
        out["published"] = self.fleet[k].latest.get("tick", {}).get("published", 0)
        out.update(read_metrics(text))
        return out

    def close(self) -> None:
        for f in self.fleet:
            if f.proc.poll() is None:
                f.proc.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def shard_figures(a: dict[str, Any], b: dict[str, Any], hosts: int, tick: float) -> dict[str, Any]:
    wall = b["at"] - a["at"]
    rows = b["atomwatch_rows"] - a["atomwatch_rows"]
    ticks = b["atomwatch_detection_ticks"] - a["atomwatch_detection_ticks"]
    skipped = b["atomwatch_detection_ticks_skipped"] - a["atomwatch_detection_ticks_skipped"]
    late_p99 = quantile(
        a["atomwatch_detection_tick_lateness_seconds"], b["atomwatch_detection_tick_lateness_seconds"], 0.99
    )
    growth = (b["published"] - b["ingested"]) - (a["published"] - a["ingested"])
    cpu = b["cpu"] - a["cpu"]
    keeps_up = (
        ticks >= 0.9 * wall / tick
        and rows >= 0.97 * hosts * ticks
        and skipped == 0
        and late_p99 is not None
        and late_p99 < tick
        and growth <= 0.1 * hosts
    )
    return {
        "keeps_up": bool(keeps_up),
        "rows_per_tick_per_scope": round(rows / max(1, hosts * ticks), 3),
        "controller_cores": round(cpu / wall, 3),
        "cpu_per_host_row_us": round(1e6 * cpu / max(rows, 1), 1),
        "messages_per_s": round((b["ingested"] - a["ingested"]) / wall, 1),
        "tick_lateness_p99_s": None if late_p99 is None else round(late_p99, 4),
    }


def run_shards(urls: list[str], shards: int, hosts: int, args: argparse.Namespace) -> dict[str, Any]:
    warm = args.min_rows + 5
    t = ShardTrial(urls, shards, hosts, args.tick, args.min_rows, warm + args.measure + 3)
    try:
        end = time.monotonic() + 120
        while sum(1 for f in t.fleet if "ready" in f.latest) < shards:
            if time.monotonic() > end:
                raise RuntimeError("the fleet never got ready")
            time.sleep(0.05)
        wait_fleet_tick(t.fleet, warm, timeout=(warm + 30) * args.tick + 60)
        a = [t.scrape(k) for k in range(shards)]
        wait_fleet_tick(t.fleet, warm + args.measure, timeout=args.measure * args.tick * 4 + 60)
        b = [t.scrape(k) for k in range(shards)]
    finally:
        t.close()
    per = [shard_figures(a[k], b[k], hosts, args.tick) for k in range(shards)]
    cores = sum(p["controller_cores"] for p in per)
    return {
        "shards": shards,
        "hosts_per_shard": hosts,
        "hosts_per_shard_at_10s": round(hosts * 10 / args.tick),
        "total_hosts_at_10s": round(shards * hosts * 10 / args.tick),
        "keeps_up": all(p["keeps_up"] for p in per),
        "controller_cores": round(cores, 3),
        "hosts_at_10s_per_core": round(shards * hosts * 10 / args.tick / max(cores, 1e-9)),
        "per_shard": per,
    }


def search(urls: list[str], shards: int, args: argparse.Namespace) -> dict[str, Any]:
    """The trial at ``--hosts-per-shard``; with ``--up-to``, doubled while every shard keeps up."""
    n = args.hosts_per_shard
    best = run_shards(urls, shards, n, args)
    trials = [best]
    while args.up_to and best["keeps_up"] and 2 * n <= args.up_to:
        n *= 2
        trial = run_shards(urls, shards, n, args)
        trials.append(trial)
        if not trial["keeps_up"]:
            break
        best = trial
    out = dict(best)
    out["largest_kept_up"] = best["total_hosts_at_10s"] if best["keeps_up"] else 0
    out["trials"] = [{k: t[k] for k in ("hosts_per_shard", "keeps_up", "controller_cores")} for t in trials]
    return out


def message_rate(args: argparse.Namespace) -> dict[str, Any]:
    """QoS 1 messages/s of 300 bytes, 4 publishers on node 0 to one subscriber on node 2 of the
    cluster, and through one Mosquitto (:func:`benchmarks.brokers.throughput`), in this run."""
    import asyncio

    from benchmarks import brokers

    out: dict[str, Any] = {}
    messages = 5000 if args.quick else 20000
    for name in ("mosquitto", "nats"):
        b = brokers.start(name)
        try:
            out[name] = asyncio.run(brokers.throughput(b, 2, 4, messages, 30.0))
        finally:
            b.stop()
    out["nats_over_mosquitto"] = round(out["nats"]["msgs_per_s"] / max(out["mosquitto"]["msgs_per_s"], 1e-9), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer ticks, no failover run")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between ticks (stands for 10 s)")
    p.add_argument("--hosts-per-shard", type=int, default=150)
    p.add_argument("--shards", default="1,2,4", help="shard counts to run, comma-separated")
    p.add_argument("--min-rows", type=int, default=30, help="pca-spe.min_rows (default 30, as benchmarks/scale.py)")
    p.add_argument("--measure", type=int, default=None, help="ticks measured per trial (default 15; 8 --quick)")
    p.add_argument("--up-to", type=int, default=None, help="double the hosts per shard while kept up, up to this")
    args = p.parse_args(argv)
    args.measure = args.measure or (8 if args.quick else 15)
    from atomwatch.lab.broker_cluster import NatsCluster

    out: dict[str, Any] = {"machine": machine(), "tick_s": args.tick, "stands_for_tick_s": 10.0}
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory(prefix="atomwatch-shards-mq-") as d:
        port = free_port()
        conf = Path(d) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            out["mosquitto_1_shard"] = run_shards([f"mqtt://127.0.0.1:{port}"], 1, args.hosts_per_shard, args)
        finally:
            broker.terminate()
            broker.wait(10)
    cluster = NatsCluster(3).start()
    try:
        out["nats_3_nodes"] = [search(cluster.urls, int(s), args) for s in args.shards.split(",")]
    finally:
        cluster.stop()
    out["message_rate"] = message_rate(args)
    base = out["mosquitto_1_shard"]["hosts_at_10s_per_core"]
    for r in out["nats_3_nodes"]:
        r["per_core_over_mosquitto"] = round(r["hosts_at_10s_per_core"] / max(base, 1), 3)
    if not args.quick:
        from benchmarks.shard_scenarios import run_failover

        try:
            out["failover"] = run_failover()
        except Exception as e:  # the figures above still count; say what failed
            out["failover"] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
    emit(out)


if __name__ == "__main__":
    main()

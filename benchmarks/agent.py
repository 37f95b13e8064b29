"""What one agent costs per tick: collect, track, publish, with libvirt's test driver and a real broker.

For 10, 50 and 200 domains (``--domains``) it writes a libvirt test-driver file of that many
running domains (2 vCPUs, a disk, a NIC each) and runs the real :class:`atomwatch.agent.runtime.Agent`
with the real libvirt collector on ``test:///that/file.xml`` (a real libvirt connection; no guest
boots), publishing to a Mosquitto the benchmark starts on loopback. The test driver's
``getAllDomainStats`` reports only the domains' state, so the collector's fetch is wrapped to add
the counters a QEMU domain reports (vCPU times, interface and block counters, balloon), advancing
by random amounts every call: the agent parses, rates, tracks and publishes values that move.
No controller runs; a retained controller state says one is online (as a controller's does), so
the agent publishes its ticks instead of keeping them for one (store-and-forward).

Per size, over ``--ticks`` ticks at ``--tick`` seconds: process CPU time (user + system, every
thread, ``time.process_time``; the machine's CPUs are shared with other sessions, so wall time
would not be the agent's own) of the whole process per tick (``all_in``), and split into
``collect`` (the sampler: the libvirt call in its thread, parsing, rates), ``publish`` (encoding and
handing the data message to the MQTT client) and ``track`` (the rest of the tick: series table,
the tracker's step, the message's values); ``percent_core_at_1s`` is ``all_in`` as a share of one
core at a 1 s tick (the target: under 1 % at 50 domains). The baseline measured in the same run:
the bare ``getAllDomainStats`` call on the same connection (``libvirt_call_ms``), and
``all_in_over_libvirt_call`` the agent's cost as a multiple of it.

    python -m benchmarks.agent [--domains 10,50,200] [--ticks 40] [--tick 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

import atomwatch
from atomwatch import protocol
from atomwatch.agent.config import AgentConfig
from atomwatch.agent.runtime import Agent
from atomwatch.config import BrokerAddress
from atomwatch.pluginmanager import PluginManager
from benchmarks._common import emit, machine


def domains_xml(n: int) -> str:
    doms = []
    for i in range(n):
        doms.append(
            f"<domain type='test'><name>bench{i:04d}</name><uuid>00000000-0000-4000-8000-{i:012d}</uuid>"
            "<memory>1048576</memory><currentMemory>1048576</currentMemory><vcpu>2</vcpu>"
            "<os><type arch='x86_64'>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><source file='/bench{i}.img'/><target dev='vda' bus='virtio'/></disk>"
            f"<interface type='network'><source network='default'/><target dev='vnet{i}'/><model type='virtio'/>"
            "</interface></devices></domain>"
        )
    return "<node>" + "".join(doms) + "</node>"


class Counters:
    """The counters a QEMU domain reports, added to the test driver's records, moving every call."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, int]] = {}
        self.rng = random.Random(16)

    def add(self, records: list[tuple[Any, dict[str, Any]]]) -> list[tuple[Any, dict[str, Any]]]:
        r = self.rng
        for dom, stats in records:
            uuid = dom.UUIDString()
            c = self.state.setdefault(
                uuid, {"cpu0": 0, "cpu1": 0, "rx": 0, "tx": 0, "rr": 0, "wr": 0, "rb": 0, "wb": 0}
            )
            c["cpu0"] += r.randrange(0, 300_000_000)
            c["cpu1"] += r.randrange(0, 300_000_000)
            c["rx"] += r.randrange(0, 200_000)
            c["tx"] += r.randrange(0, 50_000)
            c["rr"] += r.randrange(0, 20)
            c["wr"] += r.randrange(0, 20)
            c["rb"] += r.randrange(0, 400_000)
            c["wb"] += r.randrange(0, 400_000)
            stats.update(
                {
                    "vcpu.current": 2,
                    "vcpu.maximum": 2,
                    "vcpu.0.time": c["cpu0"],
                    "vcpu.1.time": c["cpu1"],
                    "net.count": 1,
                    "net.0.rx.bytes": c["rx"],
                    "net.0.tx.bytes": c["tx"],
                    "block.count": 1,
                    "block.0.rd.reqs": c["rr"],
                    "block.0.wr.reqs": c["wr"],
                    "block.0.rd.bytes": c["rb"],
                    "block.0.wr.bytes": c["wb"],
                    "balloon.available": 1_000_000,
                    "balloon.usable": 400_000 + r.randrange(0, 50_000),
                }
            )
        return records


class Collectors:
    def __init__(self, collector: Any) -> None:
        self.collector = collector

    @atomwatch.hookimpl
    def register_collectors(self, config: Any) -> list[Any]:
        return [self.collector]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_size(n: int, port: int, ticks: int, tick: float, tmp: Path) -> dict[str, Any]:
    from atomwatch.plugins.libvirt_collector import LibvirtCollector

    xml = tmp / f"domains-{n}.xml"
    xml.write_text(domains_xml(n))
    collector = LibvirtCollector(uri=f"test://{xml}", budget=max(0.05, 0.8 * tick))
    counters = Counters()
    stats = collector._stats
    collector._stats = lambda conn: counters.add(stats(conn))  # type: ignore[method-assign]
    pm = PluginManager()
    pm.register(Collectors(collector), name="bench-libvirt")
    broker = BrokerAddress.parse(f"mqtt://127.0.0.1:{port}")
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-controller-{n}") as c:
        online = protocol.State(online=True, ts=time.time(), controller="bench", active=True)
        await c.publish(protocol.state_topic("bench", "bench"), protocol.encode(online), qos=1, retain=True)
    agent = Agent(AgentConfig(broker=broker, site="bench", host=f"hv{n}", tick=tick), pm)
    split = {"collect": 0.0, "publish": 0.0, "tick": 0.0}
    sample, publish, tick_fn = agent.sampler.sample, agent._publish_tick, agent.tick

    async def timed_sample():
        t0 = time.process_time()
        try:
            return await sample()
        finally:
            split["collect"] += time.process_time() - t0

    async def timed_publish(*a):
        t0 = time.process_time()
        try:
            return await publish(*a)
        finally:
            split["publish"] += time.process_time() - t0

    async def timed_tick():
        t0 = time.process_time()
        try:
            return await tick_fn()
        finally:
            split["tick"] += time.process_time() - t0

    agent.sampler.sample = timed_sample  # type: ignore[method-assign]
    agent._publish_tick = timed_publish  # type: ignore[method-assign]
    agent.tick = timed_tick  # type: ignore[method-assign]
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.connected.wait(), 10)
    while agent.ticks < 5:  # warm: first readings, the birth
        await asyncio.sleep(tick / 4)
    for k in split:
        split[k] = 0.0
    first, cpu0, data0, values0 = agent.ticks, time.process_time(), agent.stats["data"], agent.stats["values_sent"]
    while agent.ticks < first + ticks:
        await asyncio.sleep(tick / 4)
    done, cpu = agent.ticks - first, time.process_time() - cpu0
    data, values = agent.stats["data"] - data0, agent.stats["values_sent"] - values0
    agent.stop()
    await task
    # the baseline: the bare libvirt call on the same connection
    conn = collector._checkout()
    times = []
    for _ in range(20):
        t0 = time.process_time()
        conn.getAllDomainStats(collector.stats_mask, collector.flags)
        times.append(time.process_time() - t0)
    collector.close()
    times.sort()
    call = times[len(times) // 2]
    all_in = cpu / done
    return {
        "domains": n,
        "series": n * 8,
        "ticks": done,
        "data_messages": data,
        "values_sent_per_tick": round(values / max(done, 1), 1),
        "cpu_ms_per_tick": {
            "all_in": round(1e3 * all_in, 3),
            "collect": round(1e3 * split["collect"] / done, 3),
            "track": round(1e3 * (split["tick"] - split["collect"] - split["publish"]) / done, 3),
            "publish": round(1e3 * split["publish"] / done, 3),
        },
        "percent_core_at_1s": round(100 * all_in / 1.0, 3),
        "libvirt_call_ms": round(1e3 * call, 3),
        "all_in_over_libvirt_call": round(all_in / call, 2) if call > 0 else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.agent", description=__doc__.split("\n")[0])
    p.add_argument("--domains", default="10,50,200", help="comma list of domain counts (default 10,50,200)")
    p.add_argument("--ticks", type=int, default=40, help="ticks measured per size (default 40)")
    p.add_argument("--tick", type=float, default=0.25, help="seconds between ticks (default 0.25)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="atomwatch-agent-bench-"))
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        sizes = [int(x) for x in args.domains.split(",") if x.strip()]
        results = [asyncio.run(one_size(n, port, args.ticks, args.tick, tmp)) for n in sizes]
    finally:
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    emit(
        {
            "benchmark": "agent",
            "machine": machine(),
            "note": "CPU is this process' CPU time (all threads); the machine is shared with other sessions. "
            "libvirt's test driver reports only domain state: the collector's records get synthetic QEMU counters",
            "tick_s": args.tick,
            "sizes": results,
        }
    )


if __name__ == "__main__":
    main()

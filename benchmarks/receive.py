"""The controller's MQTT receive path: CPU per message, and what a stalled subscriber keeps.

1. Cost: a real Mosquitto on loopback, one publisher process sending ``--messages`` data-sized
   payloads at QoS 1, and in this process :func:`atomwatch.mqtt.stay_connected` — the code the
   controller runs — with a handler that only counts. Four ways, each timed by this process's CPU
   from the first message to the last: an async handler (aiomqtt's message iterator: a task and a
   wait per message) or a plain one (called as paho reads each packet), each with a QoS 1 or a
   QoS 0 subscription. The baseline is the path the controller had before (async, QoS 1).
2. A stall: Mosquitto with its default limits, a subscriber that stops reading while a burst of
   ``--messages`` is published, then reads for a few seconds: how many it gets at QoS 1 (the
   broker's in-flight window and queue) and at QoS 0 (what the socket buffers hold).

Usage: ``python -m benchmarks.receive [--messages 20000] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho

from atomwatch.config import BrokerAddress
from atomwatch.mqtt import stay_connected, subscribe
from benchmarks._common import emit, free_port, machine, wait_port

#: a data message of about the size an agent of 10 VMs sends (its values are not read here)
PAYLOAD = b'{"session":1,"seq":1,"ts":1.0,"values":[[1,0.5],[2,0.25]]}' + b" " * 640

PUBLISHER = r"""
import sys, time, paho.mqtt.client as m
port, n, payload = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
c = m.Client(m.CallbackAPIVersion.VERSION2)
c.max_queued_messages_set(0)
c.max_inflight_messages_set(1000)
c.connect("127.0.0.1", port)
c.loop_start()
for _ in range(n):
    c.publish("atomwatch/v1/bench/h/data", payload, qos=1)
while c._out_messages:
    time.sleep(0.01)
c.disconnect()
c.loop_stop()
"""


class Broker:
    def __init__(self, config: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aw-bench-rx-"))
        self.port = free_port()
        (self.dir / "m.conf").write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{config}")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.dir / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def publish(self, n: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", PUBLISHER, str(self.port), str(n), PAYLOAD.decode()])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def cost(broker: Broker, n: int, plain: bool, qos: int) -> float:
    """This process's CPU µs per message received through ``stay_connected``."""
    stopping = asyncio.Event()
    seen = {"n": 0, "cpu": 0.0}

    def count(_message: aiomqtt.Message) -> None:
        if seen["n"] == 0:
            seen["cpu"] = time.process_time()
        seen["n"] += 1
        if seen["n"] == n:
            seen["cpu"] = time.process_time() - seen["cpu"]
            stopping.set()

    async def count_async(message: aiomqtt.Message) -> None:
        count(message)

    async def on_connect(client: aiomqtt.Client) -> None:
        await subscribe(client, ["atomwatch/v1/bench/#"], qos)
        publishers.append(broker.publish(n))

    publishers: list[subprocess.Popen] = []
    session = asyncio.create_task(
        stay_connected(
            BrokerAddress("127.0.0.1", broker.port),
            identifier=f"bench-rx-{int(plain)}-{qos}",
            will=lambda: aiomqtt.Will("atomwatch/v1/bench/controller/state/x", b"{}"),
            keepalive=15,
            stopping=stopping,
            on_connect=on_connect,
            on_message=count if plain else count_async,
            on_disconnect=lambda: None,
            log=logging.getLogger("bench.receive"),
        )
    )
    await stopping.wait()
    session.cancel()  # as the controller ends its session
    await asyncio.gather(session, return_exceptions=True)
    for p in publishers:
        p.wait()
    return 1e6 * seen["cpu"] / n


def stalled(n: int, qos: int) -> int:
    """Messages of a burst of ``n`` a subscriber gets that did not read while it was published."""
    broker = Broker("")  # Mosquitto's default limits, as a deployment that set none
    try:
        got = [0]
        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-stall-{qos}")
        sub.on_message = lambda *_: got.__setitem__(0, got[0] + 1)
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("atomwatch/v1/bench/#", qos=qos)
        for _ in range(20):
            sub.loop(0.05)
        broker.publish(n).wait()  # not reading meanwhile
        time.sleep(1.0)
        until = time.monotonic() + 8.0
        while time.monotonic() < until:
            sub.loop(0.05)
        sub.disconnect()
        return got[0]
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.receive", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=2, help="rounds of the four ways; the best of each is kept")
    args = p.parse_args(argv)
    broker = Broker("max_queued_messages 1000000\nmax_inflight_messages 0\n")
    ways = {"async_qos1": (False, 1), "plain_qos1": (True, 1), "async_qos0": (False, 0), "plain_qos0": (True, 0)}
    best: dict[str, float] = {}
    try:
        for _ in range(args.repeat):
            for name, (plain, qos) in ways.items():
                us = asyncio.run(cost(broker, args.messages, plain, qos))
                best[name] = min(best.get(name, us), us)
    finally:
        broker.stop()
    base = best["async_qos1"]
    emit(
        {
            "benchmark": "receive",
            "machine": machine(),
            "messages": args.messages,
            "payload_bytes": len(PAYLOAD),
            "cpu_us_per_message": {k: round(v, 1) for k, v in best.items()},
            "ratio_to_before": {k: round(v / base, 2) for k, v in best.items()},
            "before": "async_qos1 (aiomqtt's iterator, QoS 1 subscription)",
            "now": "plain_qos0 (the controller's path)",
            "stall_kept_of_burst": {
                "burst": args.messages,
                "qos1": stalled(args.messages, 1),
                "qos0": stalled(args.messages, 0),
                "broker": "Mosquitto, default max_inflight_messages / max_queued_messages",
            },
        }
    )


if __name__ == "__main__":
    main()

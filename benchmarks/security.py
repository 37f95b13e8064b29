"""Benchmark of what securing a site costs: data messages per second through Mosquitto over TLS
(client certificates, as ``atomwatch secure init`` configures it) against plain TCP, in one run.

One Mosquitto on loopback with two listeners, a plain one and a TLS one (certificates made with
:mod:`atomwatch.pki` in a temporary folder). For each listener in turn, a publisher sends
``--messages`` QoS-1 data messages of a realistic payload (built with :mod:`atomwatch.protocol`:
``--values`` tracked values, as one hypervisor's tick) while a subscriber on the same listener
counts them; the rate is messages received over the time from the first publish to the last
message received. ``--rounds`` alternates plain and TLS and keeps the best of each. Bounded by
``--timeout`` seconds per round. Prints one JSON object; the ``"transport"`` key holds the figures.

    python -m benchmarks.security [--messages 20000] [--values 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from atomwatch import pki, protocol
from atomwatch.config import BrokerAddress
from benchmarks._common import emit, machine

SITE = "bench"
#: publishes in flight at once (each awaits its PUBACK)
WINDOW = 200
#: aiomqtt warns about every window of pending publishes, which is the point here
QUIET_LOG = logging.getLogger("benchmarks.security.mqtt")
QUIET_LOG.setLevel(logging.ERROR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"mosquitto does not listen on 127.0.0.1:{port}")


def data_payload(values: int, seq: int = 0) -> bytes:
    rng = random.Random(seq)
    return protocol.encode(
        protocol.Data(
            session=1,
            seq=seq,
            ts=time.time(),
            values=[(alias, round(rng.uniform(0, 1e6), 3)) for alias in range(values)],
        )
    )


class Broker:
    """Mosquitto with a plain listener and a TLS one requiring client certificates."""

    def __init__(self, work: Path):
        self.work = work
        pki.init(work / "site", pki.Site(SITE, ["hv1"]))
        broker = work / "site" / "broker"
        if os.geteuid() == 0:  # mosquitto drops root for its own user, which must read the key
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("mosquitto")
                os.chown(broker / "server.key", user.pw_uid, user.pw_gid)
        self.plain, self.tls = free_port(), free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\n"
            f"listener {self.plain} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.tls} 127.0.0.1\nallow_anonymous true\n"
            f"certfile {broker}/server.crt\nkeyfile {broker}/server.key\ncafile {broker}/ca.crt\n"
            "tls_version tlsv1.2\nrequire_certificate true\nuse_identity_as_username true\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=(work / "mosquitto.log").open("wb"), stderr=subprocess.STDOUT
        )
        wait_port(self.plain)
        wait_port(self.tls)

    def client_args(self, tls: bool, who: str) -> dict:
        if not tls:
            return {"hostname": "127.0.0.1", "port": self.plain}
        d = self.work / "site" / ("controller" if who == "controller" else f"agents/{who}")
        ctx = BrokerAddress.parse(
            f"mqtts://127.0.0.1:{self.tls}", ca=str(d / "ca.crt"), cert=str(d / "client.crt"), key=str(d / "client.key")
        ).ssl_context()
        return {"hostname": "127.0.0.1", "port": self.tls, "tls_context": ctx}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def one_round(broker: Broker, tls: bool, messages: int, payload: bytes, timeout: float) -> dict:
    topic = protocol.data_topic(SITE, "hv1")
    got = 0
    done = asyncio.Event()
    async with (
        aiomqtt.Client(**broker.client_args(tls, "controller"), identifier=f"sub-{tls}") as sub,
        aiomqtt.Client(
            **broker.client_args(tls, "hv1"),
            identifier=f"pub-{tls}",
            max_queued_outgoing_messages=messages + 10,
            max_inflight_messages=WINDOW,
            logger=QUIET_LOG,
        ) as pub,
    ):
        await sub.subscribe(topic, qos=1)

        async def count():
            nonlocal got
            async for _ in sub.messages:
                got += 1
                if got >= messages:
                    done.set()
                    return

        counter = asyncio.create_task(count())
        start = time.perf_counter()
        deadline = start + timeout
        sent = 0
        while sent < messages and time.perf_counter() < deadline:
            n = min(WINDOW, messages - sent)
            await asyncio.gather(*(pub.publish(topic, payload, qos=1) for _ in range(n)))
            sent += n
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), max(0.1, deadline - time.perf_counter()))
        elapsed = time.perf_counter() - start
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counter
    return {"sent": sent, "received": got, "seconds": elapsed, "msgs_per_s": got / elapsed}


async def measure(messages: int, values: int, rounds: int, timeout: float) -> dict:
    payload = data_payload(values)
    with tempfile.TemporaryDirectory(prefix="atomwatch-bench-sec-") as d:
        work = Path(d)
        work.chmod(0o755)
        broker = Broker(work)
        try:
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(rounds):
                for tls in (False, True):
                    runs[tls].append(await one_round(broker, tls, messages, payload, timeout))
        finally:
            broker.stop()
    best = {tls: max(r["msgs_per_s"] for r in rs) for tls, rs in runs.items()}
    return {
        "broker": "mosquitto " + mosquitto_version(),
        "messages": messages,
        "payload_bytes": len(payload),
        "values_per_message": values,
        "qos": 1,
        "rounds": rounds,
        "plain_msgs_per_s": round(best[False], 1),
        "tls_msgs_per_s": round(best[True], 1),
        "ratio": round(best[True] / best[False], 3),
        "complete": all(r["received"] == messages for rs in runs.values() for r in rs),
        "runs": {"plain": runs[False], "tls": runs[True]},
    }


def mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = out.splitlines()[0] if out else ""
    return first.split("version")[-1].strip() if "version" in first else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="QoS-1 messages per round (default 20000)")
    parser.add_argument("--values", type=int, default=40, help="tracked values per data message (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of plain then TLS; the best is kept (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per round at most (default 60)")
    args = parser.parse_args(argv)
    transport = asyncio.run(measure(args.messages, args.values, args.rounds, args.timeout))
    emit({"benchmark": "security", "machine": machine(), "transport": transport})
    return 0


if __name__ == "__main__":
    sys.exit(main())

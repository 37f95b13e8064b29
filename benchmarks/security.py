"""What securing a site costs, in one run: TLS throughput through Mosquitto, and signing commands.

``"transport"``: data messages per second through Mosquitto over TLS (client certificates, as
``atomwatch secure init`` configures it) against plain TCP. One Mosquitto on loopback with two
listeners, a plain one and a TLS one (certificates made with :mod:`atomwatch.pki` in a temporary
folder). For each listener in turn, a publisher sends ``--messages`` QoS-1 data messages of a
realistic payload (``--values`` tracked values, as one hypervisor's tick) while a subscriber on
the same listener counts them; the rate is messages received over the time from the first publish
to the last message received. ``--rounds`` alternates plain and TLS and keeps the best of each,
bounded by ``--timeout`` seconds per round.

``"commands"``: the median time (µs, over ``--repeat`` runs of ``--calls`` calls) to sign a
command on the controller (:meth:`atomwatch.signing.Signer.sign`), to verify it on the agent
(:meth:`atomwatch.signing.Verifier.check`: canonical bytes, signature, addressee, dates, replay
cache), and as the baseline the JSON encoding of the same command, with the ratios.

    python -m benchmarks.security [--messages 20000] [--values 40] [--rounds 3] [--calls 2000]
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
import uuid
from pathlib import Path

import aiomqtt

from atomwatch import pki, protocol
from atomwatch.broker import free_port
from atomwatch.config import BrokerAddress
from benchmarks._common import emit, machine, seconds_per_call

SITE = "bench"
#: publishes in flight at once (each awaits its PUBACK)
WINDOW = 200
#: aiomqtt warns about every window of pending publishes, which is the point here
QUIET_LOG = logging.getLogger("benchmarks.security.mqtt")
QUIET_LOG.setLevel(logging.ERROR)


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


def commands(calls: int = 2000, repeat: int = 7) -> dict:
    from atomwatch import protocol, signing

    key, public = signing.generate_key_pair()
    signer = signing.Signer(key)
    site, host = "bench", "hv1"
    # a realistic terminate: the process identity and its authorization inside the parameters
    params = {
        "vm": "4c4c4544-0042-3510-8052-b4c04f4e3132",
        "vm_name": "guest1",
        "pid": 4242,
        "name": "cryptominer",
        "start_time": 1234.56,
        "group": False,
        "alarm": 17,
        "authorization": {"by": "verdict", "verdict": "malicious", "actor": "operator", "at": time.time()},
    }

    def new() -> protocol.Command:
        return protocol.Command(
            id=uuid.uuid4().hex[:16], command="terminate", params=params, ts=time.time(), timeout=60
        )

    unsigned = new()
    encode = seconds_per_call(lambda: protocol.encode(unsigned), calls, repeat)
    new_cost = seconds_per_call(new, calls, repeat)
    sign = seconds_per_call(lambda: signer.sign(new(), site, host), calls, repeat)

    # verification of distinct messages (each (id, nonce) once: the replay cache admits them all)
    wire = []
    for _ in range(calls * repeat):
        cmd = signer.sign(new(), site, host)
        wire.append(protocol.decode(protocol.cmd_topic(site, host, cmd.id), protocol.encode(cmd))[1])
    verifier = signing.Verifier([public], site, host, cache_size=len(wire) + 1)
    it = iter(wire)
    verify = seconds_per_call(lambda: verifier.check(next(it)), calls, repeat)

    sign_us = (sign["median"] - new_cost["median"]) * 1e6
    verify_us = verify["median"] * 1e6
    json_us = encode["median"] * 1e6
    return {
        "calls": calls,
        "repeat": repeat,
        "payload_bytes_unsigned": len(protocol.encode(unsigned)),
        "payload_bytes_signed": len(protocol.encode(signer.sign(new(), site, host))),
        "sign_us": round(sign_us, 2),
        "verify_us": round(verify_us, 2),
        "json_encode_us": round(json_us, 2),
        "sign_over_json_encode": round(sign_us / json_us, 1),
        "verify_over_json_encode": round(verify_us / json_us, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="QoS-1 messages per round (default 20000)")
    parser.add_argument("--values", type=int, default=40, help="tracked values per data message (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of plain then TLS; the best is kept (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per round at most (default 60)")
    parser.add_argument("--calls", type=int, default=2000, help="sign/verify calls per timed run (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="sign/verify timed runs; the median is kept (default 7)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1:
        parser.error("--calls and --repeat must be ≥ 1")
    signed = commands(args.calls, args.repeat)
    transport = asyncio.run(measure(args.messages, args.values, args.rounds, args.timeout))
    emit({"benchmark": "security", "machine": machine(), "commands": signed, "transport": transport})
    return 0


if __name__ == "__main__":
    sys.exit(main())

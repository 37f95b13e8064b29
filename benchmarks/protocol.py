"""Benchmark of the wire decoder's limits, printed as one JSON object.

1. Sizing: the bytes of a birth of 1,000 series with realistic names (36-character UUIDs,
   34-character VM names, CloudWatch metric names, full-precision Δ and values), against the
   default ``--max-message-size`` (``protocol.MAX_MESSAGE_SIZE``): the headroom the default leaves.
2. Cost: µs per ``protocol.decode`` of legitimate messages (that birth, data messages of 1,000 and
   100 values, a signed-looking command), each against plain ``json.loads`` of the same bytes in the
   same run (the ratio is what validation and the limits cost on top of parsing), and the part of
   it the limits take (the nesting pre-scan and the number-shape check): ``limits_share``.
3. Refusals: µs to refuse what used to hurt (100,000 levels of nesting, a 400-digit ``ts``, a
   payload of 16 MiB) against ``json.loads`` of the 16 MiB payload, once.

Usage: ``python -m benchmarks.protocol [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from typing import Any

from atomwatch import protocol
from atomwatch.series import METRIC_UNITS, SeriesKey
from benchmarks._common import emit, machine, seconds_per_call


def realistic_birth(series: int = 1000, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    metrics = list(METRIC_UNITS.items())
    rows = []
    for alias in range(series):
        metric, unit = metrics[alias % len(metrics)]
        vm = alias // len(metrics)
        key = SeriesKey(
            str(uuid.UUID(int=rng.getrandbits(128))), f"prod-eu-west-1a-web-frontend-{vm:04d}", metric, unit
        )
        rows.append(protocol.SeriesInfo(alias, key, rng.random() * 1000, rng.random() * 1e9))
    birth = protocol.Birth(1712345678901, "0.4.0", 10.0, 1712345678.123456, rows, 123456)
    return protocol.encode(birth)


def data(values: int, seed: int = 2) -> bytes:
    rng = random.Random(seed)
    msg = protocol.Data(1712345678901, 123456, 1712345688.1, [(a, rng.random() * 1e6) for a in range(values)])
    return protocol.encode(msg)


def command() -> bytes:
    cmd = protocol.Command("0123456789abcdef", "set-delta", {"metrics": {"CPUUtilization": 0.5}}, 1712345678.5, 60.0)
    cmd.site, cmd.host, cmd.expires, cmd.nonce, cmd.kid, cmd.sig = "eu", "hv1", 1712345738.5, "ab" * 16, "k1", "s" * 88
    return protocol.encode(cmd)


def timed(fn, calls: int, repeat: int) -> float:
    return seconds_per_call(fn, calls, repeat)["best"] * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.protocol", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    birth = realistic_birth()
    result: dict[str, Any] = {
        "machine": machine(),
        "sizing": {
            "birth_1000_series_bytes": len(birth),
            "max_message_size": protocol.MAX_MESSAGE_SIZE,
            "headroom": round(protocol.MAX_MESSAGE_SIZE / len(birth), 2),
            "max_series_at_default": protocol.MAX_MESSAGE_SIZE * 1000 // len(birth),
        },
        "decode_us": {},
        "refuse_us": {},
    }
    legit = {
        "birth_1000_series": (protocol.birth_topic("eu", "hv1"), birth, 20),
        "data_1000_values": (protocol.data_topic("eu", "hv1"), data(1000), 100),
        "data_100_values": (protocol.data_topic("eu", "hv1"), data(100), 1000),
        "signed_command": (protocol.cmd_topic("eu", "hv1", "0123456789abcdef"), command(), 5000),
    }
    for name, (topic, payload, calls) in legit.items():
        decode_us = timed(lambda t=topic, p=payload: protocol.decode(t, p), calls, args.repeat)
        loads_us = timed(lambda p=payload: json.loads(p), calls, args.repeat)
        limits_us = timed(lambda p=payload: (protocol._too_deep(p), protocol._plain_numbers(p)), calls, args.repeat)
        result["decode_us"][name] = {
            "bytes": len(payload),
            "decode": round(decode_us, 1),
            "json_loads": round(loads_us, 1),
            "ratio": round(decode_us / loads_us, 2),
            "limits": round(limits_us, 1),
            "limits_share": round(limits_us / decode_us, 3),
        }
    death = protocol.death_topic("eu", "hv1")
    huge = 16 * 1024 * 1024
    big = b'{"v": 1, "type": "death", "session": 1, "reason": "' + b"x" * huge + b'"}'
    hostile = {
        "nesting_100000": (b"[" * 100_000 + b"]" * 100_000, 20),
        "ts_400_digits": (b'{"v": 1, "type": "death", "session": 1, "ts": ' + b"4" * 400 + b"}", 1000),
        "payload_16MiB": (big, 1000),
    }
    for name, (payload, calls) in hostile.items():

        def refuse(p=payload):
            try:
                protocol.decode(death, p)
            except protocol.ProtocolError:
                return
            raise AssertionError(f"{name} was not refused")

        result["refuse_us"][name] = round(timed(refuse, calls, args.repeat), 1)
    start = time.perf_counter()
    json.loads(big)
    parse_16mib = time.perf_counter() - start
    result["refuse_us"]["json_loads_16MiB_baseline"] = round(parse_16mib * 1e6, 1)
    result["refuse_us"]["ratio_16MiB_refusal_to_parse"] = round(
        result["refuse_us"]["payload_16MiB"] / (parse_16mib * 1e6), 6
    )
    emit(result)


if __name__ == "__main__":
    main()

"""What security costs: Ed25519 signing and verification of a command, against encoding it.

``python -m benchmarks.security`` prints one JSON object. Its ``"commands"`` key: the median
time (µs, over ``--repeat`` runs of ``--calls`` calls) to sign a command on the controller
(:meth:`atomwatch.signing.Signer.sign`: nonce, expiry, canonical bytes, signature), to verify it
on the agent (:meth:`atomwatch.signing.Verifier.check` on the decoded message: canonical bytes,
signature, addressee, dates, replay cache), and as the baseline the JSON encoding of the same
command (:func:`atomwatch.protocol.encode`), with the ratios. (The ``"transport"`` key, TLS
throughput, is measured by its own function.)
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from benchmarks._common import emit, machine, seconds_per_call


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
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed run (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs; the median is reported (default 7)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1:
        parser.error("--calls and --repeat must be ≥ 1")
    emit({"benchmark": "security", "machine": machine(), "commands": commands(args.calls, args.repeat)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

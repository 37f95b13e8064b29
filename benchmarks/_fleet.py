"""Simulated hypervisors for ``benchmarks/scale.py``: many hosts from one process, real protocol.

Each host has ``--vms`` VMs × 8 metrics. A VM replays one guest of the lab's 1 s recordings
(``tests/data/lab-normal-1s*``: 6 guests, 900 ticks, the eight libvirt metrics) from its own
offset, each column scaled by its own factor and noised, and takes its memory utilisation from one
of the 20 Alibaba machines in ``../shared/data/precog`` (10 s steps), so the PCA sees correlated
normal work that differs from host to host. Every tick all hosts' values go through ATOM's
tracking rule (:class:`atomwatch.tracking.AtomTracker`, the libvirt collector's default Δ per
metric, one tracker over all series: the rule is per series), and each host publishes what its
tracker sends as a real ``data`` message (QoS 1) — the hosts spread over the tick as independent
agents are. Births (retained, QoS 1) go out at start and whenever the controller's state says
online again, as agents do.

Incident (``--incident-from K``): from the host's K-th tick, every host whose index is a multiple
of 10 turns abnormal — its first VM's CPU near 95 % and 5 MB/s more out on the network, a
cryptominer beside an exfiltration.

Run by the benchmark as ``python -m benchmarks._fleet ...``; prints JSON lines on stdout: one
``{"ready": …}`` after the births, one per tick (``published`` so far, how late the tick began),
and at the end the publish time of each incident host's first abnormal sample.
"""

from __future__ import annotations

import argparse
import glob
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from atomwatch import protocol
from atomwatch.series import SeriesKey
from atomwatch.traces import read_trace
from atomwatch.tracking import AtomTracker
from benchmarks._common import SHARED

REPO = Path(__file__).resolve().parents[1]
LAB = ("lab-normal-1s", "lab-normal-1s-b")
METRICS = (
    "CPUUtilization",
    "NetworkIn",
    "NetworkOut",
    "DiskReadOps",
    "DiskWriteOps",
    "DiskReadBytes",
    "DiskWriteBytes",
    "MemoryUtilization",
)
UNITS = ("%", "bytes/s", "bytes/s", "ops/s", "ops/s", "bytes/s", "bytes/s", "%")
#: the libvirt collector's default tracking errors, in METRICS order
DELTAS = (2.0, 1024.0, 1024.0, 2.0, 2.0, 8192.0, 8192.0, 1.0)
#: every this many hosts, one is part of the incident (10 %)
INCIDENT_EVERY = 10
#: slices of a tick the hosts' publishes are spread over
SLICES = 20


def lab_guests() -> np.ndarray:
    """(guests, ticks, 8): every guest of the lab's 1 s normal recordings, NaN cells filled."""
    guests = []
    for name in LAB:
        t = read_trace(REPO / "tests" / "data" / name / "values.csv")
        for g in sorted({c.split("/")[0] for c in t.columns}):
            cols = [t.columns.index(f"{g}/{m}") for m in METRICS]
            v = t.values[:, cols]
            guests.append(np.where(np.isnan(v), np.nanmean(v, axis=0), v))
    return np.stack(guests)


def alibaba_memory(length: int = 20_000) -> np.ndarray:
    """(machines, length): the Alibaba machines' memory utilisation (%), 10 s steps."""
    files = sorted(glob.glob(str(SHARED / "data" / "precog" / "m_*_train.csv.gz")))
    if not files:
        raise SystemExit(f"no Alibaba traces in {SHARED / 'data' / 'precog'}: set ATOMWATCH_SHARED")
    out = []
    for f in files:
        v = read_trace(f).values[:length, 0]
        out.append(np.where(np.isnan(v), np.nanmean(v), v))
    n = min(len(v) for v in out)
    return np.stack([v[:n] for v in out])


class Fleet:
    """Hosts ``first`` … ``first + count - 1`` of a fleet, their traces and one tracker."""

    def __init__(self, first: int, count: int, vms: int, seed: int = 16) -> None:
        self.first, self.count, self.vms = first, count, vms
        self.guests = lab_guests()
        self.memory = alibaba_memory()
        g, ticks, m = self.guests.shape
        rng = np.random.default_rng([seed, first, count])
        shape = (count, vms)
        # the VMs of one host serve one workload (one guest's trace, from one offset), each in its
        # own proportions; their memory follows one Alibaba machine
        self.src = np.repeat(rng.integers(0, g, (count, 1)), vms, axis=1)
        self.off = np.repeat(rng.integers(0, ticks, (count, 1)), vms, axis=1)
        self.scale = rng.uniform(0.7, 1.3, (count, vms, m))
        self.msrc = np.repeat(rng.integers(0, self.memory.shape[0], (count, 1)), vms, axis=1)
        self.moff = np.repeat(rng.integers(0, self.memory.shape[1], (count, 1)), vms, axis=1)
        self.mscale = rng.uniform(0.5, 1.0, shape)
        # noise: 5 % of each guest's column spread, and a little everywhere (no column is constant)
        self.sigma = 0.05 * self.guests.std(axis=1) + 0.01
        self.rng = rng
        ids = np.arange(first, first + count)
        self.abnormal = (ids % INCIDENT_EVERY) == 0
        self.tracker = AtomTracker(np.tile(np.array(DELTAS), count * vms))

    def host(self, i: int) -> str:
        return f"hv{self.first + i:06d}"

    def keys(self, i: int) -> list[SeriesKey]:
        h = self.first + i
        return [
            SeriesKey(f"{h:08x}-0000-4000-8000-{v:012x}", f"vm{h:06d}-{v:02d}", metric, unit)
            for v in range(self.vms)
            for metric, unit in zip(METRICS, UNITS, strict=True)
        ]

    def values(self, k: int, incident: bool) -> np.ndarray:
        """(count, vms × 8) at tick ``k``."""
        ticks = self.guests.shape[1]
        v = self.guests[self.src, (self.off + k) % ticks] * self.scale
        v += self.rng.standard_normal(v.shape) * self.sigma[self.src]
        v[..., 7] = self.memory[self.msrc, (self.moff + k) % self.memory.shape[1]] * self.mscale
        if incident:
            hit = self.abnormal
            v[hit, 0, 0] = 95.0 + 3.0 * self.rng.standard_normal(int(hit.sum()))
            v[hit, 0, 2] += 5e6 * (1.0 + 0.05 * self.rng.standard_normal(int(hit.sum())))
        np.maximum(v, 0.0, out=v)
        return v.reshape(self.count, -1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks._fleet")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--site", default="scale")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--vms", type=int, default=10)
    p.add_argument("--tick", type=float, default=1.0)
    p.add_argument("--ticks", type=int, required=True, help="ticks to publish, then stop")
    p.add_argument("--incident-from", type=int, default=None, metavar="K")
    args = p.parse_args(argv)

    fleet = Fleet(args.first, args.count, args.vms)
    session = int(time.time())
    online = threading.Event()
    births_wanted = threading.Event()
    last_state = [None]

    def on_message(client, userdata, message) -> None:
        try:
            _, state = protocol.decode(message.topic, message.payload)
        except protocol.ProtocolError:
            return
        if isinstance(state, protocol.State) and state.online and state.ts != last_state[0]:
            last_state[0] = state.ts
            online.set()
            births_wanted.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{args.site}-{args.first}-{session}")
    client.max_inflight_messages_set(65535)
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.subscribe(protocol.state_filter(args.site), qos=1)
    client.loop_start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if not online.wait(60):
        raise SystemExit("the controller never said online")

    topics = [protocol.data_topic(args.site, fleet.host(i)) for i in range(fleet.count)]
    keys = [fleet.keys(i) for i in range(fleet.count)]
    seq = np.zeros(fleet.count, dtype=np.int64)
    width = fleet.vms * len(METRICS)
    deltas = np.array(DELTAS * fleet.vms)

    def births() -> None:
        g = fleet.tracker.g.reshape(fleet.count, width)
        for i in range(fleet.count):
            series = [
                protocol.SeriesInfo(a, keys[i][a], float(deltas[a]), None if np.isnan(x) else float(x))
                for a, x in enumerate(g[i].tolist())
            ]
            birth = protocol.Birth(session, "fleet", args.tick, time.time(), series, seq=int(seq[i]))
            client.publish(protocol.birth_topic(args.site, fleet.host(i)), protocol.encode(birth), qos=1, retain=True)

    fleet.tracker.step(fleet.values(0, False).ravel())
    births_wanted.clear()
    births()
    print(json.dumps({"ready": fleet.count}), flush=True)
    published = 0
    first_abnormal: dict[str, float] = {}
    slices = [np.arange(s, fleet.count, SLICES) for s in range(SLICES)]
    start = time.monotonic()
    for k in range(1, args.ticks + 1):
        at = start + k * args.tick
        late = time.monotonic() - at
        if late < 0 and stop.wait(-late):
            break
        if stop.is_set():
            break
        if births_wanted.is_set():
            births_wanted.clear()
            births()
        incident = args.incident_from is not None and k >= args.incident_from
        send = fleet.tracker.step(fleet.values(k, incident).ravel()).reshape(fleet.count, width)
        g = fleet.tracker.g.reshape(fleet.count, width)
        for s, hosts in enumerate(slices):
            wait = at + s * args.tick / SLICES - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for i in hosts.tolist():
                idx = np.flatnonzero(send[i])
                pairs = list(zip(idx.tolist(), g[i, idx].tolist(), strict=True))
                ts = time.time()
                msg = protocol.Data(session=session, seq=int(seq[i]), ts=ts, values=pairs)
                client.publish(topics[i], protocol.encode(msg), qos=1)
                seq[i] += 1
                published += 1
                if incident and fleet.abnormal[i] and fleet.host(i) not in first_abnormal:
                    first_abnormal[fleet.host(i)] = ts
        print(json.dumps({"tick": k, "published": published, "late": max(0.0, late)}), flush=True)
    print(json.dumps({"done": published, "first_abnormal": first_abnormal}), flush=True)
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main(sys.argv[1:])

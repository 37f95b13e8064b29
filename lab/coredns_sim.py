"""The CoreDNS SIMULATOR: a model of a CoreDNS server's counters, served as ``/metrics`` text.

Nothing here is a real CoreDNS. The simulator draws a DNS query workload step by step (default
1 simulated second a step) and keeps the counters a CoreDNS 1.11 server with ``cache`` and
``forward`` would keep, then renders them as CoreDNS exposition text in the names of one of three
eras (``1.11`` default; ``1.8`` for 1.7–1.10 names without ``view``/``plugin``; ``1.6.9`` for
pre-1.7 names). What lives here:

* :class:`SimConfig` / :class:`Upstream` — the workload: Poisson arrivals with a daily rhythm
  compressed into ``day_seconds`` of simulated time and slow random drift, qtype / rcode / protocol
  mixes, cache hit probability, latency per upstream (log-normal), response sizes per qtype.
* :class:`Event` and :data:`CLASSES` — labelled anomaly classes: ``nxdomain-flood`` (random
  subdomains, all NXDOMAIN, all cache misses), ``upstream-failure`` (one upstream times out or
  answers SERVFAIL, health checks fail), ``amplification`` (ANY/TXT with large responses),
  ``cache-busting`` (unique existing names: misses, more forwarding) — label 1 — and the benign
  ``flash-crowd`` (4× normal traffic with the normal mix), label 0: a hard negative.
* :class:`CorednsSimulator` — ``advance_to(t)`` and ``exposition()``; deterministic for a seed,
  whatever the times it is read at (it always advances in whole steps from 0).
* :class:`SimulatorServer` — serves ``/metrics`` (plus ``/truth``, the current ground truth as
  JSON) over HTTP on a loopback address only; its clock runs ``speed`` × wall time.
* :func:`record` and :func:`default_schedule` — a labelled recording (values.csv, labels.csv,
  scenario.json, README.md; see :mod:`atomwatch.traces`) computed by running the collector's own
  derivation (:class:`atomwatch.plugins.coredns.metrics.InstanceDeriver`) over the simulator's text at each
  simulated tick: the same code a live agent runs, without HTTP.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: anomaly class → label (1 = an attack or fault a detector should flag; 0 = benign)
CLASSES: dict[str, int] = {
    "nxdomain-flood": 1,
    "upstream-failure": 1,
    "amplification": 1,
    "cache-busting": 1,
    "flash-crowd": 0,
}
FORMATS: tuple[str, ...] = ("1.11", "1.8", "1.6.9")
VERSION_OF_FORMAT = {"1.11": "1.11.1", "1.8": "1.8.6", "1.6.9": "1.6.9"}

#: qtypes the workload draws (HTTPS, CNAME, NS, SOA land in the collector's "other")
QTYPES: tuple[str, ...] = ("A", "AAAA", "PTR", "MX", "TXT", "SRV", "ANY", "HTTPS", "CNAME", "NS", "SOA")
RCODES: tuple[str, ...] = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR")
_Q = {q: i for i, q in enumerate(QTYPES)}
_R = {r: i for i, r in enumerate(RCODES)}
#: CoreDNS ``plugin.TimeBuckets``: 0.00025 · 2^k s, k = 0..15
TIME_BUCKETS: np.ndarray = 0.00025 * 2.0 ** np.arange(16)
#: CoreDNS size buckets (bytes)
SIZE_BUCKETS: np.ndarray = np.array([0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3])
PROTOS = ("udp", "tcp")
SERVER, ZONE = "dns://:53", "."

#: normal qtype mix (sums to 1)
NORMAL_QMIX: dict[str, float] = {
    "A": 0.52, "AAAA": 0.24, "PTR": 0.04, "MX": 0.02, "TXT": 0.03, "SRV": 0.04,
    "ANY": 0.002, "HTTPS": 0.08, "CNAME": 0.01, "NS": 0.008, "SOA": 0.01,
}  # fmt: skip
#: normal rcode mix of answers (sums to 1)
NORMAL_RMIX: dict[str, float] = {
    "NOERROR": 0.944,
    "NXDOMAIN": 0.05,
    "SERVFAIL": 0.002,
    "REFUSED": 0.003,
    "FORMERR": 0.001,
}
#: median response size (bytes) of a NOERROR answer per qtype
SIZE_MEDIAN: dict[str, float] = {
    "A": 80, "AAAA": 100, "PTR": 110, "MX": 140, "TXT": 260, "SRV": 180,
    "ANY": 700, "HTTPS": 120, "CNAME": 110, "NS": 150, "SOA": 120,
}  # fmt: skip
#: probability of TCP per qtype (large answers are truncated over UDP and retried over TCP)
TCP_PROB: dict[str, float] = {q: 0.02 for q in QTYPES} | {"TXT": 0.15, "ANY": 0.3}


class SimulatorError(ValueError):
    """A simulator setting or schedule that cannot be used; the text names it."""


@dataclass(frozen=True)
class Upstream:
    to: str
    share: float
    median_ms: float
    sigma: float


@dataclass
class SimConfig:
    seed: int = 0
    base_qps: float = 200.0
    #: one simulated "day" of rhythm, compressed into this many simulated seconds
    day_seconds: float = 7200.0
    day_amplitude: float = 0.35
    #: where in the day the simulation starts (0..1; 0.25 = the daily peak)
    day_phase: float = 0.0
    #: relative size of the slow random drift of the arrival rate (stationary std of its log)
    drift: float = 0.05
    cache_hit: float = 0.8
    #: simulated seconds per step
    resolution: float = 1.0
    format: str = "1.11"
    upstreams: tuple[Upstream, ...] = (
        Upstream("8.8.8.8:53", 0.5, 14.0, 0.5),
        Upstream("1.1.1.1:53", 0.5, 9.0, 0.45),
    )

    def check(self) -> None:
        if self.format not in FORMATS:
            raise SimulatorError(f"format {self.format!r}: expected one of {', '.join(FORMATS)}")
        for name in ("base_qps", "day_seconds", "resolution"):
            if not getattr(self, name) > 0:
                raise SimulatorError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.cache_hit <= 1:
            raise SimulatorError(f"cache_hit must be in [0, 1], got {self.cache_hit}")


@dataclass(frozen=True)
class Event:
    """One anomaly (or the benign flash crowd) from ``start`` for ``duration`` simulated seconds."""

    klass: str
    start: float
    duration: float
    intensity: float = 1.0

    def __post_init__(self) -> None:
        if self.klass not in CLASSES:
            raise SimulatorError(f"anomaly class {self.klass!r}: expected one of {', '.join(CLASSES)}")
        if not self.duration > 0 or self.start < 0:
            raise SimulatorError(f"{self.klass}: needs start ≥ 0 and duration > 0, got {self.start}, {self.duration}")

    @property
    def label(self) -> int:
        return CLASSES[self.klass]

    def active(self, t: float) -> bool:
        return self.start <= t < self.start + self.duration


def _probs(mix: dict[str, float], names: Sequence[str]) -> np.ndarray:
    p = np.array([mix.get(n, 0.0) for n in names], dtype=np.float64)
    return p / p.sum()


@dataclass
class _Stream:
    """One population of queries within a step."""

    n: int
    qmix: np.ndarray
    rmix: np.ndarray
    p_hit: float
    size_factor: np.ndarray | None = None  # per-qtype multiplier of the response size
    upstream_factor: float = 1.0  # multiplier of upstream latency (slow authoritative servers)
    tcp_prob: np.ndarray | None = None


@dataclass
class _Counters:
    requests: np.ndarray = field(default_factory=lambda: np.zeros((len(QTYPES), 2, 2)))  # qtype × proto × family
    responses: np.ndarray = field(
        default_factory=lambda: np.zeros((len(RCODES), 3))
    )  # rcode × plugin(cache, forward, "")
    duration: np.ndarray = field(default_factory=lambda: np.zeros(len(TIME_BUCKETS) + 1))  # per bucket, last = +Inf
    duration_sum: float = 0.0
    req_size: np.ndarray = field(default_factory=lambda: np.zeros((2, len(SIZE_BUCKETS) + 1)))
    req_size_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    resp_size: np.ndarray = field(default_factory=lambda: np.zeros((2, len(SIZE_BUCKETS) + 1)))
    resp_size_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    cache_hits: np.ndarray = field(default_factory=lambda: np.zeros(2))  # success, denial
    cache_misses: float = 0.0
    cache_entries: np.ndarray = field(default_factory=lambda: np.array([2500.0, 300.0]))
    upstream: np.ndarray = field(default_factory=lambda: np.zeros(0))  # upstream × rcode × bucket
    upstream_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # upstream × rcode
    forward_requests: np.ndarray = field(default_factory=lambda: np.zeros(0))
    health_failures: np.ndarray = field(default_factory=lambda: np.zeros(0))
    broken: float = 0.0
    panics: float = 0.0


class CorednsSimulator:
    """A simulated CoreDNS server; see the module docstring. Not thread-safe: the server locks."""

    def __init__(self, config: SimConfig | None = None, events: Sequence[Event] = ()) -> None:
        self.config = config or SimConfig()
        self.config.check()
        self.events = list(events)
        self.rng = np.random.default_rng(self.config.seed)
        self.t = 0.0  # simulated seconds processed so far
        self.steps = 0
        self.rate_multiplier = 1.0  # an operator knob (tests turn it up)
        self._drift = 0.0
        up = self.config.upstreams
        self.c = _Counters()
        self.c.upstream = np.zeros((len(up), len(RCODES), len(TIME_BUCKETS) + 1))
        self.c.upstream_sum = np.zeros((len(up), len(RCODES)))
        self.c.forward_requests = np.zeros(len(up))
        self.c.health_failures = np.zeros(len(up))
        self._normal_q = _probs(NORMAL_QMIX, QTYPES)
        self._normal_r = _probs(NORMAL_RMIX, RCODES)
        self._size_median = np.array([SIZE_MEDIAN[q] for q in QTYPES])
        self._tcp = np.array([TCP_PROB[q] for q in QTYPES])
        self._up_share = np.array([u.share for u in up]) / sum(u.share for u in up)
        self._up_median = np.array([u.median_ms for u in up]) / 1000.0
        self._up_sigma = np.array([u.sigma for u in up])

    # -- ground truth -----------------------------------------------------------------------

    def active(self, t: float | None = None) -> list[Event]:
        t = self.t if t is None else t
        return [e for e in self.events if e.active(t)]

    def truth(self, t: float | None = None) -> dict[str, Any]:
        """Label and class at simulated time ``t`` (an attack wins over the flash crowd)."""
        act = self.active(t)
        attacks = [e for e in act if e.label == 1]
        main = attacks[0] if attacks else (act[0] if act else None)
        return {
            "sim_time": self.t if t is None else t,
            "label": main.label if main else 0,
            "class": main.klass if main else "normal",
            "active": [e.klass for e in act],
            "simulator": True,
        }

    def arrival_rate(self, t: float) -> float:
        cfg = self.config
        rhythm = 1.0 + cfg.day_amplitude * math.sin(2 * math.pi * (t / cfg.day_seconds + cfg.day_phase))
        return cfg.base_qps * self.rate_multiplier * rhythm * math.exp(self._drift)

    # -- simulation -------------------------------------------------------------------------

    def advance_to(self, t: float) -> None:
        """Process every whole step that ends at or before simulated time ``t``."""
        res = self.config.resolution
        target = math.floor(t / res + 1e-9)
        while self.steps < target:
            self._step(self.steps * res, res)
            self.steps += 1
            self.t = self.steps * res

    def _step(self, t: float, dt: float) -> None:
        rng, cfg = self.rng, self.config
        theta = 1.0 / 300.0
        self._drift += -theta * self._drift * dt + cfg.drift * math.sqrt(2 * theta * dt) * rng.standard_normal()
        act = {e.klass: e.intensity for e in self.active(t)}
        lam = self.arrival_rate(t)
        streams: list[_Stream] = []
        crowd = act.get("flash-crowd", 0.0)
        p_hit = min(0.97, cfg.cache_hit + 0.1 * crowd)
        streams.append(_Stream(int(rng.poisson(lam * (1 + 3 * crowd) * dt)), self._normal_q, self._normal_r, p_hit))
        if "nxdomain-flood" in act:
            n = int(rng.poisson(2.5 * cfg.base_qps * act["nxdomain-flood"] * dt))
            streams.append(
                _Stream(
                    n,
                    _probs({"A": 0.8, "AAAA": 0.2}, QTYPES),
                    _probs({"NXDOMAIN": 1.0}, RCODES),
                    0.0,
                    upstream_factor=2.5,
                )
            )
        if "amplification" in act:
            n = int(rng.poisson(1.5 * cfg.base_qps * act["amplification"] * dt))
            size = np.ones(len(QTYPES))
            size[_Q["ANY"]], size[_Q["TXT"]] = 5.0, 7.0
            tcp = np.full(len(QTYPES), 0.01)
            streams.append(
                _Stream(
                    n,
                    _probs({"ANY": 0.75, "TXT": 0.25}, QTYPES),
                    _probs({"NOERROR": 1.0}, RCODES),
                    0.95,
                    size,
                    1.0,
                    tcp,
                )
            )
        if "cache-busting" in act:
            n = int(rng.poisson(1.5 * cfg.base_qps * act["cache-busting"] * dt))
            streams.append(_Stream(n, _probs({"A": 0.7, "AAAA": 0.3}, QTYPES), _probs({"NOERROR": 1.0}, RCODES), 0.0))
        fail = np.zeros(len(cfg.upstreams))
        if "upstream-failure" in act:
            fail[0] = min(1.0, 0.9 * act["upstream-failure"])
            self.c.health_failures[0] += rng.poisson(2.0 * dt)  # health checks every 0.5 s fail
        for s in streams:
            if s.n > 0:
                self._queries(s, fail)
        # cache entries drift towards a size set by the miss rate (capacity 9984 per type)
        c = self.c
        c.cache_entries = np.minimum(
            9984.0, c.cache_entries * (1 - dt / 600.0) + dt / 600.0 * np.array([2500.0, 300.0])
        )
        if rng.random() < 1e-5 * dt:
            c.panics += 1

    def _queries(self, s: _Stream, fail: np.ndarray) -> None:
        rng, c, n = self.rng, self.c, s.n
        q = rng.choice(len(QTYPES), size=n, p=s.qmix)
        r = rng.choice(len(RCODES), size=n, p=s.rmix)
        tcp_p = (s.tcp_prob if s.tcp_prob is not None else self._tcp)[q]
        tcp = (rng.random(n) < tcp_p).astype(np.int64)
        v6 = (rng.random(n) < 0.2).astype(np.int64)
        bypass = (r == _R["REFUSED"]) | (r == _R["FORMERR"])  # answered by the server itself
        hit = (rng.random(n) < s.p_hit) & ~bypass
        miss = ~hit & ~bypass
        up = rng.choice(len(self._up_share), size=n, p=self._up_share)
        lat = np.exp(np.log(0.0001) + 0.6 * rng.standard_normal(n))  # cache / local answers ~0.1 ms
        up_lat = np.exp(np.log(self._up_median[up] * s.upstream_factor) + self._up_sigma[up] * rng.standard_normal(n))
        lat = np.where(miss, lat + up_lat, lat)
        failed = miss & (rng.random(n) < fail[up])
        timeout = failed & (rng.random(n) < 0.5)
        up_servfail = failed & ~timeout
        lat = np.where(timeout, np.exp(np.log(2.0) + 0.25 * rng.standard_normal(n)), lat)
        lat = np.where(up_servfail, lat * 3.0, lat)
        client_r = np.where(failed, _R["SERVFAIL"], r)
        # responses: size per qtype for answers, small for errors
        median = self._size_median[q] * (s.size_factor[q] if s.size_factor is not None else 1.0)
        median = np.where(client_r == _R["NOERROR"], median, np.where(client_r == _R["NXDOMAIN"], 130.0, 45.0))
        size = np.exp(np.log(median) + 0.3 * rng.standard_normal(n))
        size = np.where(tcp == 0, np.minimum(size, 4096.0), size)  # EDNS0 UDP limit; bigger go over TCP
        req_size = np.exp(np.log(45.0) + 0.15 * rng.standard_normal(n))
        # accumulate
        np.add.at(c.requests, (q, tcp, v6), 1.0)
        plugin = np.where(hit, 0, np.where(miss, 1, 2))
        np.add.at(c.responses, (client_r, plugin), 1.0)
        c.duration += np.bincount(np.searchsorted(TIME_BUCKETS, lat, side="left"), minlength=len(TIME_BUCKETS) + 1)
        c.duration_sum += float(lat.sum())
        for p in (0, 1):
            m = tcp == p
            c.resp_size[p] += np.bincount(
                np.searchsorted(SIZE_BUCKETS, size[m], side="left"), minlength=len(SIZE_BUCKETS) + 1
            )
            c.resp_size_sum[p] += float(size[m].sum())
            c.req_size[p] += np.bincount(
                np.searchsorted(SIZE_BUCKETS, req_size[m], side="left"), minlength=len(SIZE_BUCKETS) + 1
            )
            c.req_size_sum[p] += float(req_size[m].sum())
        c.cache_hits[0] += float((hit & (r != _R["NXDOMAIN"])).sum())
        c.cache_hits[1] += float((hit & (r == _R["NXDOMAIN"])).sum())
        c.cache_misses += float(miss.sum())
        c.cache_entries[0] += 0.02 * float((miss & (r == _R["NOERROR"])).sum())
        c.cache_entries[1] += 0.02 * float((miss & (r == _R["NXDOMAIN"])).sum())
        np.add.at(c.forward_requests, up[miss], 1.0)
        answered = miss & ~timeout
        up_r = np.where(up_servfail, _R["SERVFAIL"], r)
        up_lat_seen = np.where(up_servfail, lat, up_lat)
        buckets = np.searchsorted(TIME_BUCKETS, up_lat_seen[answered], side="left")
        np.add.at(c.upstream, (up[answered], up_r[answered], buckets), 1.0)
        np.add.at(c.upstream_sum, (up[answered], up_r[answered]), up_lat_seen[answered])

    # -- exposition -------------------------------------------------------------------------

    def exposition(self) -> str:
        """The counters as CoreDNS ``/metrics`` text in the configured era's names."""
        return _Renderer(self).render()


def _fmt(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(kv.items())) + "}" if kv else ""


class _Renderer:
    def __init__(self, sim: CorednsSimulator) -> None:
        self.sim, self.c, self.fmt = sim, sim.c, sim.config.format
        self.lines: list[str] = [
            "# atomwatch CoreDNS SIMULATOR (lab/coredns_sim.py): simulated counters, not a real CoreDNS server",
            f"# simulated time {sim.t:.3f} s, seed {sim.config.seed}, format {self.fmt}",
        ]

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {_fmt(value)}")

    def histogram(self, name: str, per_bucket: np.ndarray, bounds: np.ndarray, total: float, **labels: str) -> None:
        cum = np.cumsum(per_bucket)
        for b, v in zip(bounds, cum[:-1]):
            self.sample(f"{name}_bucket", v, **labels, le=_fmt(float(b)))
        self.sample(f"{name}_bucket", cum[-1], **labels, le="+Inf")
        self.sample(f"{name}_sum", total, **labels)
        self.sample(f"{name}_count", cum[-1], **labels)

    def render(self) -> str:
        new = self.fmt != "1.6.9"
        view = {"view": ""} if self.fmt == "1.11" else {}
        sz = {"server": SERVER, "zone": ZONE, **view}
        c = self.c
        self.family(
            "coredns_build_info",
            "gauge",
            "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
        )
        self.sample(
            "coredns_build_info",
            1,
            goversion="go1.21.0",
            revision="atomwatch-simulator",
            version=VERSION_OF_FORMAT[self.fmt],
        )
        panics = "coredns_panics_total" if new else "coredns_panic_count_total"
        self.family(panics, "counter", "A metrics that counts the number of panics.")
        self.sample(panics, c.panics)
        # requests
        if new:
            self.family(
                "coredns_dns_requests_total", "counter", "Counter of DNS requests made per zone, protocol and family."
            )
            for (qi, p, f), v in np.ndenumerate(c.requests):
                if v > 0:
                    self.sample(
                        "coredns_dns_requests_total", v, **sz, proto=PROTOS[p], family=str(f + 1), type=QTYPES[qi]
                    )
        else:
            self.family(
                "coredns_dns_request_count_total",
                "counter",
                "Counter of DNS requests made per zone, protocol and family.",
            )
            pf = c.requests.sum(axis=0)
            for (p, f), v in np.ndenumerate(pf):
                if v > 0:
                    self.sample("coredns_dns_request_count_total", v, **sz, proto=PROTOS[p], family=str(f + 1))
            self.family(
                "coredns_dns_request_type_count_total", "counter", "Counter of DNS requests per type, per zone."
            )
            for qi, v in enumerate(c.requests.sum(axis=(1, 2))):
                if v > 0:
                    self.sample("coredns_dns_request_type_count_total", v, **sz, type=QTYPES[qi])
        # responses
        if new:
            self.family("coredns_dns_responses_total", "counter", "Counter of response status codes.")
            plugins = ("cache", "forward", "")
            for (ri, pi), v in np.ndenumerate(c.responses):
                if v <= 0:
                    continue
                if self.fmt == "1.11":
                    self.sample("coredns_dns_responses_total", v, **sz, rcode=RCODES[ri], plugin=plugins[pi])
            if self.fmt != "1.11":
                for ri, v in enumerate(c.responses.sum(axis=1)):
                    if v > 0:
                        self.sample("coredns_dns_responses_total", v, **sz, rcode=RCODES[ri])
        else:
            self.family("coredns_dns_response_rcode_count_total", "counter", "Counter of response status codes.")
            for ri, v in enumerate(c.responses.sum(axis=1)):
                if v > 0:
                    self.sample("coredns_dns_response_rcode_count_total", v, **sz, rcode=RCODES[ri])
        # histograms
        self.family(
            "coredns_dns_request_duration_seconds", "histogram", "Histogram of the time (in seconds) each request took."
        )
        self.histogram("coredns_dns_request_duration_seconds", c.duration, TIME_BUCKETS, c.duration_sum, **sz)
        self.family(
            "coredns_dns_request_size_bytes", "histogram", "Size of the EDNS0 UDP buffer in bytes (64K for TCP)."
        )
        for p in (0, 1):
            if c.req_size[p].sum() > 0:
                self.histogram(
                    "coredns_dns_request_size_bytes",
                    c.req_size[p],
                    SIZE_BUCKETS,
                    c.req_size_sum[p],
                    **sz,
                    proto=PROTOS[p],
                )
        self.family("coredns_dns_response_size_bytes", "histogram", "Size of the returned response in bytes.")
        for p in (0, 1):
            if c.resp_size[p].sum() > 0:
                self.histogram(
                    "coredns_dns_response_size_bytes",
                    c.resp_size[p],
                    SIZE_BUCKETS,
                    c.resp_size_sum[p],
                    **sz,
                    proto=PROTOS[p],
                )
        self._cache()
        self._forward()
        return "\n".join(self.lines) + "\n"

    def _cache(self) -> None:
        c = self.c
        types = ("success", "denial")
        if self.fmt == "1.11":
            base = {"server": SERVER, "zones": ZONE, "view": ""}
        else:
            base = {"server": SERVER}
        size_name = "coredns_cache_entries" if self.fmt != "1.6.9" else "coredns_cache_size"
        self.family(size_name, "gauge", "The number of elements in the cache.")
        for i, tname in enumerate(types):
            self.sample(size_name, round(float(c.cache_entries[i])), **base, type=tname)
        if self.fmt != "1.6.9":
            self.family("coredns_cache_requests_total", "counter", "The count of cache requests.")
            self.sample("coredns_cache_requests_total", c.cache_hits.sum() + c.cache_misses, **base)
        self.family("coredns_cache_hits_total", "counter", "The count of cache hits.")
        for i, tname in enumerate(types):
            if c.cache_hits[i] > 0:
                self.sample("coredns_cache_hits_total", c.cache_hits[i], **base, type=tname)
        self.family(
            "coredns_cache_misses_total",
            "counter",
            "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
        )
        self.sample("coredns_cache_misses_total", c.cache_misses, **base)

    def _forward(self) -> None:
        c, ups = self.c, self.sim.config.upstreams
        if self.fmt == "1.11":
            name = "coredns_proxy_request_duration_seconds"
            self.family(name, "histogram", "Histogram of the time each request took.")
            for (ui, ri), total in np.ndenumerate(c.upstream_sum):
                if c.upstream[ui, ri].sum() > 0:
                    self.histogram(
                        name,
                        c.upstream[ui, ri],
                        TIME_BUCKETS,
                        total,
                        proxy_name="forward",
                        to=ups[ui].to,
                        rcode=RCODES[ri],
                    )
            self.family(
                "coredns_proxy_healthcheck_failures_total", "counter", "Counter of the number of failed healthchecks."
            )
            for ui, v in enumerate(c.health_failures):
                if v > 0:
                    self.sample("coredns_proxy_healthcheck_failures_total", v, proxy_name="forward", to=ups[ui].to)
            self.family(
                "coredns_forward_healthcheck_broken_total",
                "counter",
                "Counter of the number of complete failures of the healthchecks.",
            )
            self.sample("coredns_forward_healthcheck_broken_total", c.broken)
            return
        old = self.fmt == "1.6.9"
        req = "coredns_forward_request_count_total" if old else "coredns_forward_requests_total"
        resp = "coredns_forward_response_rcode_count_total" if old else "coredns_forward_responses_total"
        hc = "coredns_forward_healthcheck_failure_count_total" if old else "coredns_forward_healthcheck_failures_total"
        self.family(req, "counter", "Counter of requests made per upstream.")
        for ui, v in enumerate(c.forward_requests):
            if v > 0:
                self.sample(req, v, to=ups[ui].to)
        self.family(resp, "counter", "Counter of responses received per upstream.")
        for (ui, ri), v in np.ndenumerate(c.upstream.sum(axis=2)):
            if v > 0:
                self.sample(resp, v, rcode=RCODES[ri], to=ups[ui].to)
        dname = "coredns_forward_request_duration_seconds"
        self.family(dname, "histogram", "Histogram of the time each request took.")
        if old:  # pre-1.7: per upstream only
            for ui in range(len(ups)):
                if c.upstream[ui].sum() > 0:
                    self.histogram(
                        dname, c.upstream[ui].sum(axis=0), TIME_BUCKETS, c.upstream_sum[ui].sum(), to=ups[ui].to
                    )
        else:
            for (ui, ri), total in np.ndenumerate(c.upstream_sum):
                if c.upstream[ui, ri].sum() > 0:
                    self.histogram(dname, c.upstream[ui, ri], TIME_BUCKETS, total, to=ups[ui].to, rcode=RCODES[ri])
        self.family(hc, "counter", "Counter of the number of failed healthchecks.")
        for ui, v in enumerate(c.health_failures):
            if v > 0:
                self.sample(hc, v, to=ups[ui].to)


# --------------------------------------------------------------------------- HTTP server


def check_loopback(host: str) -> str:
    """The simulator binds to loopback only; anything else is refused with a clear error."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise SimulatorError(
            f"--listen host {host!r}: not an IP address (the simulator binds to 127.0.0.1 only)"
        ) from None
    if not ip.is_loopback:
        raise SimulatorError(f"--listen host {host!r}: not a loopback address; the simulator binds to 127.0.0.1 only")
    return str(ip)


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that gave up (timeout) and closed its socket is normal, not worth a traceback."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class SimulatorServer:
    """Serves one :class:`CorednsSimulator` on ``http://<loopback>:<port>/metrics``.

    ``clock`` gives the simulated time to advance to before each answer; by default it is
    ``speed`` × the wall time since :meth:`start`. ``clock=None`` never advances: the caller
    drives the simulator (tests that need exact counts)."""

    def __init__(
        self,
        sim: CorednsSimulator,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        clock: Callable[[], float] | None | str = "wall",
    ) -> None:
        self.sim = sim
        self.host = check_loopback(host)
        self.port = port
        if not speed > 0:
            raise SimulatorError(f"--speed must be > 0, got {speed}")
        self.speed = speed
        self._clock = clock
        self._t0 = time.monotonic()
        self.lock = threading.Lock()
        self.scrapes = 0
        self._httpd: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None

    def sim_time(self) -> float | None:
        if self._clock == "wall":
            return (time.monotonic() - self._t0) * self.speed
        if callable(self._clock):
            return float(self._clock())
        return None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> SimulatorServer:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server.lock:
                    t = server.sim_time()
                    if t is not None:
                        server.sim.advance_to(t)
                    if path == "/metrics":
                        server.scrapes += 1
                        body, ctype = server.sim.exposition().encode(), "text/plain; version=0.0.4; charset=utf-8"
                    elif path == "/truth":
                        body, ctype = json.dumps(server.sim.truth()).encode(), "application/json"
                    elif path == "/":
                        body = b"atomwatch CoreDNS simulator (not a real CoreDNS): /metrics, /truth\n"
                        ctype = "text/plain; charset=utf-8"
                    else:
                        self.send_error(404, "the simulator serves /metrics and /truth")
                        return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._httpd = _ThreadingServer((self.host, self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="coredns-sim-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


# --------------------------------------------------------------------------- recording

#: the order of the default schedule; the benign flash crowd sits between attacks
DEFAULT_ORDER: tuple[str, ...] = ("nxdomain-flood", "flash-crowd", "upstream-failure", "cache-busting", "amplification")


def default_schedule(minutes: float, tick: float = 10.0) -> list[Event]:
    """Every class once: a normal lead of a quarter of the run (for detectors to learn), then
    five equal slots, each half anomaly and half normal. Times are whole ticks."""
    if minutes < 5:
        raise SimulatorError(f"--minutes {minutes}: the default schedule needs at least 5 minutes")
    total = minutes * 60.0
    lead = 0.25 * total
    slot = 0.75 * total / len(DEFAULT_ORDER)

    def snap(x: float) -> float:
        return round(x / tick) * tick

    return [Event(k, snap(lead + i * slot), max(tick, snap(0.5 * slot))) for i, k in enumerate(DEFAULT_ORDER)]


def parse_event(text: str) -> Event:
    """``CLASS@START+DURATION`` in simulated minutes, e.g. ``nxdomain-flood@20+5``."""
    klass, at, rest = text.partition("@")
    start, plus, duration = rest.partition("+")
    if not at or not plus:
        raise SimulatorError(f"--event {text!r}: expected CLASS@START_MIN+DURATION_MIN")
    try:
        at_min, for_min = float(start), float(duration)
    except ValueError:
        raise SimulatorError(f"--event {text!r}: start and duration must be numbers of minutes") from None
    return Event(klass.strip(), at_min * 60.0, for_min * 60.0)


@dataclass
class Recording:
    out: Path
    rows: int
    columns: list[str]
    events: list[Event]


def record(
    out: str | Path,
    minutes: float,
    seed: int = 0,
    tick: float = 10.0,
    events: Sequence[Event] | None = None,
    config: SimConfig | None = None,
    name: str = "coredns-sim",
    start_ts: float = 1_767_225_600.0,
) -> Recording:
    """Write a labelled recording of ``minutes`` simulated minutes to folder ``out``."""
    from atomwatch import __version__
    from atomwatch.plugins.coredns.metrics import METRICS, InstanceDeriver
    from atomwatch.series import SeriesKey
    from atomwatch.traces import write_trace

    if not minutes > 0:
        raise SimulatorError(f"--minutes must be > 0, got {minutes}")
    if not tick > 0:
        raise SimulatorError(f"--tick must be > 0 seconds, got {tick}")
    cfg = config or SimConfig(seed=seed)
    cfg.seed = seed
    evs = list(events) if events is not None else default_schedule(minutes, tick)
    sim = CorednsSimulator(cfg, evs)
    deriver = InstanceDeriver(source=f"simulator {name}")
    keys = [SeriesKey(vm_uuid=f"coredns:{name}", vm_name=name, metric=m.name, unit=m.unit) for m in METRICS]
    columns = [k.column for k in keys]
    n = round(minutes * 60.0 / tick)
    values = np.full((n, len(keys)), np.nan)
    timestamps = np.zeros(n)
    label_rows: list[tuple[int, float, int, str, str]] = []
    deriver.update(sim.exposition(), 0.0)  # the priming scrape at t = 0 (rates need two)
    for i in range(n):
        t = (i + 1) * tick
        sim.advance_to(t)
        step = deriver.update(sim.exposition(), t)
        values[i] = [np.nan if step.values[m.name] is None else step.values[m.name] for m in METRICS]
        ts = start_ts + t
        timestamps[i] = ts
        truth = sim.truth(t - tick / 2.0)  # the middle of the interval the row's rates cover
        vm = name if truth["class"] != "normal" else ""
        label_rows.append((i, ts, truth["label"], truth["class"], vm))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_trace(folder / "values.csv", columns, values, timestamps)
    with (folder / "labels.csv").open("w", encoding="utf-8", newline="") as fh:
        fh.write("row,timestamp,label,class,vm\n")
        for row, ts, label, klass, vm in label_rows:
            fh.write(f"{row},{ts!r},{label},{klass},{vm}\n")
    scenario = {
        "kind": "coredns-sim",
        "simulator": True,
        "note": "simulated CoreDNS counters (lab/coredns_sim.py), not a real CoreDNS server",
        "atomwatch": __version__,
        "minutes": minutes,
        "tick": tick,
        "rows": n,
        "start_timestamp": start_ts,
        "instance": name,
        "config": {k: v for k, v in asdict(cfg).items() if k != "upstreams"}
        | {"upstreams": [asdict(u) for u in cfg.upstreams]},
        "classes": CLASSES,
        "events": [
            {"class": e.klass, "label": e.label, "start_s": e.start, "duration_s": e.duration, "intensity": e.intensity}
            for e in evs
        ],
        "columns": columns,
    }
    (folder / "scenario.json").write_text(json.dumps(scenario, indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(_readme(scenario, label_rows), encoding="utf-8")
    return Recording(folder, n, columns, evs)


def _readme(s: dict[str, Any], label_rows: list[tuple[int, float, int, str, str]]) -> str:
    counts: dict[str, int] = {}
    for _, _, _, klass, _ in label_rows:
        counts[klass] = counts.get(klass, 0) + 1
    lines = [
        "# CoreDNS simulator recording",
        "",
        "**Simulated data**: counters of a *simulated* CoreDNS server (`lab/coredns_sim.py`), turned into",
        "per-tick series by the CoreDNS collector's own derivation (`plugins/coredns_metrics.py`).",
        "No real CoreDNS produced these numbers.",
        "",
        (
            f"- {s['rows']} rows, one every {s['tick']:g} simulated seconds ({s['minutes']:g} minutes); "
            f"seed {s['config']['seed']}; exposition format {s['config']['format']}; instance `{s['instance']}`."
        ),
        "- `labels.csv`: label 1 while an attack class is on; the benign `flash-crowd` has label 0 and its own",
        "  class name, so it counts as a hard negative and can be reported apart.",
        "",
        "| class | label | start (s) | duration (s) |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {e['class']} | {e['label']} | {e['start_s']:g} | {e['duration_s']:g} |" for e in s["events"]]
    lines += ["", "Rows per class: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    return "\n".join(lines)

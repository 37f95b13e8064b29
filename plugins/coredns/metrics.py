"""CoreDNS exposition text → the fixed set of derived series of one CoreDNS instance.

What lives here, apart from any HTTP: parsing a ``/metrics`` text into raw counter samples,
mapping the metric names of every CoreDNS era onto one vocabulary, and turning two successive
scrapes into rates, ratios and latency quantiles (:class:`InstanceDeriver`, shared by the live
collector and the simulator's ``record``). What does not: scraping (:mod:`.collector`). The
names handled and the rules for resets and undefined values: ``docs/coredns.md``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

# --------------------------------------------------------------------------- the fixed series set

#: qtypes with a series of their own; every other type (CNAME, NS, HTTPS …) goes to ``Other``.
QTYPES: tuple[str, ...] = ("A", "AAAA", "PTR", "MX", "TXT", "SRV", "ANY")
PROTOS: tuple[str, ...] = ("UDP", "TCP")
#: rcodes with a series of their own; every other rcode goes to ``Other``.
RCODES: tuple[str, ...] = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED")
#: upstream rcodes that are not errors (the answer exists or the name does not)
UPSTREAM_OK: frozenset[str] = frozenset({"NOERROR", "NXDOMAIN"})


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    #: default tracking error Δ in the unit (the agent's ``--delta`` overrides it). Kept well below
    #: the tick-to-tick noise of a busy server: a Δ wider than the noise freezes the tracked value
    #: inside its band, and a detector that standardises by the window's spread (PCA-SPE) then
    #: reads the band's arbitrary offset after any change as a large, lasting deviation.
    delta: float
    help: str


def _specs() -> tuple[MetricSpec, ...]:
    out = [MetricSpec("RequestRate", "req/s", 0.05, "DNS requests per second, all types and protocols")]
    out += [MetricSpec(f"RequestRate{q}", "req/s", 0.05, f"{q} requests per second") for q in QTYPES]
    out.append(MetricSpec("RequestRateOtherType", "req/s", 0.05, "requests of any other qtype per second"))
    out += [MetricSpec(f"RequestRate{p}", "req/s", 0.05, f"requests over {p} per second") for p in PROTOS]
    out += [MetricSpec(f"ResponseRate{r}", "resp/s", 0.05, f"{r} responses per second") for r in RCODES]
    out.append(MetricSpec("ResponseRateOtherRcode", "resp/s", 0.05, "responses with any other rcode per second"))
    out += [
        MetricSpec("NXDOMAINRatio", "ratio", 0.0002, "NXDOMAIN share of responses over the tick"),
        MetricSpec("SERVFAILRatio", "ratio", 0.0002, "SERVFAIL share of responses over the tick"),
        MetricSpec("LatencyP50", "ms", 0.0005, "median request duration over the tick (histogram buckets)"),
        MetricSpec("LatencyP99", "ms", 0.1, "99th percentile request duration over the tick"),
        MetricSpec("CacheHitRatio", "ratio", 0.0002, "cache hits / cache lookups over the tick"),
        MetricSpec("ForwardRequestRate", "req/s", 0.05, "requests sent upstream (forward/proxy) per second"),
        MetricSpec(
            "ForwardErrorRate",
            "err/s",
            0.02,
            "upstream health-check failures plus upstream responses other than NOERROR/NXDOMAIN, per second",
        ),
        MetricSpec("ResponseBytesRate", "bytes/s", 20.0, "response bytes per second (response size histogram)"),
        MetricSpec("PanicRate", "1/s", 0.0, "panics per second"),
    ]
    return tuple(out)


#: Every series an instance has, in a fixed order: the birth table never changes with traffic.
METRICS: tuple[MetricSpec, ...] = _specs()
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)

# --------------------------------------------------------------------------- parsing

#: (sample name, sorted label pairs) — one raw time series of the exposition
RawKey = tuple[str, tuple[tuple[str, str], ...]]


class ExpositionError(ValueError):
    """A /metrics text that cannot be read as Prometheus text exposition."""


class ExpositionLimitError(ExpositionError):
    """A text the limits of :func:`parse_exposition` stopped reading: ``limit`` is ``"samples"``
    (more CoreDNS sample lines than ``max_samples``) or ``"time"`` (past the ``deadline``)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


#: sample lines handed to the Prometheus parser at once (the deadline is checked between chunks)
PARSE_CHUNK = 256
#: text lines filtered between two deadline checks
FILTER_CHUNK = 4096


@dataclass
class Scrape:
    """One parsed exposition: every numeric sample, and the CoreDNS version if it says."""

    samples: dict[RawKey, float]
    version: str | None = None

    @property
    def names(self) -> set[str]:
        return {k[0] for k in self.samples}


# --------------------------------------------------------------------------- classification

_REQ_BOTH = "coredns_dns_requests_total"  # ≥1.7: type and proto labels
_REQ_PROTO_OLD = "coredns_dns_request_count_total"  # <1.7: proto, no type
_REQ_TYPE_OLD = "coredns_dns_request_type_count_total"  # <1.7: type, no proto
_RESPONSES = ("coredns_dns_responses_total", "coredns_dns_response_rcode_count_total")
_PANICS = ("coredns_panics_total", "coredns_panic_count_total")
_DURATION = "coredns_dns_request_duration_seconds"
_RESP_SIZE_SUM = "coredns_dns_response_size_bytes_sum"
_CACHE_HITS = "coredns_cache_hits_total"
_CACHE_MISSES = "coredns_cache_misses_total"
_CACHE_REQUESTS = "coredns_cache_requests_total"
_FWD_REQUESTS = (
    "coredns_forward_requests_total",  # 1.7 – 1.10
    "coredns_forward_request_count_total",  # < 1.7
    "coredns_proxy_request_count_total",  # the old proxy plugin
)
_FWD_RESPONSES = ("coredns_forward_responses_total", "coredns_forward_response_rcode_count_total")
#: upstream duration histograms whose _count has an rcode label (1.8+ forward, 1.11+ proxy)
_FWD_DURATION_COUNTS = (
    "coredns_forward_request_duration_seconds_count",
    "coredns_proxy_request_duration_seconds_count",
)
_FWD_HEALTH_FAILURES = (
    "coredns_forward_healthcheck_failures_total",
    "coredns_forward_healthcheck_failure_count_total",
    "coredns_proxy_healthcheck_failures_total",
)


#: every sample name the derivation reads; other lines are dropped before parsing (a real
#: CoreDNS also exports go_*, process_* and size/upstream histogram buckets, which cost parse time)
RELEVANT: frozenset[str] = frozenset(
    {_REQ_BOTH, _REQ_PROTO_OLD, _REQ_TYPE_OLD, _DURATION + "_bucket", _RESP_SIZE_SUM, "coredns_build_info"}
    | {_CACHE_HITS, _CACHE_MISSES, _CACHE_REQUESTS}
    | set(_RESPONSES + _PANICS + _FWD_REQUESTS + _FWD_RESPONSES + _FWD_DURATION_COUNTS + _FWD_HEALTH_FAILURES)
)
_NAME = re.compile(r"[ \t]*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def relevant_lines(text: str) -> str:
    """The sample lines of ``text`` whose metric name is in :data:`RELEVANT` (comments dropped:
    samples are classified by their own name, so ``# TYPE`` lines are not needed)."""
    return "\n".join(_relevant(text, "text")) + "\n"


def _relevant(
    text: str, source: str, max_samples: int | None = None, deadline: float | None = None, start: float = 0.0
) -> list[str]:
    keep: list[str] = []
    for i, line in enumerate(text.splitlines()):
        if deadline is not None and i % FILTER_CHUNK == FILTER_CHUNK - 1 and time.monotonic() > deadline:
            raise ExpositionLimitError(
                "time", f"{source}: reading stopped after {time.monotonic() - start:.2f} s at line {i + 1}"
            )
        m = _NAME.match(line)
        if m and m.group(1) in RELEVANT:
            keep.append(line)
            if max_samples is not None and len(keep) > max_samples:
                raise ExpositionLimitError(
                    "samples",
                    f"{source}: more than {max_samples} CoreDNS sample lines (reading stopped at line {i + 1})",
                )
    return keep


def parse_exposition(
    text: str, source: str = "exposition", *, max_samples: int | None = None, deadline: float | None = None
) -> Scrape:
    """Every finite CoreDNS sample of ``text`` the derivation reads; ``source`` names the text in
    the error message.

    Limits, each an :class:`ExpositionLimitError` that stops reading at once: more than
    ``max_samples`` sample lines the derivation reads (counted before parsing), or the clock
    (``time.monotonic()``) past ``deadline`` (checked between chunks of :data:`PARSE_CHUNK` lines)."""
    start = time.monotonic()
    samples: dict[RawKey, float] = {}
    version: str | None = None
    from prometheus_client.parser import text_string_to_metric_families  # here: not when the plugin loads

    lines = _relevant(text, source, max_samples, deadline, start)
    try:
        for at in range(0, len(lines), PARSE_CHUNK):
            if at and deadline is not None and time.monotonic() > deadline:
                raise ExpositionLimitError(
                    "time",
                    f"{source}: parsing stopped after {time.monotonic() - start:.2f} s, {at} of {len(lines)} "
                    "sample lines read",
                )
            for family in text_string_to_metric_families("\n".join(lines[at : at + PARSE_CHUNK]) + "\n"):
                for s in family.samples:
                    if s.name == "coredns_build_info":
                        version = s.labels.get("version") or version
                        continue
                    value = float(s.value)
                    if not math.isfinite(value):
                        continue
                    samples[(s.name, tuple(sorted(s.labels.items())))] = value
    except ExpositionLimitError:
        raise
    except Exception as e:  # noqa: BLE001 — the parser raises ValueError mostly; any failure is the text's fault
        raise ExpositionError(f"{source}: not Prometheus text exposition ({e})") from None
    if not samples and version is None:
        raise ExpositionError(f"{source}: no coredns_* metric the collector reads in the text")
    return Scrape(samples, version)


@dataclass
class Counters:
    """CoreDNS counters summed over servers, zones, views and plugins (absolute or deltas)."""

    requests: float = 0.0
    by_type: dict[str, float] = field(default_factory=dict)
    by_proto: dict[str, float] = field(default_factory=dict)
    by_rcode: dict[str, float] = field(default_factory=dict)
    #: request duration histogram: upper bound (s) → cumulative count, +inf included
    duration_buckets: dict[float, float] = field(default_factory=dict)
    response_bytes: float = 0.0
    cache_hits: float = 0.0
    cache_lookups: float = 0.0
    cache_seen: bool = False
    forward_requests: float = 0.0
    forward_errors: float = 0.0
    panics: float = 0.0

    @property
    def responses(self) -> float:
        return sum(self.by_rcode.values())


def _qtype_bucket(t: str) -> str:
    t = t.upper()
    return t if t in QTYPES else "Other"


def _rcode_bucket(r: str) -> str:
    r = r.upper()
    return r if r in RCODES else "Other"


def _add(d: dict[str, float], key: str, v: float) -> None:
    d[key] = d.get(key, 0.0) + v


def aggregate(samples: dict[RawKey, float], present: set[str]) -> Counters:
    """Sum raw samples (absolute values or per-series deltas) into :class:`Counters`.

    ``present`` is the set of sample names in the current scrape; it decides between
    alternative sources (e.g. a forward request counter, when it exists, over the upstream
    histogram's count) so that nothing is counted twice.
    """
    c = Counters()
    new_requests = _REQ_BOTH in present
    has_fwd_requests = any(n in present for n in _FWD_REQUESTS)
    has_fwd_responses = any(n in present for n in _FWD_RESPONSES)
    has_cache_requests = _CACHE_REQUESTS in present
    cache_misses = 0.0
    for (name, labels), v in samples.items():
        if not name.startswith("coredns_"):
            continue
        lab = dict(labels)
        if name == _REQ_BOTH:
            c.requests += v
            _add(c.by_type, _qtype_bucket(lab.get("type", "other")), v)
            _add(c.by_proto, lab.get("proto", "udp").upper(), v)
        elif name == _REQ_PROTO_OLD and not new_requests:
            c.requests += v
            _add(c.by_proto, lab.get("proto", "udp").upper(), v)
        elif name == _REQ_TYPE_OLD and not new_requests:
            _add(c.by_type, _qtype_bucket(lab.get("type", "other")), v)
        elif name in _RESPONSES:
            _add(c.by_rcode, _rcode_bucket(lab.get("rcode", "")), v)
        elif name in _PANICS:
            c.panics += v
        elif name == _DURATION + "_bucket":
            try:
                le = float(lab.get("le", "+Inf"))
            except ValueError:
                continue
            c.duration_buckets[le] = c.duration_buckets.get(le, 0.0) + v
        elif name == _RESP_SIZE_SUM:
            c.response_bytes += v
        elif name == _CACHE_HITS:
            c.cache_hits += v
            c.cache_seen = True
        elif name == _CACHE_REQUESTS:
            c.cache_lookups += v
            c.cache_seen = True
        elif name == _CACHE_MISSES:
            cache_misses += v
            c.cache_seen = True
        elif name in _FWD_REQUESTS:
            c.forward_requests += v
        elif name in _FWD_RESPONSES:
            if lab.get("rcode", "").upper() not in UPSTREAM_OK:
                c.forward_errors += v
        elif name in _FWD_DURATION_COUNTS:
            if "rcode" not in lab:  # 1.6.9's forward histogram has only `to`: no rcode to use
                if not has_fwd_requests:
                    c.forward_requests += v
                continue
            if not has_fwd_requests:
                c.forward_requests += v
            if not has_fwd_responses and lab["rcode"].upper() not in UPSTREAM_OK:
                c.forward_errors += v
        elif name in _FWD_HEALTH_FAILURES:
            c.forward_errors += v
    if not has_cache_requests:
        c.cache_lookups = c.cache_hits + cache_misses
    return c


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram {upper bound → count}, Prometheus-style:
    linear inside the bucket, 0 as the first lower bound, the highest finite bound when the rank
    falls in +Inf. ``None`` when the histogram is empty."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    counts: list[float] = []
    running = 0.0
    for b in bounds:  # enforce monotonicity against rounding in summed deltas
        running = max(running, buckets[b])
        counts.append(running)
    total = counts[-1]
    if not total > 0:
        return None
    rank = q * total
    lower, prev = 0.0, 0.0
    for b, cum in zip(bounds, counts):
        if cum >= rank and cum > prev:
            if math.isinf(b):
                finite = [x for x in bounds if not math.isinf(x)]
                return finite[-1] if finite else None
            return lower + (b - lower) * (rank - prev) / (cum - prev)
        lower, prev = (b if not math.isinf(b) else lower), cum
    return None


# --------------------------------------------------------------------------- rates over a tick


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def derive(delta: Counters, dt: float) -> dict[str, float | None]:
    """Every metric of :data:`METRICS` from counter increments over ``dt`` seconds."""
    out: dict[str, float | None] = {"RequestRate": delta.requests / dt}
    for q in QTYPES:
        out[f"RequestRate{q}"] = delta.by_type.get(q, 0.0) / dt
    out["RequestRateOtherType"] = delta.by_type.get("Other", 0.0) / dt
    for p in PROTOS:
        out[f"RequestRate{p}"] = delta.by_proto.get(p, 0.0) / dt
    for r in RCODES:
        out[f"ResponseRate{r}"] = delta.by_rcode.get(r, 0.0) / dt
    out["ResponseRateOtherRcode"] = delta.by_rcode.get("Other", 0.0) / dt
    responses = delta.responses
    out["NXDOMAINRatio"] = _ratio(delta.by_rcode.get("NXDOMAIN", 0.0), responses)
    out["SERVFAILRatio"] = _ratio(delta.by_rcode.get("SERVFAIL", 0.0), responses)
    p50 = quantile(0.5, delta.duration_buckets)
    p99 = quantile(0.99, delta.duration_buckets)
    out["LatencyP50"] = None if p50 is None else p50 * 1000.0
    out["LatencyP99"] = None if p99 is None else p99 * 1000.0
    out["CacheHitRatio"] = _ratio(delta.cache_hits, delta.cache_lookups) if delta.cache_seen else None
    out["ForwardRequestRate"] = delta.forward_requests / dt
    out["ForwardErrorRate"] = delta.forward_errors / dt
    out["ResponseBytesRate"] = delta.response_bytes / dt
    out["PanicRate"] = delta.panics / dt
    return out


def stale() -> dict[str, float | None]:
    return {m: None for m in METRIC_NAMES}


def _is_counter_like(name: str) -> bool:
    return name.startswith("coredns_") and name.endswith(("_total", "_bucket", "_count", "_sum"))


@dataclass
class Step:
    """What one :meth:`InstanceDeriver.update` made of a scrape."""

    values: dict[str, float | None]
    #: why the values are stale, or "" when they are not
    reason: str = ""
    version: str | None = None
    #: False when the text was missing or unreadable (the endpoint counts as down)
    readable: bool = True


class InstanceDeriver:
    """The rate state of one CoreDNS instance: feed it each scrape (or ``None`` when the scrape
    failed) with the time it was taken; it returns every metric of :data:`METRICS`."""

    def __init__(self, source: str = "coredns") -> None:
        self.source = source
        self._prev: dict[RawKey, float] | None = None
        self._prev_t: float | None = None
        self.version: str | None = None
        self.last_t: float | None = None

    def reset(self) -> None:
        self._prev = None
        self._prev_t = None

    def update(self, text: str | Scrape | None, t: float) -> Step:
        if text is None:
            self.reset()
            return Step(stale(), "scrape failed", readable=False)
        try:
            scrape = text if isinstance(text, Scrape) else parse_exposition(text, self.source)
        except ExpositionError as e:
            self.reset()
            return Step(stale(), str(e), readable=False)
        self.version = scrape.version or self.version
        cur = {k: v for k, v in scrape.samples.items() if _is_counter_like(k[0])}
        prev, prev_t = self._prev, self._prev_t
        self._prev, self._prev_t, self.last_t = cur, t, t
        if prev is None or prev_t is None:
            return Step(stale(), "first scrape: a rate needs two", scrape.version)
        dt = t - prev_t
        if not dt > 0:
            return Step(stale(), f"scrape time did not advance ({dt:.6f} s)", scrape.version)
        deltas: dict[RawKey, float] = {}
        for k, v in cur.items():
            before = prev.get(k, 0.0)
            if v < before or (math.isnan(v) and not math.isnan(before)):
                return Step(stale(), f"counter reset ({k[0]} went from {before} to {v})", scrape.version)
            deltas[k] = v - before
        vanished = [k for k in prev if k not in cur]
        if vanished:
            return Step(stale(), f"counter reset ({vanished[0][0]} vanished)", scrape.version)
        return Step(derive(aggregate(deltas, scrape.names), dt), "", scrape.version)


def totals(text: str, source: str = "exposition") -> Counters:
    """The absolute counters of one exposition text (for inspection and tests)."""
    scrape = parse_exposition(text, source)
    return aggregate(scrape.samples, scrape.names)

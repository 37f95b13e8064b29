"""The CoreDNS collector plugin: scrape each CoreDNS ``/metrics`` endpoint once a tick.

What lives here: the ``register_collectors`` hook (the plugin is on when option ``endpoints`` is
set), option parsing, and :class:`CorednsCollector`, which fetches every endpoint in parallel over
HTTP (urllib, per-attempt timeout, retries, one time budget for the whole tick) and hands each text
to an :class:`~atomwatch.plugins.coredns.metrics.InstanceDeriver`. The derivation itself (names of every
CoreDNS era, rates, ratios, quantiles) lives in :mod:`atomwatch.plugins.coredns.metrics`.

Each instance gives the fixed series set :data:`~atomwatch.plugins.coredns.metrics.METRICS` under
``SeriesKey(vm_uuid="coredns:<host:port>", vm_name=<name>, metric=…, unit=…)``. An endpoint that is
down, slow past the budget, or answers something that is not CoreDNS exposition gives ``None``
(stale) for every series of that instance — never zeros — and is logged once per outage.

Options (``--set coredns.KEY=VALUE`` or ``[plugins.coredns]``; the fields of :class:`CorednsOptions`):

``endpoints``  list or comma string of ``URL`` or ``NAME=URL`` (``http://127.0.0.1:9153/metrics``;
               a bare ``host:port`` gets ``http://`` and ``/metrics``)
``names``      optional list / comma string of instance names, aligned with ``endpoints``
``timeout``    seconds per HTTP attempt (default 2)
``retries``    extra attempts after a failed one, within the budget (default 1)
``budget``     seconds the whole tick's scrape may take (default: the agent's collect budget)
``max_bytes``  the most an answer may weigh; reading stops there (default 4 MiB)
``max_samples`` the most CoreDNS sample lines taken from one answer (default 5,000)
``parse_timeout`` seconds parsing one answer may take (default 2)

Each limit abandons that scrape (its series stale, the reason naming the server and the option,
logged once per outage, counted in :meth:`CorednsCollector.status`); the next tick scrapes again.
Why these defaults: ``docs/limits.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlparse

import atomwatch
from atomwatch import Duration, Range
from atomwatch.config import ConfigError
from atomwatch.series import SeriesKey
from atomwatch.types import Reading

from .metrics import METRICS, ExpositionLimitError, InstanceDeriver, Scrape, Step, parse_exposition, stale

log = logging.getLogger(__name__)

#: default of ``max_bytes``: the largest real exposition at hand (CoreDNS 1.6.9, 3 servers × zones)
#: is 16 kB; 4 MiB leaves room for ~100 server blocks × zones in 1.11's longer names
MAX_BYTES = 4 * 1024 * 1024
#: default of ``max_samples``: sample lines the derivation reads (156 in that text; ~130 per server
#: block × zone in 1.11); parsing costs ~0.1–0.15 ms a line
MAX_SAMPLES = 5000
#: default of ``parse_timeout``: that text parses in ~12 ms, 5,000 sample lines in ~0.7 s
PARSE_TIMEOUT = 2.0
#: bytes read from the socket at a time
READ_CHUNK = 64 * 1024
USER_AGENT = f"atomwatch-coredns/{atomwatch.__version__}"


class ScrapeError(Exception):
    """One endpoint could not be read this tick; the text says which and why."""


class LimitError(ScrapeError):
    """A scrape abandoned at a limit (``option`` names it); not retried within the tick."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass
class Endpoint:
    url: str
    name: str
    hostport: str
    deriver: InstanceDeriver = field(init=False)
    keys: dict[str, SeriesKey] = field(init=False)
    down_reason: str = ""

    def __post_init__(self) -> None:
        self.deriver = InstanceDeriver(source=self.url)
        uuid = f"coredns:{self.hostport}"
        self.keys = {m.name: SeriesKey(vm_uuid=uuid, vm_name=self.name, metric=m.name, unit=m.unit) for m in METRICS}


# --------------------------------------------------------------------------- options


@atomwatch.declare_options("coredns")
@dataclass(frozen=True)
class CorednsOptions:
    """``--set coredns.KEY=VALUE`` or ``[plugins.coredns]``, read by :func:`atomwatch.parse_options`."""

    endpoints: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    timeout: Annotated[float, Duration, Range(ge=0.001)] = 2.0
    retries: Annotated[int, Range(ge=0)] = 1
    #: None: the agent's collect budget
    budget: Annotated[float, Duration, Range(ge=0.001)] | None = None
    max_bytes: Annotated[int, Range(ge=1024)] = MAX_BYTES
    max_samples: Annotated[int, Range(ge=1)] = MAX_SAMPLES
    parse_timeout: Annotated[float, Duration, Range(ge=0.001)] = PARSE_TIMEOUT

    def __post_init__(self) -> None:
        if self.names and len(self.names) != len(self.endpoints):
            raise atomwatch.OptionError("names", list(self.names), f"one name per endpoint ({len(self.endpoints)})")


def parse_endpoint(item: str, name: str | None = None) -> Endpoint:
    """``URL`` or ``NAME=URL`` → :class:`Endpoint` (clear error naming the item when bad)."""
    label, eq, rest = item.partition("=")
    if eq and "://" not in label and "/" not in label:
        name, url = name or label.strip(), rest.strip()
    else:
        url = item.strip()
    if "://" not in url:
        url = f"http://{url}"
    u = urlparse(url)
    if u.scheme not in ("http", "https"):
        raise ConfigError(f"coredns.endpoints: {item!r}: scheme must be http:// or https://, got {u.scheme}://")
    if not u.hostname:
        raise ConfigError(f"coredns.endpoints: {item!r}: no host name")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"coredns.endpoints: {item!r}: the port is not a number in 1-65535") from None
    if not u.path or u.path == "/":
        url = url.rstrip("/") + "/metrics"
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    hostport = f"{host}:{port}"
    return Endpoint(url=url, name=name or hostport, hostport=hostport)


def parse_endpoints(options: Mapping[str, Any] | CorednsOptions) -> list[Endpoint]:
    if not isinstance(options, CorednsOptions):
        options = atomwatch.parse_options("coredns", CorednsOptions, options)
    items, names = options.endpoints, options.names
    eps = [parse_endpoint(item, names[i] if names else None) for i, item in enumerate(items)]
    for attr in ("hostport", "name"):
        seen: set[str] = set()
        for ep in eps:
            v = getattr(ep, attr)
            if v in seen:
                raise ConfigError(f"coredns.endpoints: two endpoints share the {attr} {v!r}")
            seen.add(v)
    return eps


# --------------------------------------------------------------------------- the collector


class CorednsCollector:
    """Scrapes every endpoint once per :meth:`collect`; see the module docstring."""

    name = "coredns"

    def __init__(
        self,
        endpoints: list[Endpoint] | list[str],
        timeout: float = 2.0,
        retries: int = 1,
        budget: float = 5.0,
        max_bytes: int = MAX_BYTES,
        max_samples: int = MAX_SAMPLES,
        parse_timeout: float = PARSE_TIMEOUT,
    ) -> None:
        self.max_bytes = int(max_bytes)
        self.max_samples = int(max_samples)
        self.parse_timeout = float(parse_timeout)
        #: scrapes abandoned at a limit: (endpoint name, option) → count
        self.refused: Counter[tuple[str, str]] = Counter()
        self.endpoints = [e if isinstance(e, Endpoint) else parse_endpoint(e) for e in endpoints]
        if not self.endpoints:
            raise ConfigError("coredns.endpoints: no endpoint given")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.budget = float(budget)
        self._pool = cf.ThreadPoolExecutor(max_workers=max(2, 2 * len(self.endpoints)), thread_name_prefix="coredns")
        self._inflight: dict[str, cf.Future[tuple[Scrape, float]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | CorednsOptions, default_budget: float = 5.0) -> CorednsCollector:
        if not isinstance(options, CorednsOptions):
            options = atomwatch.parse_options("coredns", CorednsOptions, options)
        eps = parse_endpoints(options)
        if not eps:
            raise ConfigError("coredns.endpoints: no endpoint given")
        budget = options.budget if options.budget is not None else default_budget
        return cls(
            eps,
            timeout=options.timeout,
            retries=options.retries,
            budget=budget,
            max_bytes=options.max_bytes,
            max_samples=options.max_samples,
            parse_timeout=options.parse_timeout,
        )

    # -- one HTTP scrape, in a worker thread ----------------------------------------------

    def _limit(self, ep: Endpoint, option: str, what: str) -> LimitError:
        self.refused[(ep.name, option)] += 1
        value = getattr(self, option)
        shown = f"{value:g} s" if isinstance(value, float) else str(value)
        return LimitError(
            option,
            f"CoreDNS {ep.name} ({ep.url}): {what}; scrape abandoned at coredns.{option} = {shown} "
            f"(raise it with --set coredns.{option}=… if this server's exposition is really that large)",
        )

    def _read(self, ep: Endpoint, resp: Any, deadline: float) -> bytes:
        """The body, read in chunks: stops at ``max_bytes`` or the tick's deadline."""
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > self.max_bytes:
            raise self._limit(ep, "max_bytes", f"the answer announces {int(length)} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise ScrapeError(f"{ep.url}: the answer was still coming after the {self.budget:g} s budget")
            chunk = resp.read1(READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_bytes:
                raise self._limit(ep, "max_bytes", f"the answer is larger than {self.max_bytes} bytes")
            chunks.append(chunk)

    def _download(self, ep: Endpoint, deadline: float) -> tuple[bytes, float]:
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                req = urllib.request.Request(ep.url, headers={"User-Agent": USER_AGENT, "Accept": "text/plain"})
                with urllib.request.urlopen(req, timeout=min(self.timeout, remaining)) as resp:
                    if resp.status != 200:
                        raise ScrapeError(f"{ep.url}: HTTP {resp.status}")
                    body = self._read(ep, resp, deadline)
                return body, time.monotonic()
            except LimitError:
                raise  # the same answer would come back: not retried
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
            except (urllib.error.URLError, OSError, ScrapeError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(e).__name__}: {reason}"
            if attempt < self.retries:
                time.sleep(min(0.05 * (attempt + 1), max(0.0, deadline - time.monotonic())))
        raise ScrapeError(f"{ep.url}: {last}")

    def _fetch(self, ep: Endpoint, deadline: float) -> tuple[Scrape, float]:
        """Download and parse one endpoint (in a worker thread: parsing is the costly part)."""
        body, t = self._download(ep, deadline)
        text = body.decode("utf-8", errors="replace")
        del body
        parse_deadline = min(time.monotonic() + self.parse_timeout, deadline)
        try:
            scrape = parse_exposition(text, ep.url, max_samples=self.max_samples, deadline=parse_deadline)
        except ExpositionLimitError as e:
            if e.limit == "samples":
                raise self._limit(ep, "max_samples", f"more than {self.max_samples} CoreDNS sample lines") from None
            if parse_deadline < deadline:
                raise self._limit(ep, "parse_timeout", f"parsing took longer than {self.parse_timeout:g} s") from None
            raise ScrapeError(f"{ep.url}: parsing was still going at the end of the {self.budget:g} s budget") from None
        return scrape, t

    # -- the tick ---------------------------------------------------------------------------

    def collect(self) -> Reading:
        deadline = time.monotonic() + self.budget
        futures: dict[str, cf.Future[tuple[Scrape, float]] | None] = {}
        with self._lock:
            for ep in self.endpoints:
                busy = self._inflight.get(ep.url)
                if busy is not None and not busy.done():
                    futures[ep.url] = None  # last tick's scrape still hangs: do not pile up
                    continue
                submitted = self._pool.submit(self._fetch, ep, deadline)
                self._inflight[ep.url] = submitted
                futures[ep.url] = submitted
        pending = [f for f in futures.values() if f is not None]
        cf.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        values: dict[SeriesKey, float | None] = {}
        deltas: dict[SeriesKey, float] = {}
        for ep in self.endpoints:
            fut = futures[ep.url]
            text: Scrape | None = None
            t = time.monotonic()
            reason = ""
            if fut is None:
                reason = f"{ep.url}: the previous scrape has not returned yet"
            elif not fut.done():
                reason = f"{ep.url}: no answer within the {self.budget:g} s budget"
            elif fut.exception() is not None:
                reason = str(fut.exception())
            else:
                text, t = fut.result()
            try:
                step = ep.deriver.update(text, t)
            except Exception as e:  # one bad text must never stop the agent's tick
                log.exception("coredns %s: derivation failed", ep.name)
                ep.deriver.reset()
                step = Step(stale(), f"derivation failed: {e}", readable=False)
            if not step.readable:
                self._mark_down(ep, reason or step.reason)
            else:
                self._mark_up(ep, step.version)
            for metric, key in ep.keys.items():
                values[key] = step.values[metric]
            for spec in METRICS:
                deltas[ep.keys[spec.name]] = spec.delta
        return Reading(values=values, deltas=deltas)

    def _mark_down(self, ep: Endpoint, reason: str) -> None:
        if not ep.down_reason:
            log.warning("CoreDNS %s is unreadable, its series are stale: %s", ep.name, reason)
        ep.down_reason = reason or "unreadable"

    def _mark_up(self, ep: Endpoint, version: str | None) -> None:
        if ep.down_reason:
            log.info("CoreDNS %s is readable again (version %s)", ep.name, version or "?")
        ep.down_reason = ""

    def status(self) -> dict[str, Any]:
        return {
            ep.name: {
                "url": ep.url,
                "version": ep.deriver.version,
                "down": ep.down_reason or None,
                "refused": {opt: n for (name, opt), n in sorted(self.refused.items()) if name == ep.name},
            }
            for ep in self.endpoints
        }

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the hook

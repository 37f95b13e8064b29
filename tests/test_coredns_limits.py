"""The CoreDNS collector's limits (docs/limits.md), each hit over real HTTP on a loopback port:
answer size (read in chunks, stopped at ``max_bytes``), CoreDNS sample lines taken from one answer
(``max_samples``) and parse time (``parse_timeout``). Each abandoned scrape names the server and
the option, is counted, and the next tick scrapes again."""

from __future__ import annotations

import http.server
import logging
import threading

import pytest
from conftest import DATA

from atomwatch import parse_options
from atomwatch.config import ConfigError
from atomwatch.plugins.coredns.collector import MAX_BYTES, CorednsCollector, CorednsOptions
from atomwatch.plugins.coredns.metrics import ExpositionLimitError, parse_exposition

REAL = (DATA / "coredns" / "coredns-170-some_load.txt").read_text()


def relevant_lines(n: int) -> str:
    """``n`` request counter samples of distinct zones: text the derivation reads, every line."""
    return "".join(
        f'coredns_dns_requests_total{{server="dns://:53",zone="z{i}.example.",proto="udp",family="1",type="A"}} {i}\n'
        for i in range(n)
    )


class Server:
    """A loopback HTTP server whose answer the test sets: ``body``, sent in 64 kB writes, with
    a Content-Length or (``announce=False``) none; ``sent`` counts the bytes that went out."""

    def __init__(self) -> None:
        self.body = REAL.encode()
        self.announce = True
        self.sent = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 — http.server's name
                body = outer.body
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                if outer.announce:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for at in range(0, len(body), 65536):
                        self.wfile.write(body[at : at + 65536])
                        outer.sent += len(body[at : at + 65536])
                except OSError:
                    pass  # the collector stopped reading and closed

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"dns1=http://127.0.0.1:{self.httpd.server_port}/metrics"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def collect_ok(col: CorednsCollector) -> None:
    """One tick that reads the server: the endpoint counts as up (first scrape: values stale)."""
    col.collect()
    assert col.status()["dns1"]["down"] is None, col.status()["dns1"]["down"]
    assert col.status()["dns1"]["version"] == "1.7.0"


def abandoned(col: CorednsCollector, caplog) -> str:
    """One tick whose scrape is abandoned: every series stale, the reason said once; the reason."""
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.coredns.collector"):
        reading = col.collect()
    assert all(v is None for v in reading.values.values())
    reason = col.status()["dns1"]["down"]
    assert reason and any(reason in r.getMessage() and "dns1" in r.getMessage() for r in caplog.records)
    return reason


@pytest.mark.parametrize("announce", [False, True], ids=["streamed", "content-length"])
def test_an_answer_over_max_bytes_stops_reading_there(server, caplog, announce):
    col = CorednsCollector([server.url], timeout=5, retries=1, budget=20, max_bytes=1 << 20)
    try:
        collect_ok(col)
        server.body = relevant_lines(600_000).encode()  # ~60 MB
        server.announce = announce
        server.sent = 0
        reason = abandoned(col, caplog)
        assert "CoreDNS dns1 (http://127.0.0.1:" in reason and "coredns.max_bytes = 1048576" in reason
        assert "--set coredns.max_bytes=" in reason
        assert ("announces" in reason) if announce else ("larger than 1048576 bytes" in reason)
        # reading stopped at the limit: the server could push little more than the socket buffers hold
        assert server.sent < len(server.body) / 4, f"{server.sent} of {len(server.body)} bytes went out"
        assert col.status()["dns1"]["refused"] == {"max_bytes": 1}, "counted once: not retried within the tick"
        server.body = REAL.encode()
        collect_ok(col)  # the next tick scrapes again
    finally:
        col.close()


def test_an_answer_over_max_samples_is_abandoned_before_parsing(server, caplog):
    col = CorednsCollector([server.url], timeout=5, retries=0, budget=20, max_samples=500)
    try:
        collect_ok(col)
        server.body = relevant_lines(501).encode()
        reason = abandoned(col, caplog)
        assert "CoreDNS dns1" in reason and "more than 500 CoreDNS sample lines" in reason
        assert "coredns.max_samples = 500" in reason
        server.body = relevant_lines(500).encode()
        col.collect()  # exactly at the limit: read (no build_info, so the version stays what it was)
        assert col.status()["dns1"]["down"] is None
        assert col.status()["dns1"]["refused"] == {"max_samples": 1}
        server.body = REAL.encode()
        collect_ok(col)
    finally:
        col.close()


def test_a_parse_over_parse_timeout_is_abandoned_and_the_next_tick_reads(server, caplog):
    col = CorednsCollector([server.url], timeout=5, retries=0, budget=30, max_samples=100_000, parse_timeout=0.001)
    try:
        collect_ok(col)  # the real text is one parse chunk: the deadline is checked between chunks
        server.body = relevant_lines(20_000).encode()
        reason = abandoned(col, caplog)
        assert "CoreDNS dns1" in reason and "parsing took longer than 0.001 s" in reason
        assert "coredns.parse_timeout = 0.001 s" in reason
        assert col.status()["dns1"]["refused"] == {"parse_timeout": 1}
        server.body = REAL.encode()
        collect_ok(col)
    finally:
        col.close()


def test_parse_exposition_limits_stop_reading_early():
    text = relevant_lines(3000)
    with pytest.raises(ExpositionLimitError, match="more than 100 CoreDNS sample lines") as e:
        parse_exposition(text, "x", max_samples=100)
    assert e.value.limit == "samples" and "line 101" in str(e.value)
    with pytest.raises(ExpositionLimitError, match="parsing stopped") as e:
        parse_exposition(text, "x", deadline=0.0)  # long past: stops after the first chunk
    assert e.value.limit == "time" and "256 of 3000 sample lines read" in str(e.value)
    full = parse_exposition(text, "x", max_samples=3000, deadline=None)
    assert len(full.samples) == 3000


def test_limit_options_defaults_and_refusals():
    opts = parse_options("coredns", CorednsOptions, {"endpoints": "127.0.0.1:9153"})
    assert (opts.max_bytes, opts.max_samples, opts.parse_timeout) == (MAX_BYTES, 5000, 2.0)
    assert MAX_BYTES == 4 << 20
    opts = parse_options("coredns", CorednsOptions, {"max_bytes": "65536", "max_samples": 50, "parse_timeout": "500ms"})
    assert (opts.max_bytes, opts.max_samples, opts.parse_timeout) == (65536, 50, 0.5)
    col = CorednsCollector.from_options({"endpoints": "127.0.0.1:9153", "parse_timeout": "500ms", "max_bytes": 65536})
    try:
        assert (col.max_bytes, col.parse_timeout) == (65536, 0.5)
    finally:
        col.close()
    for raw, message in (
        ({"max_bytes": 100}, "coredns.max_bytes must be ≥ 1024"),
        ({"max_samples": 0}, "coredns.max_samples must be ≥ 1"),
        ({"parse_timeout": "soon"}, "coredns.parse_timeout"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_options("coredns", CorednsOptions, raw)

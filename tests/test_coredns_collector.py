"""The CoreDNS collector: parsing and derivation on real CoreDNS texts (1.6.9, 1.7.0), name
handling across eras (via the simulator's three formats), and the live collector over real HTTP
against the simulator on a loopback port, including a down endpoint."""

from __future__ import annotations

import math
import socket
import time

import pytest

from atomwatch.agent.config import AgentConfig
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.lab.coredns_sim import CorednsSimulator, Event, SimConfig, SimulatorServer
from atomwatch.plugins import coredns as plugin
from atomwatch.plugins.coredns.collector import CorednsCollector, parse_endpoint
from atomwatch.plugins.coredns.metrics import (
    METRIC_NAMES,
    ExpositionError,
    InstanceDeriver,
    parse_exposition,
    quantile,
    totals,
)
from tests.conftest import DATA, free_port

CDIR = DATA / "coredns"
REAL = {
    "169-no_load": "coredns-169-no_load.txt",
    "169-some_load": "coredns-169-some_load.txt",
    "170-no_load": "coredns-170-no_load.txt",
    "170-some_load": "coredns-170-some_load.txt",
}


def real(name: str) -> str:
    path = CDIR / REAL[name]
    assert path.exists(), f"missing real CoreDNS text {path}"
    return path.read_text()


def idle_prefix(text: str) -> str:
    """The build_info and panics lines of a real text: what a freshly started CoreDNS of the same
    version exposes before any query (labelled counters appear on their first increment)."""
    lines = text.splitlines()
    return "\n".join(lines[:6]) + "\n"


# --------------------------------------------------------------------------- real texts


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_real_text_parses_with_its_version(name):
    scrape = parse_exposition(real(name), name)
    assert scrape.version == ("1.6.9" if name.startswith("169") else "1.7.0")
    c = totals(real(name))
    if name.endswith("no_load"):
        assert c.requests == 0 and c.panics == 99 and c.by_rcode == {}
    else:
        # both some_load texts carry the same traffic under different names
        assert c.requests == 82
        assert c.by_type == {"A": 27, "AAAA": 27, "MX": 28}
        assert c.by_proto == {"UDP": 82}
        assert c.by_rcode == {"NOERROR": 19, "REFUSED": 21, "SERVFAIL": 42}
        assert c.panics == 0


def test_170_text_with_stale_rcode_header_still_counts_responses():
    # netdata's 1.7.0 fixture keeps the pre-1.7 `# TYPE coredns_dns_response_rcode_count_total`
    # header above `coredns_dns_responses_total` samples; samples are classified by their own name.
    text = real("170-some_load")
    assert "# TYPE coredns_dns_response_rcode_count_total counter" in text
    assert totals(text).responses == 82


def test_169_latency_quantiles_from_the_real_histogram():
    buckets = totals(real("169-some_load")).duration_buckets
    assert buckets[math.inf] == 82  # summed over every server/zone, the truncated last series included
    # 63 of 82 requests took ≤ 0.25 ms; the 41st lies inside the first bucket
    assert quantile(0.5, buckets) == pytest.approx(0.00025 * 41 / 63)
    # rank 81.18 lies in (0.064, 0.128], where the cumulative count goes 81 → 82
    assert quantile(0.99, buckets) == pytest.approx(0.064 + 0.064 * 0.18)


@pytest.mark.parametrize("version", ["169", "170"])
def test_rates_from_an_idle_start_to_the_real_some_load_text(version):
    some = real(f"{version}-some_load")
    d = InstanceDeriver(version)
    first = d.update(idle_prefix(some), 100.0)
    assert all(v is None for v in first.values.values()), "the first scrape has no rate"
    v = d.update(some, 110.0).values
    assert set(v) == set(METRIC_NAMES)
    assert v["RequestRate"] == pytest.approx(8.2)
    assert (v["RequestRateA"], v["RequestRateAAAA"], v["RequestRateMX"]) == pytest.approx((2.7, 2.7, 2.8))
    assert v["RequestRatePTR"] == 0 and v["RequestRateOtherType"] == 0
    assert (v["RequestRateUDP"], v["RequestRateTCP"]) == pytest.approx((8.2, 0.0))
    assert v["ResponseRateNOERROR"] == pytest.approx(1.9)
    assert v["ResponseRateSERVFAIL"] == pytest.approx(4.2)
    assert v["ResponseRateREFUSED"] == pytest.approx(2.1)
    assert v["NXDOMAINRatio"] == 0
    assert v["SERVFAILRatio"] == pytest.approx(42 / 82)
    assert v["CacheHitRatio"] is None, "no cache metrics in the text: unknown, not 0"
    if version == "169":
        assert v["LatencyP50"] == pytest.approx(1000 * 0.00025 * 41 / 63)
        assert v["LatencyP99"] == pytest.approx(1000 * (0.064 + 0.064 * 0.18))
    else:  # the 1.7.0 fixture has no duration histogram
        assert v["LatencyP50"] is None and v["LatencyP99"] is None


@pytest.mark.parametrize("version", ["169", "170"])
def test_real_counter_reset_gives_stale_never_negative(version):
    # no_load says 99 panics, some_load 0: the process restarted between the two
    d = InstanceDeriver(version)
    d.update(real(f"{version}-no_load"), 0.0)
    step = d.update(real(f"{version}-some_load"), 10.0)
    assert "reset" in step.reason
    assert all(v is None for v in step.values.values())
    # the tick after the reset has rates again
    again = d.update(real(f"{version}-some_load"), 20.0)
    assert again.values["RequestRate"] == 0 and again.values["PanicRate"] == 0


def test_garbage_is_a_clear_error_and_stale():
    with pytest.raises(ExpositionError, match="my-endpoint"):
        parse_exposition("<html>not metrics</html>\n", "my-endpoint")
    with pytest.raises(ExpositionError, match="no coredns_"):
        parse_exposition("go_goroutines 12\n", "x")
    d = InstanceDeriver("x")
    step = d.update("this { is not", 1.0)
    assert not step.readable and all(v is None for v in step.values.values())


def test_quantile_edge_cases():
    assert quantile(0.5, {}) is None
    assert quantile(0.5, {0.1: 0, math.inf: 0}) is None
    # everything above the last finite bound: the highest finite bound, as Prometheus does
    assert quantile(0.99, {0.1: 0, 0.2: 0, math.inf: 5}) == 0.2
    assert quantile(0.5, {1.0: 10, 2.0: 20, math.inf: 20}) == pytest.approx(1.0)


# --------------------------------------------------------------------------- eras, through the simulator


def _run_format(fmt: str) -> list[dict]:
    sim = CorednsSimulator(
        SimConfig(seed=11, format=fmt), [Event("upstream-failure", 40, 30), Event("nxdomain-flood", 80, 20)]
    )
    d = InstanceDeriver(fmt)
    out = []
    for t in range(0, 121, 10):
        sim.advance_to(t)
        out.append(d.update(sim.exposition(), float(t)).values)
    return out


def test_same_traffic_same_values_in_every_era():
    """1.11 (proxy_*, view, plugin labels), 1.8 (forward_*), 1.6.9 (pre-1.7 names) of the same
    simulated traffic give the same derived values — except ForwardRequestRate while upstream
    requests time out, since 1.11 counts only answered upstream requests (it has no request
    counter)."""
    runs = {fmt: _run_format(fmt) for fmt in ("1.11", "1.8", "1.6.9")}
    for fmt in ("1.8", "1.6.9"):
        for i, (a, b) in enumerate(zip(runs["1.11"], runs[fmt])):
            for m in METRIC_NAMES:
                if m == "ForwardRequestRate" and 40 < i * 10 <= 80:
                    assert b[m] >= a[m]
                    continue
                assert a[m] == pytest.approx(b[m]), (fmt, i, m)
    v = runs["1.11"]
    assert v[6]["SERVFAILRatio"] > 20 * v[3]["SERVFAILRatio"]  # the upstream failure shows
    assert v[6]["ForwardErrorRate"] > 1.0 and v[3]["ForwardErrorRate"] < 1.0
    assert v[10]["NXDOMAINRatio"] > 0.5
    assert v[3]["NXDOMAINRatio"] < 0.1


# --------------------------------------------------------------------------- live over HTTP


@pytest.fixture
def manual_server():
    """The simulator on a loopback port; the test advances its clock by hand."""
    sim = CorednsSimulator(SimConfig(seed=5))
    server = SimulatorServer(sim, "127.0.0.1", 0, clock=None).start()
    yield sim, server
    server.stop()


def _instance_values(reading, name):
    return {k.metric: v for k, v in reading.values.items() if k.vm_name == name}


def test_live_rates_match_the_served_counters(manual_server):
    sim, server = manual_server
    col = CorednsCollector([f"dns1={server.url}"], timeout=2, retries=1, budget=5)
    try:
        sim.advance_to(30)
        r1 = col.collect()
        keys = {k.metric: k for k in r1.values}
        assert set(keys) == set(METRIC_NAMES)
        k = keys["RequestRate"]
        assert k.vm_uuid == f"coredns:127.0.0.1:{server.port}" and k.vm_name == "dns1" and k.unit == "req/s"
        assert all(v is None for v in r1.values.values()), "first scrape: stale"
        t1 = col.endpoints[0].deriver.last_t
        before = totals(sim.exposition())
        sim.advance_to(60)
        after = totals(sim.exposition())
        r2 = _instance_values(col.collect(), "dns1")
        dt = col.endpoints[0].deriver.last_t - t1
        assert r2["RequestRate"] * dt == pytest.approx(after.requests - before.requests)
        assert r2["ResponseRateNXDOMAIN"] * dt == pytest.approx(
            after.by_rcode["NXDOMAIN"] - before.by_rcode["NXDOMAIN"]
        )
        assert r2["CacheHitRatio"] == pytest.approx(
            (after.cache_hits - before.cache_hits) / (after.cache_lookups - before.cache_lookups)
        )
        assert 0.7 < r2["CacheHitRatio"] < 0.9
        assert r2["LatencyP99"] > r2["LatencyP50"] > 0
        assert (
            set(col.status()["dns1"]) == {"url", "version", "down", "refused"}
            and col.status()["dns1"]["version"] == "1.11.1"
        )
    finally:
        col.close()


def test_live_request_rate_follows_the_arrival_rate():
    sim = CorednsSimulator(SimConfig(seed=2, base_qps=100.0, drift=0.0, day_amplitude=0.0))
    server = SimulatorServer(sim, "127.0.0.1", 0, speed=20.0).start()  # 20 simulated s per wall s
    col = CorednsCollector([server.url], timeout=2, retries=0, budget=5)
    try:
        col.collect()
        time.sleep(1.0)
        low = _instance_values(col.collect(), f"127.0.0.1:{server.port}")["RequestRate"]
        with server.lock:
            sim.rate_multiplier = 4.0
        col.collect()  # this tick straddles the change
        time.sleep(1.0)
        high = _instance_values(col.collect(), f"127.0.0.1:{server.port}")["RequestRate"]
    finally:
        col.close()
        server.stop()
    # 100 q/s × 20 simulated s per wall s ≈ 2000 q per wall second, then four times that
    assert 1000 < low < 3000
    assert high > 2.5 * low


def test_down_endpoint_is_stale_never_zero_and_recovers():
    port = free_port()
    sim = CorednsSimulator(SimConfig(seed=9))
    server = SimulatorServer(sim, "127.0.0.1", port, clock=None).start()
    col = CorednsCollector([server.url], timeout=0.5, retries=1, budget=2)
    name = f"127.0.0.1:{port}"
    try:
        sim.advance_to(10)
        col.collect()
        sim.advance_to(20)
        up = _instance_values(col.collect(), name)
        assert up["RequestRate"] > 0
        server.stop()
        for _ in range(2):
            down = _instance_values(col.collect(), name)
            assert set(down) == set(METRIC_NAMES), "the series stay in the table while down"
            assert all(v is None for v in down.values()), down
        assert col.status()[name]["down"]
        server = SimulatorServer(sim, "127.0.0.1", port, clock=None).start()
        sim.advance_to(30)
        first = _instance_values(col.collect(), name)
        assert all(v is None for v in first.values()), "the first scrape after an outage has no rate"
        sim.advance_to(40)
        back = _instance_values(col.collect(), name)
        assert back["RequestRate"] > 0 and back["NXDOMAINRatio"] is not None
        assert col.status()[name]["down"] is None
    finally:
        col.close()
        server.stop()


def test_live_restart_of_coredns_is_a_stale_tick_not_a_negative_rate(manual_server):
    sim, server = manual_server
    col = CorednsCollector([f"dns1={server.url}"], timeout=1, retries=0, budget=3)
    try:
        sim.advance_to(60)
        col.collect()
        sim.advance_to(120)
        assert _instance_values(col.collect(), "dns1")["RequestRate"] > 0
        fresh = CorednsSimulator(SimConfig(seed=6))  # "CoreDNS restarted": counters from zero
        fresh.advance_to(10)
        with server.lock:
            server.sim = fresh
        after = _instance_values(col.collect(), "dns1")
        assert all(v is None for v in after.values()), after
        assert col.status()["dns1"]["down"] is None, "a reset is not an outage"
        fresh.advance_to(20)
        again = _instance_values(col.collect(), "dns1")
        assert again["RequestRate"] > 0 and again["CacheHitRatio"] is not None
    finally:
        col.close()


def test_hanging_endpoint_is_stale_and_the_other_instance_unaffected(manual_server):
    sim, server = manual_server
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)  # accepts connections into the backlog, never answers
    hang_url = f"http://127.0.0.1:{hang.getsockname()[1]}/metrics"
    col = CorednsCollector([f"good={server.url}", f"hung={hang_url}"], timeout=0.3, retries=1, budget=1.0)
    try:
        sim.advance_to(10)
        col.collect()
        sim.advance_to(20)
        r = col.collect()
        good, hung = _instance_values(r, "good"), _instance_values(r, "hung")
        assert good["RequestRate"] > 0
        assert len(hung) == len(METRIC_NAMES) and all(v is None for v in hung.values())
    finally:
        col.close()
        hang.close()


def test_non_coredns_answer_is_stale(manual_server):
    _, server = manual_server
    col = CorednsCollector([f"http://127.0.0.1:{server.port}/truth"], timeout=1, retries=0, budget=2)
    try:
        for _ in range(2):
            r = col.collect()
            assert all(v is None for v in r.values.values())
        assert "not Prometheus" in (col.status()[f"127.0.0.1:{server.port}"]["down"] or "") or "no coredns_" in (
            col.status()[f"127.0.0.1:{server.port}"]["down"] or ""
        )
    finally:
        col.close()


# --------------------------------------------------------------------------- options and the hook


def _agent_config(options: dict) -> AgentConfig:
    return AgentConfig(broker=BrokerAddress("127.0.0.1", 1883), site="s", host="h", tick=5.0, options=options)


def test_hook_returns_a_collector_only_when_endpoints_are_set():
    assert plugin.register_collectors(_agent_config({})) is None
    assert plugin.register_collectors(_agent_config({"coredns": {"timeout": 1}})) is None
    cols = plugin.register_collectors(
        _agent_config({"coredns": {"endpoints": "a=http://127.0.0.1:9153/metrics, 127.0.0.2:9154", "retries": 2}})
    )
    try:
        assert len(cols) == 1 and isinstance(cols[0], CorednsCollector)
        c = cols[0]
        assert [e.name for e in c.endpoints] == ["a", "127.0.0.2:9154"]
        assert c.endpoints[1].url == "http://127.0.0.2:9154/metrics"
        assert c.retries == 2 and c.budget == pytest.approx(4.0)  # the agent's budget, 0.8 × tick
    finally:
        for c in cols:
            c.close()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"endpoints": "ftp://x:1/metrics"}, "scheme"),
        ({"endpoints": "http://x:99999/metrics"}, "port"),
        ({"endpoints": ["http://a:1", "http://a:1"]}, "share"),
        ({"endpoints": "http://a:1", "timeout": "soon"}, "coredns.timeout"),
        ({"endpoints": "http://a:1", "names": "x,y"}, "coredns.names"),
        ({"endpoints": 12}, "coredns.endpoints"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        CorednsCollector.from_options(options)


def test_endpoint_forms():
    e = parse_endpoint("[::1]:9153")
    assert e.url == "http://[::1]:9153/metrics" and e.hostport == "[::1]:9153"
    e = parse_endpoint("edge=http://10.0.0.5:9153/custom")
    assert (e.name, e.url, e.hostport) == ("edge", "http://10.0.0.5:9153/custom", "10.0.0.5:9153")

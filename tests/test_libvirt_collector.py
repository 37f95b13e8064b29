"""The libvirt collector: rates from counters, stale markers, options, the plugin hook.

The rate and memory arithmetic is tested on stats dicts shaped exactly like libvirt's
``getAllDomainStats`` records (keys as measured on this machine kind). The collector itself runs
against libvirt's real ``test:///default`` driver (in-process, no daemon; its stats hold only
``state.*``, so every metric must come out stale). Real guests are in ``tests/test_lab.py``.
"""

from __future__ import annotations

import logging
import time

import pytest

from atomwatch.config import ConfigError
from atomwatch.plugins import libvirt_collector as lc
from tests.conftest import require

try:
    import libvirt  # noqa: F401

    HAVE_LIBVIRT = True
except ImportError:  # pragma: no cover
    HAVE_LIBVIRT = False


def stats(cpu_ns=0, vcpu_ns=(0,), rx=0, tx=0, rd=0, wr=0, rdb=0, wrb=0, balloon=True, net=True, block=True):
    s = {"state.state": 1, "cpu.time": cpu_ns, "vcpu.current": len(vcpu_ns), "vcpu.maximum": len(vcpu_ns)}
    for i, t in enumerate(vcpu_ns):
        s[f"vcpu.{i}.time"] = t
    if net:
        s.update({"net.count": 1, "net.0.name": "awlab-tap1", "net.0.rx.bytes": rx, "net.0.tx.bytes": tx})
    if block:
        s.update(
            {
                "block.count": 1,
                "block.0.name": "vda",
                "block.0.rd.reqs": rd,
                "block.0.wr.reqs": wr,
                "block.0.rd.bytes": rdb,
                "block.0.wr.bytes": wrb,
            }
        )
    if balloon:
        s.update({"balloon.available": 200_000, "balloon.usable": 150_000, "balloon.unused": 120_000})
    return s


def test_first_sample_is_stale_then_rates_are_counter_deltas_over_time():
    last: lc.LastGood = {}
    first = lc.rates(last, lc.sample_of(stats(), 100.0))
    assert all(v is None for v in first.values())
    second = lc.rates(
        last,
        lc.sample_of(
            stats(cpu_ns=1, vcpu_ns=(1_500_000_000,), rx=4000, tx=2000, rd=10, wr=20, rdb=4096, wrb=8192), 102.0
        ),
    )
    assert second["CPUUtilization"] == pytest.approx(75.0)  # 1.5 s busy of 2 s on one vCPU
    assert second["NetworkIn"] == pytest.approx(2000.0)
    assert second["NetworkOut"] == pytest.approx(1000.0)
    assert second["DiskReadOps"] == pytest.approx(5.0)
    assert second["DiskWriteOps"] == pytest.approx(10.0)
    assert second["DiskReadBytes"] == pytest.approx(2048.0)
    assert second["DiskWriteBytes"] == pytest.approx(4096.0)


def test_cpu_is_a_share_of_all_vcpus_and_falls_back_to_cpu_time():
    last: lc.LastGood = {}
    lc.rates(last, lc.sample_of(stats(vcpu_ns=(0, 0)), 0.0))
    two = lc.rates(last, lc.sample_of(stats(vcpu_ns=(1_000_000_000, 0)), 1.0))
    assert two["CPUUtilization"] == pytest.approx(50.0)  # one of two vCPUs busy
    no_vcpu = stats(cpu_ns=0)
    no_vcpu.pop("vcpu.0.time")
    last = {}
    lc.rates(last, lc.sample_of(no_vcpu, 0.0))
    no_vcpu["cpu.time"] = 250_000_000
    assert lc.rates(last, lc.sample_of(no_vcpu, 1.0))["CPUUtilization"] == pytest.approx(25.0)


def test_counter_reset_gives_stale_not_a_negative_rate_then_restarts():
    last: lc.LastGood = {}
    lc.rates(last, lc.sample_of(stats(vcpu_ns=(9_000_000_000,), tx=10_000), 0.0))
    reset = lc.rates(last, lc.sample_of(stats(vcpu_ns=(100_000_000,), tx=500), 1.0))  # domain restarted
    assert reset["CPUUtilization"] is None and reset["NetworkOut"] is None
    after = lc.rates(last, lc.sample_of(stats(vcpu_ns=(600_000_000,), tx=1500), 2.0))
    assert after["CPUUtilization"] == pytest.approx(50.0)
    assert after["NetworkOut"] == pytest.approx(1000.0)


def test_missing_group_is_stale_and_the_next_rate_spans_both_intervals():
    last: lc.LastGood = {}
    lc.rates(last, lc.sample_of(stats(rd=0, tx=0), 0.0))
    locked = lc.rates(last, lc.sample_of(stats(tx=100, block=False), 1.0))
    assert locked["DiskReadOps"] is None  # the block group was skipped (domain job held)
    assert locked["NetworkOut"] == pytest.approx(100.0)
    back = lc.rates(last, lc.sample_of(stats(rd=40, tx=200), 2.0))
    assert back["DiskReadOps"] == pytest.approx(20.0)  # 40 requests over the 2 s since the last good read


def test_a_nic_without_counters_makes_network_stale_not_zero():
    s = stats()
    del s["net.0.tx.bytes"]  # e.g. <interface type='user'>: no counters
    assert lc.sample_of(s, 0.0).counters["NetworkOut"] is None
    assert lc.sample_of(s, 0.0).counters["NetworkIn"] == 0
    no_nic = stats(net=False)
    no_nic["net.count"] = 0  # a domain with no NIC really sends nothing
    assert lc.sample_of(no_nic, 0.0).counters["NetworkOut"] == 0


def test_memory_utilization_uses_usable_then_unused_and_is_stale_without_balloon():
    assert lc.memory_utilization(stats()) == pytest.approx(25.0)  # (200000 − 150000) / 200000
    s = stats()
    del s["balloon.usable"]
    assert lc.memory_utilization(s) == pytest.approx(40.0)  # MemFree fallback
    assert lc.memory_utilization(stats(balloon=False)) is None
    s = stats()
    s["balloon.available"] = 0
    assert lc.memory_utilization(s) is None


# ----------------------------------------------------------------------------- real test driver


@pytest.fixture
def test_driver_collector():
    require(HAVE_LIBVIRT, "libvirt-python is not installed (pip install libvirt-python)")
    c = lc.LibvirtCollector(uri="test:///default", budget=2.0)
    yield c
    c.close()


def test_test_driver_domain_reports_every_metric_stale_never_invented(test_driver_collector):
    for _ in range(3):
        r = test_driver_collector.collect()
    keys = list(r.values)
    assert {k.metric for k in keys} == set(lc.METRICS)
    assert {k.vm_name for k in keys} == {"test"}
    assert all(v is None for v in r.values.values())  # the test driver gives only state.*
    assert all(k.vm_uuid and len(k.vm_uuid) == 36 for k in keys)
    assert r.deltas[next(k for k in keys if k.metric == "CPUUtilization")] == lc.DEFAULT_DELTAS["CPUUtilization"]
    # no vCPU times: the collector asks for cpu.time (CPU_TOTAL) from then on
    assert test_driver_collector.stats_mask & test_driver_collector.libvirt.VIR_DOMAIN_STATS_CPU_TOTAL


def test_a_dropped_connection_is_reopened_at_the_next_tick(test_driver_collector):
    before = set(test_driver_collector.collect().values)
    (conn,) = test_driver_collector._idle
    conn.close()
    after = test_driver_collector.collect()
    assert set(after.values) == before
    (again,) = test_driver_collector._idle
    assert again is not conn and again.isAlive()


def test_budget_overrun_mock_slow_stats_calls_stale_and_bounded_in_number(test_driver_collector, caplog):
    """Every call slow (as when libvirtd itself hangs): each tick is stale, a second call is sent
    after half the budget, and no more than MAX_CALLS ever run at once."""
    known = set(test_driver_collector.collect().values)
    real_fetch = test_driver_collector._fetch
    test_driver_collector.budget = 0.2
    calls0 = test_driver_collector.calls

    def slow_fetch():
        time.sleep(1.2)
        return real_fetch()

    test_driver_collector._fetch = slow_fetch
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.libvirt_collector"):
        t0 = time.monotonic()
        r = test_driver_collector.collect()
        took = time.monotonic() - t0
        later = [test_driver_collector.collect() for _ in range(3)]
    assert took < 0.5
    for reading in (r, *later):
        assert set(reading.values) == known and all(v is None for v in reading.values.values())
    assert test_driver_collector.calls - calls0 == lc.MAX_CALLS  # two in the first tick, one in the next
    assert sum("still run" in m for m in caplog.messages) == 1  # said once, not every tick
    time.sleep(1.3)
    test_driver_collector._fetch = real_fetch
    after = test_driver_collector.collect()
    assert set(after.values) == known and test_driver_collector.stale_ticks == 4


# ----------------------------------------------------------------------------- plugin hook


def _config(options):
    from atomwatch.agent.config import AgentConfig
    from atomwatch.config import BrokerAddress

    return AgentConfig(broker=BrokerAddress.parse("mqtt://127.0.0.1"), tick=2.0, options={"libvirt": options})


def test_hook_runs_the_collector_when_the_uri_connects():
    require(HAVE_LIBVIRT, "libvirt-python is not installed")
    result = lc.register_collectors(_config({"uri": "test:///default", "domains": "^te"}))
    assert result is not None and len(result) == 1
    c = result[0]
    try:
        assert c.name == "libvirt" and c.uri == "test:///default"
        assert c.budget == pytest.approx(0.8 * 0.8 * 2.0)  # 80 % of the agent's budget (80 % of the tick)
        assert {k.vm_name for k in c.collect().values} == {"test"}
    finally:
        c.close()


def test_hook_warns_once_and_runs_nothing_when_libvirt_is_unreachable(caplog, tmp_path):
    require(HAVE_LIBVIRT, "libvirt-python is not installed")
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such-socket"
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.libvirt_collector"):
        assert lc.register_collectors(_config({"uri": uri})) is None
    warnings = [m for m in caplog.messages if "not running" in m]
    assert len(warnings) == 1 and "no-such-socket" in warnings[0]


def test_hook_disabled_runs_nothing():
    assert lc.register_collectors(_config({"enabled": False, "uri": "test:///default"})) is None
    assert lc.register_collectors(_config({"enabled": "false"})) is None


@pytest.mark.parametrize(
    "options, words",
    [
        ({"budget": "soon"}, ["libvirt.budget", "'soon'"]),
        ({"budget": 0}, ["libvirt.budget", "> 0"]),
        ({"domains": "(["}, ["libvirt.domains", "regular expression"]),
        ({"delta_cpu": -1}, ["libvirt.delta_cpu", "≥ 0"]),
        ({"urI": "x"}, ["unknown option", "urI"]),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(options, words):
    require(HAVE_LIBVIRT, "libvirt-python is not installed")
    with pytest.raises(ConfigError) as e:
        lc.register_collectors(_config({"uri": "test:///default", **options}))
    for w in words:
        assert w in str(e.value)


def test_delta_options_override_the_default_deltas():
    require(HAVE_LIBVIRT, "libvirt-python is not installed")
    [c] = lc.register_collectors(_config({"uri": "test:///default", "delta_network": 5000, "delta_cpu": 0.5}))
    try:
        r = c.collect()
        by_metric = {k.metric: d for k, d in r.deltas.items()}
        assert by_metric["NetworkIn"] == by_metric["NetworkOut"] == 5000
        assert by_metric["CPUUtilization"] == 0.5
        assert by_metric["DiskReadOps"] == lc.DEFAULT_DELTAS["DiskReadOps"]
    finally:
        c.close()

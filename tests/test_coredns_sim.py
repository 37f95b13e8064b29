"""The CoreDNS simulator: deterministic recordings in the recording format, every class moving
the metrics it should, the benign flash crowd labelled apart, and ``serve`` over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY

from atomwatch.lab.coredns_sim import (
    CLASSES,
    CorednsSimulator,
    Event,
    SimConfig,
    SimulatorError,
    SimulatorServer,
    default_schedule,
    parse_event,
    record,
)
from atomwatch.plugins.coredns.metrics import METRIC_NAMES, parse_exposition
from atomwatch.traces import read_labels, read_trace
from tests.conftest import free_port, wait_port


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "a"
    rec = record(out, minutes=20, seed=7, tick=10)
    return out, rec


def test_record_is_deterministic_for_a_seed(recording, tmp_path):
    out, _ = recording
    again = tmp_path / "b"
    record(again, minutes=20, seed=7, tick=10)
    for f in ("values.csv", "labels.csv", "scenario.json"):
        assert (out / f).read_bytes() == (again / f).read_bytes(), f
    other = tmp_path / "c"
    record(other, minutes=20, seed=8, tick=10)
    assert (other / "labels.csv").read_bytes() == (out / "labels.csv").read_bytes()  # same schedule
    assert (other / "values.csv").read_bytes() != (out / "values.csv").read_bytes()  # other traffic


def test_recording_format_and_labels(recording):
    out, rec = recording
    trace = read_trace(out)
    labels = read_labels(out, trace.rows)
    assert trace.rows == 120 and trace.columns == [f"coredns-sim/{m}" for m in METRIC_NAMES]
    assert np.all(np.diff(trace.timestamps) == 10)
    assert not np.isnan(trace.values).any(), "the priming scrape makes row 0 a full row"
    klass = np.array(labels.klass)
    assert set(klass) == set(CLASSES) | {"normal"}
    for k, lab in CLASSES.items():
        rows = klass == k
        assert rows.sum() > 5
        assert set(labels.label[rows]) == {lab}, k
    assert set(labels.label[klass == "normal"]) == {0}
    assert set(np.array(labels.vm)[klass != "normal"]) == {"coredns-sim"}
    scenario = json.loads((out / "scenario.json").read_text())
    assert scenario["simulator"] is True and scenario["classes"]["flash-crowd"] == 0
    assert [e["class"] for e in scenario["events"]] == [e.klass for e in rec.events]
    assert "Simulated data" in (out / "README.md").read_text()


def test_every_class_moves_the_metrics_it_should(tmp_path):
    out = tmp_path / "r"
    record(out, minutes=40, seed=1, tick=10)
    trace, labels = read_trace(out), read_labels(out)
    klass = np.array(labels.klass)
    col = {c.split("/", 1)[1]: i for i, c in enumerate(trace.columns)}

    def mean(k: str, metric: str) -> float:
        return float(np.mean(trace.values[klass == k, col[metric]]))

    n = "normal"
    assert mean("nxdomain-flood", "NXDOMAINRatio") > 5 * mean(n, "NXDOMAINRatio")
    assert mean("nxdomain-flood", "ForwardRequestRate") > 3 * mean(n, "ForwardRequestRate")
    assert mean("upstream-failure", "SERVFAILRatio") > 20 * mean(n, "SERVFAILRatio")
    assert mean("upstream-failure", "LatencyP99") > 10 * mean(n, "LatencyP99")
    assert mean("upstream-failure", "ForwardErrorRate") > 10 * mean(n, "ForwardErrorRate")
    assert mean("amplification", "ResponseBytesRate") > 10 * mean(n, "ResponseBytesRate")
    assert mean("amplification", "RequestRateANY") > 50 * mean(n, "RequestRateANY")
    assert mean("cache-busting", "CacheHitRatio") < 0.6 * mean(n, "CacheHitRatio")
    # the flash crowd: much more traffic, same mix
    assert mean("flash-crowd", "RequestRate") > 2.5 * mean(n, "RequestRate")
    assert mean("flash-crowd", "NXDOMAINRatio") == pytest.approx(mean(n, "NXDOMAINRatio"), rel=0.2)
    assert mean("flash-crowd", "SERVFAILRatio") < 2 * mean(n, "SERVFAILRatio")


def test_the_daily_rhythm_shows_in_the_request_rate(tmp_path):
    out = tmp_path / "day"
    cfg = SimConfig(seed=4, day_seconds=1200.0, day_amplitude=0.4, drift=0.0)
    record(out, minutes=20, seed=4, tick=30, events=[], config=cfg)
    rate = read_trace(out).values[:, 0]
    # one compressed day in 20 minutes: the peak at a quarter, the trough at three quarters
    assert rate[:20].max() > 1.5 * rate[20:].min()
    assert np.argmax(rate) < len(rate) / 2 < np.argmin(rate)


def test_simulator_is_deterministic_whatever_the_read_times():
    a = CorednsSimulator(SimConfig(seed=3), [Event("amplification", 5, 10)])
    b = CorednsSimulator(SimConfig(seed=3), [Event("amplification", 5, 10)])
    for t in (0.5, 3.2, 7.9, 20.0):
        a.advance_to(t)
    b.advance_to(20.0)

    def strip(s):
        return s.split("\n", 2)[2]

    assert strip(a.exposition()) == strip(b.exposition())


def test_schedule_and_event_errors():
    evs = default_schedule(60, tick=10)
    assert [e.klass for e in evs] == [
        "nxdomain-flood",
        "flash-crowd",
        "upstream-failure",
        "cache-busting",
        "amplification",
    ]
    assert all(e.start % 10 == 0 and e.duration % 10 == 0 for e in evs)
    assert evs[0].start >= 15 * 60 - 10 and evs[-1].start + evs[-1].duration <= 3600
    assert parse_event("cache-busting@2+1.5") == Event("cache-busting", 120.0, 90.0)
    with pytest.raises(SimulatorError, match="anomaly class 'dos'"):
        parse_event("dos@1+1")
    with pytest.raises(SimulatorError, match="CLASS@START"):
        parse_event("nxdomain-flood")
    with pytest.raises(SimulatorError, match="format"):
        CorednsSimulator(SimConfig(format="2.0"))
    with pytest.raises(SimulatorError, match="loopback"):
        SimulatorServer(CorednsSimulator(), "10.1.2.3", 0)


def test_every_format_is_valid_exposition_named_as_a_simulator():
    for fmt, version in (("1.11", "1.11.1"), ("1.8", "1.8.6"), ("1.6.9", "1.6.9")):
        sim = CorednsSimulator(SimConfig(seed=1, format=fmt))
        sim.advance_to(5)
        text = sim.exposition()
        assert text.startswith("# atomwatch CoreDNS SIMULATOR")
        scrape = parse_exposition(text, fmt)
        assert scrape.version == version
        names = scrape.names
        if fmt == "1.11":
            assert "coredns_proxy_request_duration_seconds_count" in names
            assert not any(n.startswith("coredns_forward_requests") for n in names)
            assert any(dict(k[1]).get("view") == "" for k in scrape.samples if k[0] == "coredns_dns_responses_total")
        if fmt == "1.6.9":
            assert {"coredns_dns_request_count_total", "coredns_panic_count_total"} <= names


def test_serve_command_over_http_with_an_anomaly(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomwatch", "coredns-sim", "serve", "--listen", f"127.0.0.1:{port}",
         "--anomaly", "nxdomain-flood", "--at", "0", "--for", "60", "--speed", "30", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_port(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain")
        assert "SIMULATOR" in text.splitlines()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/truth", timeout=5) as r:
            truth = json.load(r)
        assert truth["label"] == 1 and truth["class"] == "nxdomain-flood" and truth["simulator"] is True
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "SIMULATOR (not a real CoreDNS)" in out


def test_serve_refuses_a_non_loopback_address():
    r = subprocess.run(
        [sys.executable, "-m", "atomwatch", "coredns-sim", "serve", "--listen", "0.0.0.0:9153"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "loopback" in r.stderr


def test_record_command(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "atomwatch", "coredns-sim", "record", "--minutes", "3", "--out", str(out),
         "--seed", "2", "--tick", "5", "--event", "upstream-failure@1+1", "--format", "1.6.9"],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rows"] == 36 and summary["simulator"] is True
    labels = read_labels(out)
    assert labels.label.sum() == 12 and set(np.array(labels.klass)[labels.label == 1]) == {"upstream-failure"}
    bad = subprocess.run(
        [sys.executable, "-m", "atomwatch", "coredns-sim", "record", "--minutes", "3", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "at least 5 minutes" in bad.stderr


# --------------------------------------------------------------------------- end to end


NXDOMAIN_METRICS = {"NXDOMAINRatio", "ResponseRateNXDOMAIN"}
UPSTREAM_METRICS = {"SERVFAILRatio", "ResponseRateSERVFAIL", "ForwardErrorRate", "LatencyP99"}


@pytest.mark.slow
async def test_end_to_end_agent_scrapes_the_simulator_and_pca_spe_flags_attacks(mosquitto, site):
    """The real agent scrapes the simulator over HTTP (the coredns plugin, loaded from its entry
    point), tracks and publishes through a real Mosquitto; the controller runs ``pca-spe``. The
    NXDOMAIN flood and the upstream failure must be flagged with the right metrics blamed; the
    flash crowd's alarms are measured and printed, not asserted."""
    import asyncio

    from atomwatch.agent.config import AgentConfig
    from atomwatch.agent.runtime import Agent
    from atomwatch.config import BrokerAddress
    from atomwatch.controller.app import Controller
    from atomwatch.controller.config import ControllerConfig
    from atomwatch.pluginmanager import PluginManager

    speed, tick = 60.0, 0.25
    step = speed * tick  # simulated seconds per agent tick
    lead, dur, gap = 80 * step, 10 * step, 20 * step
    events = [
        Event("nxdomain-flood", lead, dur),
        Event("flash-crowd", lead + dur + gap, dur),
        Event("upstream-failure", lead + 2 * (dur + gap), dur),
    ]
    end = lead + 3 * (dur + gap)
    sim = CorednsSimulator(SimConfig(seed=21, resolution=0.25), events)
    server = SimulatorServer(sim, "127.0.0.1", 0, speed=speed).start()
    pm = PluginManager()
    pm.load_entry_points(allow="coredns,pca-spe")
    broker = BrokerAddress.parse(mosquitto.url)
    opts = {"coredns": {"endpoints": f"dns1={server.url}", "timeout": 0.2, "retries": 0}}
    agent = Agent(
        AgentConfig(broker=broker, controller_key=CONTROLLER_KEY, site=site, host="dnshost", tick=tick, options=opts),
        pm,
    )
    controller = Controller(
        ControllerConfig(
            broker=broker, signing_key=SIGNING_KEY, sites=[site], tick=tick, detectors=["pca-spe"], options=opts
        ),
        pm,
    )
    found: list[tuple[float, object]] = []
    rows: list[float] = []
    controller.anomaly_listeners.append(lambda a: found.append((server.sim_time(), a)))
    controller.row_listeners.append(lambda r: rows.append(server.sim_time()))
    tasks = [asyncio.create_task(controller.run()), asyncio.create_task(agent.run())]
    try:
        await asyncio.wait_for(controller.connected.wait(), 10)
        await asyncio.wait_for(agent.connected.wait(), 10)
        while server.sim_time() < end:
            await asyncio.sleep(0.1)
    finally:
        agent.stop()
        controller.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.stop()

    def klass(t: float) -> str:
        eff = t - step  # a row holds rates over the previous tick, read up to a tick ago
        for e in events:
            if e.start <= eff < e.start + e.duration + step:
                return e.klass
            if e.start + e.duration + step <= eff < e.start + e.duration + 4 * step:
                return "recovery"  # three ticks after an event: the window of rates drains
        return "normal"

    assert len(rows) > 0.8 * end / step, f"only {len(rows)} controller rows for {end / step:.0f} agent ticks"
    by_class: dict[str, list] = {}
    for t, a in found:
        by_class.setdefault(klass(t), []).append(a)
    rows_by_class: dict[str, int] = {}
    for t in rows:
        rows_by_class[klass(t)] = rows_by_class.get(klass(t), 0) + 1

    def blamed(anomalies) -> set[str]:
        out = set()
        for a in anomalies:
            out |= {b.column.metric for b in sorted(a.blame, key=lambda b: -b.score)[:3]}
        return out

    summary = {
        k: {
            "rows": rows_by_class.get(k, 0),
            "alarms": len(by_class.get(k, [])),
            "top_blame": sorted(blamed(by_class.get(k, []))),
        }
        for k in sorted(set(rows_by_class) | set(by_class))
    }
    print("\nend-to-end pca-spe on the CoreDNS simulator:", json.dumps(summary, indent=1))
    nx, up = by_class.get("nxdomain-flood", []), by_class.get("upstream-failure", [])
    assert nx, f"the NXDOMAIN flood was not flagged: {summary}"
    assert up, f"the upstream failure was not flagged: {summary}"
    assert all(a.blame and a.blame[0].column.vm_name == "dns1" for a in nx + up)
    assert blamed(nx) & NXDOMAIN_METRICS, f"NXDOMAIN flood blamed {blamed(nx)}"
    assert blamed(up) & UPSTREAM_METRICS, f"upstream failure blamed {blamed(up)}"


def test_default_deltas_sit_below_the_normal_noise(recording):
    """A Δ wider than a series' tick-to-tick noise freezes the tracked value inside its band (and
    PCA-SPE then reads the band's offset after any change as a lasting deviation): the defaults
    must stay under the simulator's normal noise at its default 200 q/s and 10 s ticks."""
    from atomwatch.plugins.coredns.metrics import METRICS

    out, _ = recording
    trace, labels = read_trace(out), read_labels(out)
    normal = labels.label == 0
    normal &= np.array(labels.klass) == "normal"
    checked = 0
    for i, spec in enumerate(METRICS):
        noise = float(np.median(np.abs(np.diff(trace.values[normal, i]))))
        if noise > 0:  # (PanicRate stays 0: its Δ is 0, every change is sent)
            assert spec.delta < noise, f"{spec.name}: Δ {spec.delta} ≥ tick-to-tick noise {noise}"
            checked += 1
    assert checked >= len(METRICS) - 1

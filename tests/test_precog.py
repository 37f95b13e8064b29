"""The Precog detector plugin: registration, options, rows, the CLI, and the default mode's claims.

The claims of the default ``precog`` (improved) mode are checked on real Alibaba machines, fitted
on their first two days as the authors run Precog: where the faithful ``precog-reference`` raises
alarms on ordinary behaviour (the real traces; the same traces at a 50 % level with a 3 % daily
sine or an 8 % GC sawtooth added), the default raises none; on the same traces with a leak injected
(50 % → 90 % in 24 h), the default reports it before memory reaches 90 %.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from atomwatch.config import ConfigError
from atomwatch.pluginmanager import get_plugin_manager
from atomwatch.plugins import precog
from atomwatch.types import Row, SeriesKey
from tests.conftest import DATA
from tests.test_precog_reference import alibaba, sample_trace

MEM = "MemoryUtilization"


def factory(name: str) -> precog.PrecogFactory:
    return {f.name: f for f in precog.register_detectors()}[name]


VM1 = SeriesKey("vm-1", "vm-1", MEM, "%")


def feed(detector, t, v, key=VM1, start=0):
    """Rows of one column; returns the row indices (relative to ``start``) that raised an anomaly."""
    hits = []
    for i in range(start, len(t)):
        out = detector.update(Row("host", i, float(t[i]), (key,), np.array([v[i]])))
        if out:
            hits.append(i)
    return np.array(hits, dtype=np.int64)


# ----------------------------------------------------------------------------- plugin plumbing


def test_both_detectors_are_registered_through_the_entry_point():
    pm = get_plugin_manager()
    names = [f.name for _, fs in ((None, r) for r in pm.hook.register_detectors()) for f in fs]
    assert "precog" in names and "precog-reference" in names


@pytest.mark.parametrize(
    "options, words",
    [
        ({"bogus": 1}, ["bogus"]),
        ({"step": "abc"}, ["step", "abc"]),
        ({"req_trend_r2": 1.5}, ["req_trend_r2"]),
        ({"metrics": 5}, ["metrics"]),
        ({"fit_rows": -1}, ["fit_rows"]),
        ({"critical_time": "7 fortnights"}, ["critical_time", "fortnights"]),
        ({"use_max_values_as_filter": "maybe"}, ["use_max_values_as_filter"]),
    ],
)
def test_bad_options_are_refused_with_a_message_naming_them(options, words):
    with pytest.raises(ConfigError) as e:
        factory("precog").create("s", options)
    for w in words:
        assert w in str(e.value)


def test_options_reach_the_reference_parameters():
    d = factory("precog-reference").create(
        "s",
        {
            "req_trend_duration": "8h",
            "critical_time": "3d",
            "min_value": 35,
            "metrics": "Mem, MemoryUtilization",
            "use_max_values_as_filter": "false",
        },
    )
    p = d.settings.params
    assert (p.min_trend, p.critical, p.min_value, p.max_filter) == (8 * 3600, 3 * 86400, 35.0, False)
    assert d.settings.metrics == ("Mem", MEM)


def _trace_decisions(detector, t_row, v, key):
    return feed(detector, t_row, v, key).tolist()


def test_rows_mode_and_seconds_mode_decide_alike():
    """Row.ts counting rows (offline trace without timestamps, step 600 s by default or given) and
    Row.ts in seconds are the same series."""
    _, v = sample_trace(6)
    key = SeriesKey("", "", "0")
    opts = {"metrics": "*", "fit_rows": 375, "min_value": 30}
    by_rows = _trace_decisions(factory("precog-reference").create("s", opts), np.arange(v.size), v, key)
    by_secs = _trace_decisions(factory("precog-reference").create("s", opts), np.arange(v.size) * 600.0 + 1.7e9, v, key)
    by_step = _trace_decisions(
        factory("precog-reference").create("s", {**opts, "step": "10min"}), np.arange(v.size), v, key
    )
    assert by_rows and by_rows == by_secs == by_step
    other = _trace_decisions(factory("precog-reference").create("s", {**opts, "step": 420}), np.arange(v.size), v, key)
    assert other != by_rows  # the step really is used


def test_columns_metrics_nan_and_bad_values():
    """Only memory columns are watched; each has its own state; NaN rows change nothing; values
    above the limit are rejected and counted; a column that leaves is forgotten after ``forget``."""
    _, v = sample_trace(6)
    a, b, cpu = SeriesKey("u1", "vm-a", MEM), SeriesKey("u2", "vm-b", MEM), SeriesKey("u1", "vm-a", "CPUUtilization")
    alone = factory("precog-reference").create("s", {"fit_rows": 375, "min_value": 30})
    want = feed(alone, np.arange(v.size) * 600.0, v, a).tolist()
    assert want

    det = factory("precog-reference").create("s", {"fit_rows": 375, "min_value": 30, "forget": "2h"})
    hits_a, hits_b = [], []
    flat = 35.0
    for i in range(v.size):
        ts = i * 600.0
        cols: tuple = (cpu, a, b) if i < 1200 else (cpu, a)  # vm-b leaves at row 1200
        vals = [50.0, v[i], flat] if i < 1200 else [50.0, v[i]]
        if i % 7 == 0 and i < 1200:
            vals[2] = math.nan
        if i == 500:
            vals[2] = 180.0  # not a percentage
        for out in det.update(Row("s", i, ts, cols, np.array(vals))) or []:
            (hits_a if out.blame[0].column == a else hits_b).append(i)
        if i % 11 == 3:  # a stale row for every memory column: ignored
            assert det.update(Row("s", i, ts + 1, (a, b), np.array([math.nan, math.nan]))) is None
    assert hits_a == want
    assert hits_b == []
    status = det.status()
    assert set(status["columns"]) == {"vm-a/MemoryUtilization"}  # vm-b forgotten, CPU never watched


def test_rejected_values_are_counted_not_fatal():
    det = factory("precog").create("s", {"fit_rows": 3})
    key = SeriesKey("u", "vm", MEM)
    for i, x in enumerate([50, 51, 250, 52, -4, 53, 54]):
        det.update(Row("s", i, i * 600.0, (key,), np.array([float(x)])))
    st = det.status()["columns"]["vm/MemoryUtilization"]
    assert st["rejected_above_limit"] == 2 and st["rows"] == 5 and st["phase"] == "predicting"


def test_anomaly_names_vm_trend_and_time_to_limit():
    _, v = sample_trace(6)
    det = factory("precog-reference").create("host-1", {"fit_rows": 375, "min_value": 30})
    key = SeriesKey("uuid-9", "web-9", MEM, "%")
    first = None
    for i in range(v.size):
        out = det.update(Row("host-1", i, i * 600.0 + 1.7e9, (key,), np.array([v[i]])))
        if out:
            first = out[0]
            break
    assert first is not None
    blame = first.blame[0]
    assert blame.column == key and blame.direction == "up"
    d = blame.details
    assert d["r2"] > 0.8 and d["slope_pct_per_min"] > 0
    assert d["window_duration_s"] >= 6 * 3600 and d["window_start"] < d["window_end"] <= first.ts
    assert 0 < d["time_to_limit_s"] <= 7 * 86400
    assert d["limit_at"] == pytest.approx(d["window_end"] + d["time_to_limit_s"])
    assert first.details["vm"] == "web-9" and "left" in d["label"]
    assert first.score >= first.threshold == 1.0


def test_detect_cli_runs_the_plugin_on_a_sample_trace():
    path = str(DATA / "precog" / "test1.csv")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomwatch",
            "detect",
            path,
            "--detector",
            "precog",
            "--set",
            "precog.metrics=*",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == 1000
    path6 = str(DATA / "precog" / "test6.csv")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomwatch",
            "detect",
            path6,
            "--detector",
            "precog-reference",
            "--set",
            "precog-reference.metrics=*",
            "--set",
            "precog-reference.fit_rows=375",
            "--set",
            "precog-reference.min_value=30",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    anomalies = json.loads(out.stdout)["anomalies"]
    assert anomalies and all(a["blame"][0]["r2"] > 0.8 for a in anomalies)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomwatch",
            "detect",
            path,
            "--detector",
            "precog",
            "--set",
            "precog.metrics=*",
            "--set",
            "precog.fit_rows=x",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 2 and "fit_rows" in bad.stderr


# ----------------------------------------------------------------------------- the default mode's claims


# the scenarios of the quality benchmark: the real trace at a 50 % level with a daily rhythm, a
# sawtooth or a leak added (see docs/precog.md)
from benchmarks.precog import scenario  # noqa: E402


def run_both(t, v):
    out = {}
    for name in ("precog-reference", "precog"):
        det = factory(name).create("host", {"fit_duration": "2d"})
        out[name] = feed(det, t, v)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("machine", [1012, 1014])
def test_default_ignores_ordinary_behaviour_the_reference_alarms_on(machine):
    t, v = alibaba(machine)
    hits = run_both(t, v)
    assert hits["precog-reference"].size > 0  # the reference falls for it
    assert hits["precog"].size == 0


@pytest.mark.slow
@pytest.mark.parametrize("machine, kind", [(1010, "sine"), (1011, "sine"), (1010, "saw")])
def test_default_ignores_rhythm_and_sawtooth_the_reference_alarms_on(machine, kind):
    t, v = alibaba(machine)
    v, _, _ = scenario(t, v, kind)
    hits = run_both(t, v)
    assert hits["precog-reference"].size > 0
    assert hits["precog"].size == 0


@pytest.mark.slow
@pytest.mark.parametrize("machine", [1010, 1011, 1013])
def test_default_reports_injected_leak_before_90_percent(machine):
    t, v = alibaba(machine)
    v, t0, t90 = scenario(t, v, "leak", hours=24)
    det = factory("precog").create("host", {"fit_duration": "2d"})
    hits = feed(det, t, v)
    assert hits.size
    assert not np.any(t[hits] < t0)  # nothing before the leak starts
    first = t[hits[0]]
    assert first < t90, f"first report {(first - t90) / 3600:.1f} h after 90 %"
    assert v[hits[0]] < 90


# ----------------------------------------------------------------------------- lab recordings

LAB_SCALE = {  # the lab's workloads last minutes, not days: the same algorithm on a finer clock
    "resampling_time_resolution": "5s",
    "smoothing_window": "15s",
    "req_trend_duration": "30s",
    "min_separation_duration": "30s",
    "critical_time": "10min",
    "min_value": 0,
    "fit_duration": "60s",
}


def _lab_recordings(name: str) -> list:
    """Lab recordings made with ``atomwatch lab record`` (tests/data: their README says how) and
    the bundled one of ``atomwatch up`` (atomwatch/data)."""
    from pathlib import Path

    found = []
    for root in (
        Path(__file__).resolve().parent / "data",
        Path(__file__).resolve().parent.parent / "atomwatch" / "data",
    ):
        found += sorted(root.glob(f"*{name}*.csv")) + sorted(p for p in root.glob(f"*{name}*") if p.is_dir())
    return [p for p in found if not p.name.endswith(".labels.csv")]


def test_no_leak_reported_on_the_lab_cryptominer_recording():
    """A recorded lab run with memory columns and no leak: neither mode reports one."""
    from atomwatch.trace_rows import detect_trace
    from atomwatch.traces import read_trace

    recs = _lab_recordings("cryptominer")
    from tests.conftest import require

    require(bool(recs), "no lab-cryptominer recording under atomwatch/data")
    trace = read_trace(recs[0])
    assert any(c.endswith("/MemoryUtilization") for c in trace.columns)
    for name in ("precog", "precog-reference"):
        run = detect_trace(factory(name), trace, LAB_SCALE)
        assert run.rows == trace.rows and run.anomalies == []


def test_leak_reported_before_90_percent_on_the_lab_leaker_recording():
    from atomwatch.trace_rows import detect_trace
    from atomwatch.traces import read_labels, read_trace, resolve
    from tests.conftest import require

    recs = _lab_recordings("leaker")
    require(bool(recs), "no lab leaker recording under tests/data")
    trace = read_trace(recs[0])
    run = detect_trace(factory("precog"), trace, LAB_SCALE)
    assert run.anomalies, "the leak was not reported"
    first = run.anomalies[0]
    col = trace.columns.index(first.blame[0].column.column)
    assert trace.values[first.index, col] < 90
    _, labels_path = resolve(recs[0])
    if labels_path is not None:
        labels = read_labels(labels_path, rows=trace.rows)
        assert labels.label[first.index] == 1 or labels.label[: first.index].any()


def test_no_leak_reported_on_the_lab_normal_recording():
    from atomwatch.trace_rows import detect_trace
    from atomwatch.traces import read_trace
    from tests.conftest import require

    recs = _lab_recordings("normal")
    require(bool(recs), "no lab normal recording under tests/data")
    trace = read_trace(recs[0])
    assert any(c.endswith("/MemoryUtilization") for c in trace.columns)
    run = detect_trace(factory("precog"), trace, LAB_SCALE)
    assert run.rows == trace.rows and run.anomalies == []


def test_accept_normal_refits_on_the_accepted_rows():
    """The operator's *normal* verdict on an alarm: its rows join the history, the fit learns the
    trend as normal, and the very next rows no longer alarm on it."""
    _, v = sample_trace(6)
    key = SeriesKey("u", "vm", MEM)
    rows = [Row("s", i, i * 600.0, (key,), np.array([v[i]])) for i in range(v.size)]
    det = factory("precog-reference").create("s", {"fit_rows": 375, "min_value": 30})
    for row in rows:
        out = det.update(row)
        if out:
            break
    assert out, "no alarm to give a verdict on"
    i = row.index  # the row that alarmed
    before = det.columns[key].model
    assert before.trends == []
    start_row = int(out[0].blame[0].details["window_start"] / 600)
    det.accept_normal(rows[start_row : i + 1])
    after = det.columns[key].model
    assert after is not before and len(after.trends) == 1
    assert after.max_slope > 0
    assert not any(det.update(r) for r in rows[i + 1 : i + 6])


def test_max_history_bounds_the_online_series():
    """With ``max_history`` the online series is rebuilt from its newest part once it grows 25 %
    past the limit: the kept bins are unchanged and the detector keeps deciding."""
    rng = np.random.default_rng(3)
    n = 20 * 288  # 20 days of 5-minute points
    t = 1.7e9 + np.arange(n) * 300.0
    v = 60 + 3 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 0.5, n)
    v[-600:] += np.linspace(0, 30, 600)  # a leak in the last two days
    det = factory("precog").create("s", {"max_history": "14d"})
    hits = feed(det, t, v)
    state = det.columns[VM1]
    assert state.series.n <= 14 * 288 * 1.25 + 1
    assert state.series.n < n - 288  # it was trimmed
    assert hits.size and hits[0] >= n - 600  # the leak is still found, nothing before it

    series = state.series
    kept = series.trimmed(1000)
    assert np.array_equal(kept.r, series.r[-1000:]) and kept.cur_vals == series.cur_vals


@pytest.mark.parametrize("amplitude, noise", [(2.0, 0.2), (3.0, 0.5), (5.0, 0.2)])
def test_default_ignores_a_clean_daily_rhythm_the_reference_alarms_on(amplitude, noise):
    """20 days at 60 % with a daily sine of a few percent and white noise, 5-minute points, fitted
    on the first two days: the reference takes rising halves for leaks, the default does not."""
    rng = np.random.default_rng(3)
    n = 20 * 288
    t = 1.7e9 + np.arange(n) * 300.0
    v = 60 + amplitude * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, noise, n)
    hits = run_both(t, v)
    assert hits["precog-reference"].size > 0
    assert hits["precog"].size == 0


def test_matching_no_column_is_said_once_per_scope_naming_the_columns(tmp_path, caplog):
    """Columns named ``vm1.MemoryUtilization`` (a dot, not VM/METRIC): precog watches nothing and
    says so once, with the columns it saw, in ``atomwatch detect`` as in the controller."""
    from atomwatch.traces import write_trace

    path = tmp_path / "dots.csv"
    values = np.column_stack([np.linspace(40, 90, 300), np.full(300, 5.0)])
    write_trace(path, ["vm1.MemoryUtilization", "vm1.CPUUtilization"], values)
    out = subprocess.run(
        [sys.executable, "-m", "atomwatch", "detect", str(path), "--detector", "precog"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("watches nothing") == 1, out.stderr
    assert "precog scope 'dots': no column's metric is MemoryUtilization (option precog.metrics)" in out.stderr
    assert "vm1.MemoryUtilization, vm1.CPUUtilization (2 columns)" in out.stderr
    assert "a column is named VM/METRIC" in out.stderr
    # once per scope: a second scope says it again, a watched column says nothing
    cols = tuple(SeriesKey.from_column(c) for c in ("vm1.MemoryUtilization", "vm1.CPUUtilization"))
    with caplog.at_level("WARNING"):
        for scope in ("a", "b"):
            det = factory("precog").create(scope, {})
            for i in range(50):
                det.update(Row(scope, i, float(i), cols, np.array([50.0, 5.0])))
        det = factory("precog").create("c", {})
        det.update(Row("c", 0, 0.0, (VM1,), np.array([50.0])))
    said = [r.getMessage() for r in caplog.records if "watches nothing" in r.getMessage()]
    assert [m.split("'")[1] for m in said] == ["a", "b"]

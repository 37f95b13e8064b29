"""Tests of ``atomwatch track``, run as a real subprocess on real and written traces."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, require

from atomwatch.traces import write_trace

PRECOG = DATA / "precog"


def track(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``atomwatch`` command (the console script beside this interpreter)."""
    exe = Path(sys.executable).parent / "atomwatch"
    command = [str(exe)] if exe.exists() else [shutil.which("atomwatch") or "atomwatch"]
    return subprocess.run([*command, "track", *args], check=False, capture_output=True, text=True, timeout=120)


def test_json_on_a_real_trace_has_the_policies_in_order() -> None:
    trace = PRECOG / "test1.csv"
    require(trace.exists(), f"{trace} is missing")
    out = track(str(trace), "--delta", "5%", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # exactly one JSON object
    assert set(report["policies"]) == {"all", "deadband", "atom", "optimal"}
    p = report["policies"]
    for name in p:
        assert isinstance(p[name]["messages"], int) and isinstance(p[name]["max_error"], float)
    assert p["optimal"]["messages"] <= p["atom"]["messages"] <= p["all"]["messages"]
    assert p["optimal"]["messages"] <= p["deadband"]["messages"] <= p["all"]["messages"]
    assert p["all"]["messages"] == report["samples"] == 1000
    assert p["all"]["max_error"] == 0.0
    (delta,) = report["delta"]
    mean = float(np.loadtxt(trace, delimiter=",", skiprows=1, usecols=1).mean())
    assert delta == pytest.approx(0.05 * abs(mean))
    for name in ("deadband", "atom", "optimal"):
        assert 0 < p[name]["max_error"] <= delta


def test_table_output_and_absolute_delta_on_a_gzipped_multi_series_trace(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    noisy = 50 + rng.uniform(-1, 1, 300)
    drift = np.linspace(0, 30, 300)
    drift[100:110] = np.nan  # a gap: the series is resent after it
    plain = tmp_path / "two.csv"
    write_trace(plain, ["vm1/cpu", "vm1/net"], np.c_[noisy, drift], np.arange(300.0))
    gz = tmp_path / "two.csv.gz"
    with plain.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)

    out = track(str(gz), "--delta", "0.5", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["series"] == ["vm1/cpu", "vm1/net"] and report["delta"] == [0.5, 0.5]
    p = report["policies"]
    assert p["all"]["messages"] == 590
    assert p["optimal"]["messages"] <= min(p["atom"]["messages"], p["deadband"]["messages"])
    assert max(p[n]["max_error"] for n in p) <= 0.5

    text = track(str(gz), "--delta", "0.5")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "2 series × 300 samples" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["all", "deadband", "atom", "optimal"]
    assert [int(line.split()[1]) for line in lines[2:]] == [p[n]["messages"] for n in p]


def test_gamma_changes_atom_only(tmp_path: Path) -> None:
    trace = tmp_path / "walk.csv"
    write_trace(trace, ["x"], np.cumsum(np.random.default_rng(2).normal(size=(2000, 1)), axis=0))
    fine = json.loads(track(str(trace), "--delta", "2", "--json").stdout)["policies"]
    coarse = json.loads(track(str(trace), "--delta", "2", "--gamma", "3.9", "--json").stdout)["policies"]
    assert fine["deadband"] == coarse["deadband"] and fine["optimal"] == coarse["optimal"]
    # γ ≥ width of S after one halving: every round ends at its first violation → deadband
    assert coarse["atom"]["messages"] == coarse["deadband"]["messages"] != fine["atom"]["messages"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.csv", "--delta", "1"], "missing.csv: no such file"),
        (["{trace}", "--delta", "abc"], "'abc' is not a number"),
        (["{trace}", "--delta", "-1"], "--delta '-1': Δ must be a finite number ≥ 0, got '-1'"),
        (["{trace}", "--delta", "nan"], "--delta 'nan': Δ must be a finite number ≥ 0, got 'nan'"),
        (["{trace}", "--delta", "1", "--gamma", "5%"], "γ is a resolution"),
        (["{trace}"], "--delta"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    trace = tmp_path / "t.csv"
    write_trace(trace, ["x"], np.ones((3, 1)))
    out = track(*[a.format(trace=trace) for a in args])
    assert out.returncode == 2
    assert message in out.stderr and out.stdout == ""


def test_unreadable_cell_names_the_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("timestamp,x\n0,1\n1,oops\n")
    out = track(str(trace), "--delta", "1")
    assert out.returncode == 2
    assert "line 3" in out.stderr and "'oops' is not a number" in out.stderr

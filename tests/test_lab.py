"""The libvirt lab: the guest image, scenario labels, and real TCG guests read by the collector.

Tests marked ``lab`` boot three real guests once for the module (through libvirtd, QEMU TCG on
this machine kind) and reuse them; they take over the lab's fixed names (``awlab-*``) and bring
the lab down at the end. Without libvirt/QEMU they skip, or fail under ATOMWATCH_REQUIRE_LAB=1.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_build_tools

from atomwatch.lab import scenarios
from atomwatch.lab.build import MODULE_ORDER, WORKLOADS
from atomwatch.traces import read_labels, read_trace

TICK = 2.0


# ----------------------------------------------------------------------------- no guests needed


def test_build_puts_agent_libs_modules_and_workloads_in_the_initramfs(image_dir):
    listing = subprocess.run(
        f"zcat {image_dir / 'initrd.img'} | cpio -t --quiet", shell=True, capture_output=True, text=True, check=True
    ).stdout.split()
    names = set(listing)
    assert {"init", "bin/busybox", "usr/sbin/qemu-ga", "sbin/shutdown", "usr/local/bin/labctl"} <= names
    assert {f"usr/local/bin/{w}" for w in WORKLOADS} <= names
    assert {f"lib/modules/lab/{m}.ko" for m in MODULE_ORDER} <= names
    info = json.loads((image_dir / "image.json").read_text())
    for lib in info["qemu_ga_libs"]:
        assert lib.lstrip("/") in names, f"qemu-ga library {lib} missing"
    modules = subprocess.run(
        f"zcat {image_dir / 'initrd.img'} | cpio -i --to-stdout --quiet etc/lab/modules",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert modules == MODULE_ORDER
    assert (image_dir / "vmlinuz").stat().st_size > 1_000_000
    assert info["kernel_release"] == "6.1.0-56-cloud-amd64"


def test_build_names_a_wrong_kernel_deb(tmp_path):
    require_build_tools()
    from atomwatch.lab.build import BuildError, build

    with pytest.raises(BuildError, match="no-such.deb: no such file"):
        build(tmp_path / "no-such.deb", tmp_path / "out")
    not_kernel = next(Path("/var/cache/apt/archives").glob("busybox-static_*.deb"), None)
    if not_kernel is not None:
        with pytest.raises(BuildError, match="holds no /boot/vmlinuz"):
            build(not_kernel, tmp_path / "out")


def test_cryptominer_labels_are_fixed_by_the_schedule():
    s = scenarios.get("cryptominer")
    labels = s.labels(rows=300, tick=2.0, minutes=10)
    on = [i + 1 for i, (lab, _, _) in enumerate(labels) if lab]
    assert on == list(range(91, 241))  # ticks ending after minute 3, up to minute 8 inclusive
    assert {(k, v) for lab, k, v in labels if lab} == {("cryptominer", "awlab-guest2")}
    assert all(k == "normal" and v == "" for lab, k, v in labels if not lab)
    assert labels == s.labels(rows=300, tick=2.0, minutes=10)


def test_ddos_attacks_two_of_three_guests_and_unknown_scenarios_are_named():
    labels = scenarios.get("ddos").labels(rows=60, tick=10.0, minutes=10)
    assert {v for lab, _, v in labels if lab} == {"awlab-guest2;awlab-guest3"}
    assert set(scenarios.SCENARIOS) >= {"normal", "cryptominer", "ddos", "leaker", "exfil", "resource-freeing"}
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        scenarios.get("nope")


def test_domain_type_probe_never_picks_kvm_on_a_pvm_host():
    from atomwatch.lab.domains import probe_domain_type

    dtype, why = probe_domain_type()
    assert dtype in ("kvm", "qemu") and why
    if Path("/sys/module/kvm_pvm").exists() or not Path("/dev/kvm").exists():
        assert dtype == "qemu"


def test_lab_cli_reports_a_missing_image_clearly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "atomwatch", "lab", "up", "--guests", "1", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "atomwatch lab up:" in proc.stderr
    assert "lab build" in proc.stderr or "libvirt" in proc.stderr


# ----------------------------------------------------------------------------- real guests


@pytest.fixture
def collector(lab):
    from atomwatch.plugins.libvirt_collector import LibvirtCollector

    c = LibvirtCollector(budget=1.5, domains=r"^awlab-guest\d+$")
    yield c
    c.close()
    from atomwatch.lab import workloads

    for dom in lab["doms"]:
        if dom.isActive():
            workloads.stop_all(dom)


def _series(collector, ticks: int, tick: float = TICK) -> list[dict[tuple[str, str], float | None]]:
    out = []
    for _ in range(ticks):
        time.sleep(tick)
        r = collector.collect()
        out.append({(k.vm_name, k.metric): v for k, v in r.values.items()})
    return out


def _values(rows, vm: str, metric: str) -> list[float]:
    return [r[(vm, metric)] for r in rows if r.get((vm, metric)) is not None]


@pytest.mark.lab
def test_guests_reach_the_target_only_and_the_bridge_has_no_host_address(lab):
    from atomwatch.lab import domains
    from atomwatch.lab.paths import BRIDGE

    host_v4 = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE], capture_output=True, text=True)
    assert host_v4.stdout.strip() == ""
    assert lab["state"]["domain_type"] in ("qemu", "kvm")
    g1 = lab["doms"][0]
    assert "atomwatch lab target" in domains.sh(g1, "wget -q -O - http://10.77.0.1:8080/")
    assert "0% packet loss" in domains.sh(g1, "ping -c 1 -W 2 10.77.0.12")  # a fellow guest
    host_ip = subprocess.run(
        "ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if host_ip:
        code, out, _ = domains.guest_exec(g1, "/bin/sh", ["-c", f"ping -c 1 -W 2 {host_ip}"])
        assert code != 0, f"a guest reached the host at {host_ip}: {out}"
    code, _, _ = domains.guest_exec(g1, "/bin/sh", ["-c", "ping -c 1 -W 2 1.1.1.1"])
    assert code != 0


@pytest.mark.lab
def test_cryptominer_guest_above_50_percent_while_idle_guest_below_10(lab, collector):
    from atomwatch.lab import workloads

    g1, g2, _ = lab["doms"]
    collector.collect()
    workloads.start(g2, "cryptominer")
    assert "cryptominer" in workloads.running(g2)
    rows = _series(collector, 7)
    workloads.stop(g2, "cryptominer")
    busy = _values(rows[1:], g2.name(), "CPUUtilization")
    idle = _values(rows[1:], g1.name(), "CPUUtilization")
    assert len(busy) >= 4 and len(idle) >= 4
    assert statistics.median(busy) > 50, busy
    assert statistics.median(idle) < 10, idle
    assert "cryptominer" not in workloads.running(g2)


@pytest.mark.lab
def test_ddos_bot_network_out_at_least_ten_times_its_baseline(lab, collector):
    from atomwatch.lab import workloads

    g3 = lab["doms"][2]
    workloads.start(g3, "normal", workloads.default_args("normal", day_seconds=24))
    collector.collect()
    base_rows = _series(collector, 5)
    workloads.start(g3, "ddos-bot")
    attack_rows = _series(collector, 6)
    workloads.stop(g3, "ddos-bot")
    baseline = statistics.mean(_values(base_rows, g3.name(), "NetworkOut"))
    attack = statistics.mean(_values(attack_rows[1:], g3.name(), "NetworkOut"))
    assert baseline > 0, "the normal workload sent nothing: no baseline"
    assert attack >= 10 * baseline, (baseline, attack)


@pytest.mark.lab
def test_leaker_memory_utilization_rises_monotonically(lab, collector):
    from atomwatch.lab import workloads

    g2 = lab["doms"][1]
    collector.collect()
    workloads.start(g2, "leaker", ["4", "2", "120"])
    rows = _series(collector, 10)
    workloads.stop(g2, "leaker")
    mem = _values(rows, g2.name(), "MemoryUtilization")
    assert len(mem) >= 8
    steps = [b - a for a, b in zip(mem, mem[1:])]
    assert all(s >= -0.2 for s in steps), mem  # never falls (0.2 points of guest-kernel noise)
    assert mem[-1] - mem[0] > 10, mem  # ~4 MiB per 2 s of a 256 MiB guest
    assert sum(s > 0 for s in steps) >= len(steps) // 2, mem


@pytest.mark.lab
def test_destroyed_domain_is_gone_within_two_ticks_and_comes_back_stale_first(lab, collector):
    from atomwatch.agent.series_table import SeriesTable

    g3 = lab["doms"][2]
    table = SeriesTable()
    first = collector.collect()
    table.update(first.values)
    g3_keys = {k for k in first.values if k.vm_name == g3.name()}
    assert len(g3_keys) == 8
    time.sleep(TICK)
    table.update(collector.collect().values)
    g3.destroy()
    gone: set = set()
    readings = []
    for _ in range(2):
        time.sleep(TICK)
        r = collector.collect()
        readings.append(r)
        gone |= {table.keys[a] for a in table.update(r.values).gone}
    assert gone == g3_keys
    assert all(k.vm_name != g3.name() for r in readings for k in r.values)  # nothing invented for it
    others = [v for k, v in readings[-1].values.items() if k.metric == "CPUUtilization"]
    assert len(others) == 2 and all(v is not None for v in others)
    # it comes back: a new birth whose rates are stale on the first tick, real after
    g3.create()
    from atomwatch.lab import domains

    domains.wait_agent(g3, 120)
    back = collector.collect()
    mine = {k.metric: v for k, v in back.values.items() if k.vm_name == g3.name()}
    assert mine["CPUUtilization"] is None and mine["NetworkOut"] is None
    assert {k for k in back.values if k.vm_name == g3.name()} == g3_keys  # same domain, same keys
    time.sleep(TICK)
    later = {k.metric: v for k, v in collector.collect().values.items() if k.vm_name == g3.name()}
    assert later["CPUUtilization"] is not None


@pytest.mark.lab
def test_hung_domain_is_stale_within_one_tick_the_others_keep_values_and_it_comes_back(lab, collector, caplog):
    import logging
    import os
    import signal

    from atomwatch.lab import domains

    g1, g2, g3 = lab["doms"]
    collector.collect()
    time.sleep(TICK)
    before = collector.collect()
    assert all(v is not None for v in before.values.values()), before.values
    pid = domains.qemu_pid(g2.name())
    assert pid is not None
    hung_ticks, took = [], []
    os.kill(pid, signal.SIGSTOP)  # its QEMU monitor stops answering: the next stats call hangs on it
    try:
        with caplog.at_level(logging.INFO, logger="atomwatch.plugins.libvirt_collector"):
            for _ in range(4):
                time.sleep(TICK)
                t0 = time.monotonic()
                r = collector.collect()
                took.append(time.monotonic() - t0)
                hung_ticks.append({(k.vm_name, k.metric): v for k, v in r.values.items()})
            assert collector.hung == {g2.UUIDString(): g2.name()}
    finally:
        os.kill(pid, signal.SIGCONT)
    assert max(took) < TICK, took  # no tick waits for the hung domain
    for row in hung_ticks:  # from the first tick on: the hung one stale, the others measured
        assert [row[(g2.name(), m)] for m in lc_metrics()] == [None] * 8, row
        for g in (g1, g3):
            assert all(row[(g.name(), m)] is not None for m in lc_metrics()), (g.name(), row)
    assert sum("awlab-guest2 is hung" in m for m in caplog.messages) == 1, caplog.messages
    assert collector.hangs == 1 and collector.hung_ticks == 4
    # SIGCONT: the stuck call returns and the next ticks read it again (its rates span the hang)
    back = None
    for _ in range(2):
        time.sleep(TICK)
        back = {k.metric: v for k, v in collector.collect().values.items() if k.vm_name == g2.name()}
        if all(v is not None for v in back.values()):
            break
    assert back is not None and all(v is not None for v in back.values()), back
    assert collector.hung == {}


def lc_metrics() -> list[str]:
    from atomwatch.plugins.libvirt_collector import METRICS

    return list(METRICS)


@pytest.mark.lab
def test_record_cli_writes_a_labelled_recording(lab, tmp_path):
    out = tmp_path / "rec"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomwatch",
            "lab",
            "record",
            "--scenario",
            "cryptominer",
            "--minutes",
            "0.5",
            "--tick",
            "1",
            "--out",
            str(out),
            "--dir",
            str(lab["dir"]),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trace = read_trace(out)
    labels = read_labels(out, trace.rows)
    assert trace.rows == 30
    assert len(trace.columns) == 24 and "awlab-guest2/CPUUtilization" in trace.columns
    expected = scenarios.get("cryptominer").labels(30, 1.0, 0.5)
    assert [int(x) for x in labels.label] == [e[0] for e in expected]
    assert {v for v, lab_ in zip(labels.vm, labels.label) if lab_} == {"awlab-guest2"}
    cpu = trace.values[:, trace.columns.index("awlab-guest2/CPUUtilization")]
    on = labels.label == 1
    import numpy as np

    assert np.nanmedian(cpu[on][2:]) > np.nanmedian(cpu[~on]) + 20
    meta = json.loads((out / "scenario.json").read_text())
    assert meta["scenario"]["name"] == "cryptominer" and meta["rows"] == 30
    assert [e["action"] for e in meta["events"]] == ["start", "stop"] and all(e["ok"] for e in meta["events"])
    assert "atomwatch lab record --scenario cryptominer" in (out / "README.md").read_text()


@pytest.mark.lab
def test_lab_run_streams_the_live_guests_through_agent_and_controller(lab):
    import re

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomwatch",
            "lab",
            "run",
            "--scenario",
            "cryptominer",
            "--minutes",
            "0.4",
            "--tick",
            "2",
            "--dir",
            str(lab["dir"]),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    births = re.findall(r"birth: session \d+, (\d+) series", proc.stderr)
    assert "24" in births, births  # 3 guests × 8 metrics reached the controller
    sent = re.search(r"agent stopped after (\d+) ticks: .*'values_sent': (\d+)", proc.stderr)
    assert sent and int(sent.group(1)) >= 8 and int(sent.group(2)) > 24
    events = json.loads(proc.stdout[proc.stdout.index("{") :])["events"]
    assert [(e["action"], e["workload"], e["ok"]) for e in events] == [
        ("start", "cryptominer", True),
        ("stop", "cryptominer", True),
    ]

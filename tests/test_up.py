"""``atomwatch up`` with nothing configured: embedded amqtt broker, controller, agent, replay —
and the README's quick start run as a new user would, in a virtual environment of the core
install alone."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, free_port, have_module, require

import atomwatch

BUNDLED = ROOT / "atomwatch" / "data"


def test_version():
    out = subprocess.run(["atomwatch", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"atomwatch {atomwatch.__version__}"


def test_up_runs_the_whole_pipeline_on_the_embedded_broker():
    env = dict(os.environ, ATOMWATCH_LOAD_PLUGINS="replay", ATOMWATCH_DB=":memory:")  # the replay collector only
    proc = subprocess.run(
        ["atomwatch", "-v", "up", "--duration", "8", "--tick", "0.2", "--http", "off"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert re.search(r"embedded MQTT broker \(amqtt\) listening on mqtt://127\.0\.0\.1:\d+", log)
    assert "replaying" in log and "lab-cryptominer.csv" in log
    # (-v: the controller logs each row at DEBUG)
    rows = re.findall(r"row (\d+) of default/\S+: (\d+) columns, (\d+) stale", log)
    assert len(rows) >= 10, log[-3000:]
    # the bundled recording: 3 VMs × 8 metrics; a few cells the lab's collector could not read
    # were recorded empty, and replay reports them stale, never invented
    assert all(int(cols) == 24 and int(stale) < 24 for _, cols, stale in rows[1:])
    assert [int(r[0]) for r in rows] == list(range(len(rows))), "rows are numbered without gaps"
    assert "controller stopped" in log and "agent stopped" in log


def test_up_with_every_plugin_reports_unconfigured_detectors_without_errors():
    """The README's first command with nothing configured: every built-in plugin loads; the deep
    detectors (no trained model) are said to be not configured, once, at INFO — no ERROR."""
    env = dict(os.environ, ATOMWATCH_DB=":memory:")
    env.pop("ATOMWATCH_LOAD_PLUGINS", None)
    proc = subprocess.run(
        ["atomwatch", "up", "--duration", "6", "--http", "off"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert " ERROR " not in log, log[-3000:]
    for name in ("ae", "cnn", "siamese"):
        said = re.findall(rf"detector {name} not started \(not configured\): {name}: needs the option model=PATH", log)
        assert len(said) == 1, log[-3000:]


def test_bad_option_is_a_clear_error():
    proc = subprocess.run(
        ["atomwatch", "up", "--duration", "2", "--http", "off", "--set", "replay.speed=-1"],
        env=dict(os.environ, ATOMWATCH_LOAD_PLUGINS="replay"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "replay.speed must be > 0, got -1" in proc.stderr
    proc = subprocess.run(["atomwatch", "agent", "--broker", "http://x"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "scheme must be mqtt://" in proc.stderr


async def test_the_embedded_broker_admits_only_the_runs_own_password():
    """``atomwatch up``'s broker (real amqtt on loopback) with a per-run user: another local user
    without the password, with a wrong one, or anonymous, cannot connect; the password file of
    hashes lives in a private folder that is gone after stop."""
    import aiomqtt

    from atomwatch.broker import EmbeddedBroker

    broker = EmbeddedBroker(users={"atomwatch": "the-runs-own-password"})
    await broker.start()
    folder = broker._private
    try:
        assert folder is not None and (folder.stat().st_mode & 0o077) == 0
        assert "the-runs-own-password" not in (folder / "passwords").read_text()
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="atomwatch", password="the-runs-own-password"
        ) as c:
            await c.publish("atomwatch/v1/t/hv/data", b"{}", qos=1)
        for username, password in (("atomwatch", "a guess"), (None, None), ("mallory", "the-runs-own-password")):
            try:
                async with aiomqtt.Client("127.0.0.1", broker.port, username=username, password=password, timeout=5):
                    pass
            except aiomqtt.MqttError as e:
                assert "Not authorized" in str(e) or "135" in str(e), e
            else:
                raise AssertionError(f"{username!r} / {password!r} was admitted")
    finally:
        await broker.stop()
    assert not folder.exists()


def _warm_up_children(cache_dir: str) -> list[int]:
    """PIDs of kernel-compiling child processes started with this numba cache folder."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if b"warm_up()" in cmdline and f"NUMBA_CACHE_DIR={cache_dir}".encode() in environ:
            found.append(int(pid))
    return found


def test_up_exits_cleanly_while_the_kernels_still_compile(tmp_path):
    """Issue 15: with an empty numba cache the PCA kernels compile for tens of seconds; a short
    ``atomwatch up`` ends meanwhile. It must exit 0 every time (it crashed in LLVM at teardown)
    and leave no compiling child behind."""
    require(have_module("numba"), "numba is not installed (the 'fast' extra)")
    for run in range(10):
        cache = tmp_path / f"numba-{run}"
        cache.mkdir()
        env = dict(os.environ, ATOMWATCH_DB=":memory:", NUMBA_CACHE_DIR=str(cache))
        env.pop("ATOMWATCH_LOAD_PLUGINS", None)
        env.pop("ATOMWATCH_NO_JIT", None)
        proc = subprocess.run(
            ["atomwatch", "up", "--duration", "5", "--http", "off"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, f"run {run}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert "controller stopped" in proc.stderr, proc.stderr[-3000:]
        assert "compiling the PCA kernels in child process" in proc.stderr, "the run ended before pca-spe started"
        assert _warm_up_children(str(cache)) == [], f"run {run}: a compiling child outlived atomwatch up"


# ---------------------------------------------------------------------------- the quick start


def readme_quick_start() -> list[list[str]]:
    """The commands of the README's first code block, split into words (``&&`` separates them)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start") :]
    block = section[section.index("```sh\n") + 6 :]
    block = block[: block.index("```")]
    commands = []
    for line in block.strip().splitlines():
        for part in line.split("&&"):
            commands.append(shlex.split(part))
    return commands


def fresh_env(tmp: Path, bin_dir: Path | None = None) -> dict[str, str]:
    """An environment as on a fresh machine: no ATOMWATCH_* settings, state in ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMWATCH_", "PYTHON", "VIRTUAL_ENV"))}
    env["XDG_STATE_HOME"] = str(tmp / "state")
    env["HOME"] = str(tmp / "home")
    (tmp / "home").mkdir(exist_ok=True)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def core_venv(tmp_path_factory) -> Path:
    """A virtual environment that sees no system packages, with this tree installed as the
    README's first command installs it (the core, no extras); built once per session (pip takes
    a minute or two). Its ``bin`` folder is returned."""
    install = [c for c in readme_quick_start() if c[:2] == ["pip", "install"]]
    assert install == [["pip", "install", "."]], f"the README's quick start must install the core only: {install}"
    venv = tmp_path_factory.mktemp("core-venv")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg, cfg
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=fresh_env(tmp_path_factory.mktemp("pip")),
    )
    require(
        proc.returncode == 0,
        f"pip could not install the core into a clean virtual environment (no package index?): {proc.stderr[-2000:]}",
    )
    return venv / "bin"


def _trace() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(columns, values, labels) of the bundled recording."""
    with open(BUNDLED / "lab-cryptominer.csv") as f:
        rows = list(csv.reader(f))
    columns = rows[0][1:]
    values = np.array([[float(x) if x else np.nan for x in r[1:]] for r in rows[1:]])
    with open(BUNDLED / "lab-cryptominer.labels.csv") as f:
        labels = np.array([int(r["label"]) for r in csv.DictReader(f)])
    return columns, values, labels


def recording_rows(record: dict) -> list[int]:
    """The rows of the bundled recording an alarm's stored row can be (each value within the
    replay's tracking error Δ, 1 % of its column's mean, of the recorded one)."""
    columns, values, _ = _trace()
    got = {f"{c[1]}/{c[2]}": v for c, v in zip(record["columns"], record["values"])}
    seen = np.array([np.nan if got.get(c) is None else got[c] for c in columns])
    delta = np.nanmean(np.abs(values), axis=0) * 0.01
    with np.errstate(invalid="ignore"):
        off = np.abs(values - seen) > delta * 1.001 + 1e-9
    return [int(i) for i in np.flatnonzero(~off.any(axis=1))]


def stored_alarms(db: Path) -> list[dict]:
    """The alarms ``up`` left in its file, oldest first, read through the store itself."""
    from atomwatch.controller.alarms import AlarmStore

    store = AlarmStore(db, readonly=True)
    try:
        return [a.to_dict() for a in sorted(store.list(load_rows=True), key=lambda a: a.id)]
    finally:
        store.shutdown()


def test_readme_quick_start_shows_the_attack_in_a_core_install(core_venv, tmp_path):
    """Issue 18: the README's first two commands, as a new user runs them — a virtual
    environment with the core install only, ``atomwatch up --duration 30`` with nothing
    configured. Within that duration (the run ends by itself) the bundled attack opens an alarm
    that blames vm2's CPU, the operator is told its id and the commands to look at it and judge
    it, and no alarm opens on a normal row of the recording."""
    up = next(c for c in readme_quick_start() if c[:2] == ["atomwatch", "up"])
    assert "--duration" in up, up
    duration = float(up[up.index("--duration") + 1])
    port = free_port()
    db = tmp_path / "alarms.sqlite"
    proc = subprocess.run(
        [str(core_venv / "atomwatch"), *up[1:], "--http", f"127.0.0.1:{port}", "--db", str(db)],
        env=fresh_env(tmp_path, core_venv),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=duration + 150,
    )
    log = proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert "lab-cryptominer.csv" in log and "tick 0.1 s" in log, log[-3000:]

    alarms = stored_alarms(db)
    assert alarms, f"no alarm within {duration:g} s\n{proc.stdout}\n{log[-3000:]}"
    _, _, labels = _trace()
    for alarm in alarms:
        # each alarm's first row is one of the recording's attack rows: none opened on normal work
        candidates = recording_rows(alarm["rows"][0])
        assert candidates, f"alarm {alarm['id']}'s first row is no row of the recording"
        assert all(labels[r] == 1 for r in candidates), (alarm["id"], candidates)
        assert alarm["detector"] == "pca-spe"
        assert alarm["blame"][0]["column"] == "vm2/CPUUtilization", alarm["blame"]
        assert alarm["blame"][0]["vm_name"] == "vm2" and alarm["blame"][0]["direction"] == "up"

    first = alarms[0]
    printed = re.search(
        rf"^alarm {first['id']}: pca-spe on (\S+) at row (\d+) \(score \S+ > \S+\) blames vm2/CPUUtilization up$",
        proc.stdout,
        re.M,
    )
    assert printed, proc.stdout
    assert printed.group(1) == first["scope"] and int(printed.group(2)) == first["first_row"]
    controller = f"--controller http://127.0.0.1:{port}"
    for command in (f"atomwatch alarm {first['id']}", f"atomwatch verdict {first['id']} malicious"):
        assert f"{command} {controller}" in proc.stdout, proc.stdout
    # the log: one line per alarm opened, and no line per abnormal row (those are DEBUG)
    opened = re.findall(r" WARNING atomwatch\.controller\.alarm_log: alarm (\d+) opened: .* blames (.*)$", log, re.M)
    assert [int(i) for i, _ in opened] == [a["id"] for a in alarms], log[-3000:]
    assert all(b.startswith("vm2/CPUUtilization up") for _, b in opened)
    assert "anomaly:" not in log
    # one row per data message of the agent, and one late row per tick it kept before a controller
    # could hear it (at start): every tick it took reached the detectors once
    stopped = re.search(r"controller stopped: (\d+) rows \((\d+) late\), messages \{[^}]*'data': (\d+)", log)
    assert stopped, log[-2000:]
    rows, late, data = (int(g) for g in stopped.groups())
    assert rows == late + data, log[-2000:]


def _read_until(proc: subprocess.Popen, pattern: str, lines: list[str], limit: float = 180.0) -> re.Match:
    """Read ``proc``'s stdout line by line (kept in ``lines``) until one matches ``pattern``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"no line matching {pattern!r}:\n{''.join(lines)}")


def test_the_printed_commands_reach_the_running_controller_and_json_logs(core_venv, tmp_path):
    """The quick start's second half: ``atomwatch up`` left running, the operator gives the
    commands it printed (a second terminal) — look at the alarm, judge it malicious. The log,
    as JSON lines, has one event per alarm change, and the orchestration that cannot act on a
    replay (no guest to introspect, so no suspect to stop) says why."""
    port = free_port()
    env = fresh_env(tmp_path, core_venv)
    proc = subprocess.Popen(
        [str(core_venv / "atomwatch"), "--log-format", "json", "up", "--http", f"127.0.0.1:{port}"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "up.log").open("w"),
        text=True,
    )
    lines: list[str] = []
    try:
        m = _read_until(proc, r"^alarm (\d+): pca-spe on \S+ at row \d+ .* blames vm2/CPUUtilization up", lines)
        alarm_id = int(m.group(1))
        commands = {}
        for _ in range(3):
            label, _, command = proc.stdout.readline().strip().partition(":")
            commands[label] = command.strip()
        assert set(commands) == {"look at it", "an attack", "normal work"}, commands

        def give(command: str) -> str:
            words = shlex.split(command)
            assert words[0] == "atomwatch"
            out = subprocess.run(
                [str(core_venv / "atomwatch"), *words[1:], "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            return out.stdout

        shown = json.loads(give(commands["look at it"]))
        assert shown["id"] == alarm_id and shown["state"] == "open"
        assert shown["blame"][0]["column"] == "vm2/CPUUtilization"
        judged = json.loads(give(commands["an attack"]))
        assert judged["state"] == "malicious" and judged["verdict"] == "malicious"
        events = _wait_for_events(tmp_path / "up.log", {"alarm-verdict", "introspection-failed"})
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    records = [json.loads(line) for line in (tmp_path / "up.log").read_text().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert not any(r["level"] == "ERROR" for r in records), [r for r in records if r["level"] == "ERROR"]
    opened = [r for r in records if r.get("event") == "alarm-opened"]
    assert opened[0]["alarm"]["id"] == alarm_id and opened[0]["level"] == "WARNING"
    assert opened[0]["alarm"]["blame"][0] == "vm2/CPUUtilization"
    assert len({r["alarm"]["id"] for r in opened}) == len(opened), "one opened line per alarm"
    verdict = events["alarm-verdict"]
    assert verdict["alarm"]["id"] == alarm_id and verdict["alarm"]["state"] == "malicious"
    assert f"alarm {alarm_id} verdict malicious by " in verdict["message"]
    failed = events["introspection-failed"]
    assert failed["alarm"]["id"] == alarm_id and "no symbol directory" in failed["alarm"]["error"], failed
    assert not any(r["message"].endswith("introspection: {}") for r in records)
    assert any(
        f"alarm {alarm_id}: termination not possible: no introspection findings" in r["message"] for r in records
    ), "the refused termination is said with its reason"


def _wait_for_events(path: Path, wanted: set[str], limit: float = 60.0) -> dict[str, dict]:
    """The first JSON log record of each event in ``wanted``, waiting for them to be written."""
    deadline = time.monotonic() + limit
    found: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") in wanted:
                found.setdefault(record["event"], record)
        if set(found) == wanted:
            return found
        time.sleep(0.2)
    raise AssertionError(f"events {wanted - set(found)} not logged:\n{path.read_text()[-3000:]}")


def test_log_level_option(tmp_path):
    """``--log-level`` before or after the subcommand; ``error`` keeps the INFO and WARNING lines out."""
    env = dict(os.environ, ATOMWATCH_LOAD_PLUGINS="replay", ATOMWATCH_DB=":memory:")
    for argv in (["--log-level", "error", "up"], ["up", "--log-level", "error"]):
        proc = subprocess.run(
            ["atomwatch", *argv, "--duration", "2", "--http", "off"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stderr == "", proc.stderr[-2000:]
    proc = subprocess.run(["atomwatch", "--log-level", "loud", "alarms"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'loud'" in proc.stderr

"""``atomwatch up`` with nothing configured: embedded amqtt broker, controller, agent, replay."""

from __future__ import annotations

import os
import re
import subprocess

from conftest import have_module, require

import atomwatch


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

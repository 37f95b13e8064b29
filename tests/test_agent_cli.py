"""``atomwatch agent`` as a real process on a machine where it cannot collect: it stops with exit
status 1 and says why and what to install, instead of running with nothing to send; the install
line it gives is the README's. libvirt is made unreachable through the plugin's own option (a
socket path that does not exist), never by touching the machine's libvirtd; libvirt-python is made
missing by a module on PYTHONPATH that refuses to import."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

from atomwatch.plugins.libvirt_collector import INSTALL_HINT

NO_LIBVIRTD = "libvirt.uri=qemu+unix:///system?socket=/nonexistent/libvirt-sock"


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ATOMWATCH_")}
    return subprocess.run(
        # the broker's port is closed: the agent must stop before it would ever connect
        [sys.executable, "-m", "atomwatch", "agent", "--broker", "mqtt://127.0.0.1:1", "--tick", "1", *args],
        env=dict(base, **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_agent_with_no_collector_exits_1_and_says_why():
    done = agent("--set", NO_LIBVIRTD, env={"ATOMWATCH_LOAD_PLUGINS": "libvirt"})
    assert done.returncode == 1, done.stderr
    assert "cannot connect to qemu+unix:///system?socket=/nonexistent/libvirt-sock" in done.stderr
    assert "atomwatch agent: no collector can run here" in done.stderr
    assert INSTALL_HINT in done.stderr and "--set replay.trace=FILE" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_agent_asked_to_replay_runs(tmp_path):
    """The same machine, asked to replay a trace: the replay collector runs, the agent does not
    stop for want of libvirt (it runs until --duration, retrying the closed broker)."""
    trace = tmp_path / "t.csv"
    trace.write_text("vm1/CPUUtilization\n1\n2\n3\n")
    done = agent(
        "--set",
        NO_LIBVIRTD,
        "--set",
        f"replay.trace={trace}",
        "--duration",
        "2",
        env={"ATOMWATCH_LOAD_PLUGINS": "libvirt,replay"},
    )
    assert done.returncode == 0, done.stderr
    assert "no collector can run here" not in done.stderr and "replaying" in done.stderr


def test_a_missing_libvirt_python_gets_the_readme_install_line(tmp_path):
    (tmp_path / "libvirt.py").write_text("raise ImportError('No module named libvirt (simulated)')\n")
    env = {"ATOMWATCH_LOAD_PLUGINS": "libvirt", "PYTHONPATH": str(tmp_path)}
    done = agent(env=env)
    assert done.returncode == 1, done.stderr
    assert f"the libvirt Python module is missing: {INSTALL_HINT}" in done.stderr


def test_the_readme_gives_the_same_install_lines():
    readme = (ROOT / "README.md").read_text()
    apt_line = INSTALL_HINT.split(",")[0]  # "sudo apt-get install gcc pkg-config libvirt-dev python3-dev python3-venv"
    assert apt_line.startswith("sudo apt-get install ")
    assert f"```sh\n{apt_line}\n" in readme, "README's Hypervisor install starts with the hint's apt line"
    assert "sudo apt-get install python3-libvirt" in readme and "--system-site-packages" in readme
    assert "### Hypervisor install" in readme

"""The plugin system: documented hooks, entry points, the allow-list, --plugins-dir, a broken
plugin, and the README's example plugin installed with pip and run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import atomwatch
from atomwatch.pluginmanager import PluginManager, get_plugin_manager, hook_docs
from conftest import ROOT


def test_every_hook_is_documented():
    docs = hook_docs(PluginManager())
    assert {"register_collectors", "register_agent_commands", "register_detectors", "anomaly_detected",
            "alarm_opened", "alarm_updated", "verdict_given"} <= set(docs)
    for name, doc in docs.items():
        assert len(doc.split()) >= 12, f"hook {name} is not documented"


def test_every_hook_argument_is_typed():
    import inspect

    for name, caller in vars(PluginManager().hook).items():
        spec = getattr(caller, "spec", None)
        if spec is None:
            continue
        sig = inspect.signature(spec.function)
        for p in sig.parameters.values():
            assert p.annotation is not inspect.Parameter.empty, f"{name}({p.name}) has no type"
        assert sig.return_annotation is not inspect.Signature.empty, f"{name} has no return type"


def test_builtin_plugins_load_through_entry_points(monkeypatch):
    monkeypatch.delenv("ATOMWATCH_LOAD_PLUGINS", raising=False)
    pm = get_plugin_manager()
    loaded = {p["name"]: p for p in pm.describe()}
    assert "replay" in loaded
    assert loaded["replay"]["source"].startswith("entry point atomwatch.plugins.replay")
    assert loaded["replay"]["hooks"] == ["register_collectors"]


def test_allow_list_restricts_what_loads(monkeypatch):
    monkeypatch.setenv("ATOMWATCH_LOAD_PLUGINS", "replay")
    assert [p["name"] for p in get_plugin_manager().describe()] == ["replay"]
    monkeypatch.setenv("ATOMWATCH_LOAD_PLUGINS", "")
    assert get_plugin_manager().describe() == []


def test_plugins_dir_and_a_broken_plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMWATCH_LOAD_PLUGINS", "")
    (tmp_path / "good.py").write_text(
        "import atomwatch\n@atomwatch.hookimpl\ndef register_detectors():\n    return []\n"
    )
    (tmp_path / "broken.py").write_text("raise RuntimeError('this plugin is broken')\n")
    (tmp_path / "badhook.py").write_text(
        "import atomwatch\n@atomwatch.hookimpl\ndef register_detectors(nonsense):\n    return []\n"
    )
    pm = get_plugin_manager(plugins_dir=tmp_path)
    assert [p["name"] for p in pm.describe()] == ["good"]
    errors = {e.name: e.error for e in pm.load_errors}
    assert "this plugin is broken" in errors["broken"]
    assert "nonsense" in errors["badhook"]


def test_hookimpl_marker_is_exported():
    assert atomwatch.hookimpl.project_name == "atomwatch"


def readme_examples() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"<!-- plugin-example:(\S+) -->\n```\w+\n(.*?)```", text, flags=re.S)
    return dict(found)


@pytest.fixture(scope="module")
def installed_readme_plugin(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin-src")
    site = tmp_path_factory.mktemp("plugin-site")
    examples = readme_examples()
    assert set(examples) == {"atomwatch_threshold.py", "pyproject.toml"}
    code = examples["atomwatch_threshold.py"]
    assert len(code.strip().splitlines()) <= 40, "the README's example plugin should stay small"
    for name, body in examples.items():
        (src / name).write_text(body)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(src)],
        check=True,
    )
    env = dict(os.environ, PYTHONPATH=str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ATOMWATCH_LOAD_PLUGINS", None)
    return env


def test_readme_plugin_installs_and_is_listed(installed_readme_plugin):
    out = subprocess.run(["atomwatch", "plugins", "--json"], env=installed_readme_plugin, capture_output=True, text=True, check=True)
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["threshold"]["hooks"] == ["register_detectors"]
    assert "atomwatch-threshold" in plugins["threshold"]["source"]


def test_readme_plugin_runs_live_through_a_real_broker(installed_readme_plugin, mosquitto, tmp_path):
    from atomwatch.traces import write_trace
    import numpy as np

    trace = tmp_path / "t.csv"
    values = np.full((40, 2), 10.0)
    values[20:, 1] = 95.0  # vm2's CPU jumps over the plugin's limit from row 20
    write_trace(trace, ["vm1/CPUUtilization", "vm2/CPUUtilization"], values)
    # only the replay collector: a hypervisor's libvirt guests would add their own anomalies
    env = dict(installed_readme_plugin, ATOMWATCH_LOAD_PLUGINS="replay,threshold", ATOMWATCH_DB=":memory:")
    proc = subprocess.run(
        ["atomwatch", "up", "--broker", mosquitto.url, "--site", "readme", "--trace", str(trace), "--tick", "0.1",
         "--duration", "15", "--http", "off", "--detector", "threshold", "--set", "threshold.limit=80"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    anomalies = [line for line in proc.stderr.splitlines() if "anomaly: threshold" in line]
    assert anomalies, proc.stderr[-3000:]
    bad = [line for line in anomalies if not ("vm2/CPUUtilization up" in line and "vm1/" not in line)]
    assert not bad, bad[:3]

"""The plugin system: documented and typed hooks, entry points, the allow-list, --plugins-dir, a
broken plugin, a misspelt hook refused at start-up, the handle controller-side hooks get instead of
the controller, the orchestrator through that handle only, and the README's example plugin
installed with pip and run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

import atomwatch
from atomwatch.pluginmanager import PluginManager, get_plugin_manager, hook_docs


def test_every_hook_is_documented():
    docs = hook_docs(PluginManager())
    assert {
        "register_collectors",
        "register_agent_commands",
        "register_detectors",
        "anomaly_detected",
        "alarm_opened",
        "alarm_updated",
        "verdict_given",
    } <= set(docs)
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


def test_every_hook_argument_has_a_param_line():
    import inspect

    for name, caller in vars(PluginManager().hook).items():
        spec = getattr(caller, "spec", None)
        if spec is None:
            continue
        doc = inspect.getdoc(spec.function) or ""
        for arg in inspect.signature(spec.function).parameters:
            assert len(re.findall(rf"^:param {arg}: \S", doc, flags=re.M)) == 1, f"{name}: no ':param {arg}:' line"


def test_no_event_hook_gets_the_controller():
    import inspect

    for name in ("anomaly_detected", "alarm_opened", "alarm_updated", "verdict_given"):
        params = inspect.signature(getattr(PluginManager().hook, name).spec.function).parameters
        assert "controller" not in params and "handle" in params, name


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


MISSPELT = "import atomwatch\n@atomwatch.hookimpl\ndef register_detector():\n    return []\n"


def test_a_misspelt_hook_is_refused_by_the_plugin_manager(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMWATCH_LOAD_PLUGINS", "")
    (tmp_path / "typo.py").write_text(MISSPELT)
    (tmp_path / "fine.py").write_text(
        "import atomwatch\n@atomwatch.hookimpl\ndef register_detectors():\n    return []\n"
        "@atomwatch.hookimpl(optionalhook=True)\ndef a_hook_of_a_later_version():\n    return None\n"
    )
    with pytest.raises(atomwatch.ConfigError) as e:
        get_plugin_manager(plugins_dir=tmp_path)
    assert type(e.value).__name__ == "PluginError"
    text = str(e.value)
    assert "plugin typo" in text and str(tmp_path / "typo.py") in text
    assert "'register_detector'" in text and "did you mean 'register_detectors'?" in text
    assert "fine" not in text, "optionalhook implementations are allowed"


def test_optional_hooks_are_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMWATCH_LOAD_PLUGINS", "")
    (tmp_path / "later.py").write_text(
        "import atomwatch\n@atomwatch.hookimpl(optionalhook=True)\ndef a_hook_of_a_later_version():\n    return None\n"
    )
    assert [p["name"] for p in get_plugin_manager(plugins_dir=tmp_path).describe()] == ["later"]


def test_a_misspelt_hook_stops_the_command_with_one_line(tmp_path):
    (tmp_path / "typo.py").write_text(MISSPELT)
    env = dict(os.environ, ATOMWATCH_LOAD_PLUGINS="")
    proc = subprocess.run(
        [sys.executable, "-m", "atomwatch", "plugins", "--plugins-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("atomwatch plugins: plugin typo (")
    assert "typo.py" in lines[0] and "'register_detector'" in lines[0] and "'register_detectors'" in lines[0]


def test_event_hooks_get_a_handle_not_the_controller():
    import asyncio
    import time

    from atomwatch.config import BrokerAddress
    from atomwatch.controller.app import Controller
    from atomwatch.controller.config import ControllerConfig

    seen = []

    class Recorder:
        @atomwatch.hookimpl
        def alarm_opened(self, alarm, handle):
            seen.append((alarm, handle))

    pm = PluginManager()
    pm.register(Recorder(), name="recorder")
    config = ControllerConfig(broker=BrokerAddress("127.0.0.1", 1), options={"recorder": {"k": 1}}, db=":memory:")
    controller = Controller(config, pm)
    key = atomwatch.SeriesKey("u1", "vm1", "CPUUtilization", "%")
    anomaly = atomwatch.Anomaly("d", "s/h", 7, time.time(), 9.0, 1.0, [atomwatch.Blame(key)])
    alarm, _ = controller.alarms.record(anomaly)
    controller.dispatch("alarm_opened", alarm=alarm)
    controller.dispatch("alarm_opened", alarm=alarm)
    (got, handle), (_, again) = seen
    assert isinstance(got, atomwatch.Alarm) and handle is again and handle is not controller
    assert not hasattr(handle, "config") and not hasattr(handle, "alarms")
    assert handle.plugin_options("recorder") == {"k": 1} and handle.plugin_options("other") == {}
    assert handle.get_alarm(alarm.id).blamed_vms() == ["u1"]
    handle.note(alarm.id, "recorder", "looked")
    handle.add_findings(alarm.id, "recorder", {"kind": "x", "summary": "y"})
    assert handle.get_alarm(alarm.id).findings[0]["kind"] == "x"
    assert handle.scope_status("s/h") is None
    controller.scope_status["s/h"] = {"row": 7, "ts": 0.0, "detectors": {}}
    assert handle.scope_status("s/h")["row"] == 7
    assert handle.close_alarm(alarm.id, "recorder", "done").state == "closed"
    with pytest.raises(atomwatch.AlarmStateError):
        handle.close_alarm(alarm.id, "recorder", "done")
    with pytest.raises(atomwatch.AlarmNotFound):
        handle.get_alarm(999)
    with pytest.raises(atomwatch.CommandFailed, match="not connected"):
        asyncio.run(handle.send_command("s", "h", "introspect", {}))
    actions = [a["action"] for a in controller.alarms.audit(alarm.id)]
    assert actions == ["opened", "looked", "findings", "closed"]
    controller.alarms.shutdown()


class FakeHandle:
    """A ControllerHandle over plain data: the agent's answers are scripted."""

    def __init__(self, options, answers):
        from atomwatch.alarm import Alarm

        self.options, self.answers, self.sent, self.trail = options, answers, [], []
        self.status = {"row": 0, "ts": 0.0, "detectors": {}}
        self.alarm = Alarm(
            id=1,
            scope="s/h",
            detector="pca-spe",
            state="open",
            opened_at=0.0,
            updated_at=0.0,
            closed_at=None,
            first_row=0,
            last_row=0,
            level=1,
            score=9.0,
            threshold=1.0,
            blame=[{"column": "vm1/CPUUtilization", "vm_uuid": "u1", "vm_name": "vm1", "metric": "CPUUtilization"}],
            rows=[],
        )

    async def send_command(self, site, host, command, params=None, timeout=60.0, on_progress=None):
        self.sent.append((site, host, command, dict(params or {})))
        answer = self.answers[command]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_alarm(self, alarm_id):
        assert alarm_id == 1
        return self.alarm

    def note(self, alarm_id, actor, action, details=None):
        self.trail.append((actor, action))

    def add_findings(self, alarm_id, actor, finding):
        self.alarm.findings.append(dict(finding, by=actor))
        self.trail.append((actor, "findings"))
        return self.alarm

    def close_alarm(self, alarm_id, actor, resolution, details=None):
        self.alarm.state, self.alarm.resolution = "closed", resolution
        return self.alarm

    def scope_status(self, scope):
        return self.status if scope == "s/h" else None

    def plugin_options(self, name):
        return dict(self.options.get(name, {}))


def test_orchestrator_works_through_the_handle_only():
    import ast
    import asyncio

    import atomwatch.plugins.orchestrate as orch

    tree = ast.parse(open(orch.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not [m for m in imported if m and m.startswith("atomwatch.controller")], imported

    suspect = {"pid": 42, "name": "cryptominer", "start_time": 5.0}
    handle = FakeHandle(
        {"orchestrate": {"rate_limit": 0, "watch_interval": 0.01, "watch_timeout": 5, "settle_rows": 2}},
        {"introspect": {"summary": "1 suspect", "suspects": [suspect]}, "terminate": {"verified": True}},
    )

    async def scenario():
        await orch.alarm_opened(alarm=handle.alarm, handle=handle)
        assert handle.sent[0] == ("s", "h", "introspect", {"vm": "u1", "vm_name": "vm1", "metrics": ["CPUUtilization"]})
        assert handle.alarm.findings[0]["kind"] == "introspection"
        assert orch.verdict_given(alarm=handle.alarm, verdict="normal", actor="op", params={}, handle=handle) is None
        handle.alarm.state = "malicious"
        watch = asyncio.ensure_future(
            orch.verdict_given(alarm=handle.alarm, verdict="malicious", actor="op", params={"pid": 42}, handle=handle)
        )
        for row in (1, 2, 3):  # the score back under its threshold for settle_rows rows
            await asyncio.sleep(0.05)
            handle.status = {"row": row, "ts": 0.0, "detectors": {"pca-spe": {"spe": 0.5, "q_alpha": 1.0}}}
        await asyncio.wait_for(watch, 5)

    asyncio.run(scenario())
    command, params = handle.sent[1][2:]
    authorization = params.pop("authorization")
    assert (command, params) == (
        "terminate",
        {"vm": "u1", "vm_name": "vm1", "pid": 42, "name": "cryptominer", "start_time": 5.0, "group": False, "alarm": 1},
    )
    # what allowed it travels inside the (signed) parameters: the verdict, its actor and time
    assert authorization["by"] == "verdict" and authorization["actor"] == "op" and authorization["at"] > 0
    assert handle.alarm.state == "closed" and handle.alarm.resolution == "terminated"
    assert ("op", "termination requested") in handle.trail

    failing = FakeHandle({}, {"introspect": atomwatch.CommandFailed("introspect on s/h failed: no symbols")})
    asyncio.run(orch.alarm_opened(alarm=failing.alarm, handle=failing))
    assert failing.alarm.findings[0]["kind"] == "introspection-failed"
    assert "no symbols" in failing.alarm.findings[0]["error"]


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
    out = subprocess.run(
        ["atomwatch", "plugins", "--json"], env=installed_readme_plugin, capture_output=True, text=True, check=True
    )
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["threshold"]["hooks"] == ["register_detectors"]
    assert "atomwatch-threshold" in plugins["threshold"]["source"]


def test_readme_plugin_runs_live_through_a_real_broker(installed_readme_plugin, mosquitto, tmp_path):
    import numpy as np

    from atomwatch.traces import write_trace

    trace = tmp_path / "t.csv"
    values = np.full((40, 2), 10.0)
    values[20:, 1] = 95.0  # vm2's CPU jumps over the plugin's limit from row 20
    write_trace(trace, ["vm1/CPUUtilization", "vm2/CPUUtilization"], values)
    # only the replay collector: a hypervisor's libvirt guests would add their own anomalies
    env = dict(installed_readme_plugin, ATOMWATCH_LOAD_PLUGINS="replay,threshold", ATOMWATCH_DB=":memory:")
    proc = subprocess.run(
        [
            "atomwatch",
            "up",
            "--log-level",
            "debug",  # the anomaly of every row (the operator's log has one line per alarm)
            "--broker",
            mosquitto.url,
            "--site",
            "readme",
            "--trace",
            str(trace),
            "--tick",
            "0.1",
            "--duration",
            "15",
            "--http",
            "off",
            "--detector",
            "threshold",
            "--set",
            "threshold.limit=80",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    anomalies = [line for line in proc.stderr.splitlines() if "anomaly: threshold" in line]
    assert anomalies, proc.stderr[-3000:]
    bad = [line for line in anomalies if not ("vm2/CPUUtilization up" in line and "vm1/" not in line)]
    assert not bad, bad[:3]


SUBCOMMAND_PLUGIN = """
import atomwatch


def add_arguments(parser):
    parser.add_argument("word")


def run(args, context):
    print(f"hello {args.word}")
    return 0


@atomwatch.hookimpl
def register_commands():
    return [atomwatch.Subcommand("hello", "say hello", add_arguments, run),
            atomwatch.Subcommand("detect", "a second 'detect'", add_arguments, run)]
"""


def test_a_plugin_adds_a_subcommand_and_cannot_replace_a_built_in(tmp_path: Path, monkeypatch, capsys) -> None:
    from atomwatch.cli import COMMANDS, main

    (tmp_path / "hello_plugin.py").write_text(SUBCOMMAND_PLUGIN)
    monkeypatch.setenv("ATOMWATCH_PLUGINS_DIR", str(tmp_path))
    assert main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"
    from atomwatch.cli import plugin_subcommands

    # the built-in 'detect' is kept; the plugin's second 'detect' is refused
    assert "hello" in plugin_subcommands() and "detect" not in plugin_subcommands()
    assert "detect" in COMMANDS


def test_the_core_command_line_names_no_model() -> None:
    """train / evaluate / retrain come from the deep plugin's register_commands hook."""
    from atomwatch.cli import COMMANDS, plugin_subcommands

    assert not {"train", "evaluate", "retrain"} & set(COMMANDS)
    assert {"train", "evaluate", "retrain"} <= set(plugin_subcommands())


def test_plugins_command_lists_every_detector_collector_and_orchestrator_with_options(tmp_path):
    """`atomwatch plugins` names each plugin's kind, the detectors it registers (deep's ae, cnn and
    siamese and precog-reference included) and every option it declares, with type and default;
    a plugin file of --plugins-dir is listed the same way."""
    (tmp_path / "limits.py").write_text(
        "from dataclasses import dataclass\nfrom typing import Annotated\nimport atomwatch\n\n"
        "@atomwatch.declare_options('limits')\n@dataclass(frozen=True)\nclass Options:\n"
        "    #: the highest value that is normal\n    ceiling: Annotated[float, atomwatch.Range(gt=0)] = 90.0\n"
        "    every: Annotated[float, atomwatch.Duration] = 60.0  # how often to look\n\n"
        "class Factory:\n    name = 'limits'\n    description = 'flags values over a ceiling'\n"
        "    def create(self, scope, options):\n        return None\n\n"
        "@atomwatch.hookimpl\ndef register_detectors():\n    return [Factory()]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ATOMWATCH_LOAD_PLUGINS"}
    run = [sys.executable, "-m", "atomwatch", "plugins", "--plugins-dir", str(tmp_path)]
    done = subprocess.run([*run, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plugins = {p["name"]: p for p in json.loads(done.stdout)["plugins"]}
    detectors = {d["name"]: d["description"] for p in plugins.values() for d in p["detectors"]}
    assert {"pca-spe", "precog", "precog-reference", "ae", "cnn", "siamese", "limits"} <= set(detectors)
    assert all(detectors.values()), "every detector has its one-line description"
    kinds = {name: p["kinds"] for name, p in plugins.items()}
    assert kinds["libvirt"] == kinds["coredns"] == kinds["replay"] == ["collector"]
    assert kinds["orchestrate"] == ["orchestrator"] and kinds["introspection-commands"] == ["agent commands"]
    assert kinds["deep"] == ["detector", "subcommands"]
    assert [c["name"] for c in plugins["deep"]["subcommands"]] == ["train", "evaluate", "retrain"]

    def option(plugin: str, table: str, name: str) -> dict:
        (found,) = [o for o in plugins[plugin]["options"][table] if o["name"] == name]
        return found

    assert set(plugins["deep"]["options"]) == {"ae", "cnn", "siamese"}
    assert set(plugins["precog"]["options"]) == {"precog", "precog-reference"}
    alpha = option("pca-spe", "pca-spe", "alpha")
    assert (alpha["default"], alpha["type"], alpha["rules"]) == (0.002, "a number", "in (0, 0.5)")
    assert alpha["help"] == "false-alarm rate of Q_α"
    assert option("libvirt", "libvirt", "uri")["default"] == "qemu:///system"
    assert option("orchestrate", "orchestrate", "rate_limit")["default"] == 300.0
    assert option("introspection-commands", "introspection", "never_kill")["default"] == [
        "init",
        "systemd",
        "sshd",
        "qemu-ga",
    ]
    ceiling, every = plugins["limits"]["options"]["limits"]
    assert (ceiling["name"], ceiling["default"], ceiling["rules"], ceiling["help"]) == (
        "ceiling",
        90.0,
        "> 0",
        "the highest value that is normal",
    )
    assert every["type"].startswith("a duration") and every["help"] == "how often to look"

    text = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    for line in (
        "detector precog-reference: ",
        "detector siamese: ",
        "options [plugins.pca-spe] (--set pca-spe.OPTION=VALUE):",
        "alpha = 0.002  [number, in (0, 0.5)]  false-alarm rate of Q_α",
        "options [plugins.cnn]: the same as [plugins.ae]",
        "ceiling = 90.0  [number, > 0]  the highest value that is normal",
    ):
        assert line in text.stdout, line

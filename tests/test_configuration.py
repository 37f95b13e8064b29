"""Validated configuration (issue 18, item 3), through the real ``atomwatch`` command in a subprocess.

Each configuration error is refused with exit status 2, the key (and the file, the table or the
variable) named on stderr, a "did you mean" where a known name is close, and no traceback; the
``--set`` and ``--delta`` grammar is the same in every command that has the flag; the role
options' precedence is flag > ``$ATOMWATCH_*`` > file > default; ``config check`` reports every
problem of a file at once. The rules: ``docs/configuration.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomwatch.traces import write_trace

BUNDLED = Path(__file__).resolve().parent.parent / "atomwatch" / "data" / "lab-cryptominer.csv"


def atomwatch(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m atomwatch ARGS`` with no ATOMWATCH_* variable of the caller but ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ATOMWATCH_")}
    clean["ATOMWATCH_DB"] = ":memory:"
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "atomwatch", *args], capture_output=True, text=True, timeout=timeout, env=clean
    )


def refused(done: subprocess.CompletedProcess, *says: str) -> None:
    """Exit status 2, every text of ``says`` on stderr, no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    for text in says:
        assert text in done.stderr, f"{text!r} not in {done.stderr!r}"


def toml(tmp_path: Path, text: str, name: str = "c.toml") -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


def check(path: str, role: str, *role_args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return atomwatch("config", "check", path, "--role", role, *(["--json", "--", *role_args]), env=env)


def summary(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --------------------------------------------------------------------------- unknown keys and tables


@pytest.mark.parametrize("role", ["agent", "controller"])
def test_a_misspelt_key_is_refused_with_did_you_mean(role, tmp_path):
    path = toml(tmp_path, "tikc = 5")
    refused(check(path, role), f"{path}: unknown key 'tikc' (did you mean 'tick'?)")
    # the role itself refuses it the same way, before connecting to anything
    refused(atomwatch(role, "--config", path), f"atomwatch {role}: {path}: unknown key 'tikc' (did you mean 'tick'?)")


def test_a_key_of_no_role_says_where_plugin_options_go(tmp_path):
    path = toml(tmp_path, 'uri = "qemu:///system"')
    refused(check(path, "agent"), "unknown key 'uri': not an option of atomwatch agent", "[plugins.NAME]")


def test_an_unknown_table_is_refused(tmp_path):
    path = toml(tmp_path, "[agent]\ntick = 5")
    refused(check(path, "agent"), f"{path}: unknown table [agent]")


def test_a_misspelt_plugin_table_is_refused_with_the_loaded_plugins(tmp_path):
    path = toml(tmp_path, '[plugins.libvrit]\nuri = "qemu:///system"')
    done = check(path, "agent")
    refused(done, f"{path}: [plugins.libvrit]: unknown plugin table 'libvrit' (did you mean 'libvirt'?)")
    assert "the loaded plugins' tables:" in done.stderr and "pca-spe" in done.stderr
    # a --set of no loaded plugin is refused the same way
    refused(check(toml(tmp_path, "", "empty.toml"), "agent", "--set", "libvrit.uri=x"), "--set libvrit.KEY=VALUE")


def test_a_misspelt_plugin_option_names_the_file_and_the_table(tmp_path):
    path = toml(tmp_path, "[plugins.pca-spe]\nalpah = 0.01")
    refused(check(path, "controller"), f"{path}: [plugins.pca-spe]: pca-spe: unknown option 'alpah'", "'alpha'?")


def test_plugins_that_is_not_a_table_is_refused(tmp_path):
    refused(check(toml(tmp_path, "plugins = 3"), "agent"), "plugins = 3: expected tables [plugins.NAME]")
    refused(check(toml(tmp_path, "[plugins]\nlibvirt = 3", "b.toml"), "agent"), "plugins.libvirt = 3")


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    "text, role, says",
    [
        ("delta = 2", "agent", "delta = 2: expected a table of Δ by metric"),
        ('delta = ["CPUUtilization=x"]', "agent", "delta 'CPUUtilization=x': 'x' is not a number"),
        ('delta = { CPUUtilization = "5%" }', "agent", "a Δ in percent of each series' mean needs the whole series"),
        ('tick = "5x"', "agent", "tick='5x' is not a duration"),
        ("tick = 0", "controller", "tick must be > 0, got 0"),
        ("tick = true", "controller", "tick=True is not a duration"),
        ("duration = [1]", "agent", "duration=[1] is not a duration"),
        ('gamma = "fine"', "agent", "gamma='fine' is not a number"),
        ('max_message_size = "big"', "agent", "max_message_size 'big': expected a number of bytes"),
        ('site = ["a", "b"]', "agent", "site=['a', 'b'] is not a string"),
        ("detectors = 3", "controller", "detectors=3 is not a list of names or a comma-separated string"),
        ('http_insecure = "maybe"', "controller", "http_insecure='maybe' is not a boolean"),
        ('rows = "often"', "controller", "rows='often' is not one of 'tick', 'data'"),
        ("alarm_rows = 5", "controller", "alarm_rows must be ≥ 10, got 5"),
        ('alarm_retention = "soon"', "controller", "alarm_retention='soon' is not a number of days or a duration"),
        ("mu = 2", "controller", "mu must be in (0, 1), got 2"),
        ("max_pending_commands = 0", "controller", "max_pending_commands must be ≥ 1, got 0"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_file_the_key_and_the_form(text, role, says, tmp_path):
    path = toml(tmp_path, text)
    done = check(path, role)
    refused(done, says)
    assert done.stderr.startswith(f"atomwatch config: {path}: ")
    assert len(done.stderr.splitlines()) == 1


def test_durations_are_accepted_everywhere(tmp_path):
    path = toml(tmp_path, 'tick = "5s"\nduration = "1h30min"\ncommand_skew = "1min"')
    got = summary(check(path, "agent"))
    assert (got["tick"], got["duration"]) == (5.0, 5400.0)
    got = summary(check(toml(tmp_path, 'tick = "2min"\nalarm_log_every = "10min"', "c2.toml"), "controller"))
    assert got["tick"] == 120.0
    # and on the command line: --tick, --duration take the same text
    got = summary(check(toml(tmp_path, "", "empty.toml"), "agent", "--tick", "500ms", "--duration", "2h"))
    assert (got["tick"], got["duration"]) == (0.5, 7200.0)


def test_a_string_where_a_list_is_expected_is_one_name_never_its_characters(tmp_path):
    got = summary(check(toml(tmp_path, 'detectors = "pca-spe"'), "controller"))
    assert got["detectors"] == ["pca-spe"]
    got = summary(check(toml(tmp_path, 'detectors = "pca-spe, precog"\nsite = ["eu1", "eu2"]', "b.toml"), "controller"))
    assert got["detectors"] == ["pca-spe", "precog"] and got["sites"] == ["eu1", "eu2"]


def test_a_delta_table_and_a_delta_list_are_both_read(tmp_path):
    for text in ('delta = { CPUUtilization = 2.0, "*" = 1 }', 'delta = ["CPUUtilization=2", "1"]'):
        got = summary(check(toml(tmp_path, text), "agent"))
        assert got["deltas"] == {"CPUUtilization": 2.0, "*": 1.0}


def test_config_check_reports_every_problem_at_once(tmp_path):
    path = toml(tmp_path, 'tikc = 5\ndelta = 2\ngamma = "x"\n[plugins.libvrit]\nuri = 1\n[plugins.replay]\nspeed = -1')
    done = check(path, "agent")
    refused(done, "'tikc'", "delta = 2", "gamma='x'", "'libvrit'", "replay.speed must be > 0")
    lines = done.stderr.splitlines()
    assert len(lines) == 5 and all(line.startswith("atomwatch config: ") for line in lines)


def test_a_bad_environment_variable_is_named(tmp_path):
    path = toml(tmp_path, "tick = 5")
    refused(check(path, "agent", env={"ATOMWATCH_TICK": "soon"}), "$ATOMWATCH_TICK='soon' is not a duration")
    refused(
        atomwatch("controller", "--config", path, env={"ATOMWATCH_MAX_SERIES_PER_HOST": "-3"}),
        "atomwatch controller: $ATOMWATCH_MAX_SERIES_PER_HOST must be ≥ 1, got '-3'",
    )


def test_an_unknown_detector_is_refused_by_config_check(tmp_path):
    path = toml(tmp_path, 'detectors = ["pca-spe", "pca-sep"]')
    refused(check(path, "controller"), f"{path}: detectors: 'pca-sep' is no loaded detector (did you mean 'pca-spe'?)")


# --------------------------------------------------------------------------- precedence


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path):
    path = toml(tmp_path, 'tick = "7s"\nsite = "from-file"\nhost = "hv-file"')
    got = summary(check(toml(tmp_path, "", "empty.toml"), "agent"))
    assert (got["tick"], got["site"]) == (10.0, "default")  # the defaults
    got = summary(check(path, "agent"))
    assert (got["tick"], got["site"], got["host"]) == (7.0, "from-file", "hv-file")  # the file over them
    env = {"ATOMWATCH_TICK": "3s", "ATOMWATCH_SITE": "from-env"}
    got = summary(check(path, "agent", env=env))
    assert (got["tick"], got["site"], got["host"]) == (3.0, "from-env", "hv-file")  # the environment over the file
    got = summary(check(path, "agent", "--tick", "1min", env=env))
    assert (got["tick"], got["site"]) == (60.0, "from-env")  # the flag over the environment
    # the controller's the same way, list options included
    cpath = toml(tmp_path, 'detectors = ["precog"]\nalarm_rows = 50', "c.toml")
    got = summary(check(cpath, "controller", env={"ATOMWATCH_DETECTORS": "pca-spe,precog"}))
    assert got["detectors"] == ["pca-spe", "precog"]
    got = summary(check(cpath, "controller", "--detector", "pca-spe", env={"ATOMWATCH_DETECTORS": "precog"}))
    assert got["detectors"] == ["pca-spe"]


# --------------------------------------------------------------------------- --set, one grammar


def _plot_args(tmp_path: Path) -> list[str]:
    return ["plot", str(BUNDLED), "--out", str(tmp_path / "p.png")]


#: every command that has --set, with the arguments that make it run up to its options
SET_COMMANDS = {
    "agent": lambda tmp: ["agent"],
    "controller": lambda tmp: ["controller"],
    "up": lambda tmp: ["up"],
    "plugins": lambda tmp: ["plugins"],
    "detect": lambda tmp: ["detect", str(BUNDLED)],
    "plot": _plot_args,
    "evaluate": lambda tmp: ["evaluate", "--compare", str(BUNDLED)],
}


@pytest.mark.parametrize("command", sorted(SET_COMMANDS))
def test_set_without_an_equals_sign_is_refused_alike_everywhere(command, tmp_path):
    done = atomwatch(*SET_COMMANDS[command](tmp_path), "--set", "pca-spe.alpha")
    refused(done, "--set 'pca-spe.alpha': expected PLUGIN.KEY=VALUE (no '=')")


@pytest.mark.parametrize("command", ["agent", "controller", "up", "evaluate"])
def test_a_bare_key_is_refused_where_no_single_detector_runs(command, tmp_path):
    done = atomwatch(*SET_COMMANDS[command](tmp_path), "--set", "alpha=0.01")
    refused(done, "--set 'alpha=0.01': expected PLUGIN.KEY=VALUE: name the plugin")


@pytest.mark.parametrize("command", ["agent", "controller", "up", "detect", "plot"])
def test_a_bad_plugin_option_from_set_is_refused_alike_everywhere(command, tmp_path):
    done = atomwatch(*SET_COMMANDS[command](tmp_path), "--set", "pca-spe.alpah=0.01")
    refused(done, "pca-spe: unknown option 'alpah'", "(did you mean 'alpha'?)")


def test_detect_and_plot_take_a_bare_key_as_the_detectors(tmp_path):
    for command in ("detect", "plot"):
        done = atomwatch(*SET_COMMANDS[command](tmp_path), "--set", "alpha=7")
        refused(done, "pca-spe.alpha must be in (0, 0.5), got 7")


def test_plot_reads_its_config_file(tmp_path):
    path = toml(tmp_path, "tikc = 1")
    refused(atomwatch(*_plot_args(tmp_path), "--config", path), f"{path}: unknown key 'tikc' (did you mean 'tick'?)")
    path = toml(tmp_path, "[plugins.pca-spe]\nalpha = 7", "b.toml")
    refused(atomwatch(*_plot_args(tmp_path), "--config", path), f"{path}: [plugins.pca-spe]: pca-spe.alpha must be")
    path = toml(tmp_path, "[plugins.pca-spe]\nt = 60\nmin_rows = 30\nalpha = 0.1", "c.toml")
    done = atomwatch(*_plot_args(tmp_path), "--config", path)
    assert done.returncode == 0, done.stderr
    many = int(done.stdout.split(",")[-1].split()[0])  # "wrote …: N rows, M abnormal"
    done = atomwatch(*_plot_args(tmp_path), "--config", path, "--set", "alpha=0.0001")
    assert done.returncode == 0 and int(done.stdout.split(",")[-1].split()[0]) < many  # --set over the file


# --------------------------------------------------------------------------- --delta, one grammar


def _trace(tmp_path: Path) -> str:
    rng = np.random.default_rng(1)
    values = np.column_stack([50 + rng.normal(0, 1, 400), 1000 + rng.normal(0, 30, 400)])
    path = tmp_path / "t.csv"
    write_trace(path, ["vm1/CPUUtilization", "vm1/NetworkIn"], values)
    return str(path)


#: every command that has --delta, with the arguments that make it run up to its options
DELTA_COMMANDS = {
    "agent": lambda tmp: ["agent"],
    "up": lambda tmp: ["up"],
    "track": lambda tmp: ["track", _trace(tmp)],
    "detect": lambda tmp: ["detect", _trace(tmp)],
    "train": lambda tmp: ["train", str(BUNDLED), "--model", "cnn", "--out", str(tmp / "m")],
    "evaluate": lambda tmp: ["evaluate", "--compare", str(BUNDLED)],
}


@pytest.mark.parametrize("command", sorted(DELTA_COMMANDS))
def test_a_bad_delta_is_refused_alike_everywhere(command, tmp_path):
    done = atomwatch(*DELTA_COMMANDS[command](tmp_path), "--delta", "CPUUtilization=abc")
    refused(done, "--delta 'CPUUtilization=abc': 'abc' is not a number (expected [METRIC=]VALUE[%]")
    done = atomwatch(*DELTA_COMMANDS[command](tmp_path), "--delta", "-2")
    refused(done, "--delta '-2': Δ must be a finite number ≥ 0, got '-2'")


@pytest.mark.parametrize("command", ["agent", "up"])
def test_a_percentage_is_refused_by_the_online_roles_with_the_reason(command, tmp_path):
    done = atomwatch(*DELTA_COMMANDS[command](tmp_path), "--delta", "CPUUtilization=5%")
    refused(done, "--delta 'CPUUtilization=5%': a Δ in percent of each series' mean needs the whole series")


def test_detect_and_track_take_the_same_deltas(tmp_path):
    """``5%`` and ``METRIC=VALUE`` mean the same in track and detect: 5 % of each series' mean."""
    trace = _trace(tmp_path)
    track = atomwatch("track", trace, "--delta", "5%", "--delta", "CPUUtilization=1", "--json")
    assert track.returncode == 0, track.stderr
    report = json.loads(track.stdout)
    cpu, net = report["delta"]
    assert cpu == 1.0 and net == pytest.approx(0.05 * 1000, rel=0.01)
    assert report["deltas"] == {"*": "5%", "CPUUtilization": 1.0}
    # --relative: a bare number is a fraction, the same as the percentage
    again = json.loads(atomwatch("track", trace, "--delta", "0.05", "--relative", "--json").stdout)
    assert again["delta"][1] == pytest.approx(net)
    # detect: the same Δ tracks the values first; a percentage is accepted, and changes what it sees
    plain = atomwatch("detect", trace, "--json", "--set", "t=100", "--set", "min_rows=30")
    tracked = atomwatch("detect", trace, "--json", "--set", "t=100", "--set", "min_rows=30", "--delta", "5%")
    assert plain.returncode == tracked.returncode == 0, plain.stderr + tracked.stderr
    assert json.loads(plain.stdout)["rows"] == json.loads(tracked.stdout)["rows"] == 400


def test_the_docs_list_every_role_option_with_its_flag_and_variable():
    from atomwatch.cli import agent, controller

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    for key in (*agent.KEYS, *controller.KEYS):
        assert f"| `{key.name}` | `{key.flag}` | `{key.env}` |" in text, key.name

"""The one parser of plugin options (atomwatch/options.py) and every built-in plugin going through it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pytest

import atomwatch
from atomwatch import Check, ConfigError, Duration, OptionError, Range, parse_options
from atomwatch.config import plugin_options


@dataclass(frozen=True)
class Example:
    enabled: bool = True
    every: Annotated[float, Duration] = 60.0
    wait: Annotated[float, Duration, Range(gt=0)] = 1.0
    top: Annotated[int, Range(ge=1)] = 3
    share: Annotated[float, Range(gt=0, lt=1)] = 0.5
    scale: float = 1.0
    hosts: tuple[str, ...] = ()
    mode: Literal["fast", "exact"] = "fast"
    model: str | None = None
    rows: Annotated[int, Range(ge=0)] | None = None
    step: Annotated[float, Duration, Range(gt=0)] | Literal["auto"] = "auto"
    pattern: Annotated[str, Check(lambda s: s.startswith("^"), "an anchored pattern")] = "^"

    def __post_init__(self) -> None:
        if self.rows is not None and self.rows > self.top * 100:
            raise OptionError("rows", self.rows, f"at most 100 × top ({self.top * 100})")


def parse(**raw):
    return parse_options("example", Example, raw)


def refused(**raw) -> str:
    with pytest.raises(ConfigError) as e:
        parse(**raw)
    return str(e.value)


def test_defaults_and_the_public_names():
    assert parse() == Example()
    assert atomwatch.parse_options is parse_options and issubclass(OptionError, ConfigError)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "text, value",
    [
        (True, True),
        (False, False),
        ("true", True),
        ("FALSE", False),
        ("Yes", True),
        ("no", False),
        ("on", True),
        ("OFF", False),
        ("1", True),
        ("0", False),
        (1, True),
        (0, False),
        (" yes ", True),
    ],
)
def test_the_boolean_rule(text, value):
    assert parse(enabled=text).enabled is value


@pytest.mark.parametrize("bad", ["maybe", "", "2", 2, "enabled", None, [True], 0.5])
def test_anything_else_is_no_boolean(bad):
    msg = refused(enabled=bad)
    assert msg == f"example.enabled={bad!r} is not a boolean (true/false, yes/no, on/off, 1/0)"


def test_the_command_line_reaches_the_same_rule():
    raw = plugin_options({}, ["example.enabled=off", "example.every=5min", "example.hosts=a,b", "example.top=4"])
    assert parse(**raw["example"]) == Example(enabled=False, every=300.0, hosts=("a", "b"), top=4)
    with pytest.raises(ConfigError, match="example.enabled='maybe' is not a boolean"):
        parse(**plugin_options({}, ["example.enabled=maybe"])["example"])


@pytest.mark.parametrize(
    "text, seconds",
    [
        (30, 30.0),
        (2.5, 2.5),
        ("45", 45.0),
        ("10s", 10.0),
        ("500ms", 0.5),
        ("5min", 300.0),
        ("5m", 300.0),
        ("6h", 21600.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1h30min", 5400.0),
        (" 6 H ", 21600.0),
        (0, 0.0),
        ("1.5h", 5400.0),
        ("2 hours", 7200.0),
    ],
)
def test_durations(text, seconds):
    assert parse(every=text).every == pytest.approx(seconds)
    assert atomwatch.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "5 fortnights", "h", "", "5min later", True, [5], math.inf, "inf", math.nan])
def test_bad_durations(bad):
    msg = refused(every=bad)
    assert msg.startswith(f"example.every={bad!r} is not ") and "duration" in msg


@pytest.mark.parametrize("bad", [-1, "-5min", -0.5])
def test_negative_durations(bad):
    assert refused(every=bad) == f"example.every must be a duration ≥ 0, got {bad!r}"


def test_duration_bounds():
    assert refused(wait=0) == "example.wait must be > 0, got 0"
    assert parse(wait="250ms").wait == 0.25


def test_numbers_with_bounds():
    assert parse(top=5).top == 5 and parse(top="7").top == 7 and parse(top=4.0).top == 4
    assert isinstance(parse(top=4.0).top, int)
    assert parse(share=0.25).share == 0.25 and parse(scale=-3).scale == -3.0 and parse(scale="1e3").scale == 1000.0
    assert refused(top=0) == "example.top must be ≥ 1, got 0"
    assert refused(top=1.5) == "example.top=1.5 is not an integer"
    assert refused(top="x") == "example.top='x' is not an integer"
    assert refused(top=True) == "example.top=True is not an integer"
    assert refused(share=1) == "example.share must be in (0, 1), got 1"
    assert refused(share=0) == "example.share must be in (0, 1), got 0"
    assert refused(scale="big") == "example.scale='big' is not a number"
    assert "is not a finite number" in refused(scale=math.inf)
    assert "is not a finite number" in refused(scale=math.nan)


def test_lists_of_names():
    assert parse(hosts=["a", " b "]).hosts == ("a", "b")
    assert parse(hosts="a, b,,c").hosts == ("a", "b", "c")
    assert parse(hosts="").hosts == ()
    assert refused(hosts=[1, 2]) == "example.hosts=[1, 2] is not a list of names or a comma-separated string"
    assert "example.hosts=5" in refused(hosts=5)


def test_strings_choices_optionals_and_checks():
    assert parse(mode="EXACT").mode == "exact"
    assert refused(mode="slow") == "example.mode='slow' is not one of 'fast', 'exact'"
    assert parse(model="/m").model == "/m" and parse(model=None).model is None and parse(model=12).model == "12"
    assert parse(model=Path("/m")).model == "/m"
    assert "example.model=True is not a string or null" == refused(model=True)
    assert parse(rows=None).rows is None and parse(rows=5).rows == 5
    assert refused(rows=-1) == "example.rows must be ≥ 0, got -1"
    assert parse(step="Auto").step == "auto" and parse(step="10min").step == 600.0
    assert refused(step=0) == "example.step must be > 0, got 0"
    assert refused(step="later") == "example.step='later' is not a duration such as 300, '5min' or '6h' or 'auto'"
    assert refused(pattern="x") == "example.pattern='x' is not an anchored pattern"


def test_post_checks_name_the_plugin():
    assert refused(rows=500, top=2) == "example.rows must be at most 100 × top (200), got 500"


def test_unknown_keys_are_listed():
    msg = refused(enabeld=True)
    assert msg.startswith("example: unknown option 'enabeld'; known: enabled, every, hosts, mode, model, pattern, ")
    assert msg.endswith("(did you mean 'enabled'?)")
    msg = refused(colour="red", zzz=1)
    assert msg.startswith("example: unknown options 'colour', 'zzz'; known: ") and "did you mean" not in msg


def test_required_fields_and_non_dataclasses():
    @dataclass(frozen=True)
    class Needs:
        path: str

    with pytest.raises(ConfigError, match="needs: option 'path' is required"):
        parse_options("needs", Needs, {})
    with pytest.raises(TypeError):
        parse_options("x", dict, {})


# --------------------------------------------------------------------------- every built-in plugin


def _agent_config(name, options):
    from atomwatch.agent.config import AgentConfig
    from atomwatch.config import BrokerAddress

    return AgentConfig(
        broker=BrokerAddress.parse("mqtt://127.0.0.1:1"), site="s", host="h", tick=2.0, options={name: options}
    )


def _detector(name):
    from atomwatch.pluginmanager import get_plugin_manager

    pm = get_plugin_manager()
    found = {f.name: f for fs in pm.hook.register_detectors() if fs for f in fs}
    return lambda options: found[name].create("scope", options)


def _libvirt(options):
    from atomwatch.plugins import libvirt_collector

    return libvirt_collector.register_collectors(_agent_config("libvirt", options))


def _coredns(options):
    from atomwatch.plugins import coredns

    return coredns.register_collectors(_agent_config("coredns", {"endpoints": "http://127.0.0.1:1", **options}))


def _replay(options):
    from atomwatch.plugins import replay

    return replay.register_collectors(_agent_config("replay", options))


def _introspection(options):
    from atomwatch.plugins import introspection_commands

    return introspection_commands.register_agent_commands(_agent_config("introspection", options))


def _orchestrate(options):
    from atomwatch.plugins import orchestrate

    return orchestrate.Options(options)


BUILT_IN = [
    # (option-table name, how to hand it options, a misspelt key, (a bad key, value))
    ("libvirt", _libvirt, "urі", ("enabled", "maybe")),
    ("coredns", _coredns, "timout", ("retries", "twice")),
    ("replay", _replay, "sped", ("loop", "sometimes")),
    ("introspection", _introspection, "symbol", ("timeout", "soon")),
    ("orchestrate", _orchestrate, "dryrun", ("rate_limit", "soon")),
    ("pca-spe", _detector("pca-spe"), "aplha", ("alpha", "x")),
    ("precog", _detector("precog"), "critical", ("critical_time", "7 fortnights")),
    ("precog-reference", _detector("precog-reference"), "limt", ("use_max_values_as_filter", "maybe")),
    ("ae", _detector("ae"), "modle", ("top", "many")),
    ("cnn", _detector("cnn"), "tops", ("top", 0)),
    ("siamese", _detector("siamese"), "model_path", ("top", 1.5)),
]


@pytest.mark.parametrize("name, call, misspelt, bad", BUILT_IN, ids=[b[0] for b in BUILT_IN])
def test_each_built_in_plugin_refuses_a_misspelt_key(name, call, misspelt, bad):
    with pytest.raises(ConfigError) as e:
        call({misspelt: 1})
    assert str(e.value).startswith(f"{name}: unknown option {misspelt!r}; known: ")


@pytest.mark.parametrize("name, call, misspelt, bad", BUILT_IN, ids=[b[0] for b in BUILT_IN])
def test_each_built_in_plugin_refuses_a_bad_value(name, call, misspelt, bad):
    key, value = bad
    with pytest.raises(ConfigError) as e:
        call({key: value})
    msg = str(e.value)
    assert msg.startswith(f"{name}.{key}") and repr(value) in msg


def test_every_built_in_plugin_declares_its_options():
    from atomwatch.options import declared_options
    from atomwatch.pluginmanager import get_plugin_manager

    get_plugin_manager()
    assert {b[0] for b in BUILT_IN} <= set(declared_options())
    atomwatch.check_options({"pca-spe": {"alpha": 0.01}, "no-such-plugin": {"x": 1}})
    with pytest.raises(ConfigError, match="orchestrate.enabled='maybe' is not a boolean"):
        atomwatch.check_options({"orchestrate": {"enabled": "maybe"}})


def test_the_old_option_rules_hold():
    from atomwatch.plugins import orchestrate
    from atomwatch.plugins.precog import detector as precog

    o = orchestrate.Options({"enabled": "off", "rate_limit": "10min", "auto_terminate_processes": "xmrig, miner"})
    assert (o.enabled, o.rate_limit, o.auto_processes, o.auto_detectors) == (False, 600.0, {"xmrig", "miner"}, set())
    with pytest.raises(ConfigError, match="orchestrate.settle_rows must be ≥ 1, got 0"):
        orchestrate.Options({"settle_rows": 0})
    s = precog.parse_options({"step": "10min", "metrics": "*", "fit_rows": 5}, "precog")
    assert (s.step, s.metrics, s.fit_rows) == (600.0, None, 5)
    with pytest.raises(ConfigError, match=r"precog.max_history must be 0 or at least twice critical_time"):
        precog.parse_options({"max_history": "1d"}, "precog")
    with pytest.raises(ConfigError, match=r"pca-spe.min_rows must be in \[3, t=10\], got 20"):
        _detector("pca-spe")({"t": 10, "min_rows": 20})
    with pytest.raises(atomwatch.NotConfigured, match="needs the option model=PATH"):
        _detector("cnn")({"top": 2})


@pytest.mark.parametrize(
    "argv, says",
    [
        (["controller", "--set", "orchestrate.enabled=maybe"], "orchestrate.enabled='maybe' is not a boolean"),
        (["agent", "--set", "libvirt.urі=qemu:///system"], "libvirt: unknown option 'urі'"),
    ],
)
def test_a_bad_option_on_the_command_line_is_one_line_and_exit_2(argv, says, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ATOMWATCH_LOAD_PLUGINS"}  # every built-in plugin
    proc = subprocess.run(
        [sys.executable, "-m", "atomwatch", *argv, "--duration", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if " INFO " not in ln]
    assert lines == [f"atomwatch {argv[0]}: {lines[0].split(': ', 1)[1]}"] and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr

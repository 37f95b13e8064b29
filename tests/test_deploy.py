"""The deployment files under ``deploy/`` and ``atomwatch config check``, which vouches for them.

Every systemd unit passes ``systemd-analyze verify`` without a warning and carries its hardening;
every example TOML passes ``atomwatch config check`` for its role (with the key and certificate
files ``atomwatch secure init`` writes in place of ``/etc/atomwatch/ROLE/``) and names every
option of its role's command line and of its role's plugins; ``config check`` refuses a bad
file with one line and exit status 2. The container recipe installs only existing extras
without test tools or a compiler (it is not built here: no container engine).
"""

from __future__ import annotations

import argparse
import configparser
import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import require

from atomwatch.options import declared_options, parse_options
from atomwatch.pluginmanager import get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ROLES = ("agent", "controller")
#: where the units expect atomwatch (deploy/README.md makes that virtual environment)
INSTALLED = "/opt/atomwatch/bin/atomwatch"
#: command-line options that are no key of the file: the file itself, --set (its tables), --plugins-dir
NOT_IN_FILE = {"config", "settings", "plugins_dir"}
#: the plugin kinds each role runs (atomwatch plugins' names for them)
ROLE_KINDS = {"agent": {"collector", "agent commands"}, "controller": {"detector", "orchestrator"}}
#: a commented-out option or table of the examples: "# key = value", "# [plugins.name]"
COMMENTED = re.compile(r"^# (\[plugins\.[a-z0-9_-]+\]|[a-z][a-z0-9_]* = .*)$")


def atomwatch(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMWATCH_")}
    env["ATOMWATCH_DB"] = ":memory:"
    return subprocess.run(
        [sys.executable, "-m", "atomwatch", *args], capture_output=True, text=True, timeout=120, env=env, **kw
    )


@pytest.fixture(scope="module")
def site_files(tmp_path_factory) -> Path:
    """The folders `atomwatch secure init` writes: keys, certificates, tokens of site eu1, host hv1."""
    out = tmp_path_factory.mktemp("site") / "eu1"
    done = atomwatch(
        "secure", "init", str(out), "--site", "eu1", "--host", "hv1", "--broker-host", "broker.example.net"
    )
    assert done.returncode == 0, done.stderr
    return out


def with_site_files(role: str, site_files: Path, tmp_path: Path) -> Path:
    """The role's example with /etc/atomwatch/ROLE/ pointing at the secure-init folder for it."""
    folder = site_files / ("agents/hv1" if role == "agent" else "controller")
    text = (DEPLOY / f"{role}.toml").read_text().replace(f"/etc/atomwatch/{role}/", f"{folder}/")
    path = tmp_path / f"{role}.toml"
    path.write_text(text)
    return path


def uncommented(role: str) -> dict:
    """The example with every commented-out option and table switched on, as TOML."""
    lines = [
        m.group(1) if (m := COMMENTED.match(line)) else line
        for line in (DEPLOY / f"{role}.toml").read_text().splitlines()
    ]
    return tomllib.loads("\n".join(lines))


def role_options(role: str) -> set[str]:
    """The dests of ``atomwatch ROLE``'s command line."""
    parser = argparse.ArgumentParser()
    importlib.import_module(f"atomwatch.cli.{role}").add_arguments(parser)
    return {a.dest for a in parser._actions if a.dest != "help"}


# --------------------------------------------------------------------------- systemd units


def test_there_is_a_unit_per_role():
    assert [u.name for u in UNITS] == ["atomwatch-agent.service", "atomwatch-controller.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze is missing (apt-get install systemd; .ci/setup does)")
    # verify insists that ExecStart's program exists: point it at this installation's atomwatch
    script = Path(sys.executable).with_name("atomwatch")
    require(script.exists(), f"no atomwatch script beside {sys.executable} (pip install -e .)")
    text = unit.read_text()
    assert INSTALLED in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED, str(script)))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    # verify exits 0 on unknown keys and unparsable values, with a warning: any output is a failure
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


def _service(unit: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return dict(parser["Service"])


@pytest.mark.parametrize("role", ROLES)
def test_unit_is_hardened_and_reads_its_example(role):
    service = _service(DEPLOY / "systemd" / f"atomwatch-{role}.service")
    assert service["ExecStart"] == f"{INSTALLED} {role} --config /etc/atomwatch/{role}.toml"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestartPreventExitStatus": "2",  # a configuration error is not retried
    }.items():
        assert service.get(key) == value, f"{role}: {key}={service.get(key)}"
    state = f"/var/lib/{service['StateDirectory']}"
    if role == "controller":
        assert service["User"] == "atomwatch" and service["CapabilityBoundingSet"] == ""
        assert uncommented("controller")["db"].startswith(state + "/")
    else:
        # libvirtd writes the dumps: not into this unit's private /tmp, into its state directory
        assert uncommented("agent")["plugins"]["introspection"]["dump_dir"].startswith(state + "/")


def test_the_sysusers_file_makes_the_controllers_user():
    text = (DEPLOY / "sysusers.d" / "atomwatch.conf").read_text()
    user = _service(DEPLOY / "systemd" / "atomwatch-controller.service")["User"]
    assert re.search(rf"^u {user} ", text, re.M)


# --------------------------------------------------------------------------- example configuration files


@pytest.mark.parametrize("role", ROLES)
def test_example_passes_config_check(role, site_files, tmp_path):
    path = with_site_files(role, site_files, tmp_path)
    done = atomwatch("config", "check", str(path), "--role", role)
    assert done.returncode == 0, done.stderr
    assert f"a valid {role} configuration" in done.stdout and "site" in done.stdout
    # as written, the files it names are not on this machine: the first missing one is named
    done = atomwatch("config", "check", str(DEPLOY / f"{role}.toml"), "--role", role)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"/etc/atomwatch/{role}/" in done.stderr and "no such file" in done.stderr


@pytest.mark.parametrize("role", ROLES)
def test_example_names_every_option_of_its_role(role):
    options = uncommented(role)  # also: no option twice, and valid TOML once switched on
    top = set(options) - {"plugins"}
    assert top == role_options(role) - NOT_IN_FILE, f"deploy/{role}.toml lacks or invents top-level options"
    pm = get_plugin_manager(load_entry_points=True)
    from atomwatch.cli.plugins import describe

    declared = declared_options()
    tables = {table for p in describe(pm) if set(p["kinds"]) & ROLE_KINDS[role] for table in p["options"]}
    assert set(options["plugins"]) == tables, f"deploy/{role}.toml: plugin tables"
    for table, values in options["plugins"].items():
        cls = declared[table]
        names = {f for f in cls.__dataclass_fields__}
        assert set(values) == names, f"[plugins.{table}]: missing {names - set(values)}, unknown {set(values) - names}"
        parse_options(table, cls, values)  # every value shown is one the plugin accepts


def test_every_example_line_is_an_option_a_table_or_a_comment():
    for role in ROLES:
        for n, line in enumerate((DEPLOY / f"{role}.toml").read_text().splitlines(), 1):
            if line.startswith("#") and " = " in line and not COMMENTED.match(line):
                pytest.fail(f"deploy/{role}.toml:{n}: looks like an option but is not '# key = value': {line!r}")


# --------------------------------------------------------------------------- config check's refusals


@pytest.mark.parametrize(
    "text, role, expected",
    [
        ("tick = [", "agent", "not valid TOML"),
        ('tick = "5x"', "agent", "bad.toml: tick='5x' is not a duration"),
        ("[plugins.pca-spe]\nalpha = 2", "controller", "pca-spe.alpha must be in (0, 0.5), got 2"),
        ("[plugins.libvirt]\nurl = 'qemu:///system'", "agent", "libvirt: unknown option 'url'"),
        ('controller_key = "/nonexistent/command-signing.pub"', "agent", "/nonexistent/command-signing.pub"),
        ('http = "0.0.0.0:8470"', "controller", "listening beyond loopback needs TLS and a tokens file"),
        ('broker = "http://broker"', "controller", "scheme must be mqtt:// or mqtts://"),
    ],
)
def test_config_check_refuses_a_bad_file_in_one_line(text, role, expected, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    done = atomwatch("config", "check", str(path), "--role", role)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith("atomwatch config: ")


def test_config_check_starts_nothing(tmp_path):
    """A controller's file whose alarms file and broker do not exist: the check opens neither."""
    db = tmp_path / "state" / "alarms.sqlite"
    path = tmp_path / "c.toml"
    path.write_text(f'broker = "mqtt://127.0.0.1:1"\ndb = "{db}"\nhttp = "off"\n')
    done = atomwatch("config", "check", str(path), "--role", "controller")
    assert done.returncode == 0, done.stderr
    assert not db.parent.exists()


# --------------------------------------------------------------------------- container recipe


def test_containerfile_installs_the_controller_without_tools():
    text = (DEPLOY / "Containerfile").read_text()
    (install,) = re.findall(r'pip install "/src\[([a-z,]+)\]"', text)
    with (ROOT / "pyproject.toml").open("rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    for extra in install.split(","):
        assert extra in extras, f"Containerfile installs extra {extra!r}, which pyproject.toml lacks"
        assert extra not in ("test", "agent", "all"), f"the controller's image needs no {extra!r}"
    # the image gets every folder the wheel is built from (pyproject.toml's package-dir)
    for folder in ("atomwatch", "agent", "controller", "introspection", "plugins", "lab"):
        assert re.search(rf"^COPY {folder} ", text, re.M), folder
    assert re.search(r"^USER atomwatch$", text, re.M)
    assert 'ENTRYPOINT ["atomwatch"]' in text and '"controller", "--config", "/etc/atomwatch/controller.toml"' in text

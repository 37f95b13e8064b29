"""The wheel: one top-level package, ``atomwatch``, with every folder of the repository mapped into it.

The folders agent/, controller/, introspection/, plugins/ and lab/ stay at the top of the repository
and install as atomwatch.agent, … through pyproject.toml's ``package-dir`` and its explicit
``packages`` list; a sub-package missing from that list would silently be left out of the wheel.
The wheel is built once for this module from a copy of the sources (an in-tree build leaves a
``build/`` folder whose stale files would end up in the next wheel). Building needs setuptools>=77
in pip's isolated build environment, from PyPI or pip's cache.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

#: source folder → the package it installs as (pyproject.toml's package-dir)
FOLDERS: dict[str, str] = {
    "atomwatch": "atomwatch",
    "agent": "atomwatch/agent",
    "controller": "atomwatch/controller",
    "introspection": "atomwatch/introspection",
    "plugins": "atomwatch/plugins",
    "lab": "atomwatch/lab",
}

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("atomwatch-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _dist_info(names: set[str]) -> str:
    (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    return dist_info


def test_the_only_top_level_package_is_atomwatch(wheel, names):
    dist_info = _dist_info(names)
    assert dist_info.startswith("atomwatch-")
    strays = sorted(n for n in names if not n.startswith(("atomwatch/", f"{dist_info}/")))
    assert not strays, f"outside atomwatch/ in {wheel.name}: {strays}"
    with zipfile.ZipFile(wheel) as zf:
        if f"{dist_info}/top_level.txt" in names:
            assert zf.read(f"{dist_info}/top_level.txt").decode().split() == ["atomwatch"]


def test_every_source_package_is_in_the_wheel_with_all_its_modules(names):
    checked = 0
    for folder, package in FOLDERS.items():
        for directory in sorted({p.parent for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts}):
            rel = directory.relative_to(REPO / folder)
            target = PurePosixPath(package, *rel.parts)
            assert f"{target}/__init__.py" in names, f"{directory.relative_to(REPO)} is not in the wheel as {target}"
            for module in sorted(directory.glob("*.py")):
                assert f"{target}/{module.name}" in names, f"{module.relative_to(REPO)} is not in the wheel"
                checked += 1
    assert checked > 50  # the walk did find the tree


def test_bundled_data_and_lab_files_are_inside(names):
    data = sorted(p.name for p in (REPO / "atomwatch" / "data").iterdir() if p.is_file())
    assert data
    for name in data:
        assert f"atomwatch/data/{name}" in names
    lab_files = sorted(p.relative_to(REPO / "lab") for p in (REPO / "lab" / "files").rglob("*") if p.is_file())
    assert lab_files
    for rel in lab_files:
        assert f"atomwatch/lab/{rel.as_posix()}" in names


def test_entry_points_all_point_into_atomwatch(wheel, names):
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(f"{_dist_info(names)}/entry_points.txt").decode()
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    assert parser.has_section("console_scripts") and parser.has_section("atomwatch")
    targets = [(group, name, value) for group in parser.sections() for name, value in parser.items(group)]
    assert targets
    for group, name, value in targets:
        module = value.split(":")[0].strip()
        assert module.startswith("atomwatch."), f"[{group}] {name} = {value}"
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, f"[{group}] {name} = {value}: no such module"


# What a fresh environment sees: the wheel alone (--no-deps) in a plain venv, run from outside the
# repository. Importing atomwatch needs pluggy and numpy (and pca_spe scipy), so the installed
# modules are located with importlib's path finder, one level at a time, which imports nothing.
_PROBE = r"""
import importlib.machinery, importlib.metadata, json, sys

def locate(dotted):
    parts, path = dotted.split("."), None
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
    return spec.origin

try:
    import agent
    bare = agent.__file__
except ModuleNotFoundError:
    bare = None
found = {name: locate(name) for name in sys.argv[1:]}
groups = importlib.metadata.entry_points()
print(json.dumps({
    "bare": bare,
    "found": found,
    "plugins": sorted(ep.value for ep in groups.select(group="atomwatch")),
    "prefix": sys.prefix,
}))
"""


def test_a_fresh_venv_has_atomwatch_agent_and_no_bare_agent(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    wanted = [
        "atomwatch",
        "atomwatch.tracking",
        "atomwatch.cli",
        "atomwatch.agent",
        "atomwatch.agent.runtime",
        "atomwatch.controller.app",
        "atomwatch.introspection.worker",
        "atomwatch.plugins.pca_spe",
        "atomwatch.plugins.deep.train",
        "atomwatch.lab.target_server",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = subprocess.run(
        [str(python), "-c", _PROBE, *wanted],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    seen = json.loads(done.stdout)
    assert seen["bare"] is None, f"import agent found {seen['bare']}"
    site = Path(seen["prefix"]).resolve()
    for name, origin in seen["found"].items():
        assert origin is not None, f"{name} is not installed"
        assert Path(origin).resolve().is_relative_to(site), f"{name} comes from {origin}, not the venv"
    assert seen["plugins"] and all(v.startswith("atomwatch.plugins.") for v in seen["plugins"])


# --------------------------------------------------------------------------- installs by role


def _project() -> dict:
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["project"]


def test_extras_by_role_and_all_without_test_tools():
    extras = _project()["optional-dependencies"]
    assert {"agent", "controller", "ml", "introspection", "plot", "fast", "all", "test"} <= set(extras)
    (everything,) = extras["all"]
    named = set(everything.removeprefix("atomwatch[").removesuffix("]").split(","))
    assert named == set(extras) - {"all", "test"}, "'all' is every production extra and nothing else"
    test_tools = {"pytest", "hypothesis", "ruff", "scikit-learn"}
    for name, requirements in extras.items():
        if name != "test":
            leaked = {r for r in requirements for tool in test_tools if r.startswith(tool)}
            assert not leaked, f"extra {name!r} installs test tools {leaked}"
    setup = (REPO / ".ci" / "setup").read_text()
    assert "pip install -q -e '.[all,test]'" in setup, "CI installs the production extras and the test tools"


def test_the_core_install_has_no_heavy_or_compiled_from_source_dependency():
    names = {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in _project()["dependencies"]}
    assert not names & {"scikit-learn", "libvirt-python", "keras", "jax", "numba", "volatility3", "matplotlib"}


#: what a --help must not import: the heavy optional parts (seconds to import, or absent)
HEAVY = ("sklearn", "keras", "jax", "numba", "libvirt", "volatility3", "matplotlib", "tensorflow", "scipy")

_HELP_PROBE = r"""
import contextlib, io, json, sys
from atomwatch.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "help": out.getvalue(), "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["detect", "--help"], ["agent", "--help"], ["controller", "--help"], ["train", "--help"]],
    ids=" ".join,
)
def test_help_imports_nothing_heavy(argv):
    """`atomwatch --help` loads every plugin (to list their subcommands), `detect --help` only its
    module: neither may pull in scikit-learn, Keras, JAX, numba, libvirt, Volatility or scipy (their
    time is what `benchmarks/startup.py` measures)."""
    done = subprocess.run([sys.executable, "-c", _HELP_PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["code"] == 0 and "usage: atomwatch" in seen["help"]
    assert not set(HEAVY) & set(seen["modules"]), (
        f"atomwatch {' '.join(argv)} imported {set(HEAVY) & set(seen['modules'])}"
    )
    if argv == ["--help"]:
        assert "train" in seen["help"] and "config" in seen["help"]  # plugin and built-in subcommands listed

"""The layers of the installed ``atomwatch`` namespace, read from every module's imports.

Bottom to top: the core (``atomwatch/`` without ``atomwatch/cli/``); the agent, the controller and
introspection; the plugins; the lab; the command line. A module may import its own layer and the
layers ``ALLOWED`` lists for it, the standard library and third-party packages; nothing may import
the folders under their bare names (``import plugins``): they install as ``atomwatch.plugins``, ….
Every import counts, wherever it stands: at the top, inside a function, under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: source folder → the dotted name it installs as (pyproject.toml's package-dir)
FOLDERS: dict[str, str] = {
    "atomwatch": "atomwatch",
    "agent": "atomwatch.agent",
    "controller": "atomwatch.controller",
    "introspection": "atomwatch.introspection",
    "plugins": "atomwatch.plugins",
    "lab": "atomwatch.lab",
}

#: layer → the layers its modules may import (besides the standard library and third-party packages)
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "agent": {"core", "agent"},
    "controller": {"core", "controller"},
    "introspection": {"core", "introspection"},
    "plugins": {"core", "introspection", "plugins"},
    "lab": {"core", "introspection", "plugins", "lab"},
    "cli": {"core", "agent", "controller", "introspection", "plugins", "lab", "cli"},
}

#: repository folders that are not installed under these names: importing them works only from the
#: repository root, and an installed ``plugins`` or ``lab`` of another distribution would answer
BARE = {"agent", "controller", "introspection", "plugins", "lab", "tests", "benchmarks"}


#: core-folder modules that belong to the command line: ``python -m atomwatch`` is the ``atomwatch`` script
CLI_MODULES = {"atomwatch.__main__"}


def layer_of(dotted: str) -> str | None:
    """The layer of an ``atomwatch`` module or package; None for anything outside the namespace."""
    parts = dotted.split(".")
    if parts[0] != "atomwatch":
        return None
    if dotted in CLI_MODULES:
        return "cli"
    if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != "core":
        return parts[1]
    return "core"


def _package_of(module: str, is_package: bool) -> list[str]:
    parts = module.split(".")
    return parts if is_package else parts[:-1]


def imported_names(tree: ast.AST, module: str, is_package: bool):
    """(line, dotted name imported, the statement as written) for every import in the tree.

    ``from X import a, b`` yields X.a and X.b, so that ``from atomwatch import controller`` counts
    as the controller; relative imports are resolved against the module's installed name.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(module, is_package)
                up = node.level - 1
                if up > len(package) - 1:
                    yield node.lineno, "." * node.level + (node.module or ""), "relative import beyond the top"
                    continue
                base = ".".join(package[: len(package) - up] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}", written


def check_source(source: str, module: str, filename: str, is_package: bool = False) -> list[str]:
    """Every import of one module's source that breaks the layers, as 'file:line: import — why'."""
    own = layer_of(module)
    assert own is not None, module
    problems = []
    for line, name, written in sorted(imported_names(ast.parse(source, filename), module, is_package)):
        top = name.split(".")[0]
        if not top:  # a relative import that climbs out of the namespace
            problems.append(f"{filename}:{line}: {written} — climbs out of the atomwatch namespace")
        elif top in BARE:
            problems.append(f"{filename}:{line}: {written} — bare {top!r}; it installs as atomwatch.{top}")
        elif (target := layer_of(name)) is not None and target not in ALLOWED[own]:
            problems.append(f"{filename}:{line}: {written} — the {own} layer may not import the {target} layer")
    return problems


def modules():
    """(path, installed dotted name, is a package) for every .py file of the mapped folders."""
    for folder, dotted in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(REPO / folder).with_suffix("").parts
            is_package = rel[-1] == "__init__"
            name = ".".join((dotted, *(rel[:-1] if is_package else rel)))
            yield path, name, is_package


def check_tree() -> list[str]:
    problems = []
    for path, name, is_package in modules():
        filename = str(path.relative_to(REPO))
        problems += check_source(path.read_text(encoding="utf-8"), name, filename, is_package)
    return problems


# -- the checker itself -------------------------------------------------------------------------


def test_every_folder_is_read_and_named_as_installed():
    names = {name for _, name, _ in modules()}
    for expected in (
        "atomwatch",
        "atomwatch.cli",
        "atomwatch.tracking",
        "atomwatch.agent.runtime",
        "atomwatch.controller.app",
        "atomwatch.introspection.volatility",
        "atomwatch.plugins.orchestrate",
        "atomwatch.plugins.deep.retrain",
        "atomwatch.lab.testbed",
    ):
        assert expected in names
    assert {layer_of(n) for n in names} == set(ALLOWED)
    assert layer_of("atomwatch.__main__") == "cli" and layer_of("atomwatch.config") == "core"


def test_the_checker_reports_a_core_module_importing_the_controller(tmp_path):
    module = tmp_path / "sneaky.py"
    module.write_text(
        "import json\n"
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from atomwatch.protocol import Birth\n"
        "\n"
        "def later():\n"
        "    from atomwatch.controller.app import Controller\n"
        "    return Controller\n"
        "if TYPE_CHECKING:\n"
        "    import atomwatch.plugins.pca_spe\n"
        "from atomwatch import lab, config\n"
    )
    problems = check_source(module.read_text(), "atomwatch.sneaky", str(module))
    assert problems == [
        f"{module}:7: from atomwatch.controller.app import Controller — the core layer may not import the controller layer",
        f"{module}:10: import atomwatch.plugins.pca_spe — the core layer may not import the plugins layer",
        f"{module}:11: from atomwatch import lab, config — the core layer may not import the lab layer",
    ]


def test_the_checker_reports_bare_folder_imports_anywhere():
    source = "import plugins\nfrom lab.paths import REPO\nimport agent.runtime as rt\n"
    for module in ("atomwatch.cli.up", "atomwatch.lab.testbed", "atomwatch.config"):
        problems = check_source(source, module, "x.py")
        assert [p.split(" — ")[0] for p in problems] == [
            "x.py:1: import plugins",
            "x.py:2: from lab.paths import REPO",
            "x.py:3: import agent.runtime",
        ]
        assert all("bare" in p for p in problems)


def test_relative_imports_resolve_against_the_installed_name():
    # in a module of a sub-package, in a package's __init__, and climbing up a level
    assert check_source("from . import models\nfrom .windows import X\n", "atomwatch.plugins.deep.train", "t.py") == []
    assert check_source("from .detector import hookimpl\n", "atomwatch.plugins.deep", "i.py", is_package=True) == []
    assert check_source("from ..introspection import pipeline\n", "atomwatch.plugins.x", "p.py") == []
    assert (
        check_source("from ..controller import alarms\n", "atomwatch.plugins.deep.retrain", "r.py") == []
    )  # plugins.controller
    assert check_source("from ...controller import alarms\n", "atomwatch.plugins.deep.retrain", "r.py") == [
        "r.py:1: from ...controller import alarms — the plugins layer may not import the controller layer"
    ]
    assert check_source("from .. import controller\n", "atomwatch.agent.runtime", "a.py") == [
        "a.py:1: from .. import controller — the agent layer may not import the controller layer"
    ]


def test_the_rules_table():
    # each layer may import the ones below it as the design draws them, never one above or beside
    allowed = {
        ("agent", "controller"): False,
        ("controller", "agent"): False,
        ("introspection", "plugins"): False,
        ("plugins", "introspection"): True,
        ("plugins", "controller"): False,
        ("lab", "plugins"): True,
        ("lab", "agent"): False,
        ("core", "cli"): False,
        ("cli", "lab"): True,
    }
    for (importer, imported), ok in allowed.items():
        assert (imported in ALLOWED[importer]) is ok, (importer, imported)


# -- the tree -----------------------------------------------------------------------------------


def test_no_module_imports_across_the_layers():
    problems = check_tree()
    assert not problems, "imports against the layers (docs/design.md, Layout):\n" + "\n".join(problems)

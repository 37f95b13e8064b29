"""Deferred imports: a module that is imported the first time one of its attributes is read.

What lives here: :func:`lazy_import`, for a plugin whose hook module must load fast (every
``atomwatch`` command that lists plugins imports every plugin) while its numerical code pulls in
numba or scipy, which only a running detector needs. ``atomwatch --help`` then answers without
them (``tests/test_packaging.py`` checks which modules a ``--help`` imports; ``benchmarks/startup.py``
times it).

What does not: choosing what to defer (the plugins), loading plugins (:mod:`atomwatch.pluginmanager`).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for module ``name`` and imports it on the first attribute read (importlib's own
    per-module lock makes that safe from several threads at once). With ``namespace`` and
    ``as_name`` (a module's ``globals()`` and the name it binds), that first read also rebinds the
    name to the real module, so later reads there cost nothing more than a plain import's."""

    __slots__ = ("_name", "_module", "_namespace", "_as_name")

    def __init__(self, name: str, namespace: dict[str, Any] | None = None, as_name: str | None = None) -> None:
        self._name = name
        self._module: ModuleType | None = None
        self._namespace = namespace
        self._as_name = as_name

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
            if self._namespace is not None and self._namespace.get(self._as_name) is self:
                self._namespace[self._as_name] = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_import(name: str, namespace: dict[str, Any] | None = None, as_name: str | None = None) -> Any:
    """A stand-in for ``importlib.import_module(name)`` that imports only when first used::

    np = lazy_import("numpy", globals(), "np")  # the first np.… imports numpy and rebinds np
    """
    if (namespace is None) != (as_name is None):
        raise TypeError("lazy_import: give both namespace and as_name, or neither")
    return LazyModule(name, namespace, as_name)

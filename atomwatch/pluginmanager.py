"""The plugin manager: one pluggy manager holding the agent's and the controller's hook specs.

Plugins come from three places, all registered the same way:

* the entry-point group ``atomwatch`` of every installed distribution — the built-in plugins in
  ``plugins/`` are declared there by atomwatch's own ``pyproject.toml``, exactly as a third-party
  distribution declares its own;
* ``--plugins-dir DIR``: every ``*.py`` file of a folder, registered under its file name;
* ``register(module_or_object, name)`` for tests and embedding.

``ATOMWATCH_LOAD_PLUGINS`` (a comma list of entry-point names) restricts which entry points load;
set to an empty string it loads none. A plugin that fails to import is logged and recorded in
``load_errors``; it never stops the process. A plugin that implements a hook no spec declares (a
misspelt ``register_detector``) does: :func:`get_plugin_manager` raises :class:`PluginError`
naming the plugin, the hook and the nearest real hook, since that plugin would silently do
nothing. Implementations marked ``optionalhook=True`` are allowed.

What does not live here: the hook specifications (:mod:`atomwatch.hookspecs`) and what either
side does with the hooks' results.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .config import ConfigError

log = logging.getLogger(__name__)

GROUP = "atomwatch"
ALLOW_ENV = "ATOMWATCH_LOAD_PLUGINS"


class PluginError(ConfigError):
    """A loaded plugin implements a hook that no spec declares; the text names plugin and hook."""


@dataclass
class LoadError:
    name: str
    source: str
    error: str


class PluginManager(pluggy.PluginManager):
    def __init__(self) -> None:
        super().__init__("atomwatch")
        self.add_hookspecs(hookspecs)
        self.load_errors: list[LoadError] = []
        self.sources: dict[str, str] = {}

    # -- loading ----------------------------------------------------------------------------

    def register_plugin(self, plugin: Any, name: str, source: str) -> None:
        try:
            self.register(plugin, name=name)
        except Exception as e:  # a bad hook signature, a duplicate name
            if self.get_plugin(name) is plugin:  # pluggy may leave it half-registered
                self.unregister(name=name)
            self._failed(name, source, e)
            return
        self.sources[name] = source

    def _failed(self, name: str, source: str, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {e}"
        log.error("plugin %s (%s) not loaded: %s", name, source, msg)
        self.load_errors.append(LoadError(name, source, msg))

    def load_entry_points(self, allow: str | None = None) -> None:
        allow = os.environ.get(ALLOW_ENV) if allow is None else allow
        allowed = None if allow is None else {a.strip() for a in allow.split(",") if a.strip()}
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if allowed is not None and ep.name not in allowed:
                continue
            if self.has_plugin(ep.name):
                continue
            dist = ep.dist.name if ep.dist else "?"
            try:
                plugin = ep.load()
            except Exception as e:
                self._failed(ep.name, f"entry point {ep.value} of {dist}", e)
                continue
            self.register_plugin(plugin, ep.name, f"entry point {ep.value} of {dist}")
        if allowed:
            missing = allowed - set(self.sources) - {e.name for e in self.load_errors}
            for name in sorted(missing):
                log.warning("%s names %r, but no installed plugin has that name", ALLOW_ENV, name)

    def load_directory(self, directory: str | os.PathLike) -> None:
        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"--plugins-dir {str(folder)!r} is not a folder")
        for path in sorted(folder.glob("*.py")):
            name = path.stem
            modname = f"atomwatch_plugins_dir.{name}"
            try:
                spec = importlib.util.spec_from_file_location(modname, path)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                spec.loader.exec_module(module)
            except Exception as e:
                self._failed(name, str(path), e)
                continue
            self.register_plugin(module, name, str(path))

    # -- checking ---------------------------------------------------------------------------

    def unknown_hooks(self) -> list[str]:
        """One sentence per hook implementation with no matching spec (``optionalhook`` ones
        excepted), naming the plugin, where it came from and the nearest real hook."""
        known = sorted(name for name, caller in vars(self.hook).items() if getattr(caller, "spec", None) is not None)
        problems = []
        for name, caller in sorted(vars(self.hook).items()):
            if getattr(caller, "spec", None) is not None:
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                source = self.sources.get(impl.plugin_name, "registered")
                text = f"plugin {impl.plugin_name} ({source}) implements {name!r}, which is no atomwatch hook"
                near = difflib.get_close_matches(name, known, n=1)
                problems.append(text + (f"; did you mean {near[0]!r}?" if near else ""))
        return problems

    def check_pending(self) -> None:
        """Raise :class:`PluginError` if a plugin implements a hook no spec declares."""
        problems = self.unknown_hooks()
        if problems:
            raise PluginError("; ".join(problems))
        try:
            super().check_pending()
        except pluggy.PluginValidationError as e:  # anything the sentence above did not catch
            raise PluginError(f"plugin {self.get_name(e.plugin) or e.plugin!r}: {e}") from None

    # -- introspection ------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """One entry per loaded plugin: name, where it came from, the hooks it implements."""
        out = []
        for name, plugin in sorted(self.list_name_plugin(), key=lambda np: np[0] or ""):
            hooks = sorted(h.name for h in self.get_hookcallers(plugin) or [])
            out.append({"name": name, "source": self.sources.get(name, "registered"), "hooks": hooks})
        return out


def hook_docs(pm: pluggy.PluginManager) -> dict[str, str]:
    """Every hook spec's name and docstring (empty string if undocumented)."""
    out = {}
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        spec = getattr(caller, "spec", None)
        if spec is not None:
            out[name] = inspect.getdoc(spec.function) or ""
    return out


def get_plugin_manager(plugins_dir: str | os.PathLike | None = None, load_entry_points: bool = True) -> PluginManager:
    """A plugin manager with the installed entry points and ``plugins_dir``'s files loaded.
    Raises :class:`PluginError` when a loaded plugin implements a hook no spec declares."""
    pm = PluginManager()
    if load_entry_points:
        pm.load_entry_points()
    if plugins_dir:
        pm.load_directory(plugins_dir)
    pm.check_pending()
    return pm


def call_safely(pm: pluggy.PluginManager, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call a hook on every plugin separately, so one plugin's exception is logged and the
    others still run. Returns (plugin name, result) for the non-None results. A
    :class:`~atomwatch.config.ConfigError` (the user's options are wrong) is raised: a process
    should not start half-configured."""
    caller = getattr(pm.hook, hook)
    results = []
    for impl in caller.get_hookimpls():
        try:
            args = {k: kwargs[k] for k in impl.argnames}
            r = impl.function(**args)
        except ConfigError:
            raise
        except Exception:
            log.exception("plugin %s failed in %s", impl.plugin_name, hook)
            continue
        if r is not None:
            results.append((impl.plugin_name, r))
    return results

"""The hook specifications: every hook a plugin may implement, on either side.

Agent side: ``register_collectors`` and ``register_agent_commands``. Controller side:
``register_detectors`` and the alarm events orchestrators act on. Command line:
``register_commands``. Every hook is documented; ``tests/test_plugins.py`` fails on an
undocumented one. What does not live here: the machinery that loads and calls plugins
(:mod:`atomwatch.pluginmanager`) and the types the hooks exchange (:mod:`atomwatch.types`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import hookspec
from .subcommands import Subcommand
from .types import Anomaly, Collector, CommandHandler, DetectorFactory

if TYPE_CHECKING:
    from .types import AgentSettings


# --------------------------------------------------------------------------- agent side


@hookspec
def register_collectors(config: "AgentSettings") -> list[Collector] | None:
    """Return the collectors this plugin runs on this agent, or None to run none.

    Called once at agent start. ``config.plugin_options(name)`` holds the options a user gave the
    plugin (``--set name.key=value`` or the ``[plugins.name]`` table of the config file). A plugin
    that cannot run here (its library is missing, its endpoint unset) returns None and logs why.
    Each collector's ``collect()`` is then called once per tick in a worker thread.
    """


@hookspec
def register_agent_commands(config: "AgentSettings") -> dict[str, CommandHandler] | None:
    """Return ``{command name: async handler}`` for commands the controller may send this agent.

    A handler is awaited as ``handler(params, progress)``; it returns a result dict (the ``ok``
    reply's ``result``), awaits ``progress({...})`` to report long work, and raises
    ``atomwatch.CommandError`` with a readable message to fail. ``rebirth`` and ``set-delta`` are
    built into the agent and cannot be overridden.
    """


# --------------------------------------------------------------------------- controller side


@hookspec
def register_detectors() -> list[DetectorFactory] | None:
    """Return detector factories. Each has a unique ``name`` (what ``--detector`` selects), a
    one-line ``description`` and ``create(scope, options)`` that makes one detector instance for
    one scope (by default all VMs of one host), or raises ``atomwatch.NotConfigured`` when it
    needs options it was not given (the controller then runs without it, said once at INFO)."""


@hookspec
def anomaly_detected(anomaly: Anomaly, controller: Any) -> Any:
    """Called for every anomaly a detector returns, before any alarm is opened or extended."""


@hookspec
def alarm_opened(alarm: Any, controller: Any) -> Any:
    """Called when an anomaly opens a new alarm (``alarm`` is a ``controller.alarms.Alarm``).
    Orchestrators start their work here, e.g. ask the agent for an introspection."""


@hookspec
def alarm_updated(alarm: Any, change: str, controller: Any) -> Any:
    """Called after any other change of an alarm: ``change`` names it (``extended``, ``findings``,
    ``closed`` …). The alarm's audit trail already holds the change."""


@hookspec
def verdict_given(alarm: Any, verdict: str, actor: str, params: dict, controller: Any) -> Any:
    """Called when an operator (``actor``) gives ``verdict`` — ``normal`` or ``malicious`` — on an
    alarm; ``params`` carries extra choices (e.g. which suspect to terminate)."""


# --------------------------------------------------------------------------- command line


@hookspec
def register_commands() -> list[Subcommand] | None:
    """Return the subcommands this plugin adds to the ``atomwatch`` command line.

    Each :class:`atomwatch.Subcommand` has a ``name`` (``atomwatch NAME``), a one-line ``help``,
    ``add_arguments(parser)`` and ``run(args, context) -> int``; the context
    (:class:`atomwatch.SubcommandContext`) gives what a plugin may not import itself, such as the
    controller's alarms. A name that is already a built-in subcommand or another plugin's is
    refused (logged) and the first one kept. Called only when the command line runs.
    """

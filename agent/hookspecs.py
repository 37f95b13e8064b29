"""Hook specifications of the agent side (collectors and agent commands).

Every hook here is documented; ``tests/test_plugins.py`` fails on an undocumented one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atomwatch import hookspec
from atomwatch.types import Collector, CommandHandler

if TYPE_CHECKING:
    from .config import AgentConfig


@hookspec
def register_collectors(config: "AgentConfig") -> list[Collector] | None:
    """Return the collectors this plugin runs on this agent, or None to run none.

    Called once at agent start. ``config.plugin_options(name)`` holds the options a user gave the
    plugin (``--set name.key=value`` or the ``[plugins.name]`` table of the config file). A plugin
    that cannot run here (its library is missing, its endpoint unset) returns None and logs why.
    Each collector's ``collect()`` is then called once per tick in a worker thread.
    """


@hookspec
def register_agent_commands(config: "AgentConfig") -> dict[str, CommandHandler] | None:
    """Return ``{command name: async handler}`` for commands the controller may send this agent.

    A handler is awaited as ``handler(params, progress)``; it returns a result dict (the ``ok``
    reply's ``result``), awaits ``progress({...})`` to report long work, and raises
    ``atomwatch.CommandError`` with a readable message to fail. ``rebirth`` and ``set-delta`` are
    built into the agent and cannot be overridden.
    """

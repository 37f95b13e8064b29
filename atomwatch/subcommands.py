"""Subcommands that plugins add to the ``atomwatch`` command line (the ``register_commands`` hook).

What lives here: :class:`Subcommand`, what a plugin returns from ``register_commands`` (a name, a
one-line help, a function that adds its arguments to an argparse parser and one that runs it),
and :class:`SubcommandContext`, the small object the command line hands a running subcommand
for what a plugin may not import itself (the controller's alarms file, say).

What does not: the command line itself (:mod:`atomwatch.cli`), which finds these through the
plugin manager and implements the context.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .alarm import Alarm


class SubcommandContext(Protocol):
    """What a plugin's subcommand may ask of the command line that runs it."""

    def read_alarms(self, db: str | None = None) -> list[Alarm]:
        """Every alarm of the controller's alarms file ``db`` (default: the controller's default
        file, ``$ATOMWATCH_DB`` or ``~/.local/state/atomwatch/alarms.sqlite``), newest first, as
        :class:`~atomwatch.Alarm` records. Raises :class:`~atomwatch.config.ConfigError` naming the
        file when it does not exist."""
        ...


@dataclass(frozen=True)
class Subcommand:
    """One subcommand of ``atomwatch``, added by a plugin.

    ``add_arguments(parser)`` adds its arguments; ``run(args, context)`` runs it and returns the
    exit status (0 success, 2 bad input). A :class:`~atomwatch.config.ConfigError` it raises is
    printed as ``atomwatch NAME: message`` with exit status 2.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, SubcommandContext], int]

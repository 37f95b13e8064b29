"""The deep detector plugins (``ae``, ``cnn``, ``siamese``) and their ``train``, ``evaluate`` and
``retrain`` subcommands.

This module holds only the hook implementations. The live detector is in :mod:`.detector`, the
Keras models in :mod:`.models`, windowing of recordings in :mod:`.windows`, the subcommands in
:mod:`.train`, :mod:`.evaluate` and :mod:`.retrain`. Results: ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import atomwatch

from .detector import DETECTORS, DeepFactory


@atomwatch.hookimpl
def register_detectors() -> list[DeepFactory]:
    return [DeepFactory(name) for name in DETECTORS]


#: subcommand → one-line help; each is the module of that name beside this one, imported only
#: when it runs (Keras loads lazily inside them).
SUBCOMMANDS = {
    "train": "train a deep detector model on recordings",
    "evaluate": "evaluate a model (or compare detectors) on recordings",
    "retrain": "retrain a model from the operator's verdicts",
}


def _subcommand(name: str, help_text: str) -> atomwatch.Subcommand:
    def module() -> Any:
        return importlib.import_module(f"{__name__}.{name}")

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        module().add_arguments(parser)

    def run(args: argparse.Namespace, context: atomwatch.SubcommandContext) -> int:
        return int(module().run(args, context) or 0)

    return atomwatch.Subcommand(name, help_text, add_arguments, run)


@atomwatch.hookimpl
def register_commands() -> list[atomwatch.Subcommand]:
    return [_subcommand(name, help_text) for name, help_text in SUBCOMMANDS.items()]

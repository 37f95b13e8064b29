"""Role options: each one's key and type, and where its value comes from.

What lives here: :class:`Key` (one option of a role: the configuration file's key, which is also
the flag's name ``--KEY-NAME`` and the environment variable ``ATOMWATCH_KEY_NAME``, and its type
under the rules of :mod:`atomwatch.options`: durations, numbers, booleans, lists of names …);
:func:`resolve`, which takes each key's value from the first of the flag, the environment and
the file that gives it (the role applies its default when none does) and reports every bad value
at once, naming where it came from; :func:`unknown_keys`, a file's keys and tables that the role
does not know, with a "did you mean".

What does not: which keys a role has, their defaults and what they mean (``atomwatch.cli.agent``,
``atomwatch.cli.controller``), reading the file and the ``--set``/``--delta`` grammar
(:mod:`atomwatch.config`), plugin options (:mod:`atomwatch.options`). ``docs/configuration.md``
has the rules for operators.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import ConfigError
from .options import convert, describe_type, did_you_mean

#: every role option's environment variable is this prefix and its key in capitals
ENV_PREFIX = "ATOMWATCH_"


@dataclass(frozen=True)
class Key:
    """One option of a role. ``type`` is a field type of :mod:`atomwatch.options` (``str``,
    ``Annotated[float, Duration, Range(gt=0)]``, ``tuple[str, ...]`` …); ``parse`` replaces it for
    a value it cannot say: ``parse(value, where)`` returns the value or raises :class:`ConfigError`
    whose text starts with ``where``; ``expected`` says then what a value must be."""

    name: str
    type: Any = str
    parse: Callable[[Any, str], Any] | None = None
    expected: str = ""
    #: the flag, when it is not ``--KEY-NAME`` (``--detector``, repeatable, for ``detectors``)
    option: str = ""

    @property
    def flag(self) -> str:
        return self.option or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def describe(self) -> str:
        """What a value must be (``a duration such as 300, '5min' or '6h' (> 0)``)."""
        return self.expected or describe_type(self.type)

    def read(self, value: Any, where: str) -> Any:
        if self.parse is not None:
            return self.parse(value, where)
        return convert(self.type, value, where)


def source(
    key: Key,
    args: argparse.Namespace | None,
    file_config: Mapping[str, Any],
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Any, str] | None:
    """(the raw value, where it came from: ``--tick``, ``$ATOMWATCH_TICK`` or ``FILE: tick``) from the
    first of the command line, the environment and the file that gives ``key``; None when none does.
    An empty environment variable counts as unset."""
    environ = os.environ if environ is None else environ
    value = getattr(args, key.name, None) if args is not None else None
    if value is not None:
        return value, key.flag
    if environ.get(key.env):
        return environ[key.env], f"${key.env}"
    if key.name in file_config:
        return file_config[key.name], f"{path or 'the configuration file'}: {key.name}"
    return None


def resolve(
    keys: Iterable[Key],
    args: argparse.Namespace | None,
    file_config: Mapping[str, Any],
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The value of every key some source gives (flag > environment > file), converted by its
    type; a key none gives is absent (its default is the role's). Every bad value is reported in
    one :class:`ConfigError`, a line each, naming the flag, the variable or the file and key."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key in keys:
        found = source(key, args, file_config, path, environ)
        if found is None:
            continue
        raw, where = found
        try:
            values[key.name] = key.read(raw, where)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return values


def unknown_keys(file_config: Mapping[str, Any], path: str | None, known: Iterable[str], role: str) -> list[str]:
    """One line per top-level key or table of the file that is no option of ``role`` (the
    ``[plugins.NAME]`` tables are the plugins' and checked against them, not here)."""
    known = set(known)
    where = path or "the configuration file"
    out = []
    for name, value in file_config.items():
        if name in known or name == "plugins":
            continue
        if isinstance(value, dict):
            hint = did_you_mean(name, known | {"plugins"})
            out.append(
                f"{where}: unknown table [{name}]{hint}: atomwatch {role} takes its options at the top of the "
                "file and a plugin's in [plugins.NAME]"
            )
        else:
            hint = did_you_mean(name, known)
            out.append(
                f"{where}: unknown key {name!r}{hint}"
                + ("" if hint else f": not an option of atomwatch {role} (a plugin's option goes in [plugins.NAME])")
            )
    return out

"""Plugin options: one parser, one set of rules, one error type for every plugin.

What lives here: :func:`parse_options`, which turns the plain dict a plugin is handed (from
``--set PLUGIN.KEY=VALUE`` or a ``[plugins.NAME]`` TOML table) into an instance of the plugin's
own frozen dataclass of options; the markers its fields are annotated with (:data:`Duration`,
:class:`Range`, :class:`Check`); the value rules (:func:`parse_bool`, :func:`parse_duration`);
:class:`OptionError` for a plugin's own post-checks; and a registry (:func:`declare_options`,
:func:`check_options`) so a command can refuse bad options before anything starts; and
:func:`describe_options`, what ``atomwatch plugins`` prints of each option.

What does not: where options come from and how they are merged (:mod:`atomwatch.config`, which
also holds :class:`~atomwatch.config.ConfigError`), and what any option means (the plugins).

A plugin writes::

    from dataclasses import dataclass
    from typing import Annotated, Literal

    import atomwatch
    from atomwatch import Duration, Range

    @atomwatch.declare_options("myplugin")
    @dataclass(frozen=True)
    class Options:
        enabled: bool = True
        every: Annotated[float, Duration, Range(gt=0)] = 60.0    # 60, "90s", "5min", "6h"
        top: Annotated[int, Range(ge=1)] = 3
        hosts: tuple[str, ...] = ()                               # ["a", "b"] or "a, b"
        mode: Literal["fast", "exact"] = "fast"
        model: str | None = None

    opts = atomwatch.parse_options("myplugin", Options, raw)     # or raises ConfigError

The rules, the same for every plugin:

* field types: ``bool``, ``int``, ``float``, ``str``, ``tuple[str, ...]`` (a list of names, or one
  comma-separated string), ``Literal[...]`` (choices; strings match case-insensitively), ``X | None``
  (None is accepted), unions (the first type that takes the value wins);
* booleans: real bools, ``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case); anything else is
  an error, never silently false;
* durations: a number of seconds, or text such as ``"10s"``, ``"500ms"``, ``"5min"``, ``"6h"``,
  ``"7d"``, ``"2w"`` (parts add up: ``"1h30min"``); finite and ≥ 0;
* numbers: numeric text is accepted (TOML strings), booleans are not, floats must be finite and an
  ``int`` must be whole;
* unknown keys are refused with the known ones listed (and a "did you mean" when one is close);
* every error is a :class:`~atomwatch.config.ConfigError` naming the plugin, the key and the value:
  ``orchestrate.rate_limit='soon' is not a duration such as 300, '5min' or '6h'`` for a value of the
  wrong kind, ``replay.speed must be > 0, got -1`` for one out of range (what :class:`Range`,
  :class:`Check` and :class:`OptionError` say).

Defaults are the dataclass's own and are not checked. Cross-field checks go in the dataclass's
``__post_init__`` as ``raise OptionError(key, value, "what it must be")``: :func:`parse_options`
adds the plugin's name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from .config import ConfigError

__all__ = [
    "Check",
    "Duration",
    "OptionError",
    "Range",
    "check_options",
    "declare_options",
    "convert",
    "describe_options",
    "describe_type",
    "did_you_mean",
    "parse_bool",
    "parse_duration",
    "parse_options",
]

BOOLEAN = "a boolean (true/false, yes/no, on/off, 1/0)"
DURATION = "a duration such as 300, '5min' or '6h'"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")

#: duration units → seconds (pandas-style names, as Precog's reference writes its parameters)
_UNITS = {
    "ms": 0.001,
    "msec": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "t": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_DURATION_PART = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*")


class OptionError(ConfigError):
    """An option value of the right kind that breaks a rule: ``PLUGIN.KEY must be WHAT, got VALUE``.

    Raise it from an options dataclass's ``__post_init__`` without ``plugin``
    (:func:`parse_options` fills it in), or anywhere else with it."""

    def __init__(self, key: str, value: Any, expected: str, plugin: str | None = None) -> None:
        self.key, self.value, self.expected, self.plugin = key, value, expected, plugin
        super().__init__(f"{plugin + '.' if plugin else ''}{key} must be {expected}, got {value!r}")


class _Invalid(ValueError):
    """A value of the wrong kind; the text says what was expected (``a number``)."""


class _Rejected(_Invalid):
    """A value of the right type that a :class:`Check` refused."""


class _OutOfRange(ValueError):
    """A value of the right kind outside its bounds; the text says what it must be (``> 0``)."""


# --------------------------------------------------------------------------- the value rules


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid(BOOLEAN)


def _duration(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid(DURATION)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text, total, pos = value.strip(), 0.0, 0
        sign = -1.0 if text[:1] == "-" else 1.0  # "-5min" is a duration, one below the bound
        text = text[1:].lstrip() if text[:1] in "+-" and text else text
        if not text:
            raise _Invalid(DURATION)
        while pos < len(text):
            m = _DURATION_PART.match(text, pos)
            if not m or m.end() == pos:
                raise _Invalid(DURATION)
            unit = m.group(2).lower() or "s"
            if unit not in _UNITS:
                raise _Invalid(f"{DURATION} (units: ms, s, min, h, d, w)")
            total += float(m.group(1)) * _UNITS[unit]
            pos = m.end()
        seconds = sign * total
    else:
        raise _Invalid(DURATION)
    if not math.isfinite(seconds):
        raise _Invalid(f"a finite {DURATION[2:]}")
    if seconds < 0:
        raise _OutOfRange("a duration ≥ 0")
    return seconds


def parse_bool(value: Any, name: str = "value") -> bool:
    """The boolean rule on its own; a :class:`ConfigError` naming ``name`` otherwise."""
    try:
        return _bool(value)
    except _Invalid as e:
        raise ConfigError(f"{name}={value!r} is not {e}") from None


def parse_duration(value: Any, name: str = "value") -> float:
    """The duration rule on its own: seconds, or a :class:`ConfigError` naming ``name``."""
    try:
        return _duration(value)
    except _Invalid as e:
        raise ConfigError(f"{name}={value!r} is not {e}") from None
    except _OutOfRange as e:
        raise ConfigError(f"{name} must be {e}, got {value!r}") from None


def _number(value: Any, kind: type) -> int | float:
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(what)
    if isinstance(value, str):
        try:
            value = int(value.strip()) if kind is int and value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise _Invalid(what) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(f"a finite {what[2:]}" if kind is float else what)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise _Invalid(what)
        return int(value)
    return float(value)


def _text(value: Any) -> str:
    # --set parses values as JSON, so uri=123 arrives as a number: a string option takes it back
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, os.PathLike):  # a Path handed over by Python code (tests, embedding)
        return os.fspath(value)
    raise _Invalid("a string")


def _names(value: Any) -> tuple[str, ...]:
    what = "a list of names or a comma-separated string"
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise _Invalid(what)


# --------------------------------------------------------------------------- the markers


class _DurationMarker:
    def __repr__(self) -> str:
        return "Duration"


#: ``Annotated[float, Duration]``: the field is a duration (seconds, or "5min", "6h", …)
Duration = _DurationMarker()


@dataclass(frozen=True)
class Range:
    """Bounds on a number: ``Range(gt=0)``, ``Range(ge=1)``, ``Range(gt=0, lt=0.5)``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        lo = self.gt if self.gt is not None else self.ge
        hi = self.lt if self.lt is not None else self.le
        if lo is not None and hi is not None:
            return f"in {'(' if self.gt is not None else '['}{lo:g}, {hi:g}{')' if self.lt is not None else ']'}"
        if lo is not None:
            return f"{'>' if self.gt is not None else '≥'} {lo:g}"
        if hi is not None:
            return f"{'<' if self.lt is not None else '≤'} {hi:g}"
        return "any number"

    def __call__(self, v: float) -> None:
        ok = (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )
        if not ok:
            raise _OutOfRange(self.describe())


@dataclass(frozen=True)
class Check:
    """Any other rule: ``Check(fn, "a regular expression")``. The value is refused when ``fn(value)``
    returns False or raises (the exception's text is added)."""

    fn: Callable[[Any], Any]
    expected: str

    def __call__(self, v: Any) -> None:
        try:
            ok = self.fn(v)
        except Exception as e:  # noqa: BLE001  (any refusal of the check function is the value's fault)
            raise _Rejected(f"{self.expected} ({e})") from None
        if ok is False:
            raise _Rejected(self.expected)


# --------------------------------------------------------------------------- one field


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(tp)
        if any(m is Duration for m in marks):
            return DURATION
        return _describe(base)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        choices = typing.get_args(tp)
        return repr(choices[0]) if len(choices) == 1 else "one of " + ", ".join(repr(a) for a in choices)
    return {bool: BOOLEAN, int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        tp, "a list of names or a comma-separated string" if origin is tuple else getattr(tp, "__name__", str(tp))
    )


def _convert(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp``; raises _Invalid (wrong kind) or _OutOfRange (a bound)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(tp)
        if (
            value is None
            and typing.get_origin(base) in (Union, types.UnionType)
            and type(None) in typing.get_args(base)
        ):
            return None
        out = _duration(value) if any(m is Duration for m in marks) else _convert(base, value)
        for m in marks:
            if isinstance(m, (Range, Check)):
                m(out)
        return out
    if origin in (Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        specific: ValueError | None = None  # a member of the right type refused the value: say why
        for member in members:
            if member is type(None):
                continue
            try:
                return _convert(member, value)
            except (_OutOfRange, _Rejected) as e:
                specific = specific or e
            except _Invalid:
                pass
        if specific is not None:
            raise specific
        raise _Invalid(_describe(tp))
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(choice, str) and isinstance(value, str) and value.strip().lower() == choice.lower():
                return choice
        raise _Invalid(_describe(tp))
    if tp is bool:
        return _bool(value)
    if tp in (int, float):
        return _number(value, tp)
    if tp is str:
        return _text(value)
    if origin is tuple:
        return _names(value)
    if tp is type(None):
        if value is None:
            return None
        raise _Invalid("null")
    raise TypeError(f"atomwatch.options: field type {tp!r} is not supported")


# --------------------------------------------------------------------------- a whole table


def did_you_mean(words: str | list[str], known: Any) -> str:
    """`` (did you mean 'tick'?)`` when a known name is close to one of ``words``, else ``""``."""
    known = sorted(str(k) for k in known)
    close = [
        m for w in ([words] if isinstance(words, str) else words) for m in difflib.get_close_matches(w, known, 1, 0.6)
    ]
    return f" (did you mean {' / '.join(repr(c) for c in close)}?)" if close else ""


def _unknown(plugin: str, unknown: list[str], known: list[str]) -> ConfigError:
    listed = ", ".join(repr(k) for k in unknown)
    text = f"{plugin}: unknown option{'s' if len(unknown) > 1 else ''} {listed}; known: {', '.join(known)}"
    return ConfigError(text + did_you_mean(unknown, known))


def convert(tp: Any, value: Any, name: str) -> Any:
    """``value`` as a field of type ``tp`` (any type :func:`parse_options` takes, markers
    included), by the same rules; a :class:`ConfigError` naming ``name`` otherwise: ``NAME='x'
    is not a duration such as 300, '5min' or '6h'`` or ``NAME must be > 0, got -1``. What the
    role options of the agent and the controller are read with (:mod:`atomwatch.settings`)."""
    try:
        return _convert(tp, value)
    except _Invalid as e:
        raise ConfigError(f"{name}={value!r} is not {e}") from None
    except _OutOfRange as e:
        raise ConfigError(f"{name} must be {e}, got {value!r}") from None


def describe_type(tp: Any) -> str:
    """What a value of type ``tp`` must be, as the error messages word it (``a duration such as …``)."""
    text = _describe(tp)
    rules = _rules(tp)
    return f"{text} ({rules})" if rules else text


@functools.lru_cache(maxsize=256)
def _hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved annotations, worked out once per class: a controller parses the same
    options for every scope it starts a detector on (resolving them costs milliseconds)."""
    return typing.get_type_hints(cls, include_extras=True)


def parse_options(plugin: str, cls: type, raw: Mapping[str, Any] | None):
    """``raw`` (a plugin's option table) as an instance of the frozen dataclass ``cls``.

    Raises :class:`~atomwatch.config.ConfigError` naming ``plugin``, the key and the value for
    an unknown key, a value of the wrong kind or out of its bounds, a missing field without a
    default, and any :class:`OptionError` the dataclass's ``__post_init__`` raises."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"atomwatch.parse_options: {cls!r} is not a dataclass")
    raw = dict(raw or {})
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in raw if k not in fields)
    if unknown:
        raise _unknown(plugin, unknown, sorted(fields))
    values: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            values[name] = _convert(hints[name], value)
        except _Invalid as e:
            raise ConfigError(f"{plugin}.{name}={value!r} is not {e}") from None
        except _OutOfRange as e:
            raise OptionError(name, value, str(e), plugin) from None
    for name, f in fields.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{plugin}: option {name!r} is required ({_describe(hints[name])})")
    try:
        return cls(**values)
    except OptionError as e:
        if e.plugin:
            raise
        raise OptionError(e.key, e.value, e.expected, plugin) from None


# --------------------------------------------------------------------------- the registry

_DECLARED: dict[str, type] = {}


def declare_options(*names: str) -> Callable[[type], type]:
    """Class decorator: ``cls`` is the options of the plugins ``names`` (their option-table names),
    so :func:`check_options` can refuse bad options when a command starts."""

    def register(cls: type) -> type:
        for name in names:
            _DECLARED[name] = cls
        return cls

    return register


def declared_options() -> dict[str, type]:
    """Option-table name → the dataclass declared for it (by the plugins imported so far)."""
    return dict(_DECLARED)


def check_options(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Parse every given table of a plugin that declared its options; raise the first
    :class:`~atomwatch.config.ConfigError`. Tables of other names are left to their plugins."""
    for name, table in options.items():
        cls = _DECLARED.get(name)
        if cls is not None:
            parse_options(name, cls, table)


# --------------------------------------------------------------------------- describing options


def _rules(tp: Any) -> str:
    """The bounds and checks of an annotated field, as text (``≥ 3``, ``a regular expression``)."""
    out = []
    for arg in (tp, *typing.get_args(tp)):
        if typing.get_origin(arg) is typing.Annotated:
            for m in typing.get_args(arg)[1:]:
                if isinstance(m, Range):
                    out.append(m.describe())
                elif isinstance(m, Check):
                    out.append(m.expected)
    return ", ".join(out)


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of ``cls``: the ``#:`` lines just above it and the
    comment at the end of its line(s). Empty when the source cannot be read."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
        comments: dict[int, str] = {
            tok.start[0]: tok.string
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT
        }
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    lines = source.splitlines()
    out: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#:"):
            above.insert(0, lines[n - 1].strip()[2:].strip())
            n -= 1
        after = [
            comments[n].lstrip("#").strip()
            for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
            if n in comments and not comments[n].startswith("#:")
        ]
        text = " ".join(t for t in above + after if t and not t.startswith("noqa"))
        if text:
            out[node.target.id] = text
    return out


def _plain(value: Any) -> Any:
    """A default as JSON can hold it (tuples as lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def describe_options(cls: type) -> list[dict[str, Any]]:
    """One entry per option of a declared options dataclass, in declaration order: ``name``,
    ``type`` (what a value must be, as the error messages say it), ``rules`` (bounds and checks,
    possibly empty), ``default`` (None when the option has none, ``required`` then True) and
    ``help`` (the field's comment in the plugin's source, possibly empty). ``atomwatch plugins``
    prints it."""
    try:
        hints = _hints(cls)
    except Exception:  # noqa: BLE001 — an annotation that does not resolve: show it as written
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
    comments = _comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(
            {
                "name": f.name,
                "type": _describe(hints[f.name]),
                "rules": _rules(hints[f.name]),
                "default": _plain(default),
                "required": required,
                "help": comments.get(f.name, ""),
            }
        )
    return out

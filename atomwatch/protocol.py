"""The wire protocol between agents and controllers: topics, message schemas, validation.

Both sides import this module and nothing else defines a topic or a payload. Every payload is a
JSON object with ``"v": VERSION`` (``LINE_VERSION`` for a birth, data or history message holding a
line) and ``"type"``. Only MQTT 3.1.1 features are used (QoS 0/1,
retained messages, the last will), so any broker works, the embedded amqtt one included.

Topics, under ``atomwatch/v1/<site>/<host>/``::

    birth           retained, QoS 1  session, agent version, tick, series table and current values,
                                     the sequence number the next data message will carry
    data            QoS 1            session, seq, ts, the (alias, value) pairs the tracker sent
                                     (with a slope, and an age, for a line: :data:`Lines`),
                                     explicit stale and gone aliases
    history         QoS 1            store-and-forward: ticks sampled while the broker was away,
                                     sent after the birth that follows the reconnection (a series
                                     table, then frames; the first frame holds every value)
    death           QoS 1            the agent's last will; also published on a clean stop
    cmd/<id>        QoS 1            controller -> agent: rebirth, set-delta, introspect, terminate …
                                     signed (Ed25519, :mod:`atomwatch.signing`): site, host,
                                     expires, nonce, kid and sig beside id, command, params, ts
    reply/<id>      QoS 1            agent -> controller: accepted, progress, ok or error

and, under ``atomwatch/v1/<site>/controller/``, one pair per controller process ``<name>``::

    state/<name>    retained, QoS 1  online or offline (its last will), its election rank, whether
                                     it is the site's active controller or a standby
    beat/<name>     QoS 0            the same, every second: controllers watch each other with it

:func:`decode` turns (topic, payload) into a typed message or raises :class:`ProtocolError`
naming the topic, the field and what is wrong; receivers count and drop such messages. It is
total: for any topic string and any bytes it returns a message or raises ProtocolError, nothing
else. It refuses, before parsing, a payload above ``max_size`` bytes (an option of each side,
default :data:`MAX_MESSAGE_SIZE`) or nesting arrays/objects deeper than :data:`MAX_DEPTH`; and
after parsing one holding a number that is not finite (``NaN``, ``Infinity``, ``1e400``), an
integer outside 64 bits, or a lone UTF-16 surrogate. The limits and how they were sized:
``docs/design.md`` (protocol limits).
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from .series import SeriesKey

try:  # the extra "fast": parses a payload in a tenth of json's time (docs/scale.md)
    import orjson
except ImportError:  # pragma: no cover - json alone is correct, only slower
    orjson = None

VERSION = 1
#: the version of a birth, data or history message that carries a line (a slope): a controller
#: that knows only :data:`VERSION` refuses it whole rather than hold a line as a constant
LINE_VERSION = 2
VERSIONS = (VERSION, LINE_VERSION)
_LINE_KINDS = ("birth", "data", "history")
ROOT = "atomwatch/v1"
CONTROLLER_HOST = "controller"

_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")

#: the largest payload decoded by default (bytes; ``--max-message-size``). A birth of 1,000 series
#: with 36-character UUIDs, 34-character VM names and full-precision values weighs 200,856 bytes
#: (benchmarks/protocol.py prints it). 1 MiB is 5.2 times that: a birth of the controller's
#: ``--max-series-per-host`` (4,000) such series, 0.8 MB, still passes, so that limit, not this
#: one, is what refuses a host with too many series (with a message that says so).
MAX_MESSAGE_SIZE = 1024 * 1024
#: the largest reply the controller decodes for a command it is waiting for (``--max-reply-size``):
#: an introspection's result carries Volatility's rows, megabytes on a busy guest
MAX_REPLY_SIZE = 16 * 1024 * 1024
#: the smallest size limit accepted: below it the protocol's own small messages would not pass
MIN_MESSAGE_SIZE = 1024
#: the deepest nesting of JSON arrays and objects decoded (the protocol's messages need 3, a
#: reply's result about 5)
MAX_DEPTH = 32
#: every integer in a payload fits in 64 bits, signed or unsigned (kernel addresses in
#: introspection rows reach 2**64 - 1)
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


class ProtocolError(ValueError):
    """A message that does not follow the protocol. The text names the topic and the field;
    ``reason`` says which kind of refusal it is (``invalid``, ``too-large``, ``too-deep``), for
    the receivers' drop counters."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 80
_SHOW.maxlist = _SHOW.maxdict = _SHOW.maxtuple = 6
_SHOW.maxlevel = 3


def _show(value: Any) -> str:
    """A short repr of a received value for an error text (never the whole of a large one)."""
    return _SHOW.repr(value)


# --------------------------------------------------------------------------- topics


def check_name(kind: str, value: str) -> str:
    """Validate a site or host name (one topic level, no wildcards)."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ProtocolError(f"{kind} name {value!r} is not valid: use 1-128 letters, digits, '_', '.', ':' or '-'")
    return value


def host_topic(site: str, host: str, kind: str) -> str:
    return f"{ROOT}/{site}/{host}/{kind}"


def birth_topic(site: str, host: str) -> str:
    return host_topic(site, host, "birth")


def data_topic(site: str, host: str) -> str:
    return host_topic(site, host, "data")


def death_topic(site: str, host: str) -> str:
    return host_topic(site, host, "death")


def history_topic(site: str, host: str) -> str:
    return host_topic(site, host, "history")


def cmd_topic(site: str, host: str, request_id: str) -> str:
    return host_topic(site, host, f"cmd/{request_id}")


def reply_topic(site: str, host: str, request_id: str) -> str:
    return host_topic(site, host, f"reply/{request_id}")


def state_topic(site: str, controller: str) -> str:
    """Where controller ``controller`` says (retained) whether it is online, and active."""
    return f"{ROOT}/{site}/{CONTROLLER_HOST}/state/{controller}"


def beat_topic(site: str, controller: str) -> str:
    """Where controller ``controller`` publishes its heartbeat (controllers only listen)."""
    return f"{ROOT}/{site}/{CONTROLLER_HOST}/beat/{controller}"


def state_filter(site: str) -> str:
    """Every controller's state on ``site`` (what agents subscribe to)."""
    return f"{ROOT}/{site}/{CONTROLLER_HOST}/state/+"


def controller_filters(site: str) -> list[str]:
    """What a controller subscribes to to see the other controllers of ``site``."""
    return [state_filter(site), f"{ROOT}/{site}/{CONTROLLER_HOST}/beat/+"]


def agent_filters(site: str) -> list[str]:
    """What a controller subscribes to for one site (``+`` is every host)."""
    return [
        f"{ROOT}/{site}/+/birth",
        f"{ROOT}/{site}/+/data",
        f"{ROOT}/{site}/+/history",
        f"{ROOT}/{site}/+/death",
        f"{ROOT}/{site}/+/reply/+",
    ]


@dataclass(frozen=True)
class Topic:
    site: str
    host: str
    kind: str  # birth | data | history | death | cmd | reply | state | beat
    request_id: str | None = None  # cmd and reply: the request id; state and beat: the controller's name


def parse_topic(topic: str) -> Topic:
    if not isinstance(topic, str):
        raise ProtocolError(f"topic must be a string, got {type(topic).__name__}")
    parts = topic.split("/", 6)
    shown = _show(topic)
    if len(parts) < 5 or "/".join(parts[:2]) != ROOT:
        raise ProtocolError(f"topic {shown} is not under {ROOT}/<site>/<host>/")
    site, host, kind = parts[2], parts[3], parts[4]
    for what, name in (("site", site), ("host", host)):
        if not _NAME.match(name):
            raise ProtocolError(f"topic {shown}: {what} name {_show(name)} is not valid")
    if kind in ("cmd", "reply", "state", "beat"):
        last = "request id" if kind in ("cmd", "reply") else "controller name"
        if len(parts) != 6 or not parts[5]:
            raise ProtocolError(f"topic {shown}: {kind} needs a {last} as its last level")
        if not _NAME.match(parts[5]):
            raise ProtocolError(f"topic {shown}: {last} {_show(parts[5])} is not valid")
        if kind in ("state", "beat") and host != CONTROLLER_HOST:
            raise ProtocolError(f"topic {shown}: {kind} is published only by a controller")
        return Topic(site, host, kind, parts[5])
    if len(parts) != 5 or kind not in ("birth", "data", "history", "death"):
        raise ProtocolError(f"topic {shown}: unknown message kind {_show(kind)}")
    return Topic(site, host, kind)


# --------------------------------------------------------------------------- messages


@dataclass
class SeriesInfo:
    """One row of a birth's series table."""

    alias: int
    key: SeriesKey
    delta: float
    value: float | None = None  # the tracker's current value at birth (None: stale)
    #: a line copy (trend tracking): the copy is ``value + slope * (k − k0)``, ``value`` holding
    #: ``age`` ticks before the birth's tick (whose index is ``seq − 1``); 0: a constant
    slope: float = 0.0
    age: int = 0


#: The values of a data message (or history frame) sent as lines: alias → (slope, age). The
#: copy of such a series at tick index ``k`` is ``value + slope * float(k − k0)`` evaluated in
#: float64 in that order, with ``k0 = (the message's tick index) − age``; a tick index is the
#: ``seq`` of a data message and the frame's index in its segment for history. On the wire, an
#: entry ``[alias, value]`` is a constant, ``[alias, value, slope]`` a line from this tick and
#: ``[alias, value, slope, age]`` a line from ``age`` ticks before it; the slope is never 0.
Lines = dict[int, tuple[float, int]]


@dataclass
class Birth:
    session: int
    agent: str
    tick: float
    ts: float
    series: list[SeriesInfo]
    seq: int = 0  # the seq of the next data message of this session
    #: ticks the agent holds from a broker outage, to come as history messages after this birth
    backlog: int = 0
    type: str = field(default="birth", init=False)


@dataclass
class Data:
    session: int
    seq: int
    ts: float
    values: list[tuple[int, float]]
    stale: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    #: alias → (slope, age) of the values sent as lines (see :data:`Lines`)
    lines: Lines = field(default_factory=dict)
    type: str = field(default="data", init=False)


@dataclass
class Frame:
    """One tick of a history message: what a data message of that tick would have carried."""

    ts: float
    values: list[tuple[int, float]]
    stale: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    #: alias → (slope, age) of the values sent as lines (see :data:`Lines`)
    lines: Lines = field(default_factory=dict)


@dataclass
class History:
    """Ticks an agent sampled while it could not publish (store-and-forward), in order.

    ``segment`` names one run of frames of one agent process (its aliases belong to ``series``);
    ``first`` is the index of ``frames[0]`` in the segment, so a repeated message is recognised;
    ``frames[0].values`` holds every known value at that tick (the message stands alone), the
    later frames only what the tracker sent; ``remaining`` counts the frames still to come after
    this message (0: the backlog is sent)."""

    session: int
    segment: int
    first: int
    remaining: int
    tick: float
    series: list[SeriesInfo]
    frames: list[Frame]
    type: str = field(default="history", init=False)


@dataclass
class Death:
    session: int
    ts: float | None = None
    reason: str = ""
    type: str = field(default="death", init=False)


@dataclass
class Command:
    id: str
    command: str
    params: dict[str, Any]
    ts: float
    timeout: float | None = None
    # signed commands (atomwatch.signing): the addressee, expiry, nonce, key id and signature
    site: str | None = None
    host: str | None = None
    expires: float | None = None
    nonce: str | None = None
    kid: str | None = None
    sig: str | None = None
    type: str = field(default="cmd", init=False)
    #: the JSON object as received (decode sets it): what a signature is checked against
    raw: dict[str, Any] | None = field(default=None, repr=False, compare=False)


REPLY_STATUSES = ("accepted", "progress", "ok", "error")


@dataclass
class Reply:
    id: str
    status: str
    ts: float
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    type: str = field(default="reply", init=False)


@dataclass
class State:
    """A controller's presence on one site: ``online`` (its last will says False), its election
    ``rank`` (lowest first) and whether it is the site's ``active`` controller."""

    online: bool
    ts: float | None = None
    controller: str = ""
    rank: int = 0
    active: bool = False
    type: str = field(default="state", init=False)


@dataclass
class Beat(State):
    """A controller's heartbeat: the same fields as its state, every second, not retained."""

    type: str = field(default="beat", init=False)


Message = Birth | Data | History | Death | Command | Reply | State


# --------------------------------------------------------------------------- encoding


#: a command's optional fields, present only when it is signed
_SIGNED_FIELDS = ("site", "host", "expires", "nonce", "kid", "sig")


def _num(v: float | None) -> float | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return float(v)


def series_record(s: SeriesInfo, value: bool = True) -> dict[str, Any]:
    """One row of a series table as the wire (and the agent's backlog file) holds it."""
    out = {
        "alias": s.alias,
        "vm_uuid": s.key.vm_uuid,
        "vm_name": s.key.vm_name,
        "metric": s.key.metric,
        "unit": s.key.unit,
        "delta": s.delta,
    }
    if value:
        out["value"] = _num(s.value)
        if s.slope and out["value"] is not None:
            out["slope"] = float(s.slope)
            if s.age:
                out["age"] = int(s.age)
    return out


def _entries(values: list[tuple[int, float]], lines: Lines) -> list[list]:
    """``values`` as wire entries: ``[alias, value]``, or with ``slope`` (and ``age``) for a line."""
    if not lines:
        return [[a, float(v)] for a, v in values]
    out = []
    for a, v in values:
        slope, age = lines.get(a, (0.0, 0))
        if not slope:
            out.append([a, float(v)])
        elif age:
            out.append([a, float(v), float(slope), int(age)])
        else:
            out.append([a, float(v), float(slope)])
    return out


def _has_lines(msg: Message) -> bool:
    if isinstance(msg, Birth):
        return any(s.slope and s.value is not None for s in msg.series)
    if isinstance(msg, Data):
        return any(s for s, _ in msg.lines.values())
    if isinstance(msg, History):
        return any(s for f in msg.frames for s, _ in f.lines.values())
    return False


def encode(msg: Message) -> bytes:
    """The JSON payload of a message (compact; floats kept exactly by repr)."""
    body: dict[str, Any] = {"v": LINE_VERSION if _has_lines(msg) else VERSION, "type": msg.type}
    if isinstance(msg, Birth):
        body.update(
            session=msg.session,
            seq=msg.seq,
            agent=msg.agent,
            tick=msg.tick,
            ts=msg.ts,
            series=[series_record(s) for s in msg.series],
        )
        if msg.backlog:
            body["backlog"] = msg.backlog
    elif isinstance(msg, Data):
        body.update(session=msg.session, seq=msg.seq, ts=msg.ts, values=_entries(msg.values, msg.lines))
        if msg.stale:
            body["stale"] = list(msg.stale)
        if msg.gone:
            body["gone"] = list(msg.gone)
    elif isinstance(msg, History):
        body.update(
            session=msg.session,
            segment=msg.segment,
            first=msg.first,
            remaining=msg.remaining,
            tick=msg.tick,
            series=[series_record(s, value=False) for s in msg.series],
            frames=[[f.ts, _entries(f.values, f.lines), list(f.stale), list(f.gone)] for f in msg.frames],
        )
    elif isinstance(msg, Death):
        body.update(session=msg.session, ts=msg.ts, reason=msg.reason)
    elif isinstance(msg, Command):
        body.update(id=msg.id, command=msg.command, params=msg.params, ts=msg.ts, timeout=msg.timeout)
        for name in _SIGNED_FIELDS:
            if getattr(msg, name) is not None:
                body[name] = getattr(msg, name)
    elif isinstance(msg, Reply):
        body.update(id=msg.id, status=msg.status, ts=msg.ts, result=msg.result, error=msg.error)
    elif isinstance(msg, State):
        body.update(online=msg.online, ts=msg.ts, controller=msg.controller, rank=msg.rank, active=msg.active)
    else:  # pragma: no cover - programming error
        raise TypeError(f"not a protocol message: {msg!r}")
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


class _Fields:
    """Typed access to a decoded JSON object; every failure names topic and field."""

    def __init__(self, where: str, obj: Any):
        if not isinstance(obj, dict):
            raise ProtocolError(f"{where}: payload must be a JSON object, got {type(obj).__name__}")
        self.where, self.obj = where, obj

    def _fail(self, name: str, what: str) -> ProtocolError:
        got = _show(self.obj[name]) if name in self.obj else "<missing>"
        return ProtocolError(f"{self.where}: field {name!r} must be {what}, got {got}")

    def int(self, name: str, minimum: int | None = 0) -> int:
        v = self.obj.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
            raise self._fail(name, "an integer" + (f" ≥ {minimum}" if minimum is not None else ""))
        return v

    def num(self, name: str, optional: bool = False) -> float | None:
        v = self.obj.get(name)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self._fail(name, "a finite number")
        return float(v)

    def str(self, name: str, optional: bool = False, default: str = "") -> str:
        v = self.obj.get(name)
        if v is None and optional:
            return default
        if not isinstance(v, str):
            raise self._fail(name, "a string")
        return v

    def bool(self, name: str) -> bool:
        v = self.obj.get(name)
        if not isinstance(v, bool):
            raise self._fail(name, "true or false")
        return v

    def dict(self, name: str, optional: bool = True) -> dict:
        v = self.obj.get(name)
        if v is None and optional:
            return {}
        if not isinstance(v, dict):
            raise self._fail(name, "an object")
        return v

    def list(self, name: str, optional: bool = False) -> list:
        v = self.obj.get(name)
        if v is None and optional:
            return []
        if not isinstance(v, list):
            raise self._fail(name, "a list")
        return v


def _pairs(items: list, where: str, lines: bool = False) -> tuple[list[tuple[int, float]], Lines]:
    """``[[alias, value], …]`` checked: alias an integer ≥ 0, value a finite number; with
    ``lines``, an entry may add a finite non-zero slope and an age (an integer ≥ 0)."""
    values = []
    sloped: Lines = {}
    isfinite = math.isfinite
    for pair in items:
        # (exact types: a bool is an int to isinstance, and JSON makes no subclasses)
        if type(pair) is list and len(pair) == 2:
            a, v = pair
            tv = type(v)
            if type(a) is int and a >= 0 and (tv is float or tv is int) and isfinite(v):
                values.append((a, float(v)))
                continue
        elif type(pair) is list and 3 <= len(pair) <= 4 and lines:
            a, v, slope = pair[:3]
            age = pair[3] if len(pair) == 4 else 0
            if (
                type(a) is int
                and a >= 0
                and type(v) in (float, int)
                and isfinite(v)
                and type(slope) in (float, int)
                and isfinite(slope)
                and slope != 0
                and type(age) is int
                and 0 <= age <= INT_MAX
            ):
                values.append((a, float(v)))
                sloped[a] = (float(slope), age)
                continue
            raise ProtocolError(
                f"{where}[{len(values)}] must be [alias ≥ 0, finite number, finite slope ≠ 0(, age ≥ 0)], "
                f"got {_show(pair)}"
            )
        elif type(pair) is list and 3 <= len(pair) <= 4:
            raise ProtocolError(
                f"{where}[{len(values)}]: a slope needs protocol version {LINE_VERSION} (field 'v'), got {_show(pair)}"
            )
        raise ProtocolError(f"{where}[{len(values)}] must be [alias ≥ 0, finite number], got {_show(pair)}")
    return values, sloped


def _tick(f: _Fields) -> float:
    tick = f.num("tick")
    if tick <= 0:
        raise ProtocolError(f"{f.where}: field 'tick' must be > 0, got {tick!r}")
    return tick


def read_series(records: Any, where: str) -> list[SeriesInfo]:
    """A list of :func:`series_record` rows (without values) checked as a decoder checks them;
    :class:`ProtocolError` naming ``where`` otherwise."""
    return _series_table(_Fields(where, {"series": records}), where, with_values=False)


def _series_table(f: _Fields, where: str, with_values: bool, lines: bool = False) -> list[SeriesInfo]:
    """A birth's (or a history message's) series table, each alias once."""
    series = []
    seen: set[int] = set()
    for i, s in enumerate(f.list("series")):
        sf = _Fields(f"{where} series[{i}]", s)
        alias = sf.int("alias")
        if alias in seen:
            raise ProtocolError(f"{where}: alias {alias} appears twice in the series table")
        seen.add(alias)
        delta = sf.num("delta")
        if delta < 0:
            raise ProtocolError(f"{where} series[{i}]: field 'delta' must be ≥ 0, got {delta!r}")
        key = SeriesKey(sf.str("vm_uuid"), sf.str("vm_name"), sf.str("metric"), sf.str("unit", optional=True))
        if not key.metric:
            raise ProtocolError(f"{where} series[{i}]: field 'metric' must not be empty")
        info = SeriesInfo(alias, key, delta, sf.num("value", optional=True) if with_values else None)
        if with_values and (s.get("slope") is not None or s.get("age") is not None):
            if not lines:
                raise ProtocolError(f"{where} series[{i}]: a slope needs protocol version {LINE_VERSION} (field 'v')")
            slope = sf.num("slope")
            if slope == 0 or info.value is None:
                raise ProtocolError(
                    f"{where} series[{i}]: field 'slope' must be a number ≠ 0 beside a value, got {slope!r}"
                )
            info.slope = slope
            info.age = sf.int("age") if s.get("age") is not None else 0
        series.append(info)
    return series


def _aliases(f: _Fields, name: str) -> list[int]:
    out = f.list(name, optional=True)
    for a in out:
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise ProtocolError(f"{f.where}: field {name!r} must hold alias integers ≥ 0, got {_show(a)}")
    return out


# --------------------------------------------------------------------------- parsing, bounded

# every byte but brackets and quotes, and a JSON escape (a backslash and the byte after it)
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')
_ESCAPE = re.compile(rb"\\.", re.S)
_PAIR = re.compile(rb"\[\]|\{\}")
_OPEN_RUN = re.compile(rb"[\[{]{%d}" % (MAX_DEPTH + 1))
# digits → "0", "e"/"E" → "e", "+"/"-" → "+", every other byte → " ": the shape of the numbers
_NUMBER_SHAPES = bytes(
    ord("0") if c in b"0123456789" else ord("e") if c in b"eE" else ord("+") if c in b"+-" else ord(" ")
    for c in range(256)
)
# the JSON escape of a UTF-16 surrogate (paired or not: json.loads joins the pairs)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text ``data`` nests arrays/objects more than ``limit`` deep, found without
    recursion (json recurses once per level). Escapes and strings are cut out (with no escape
    left, every ``"`` starts or ends a string), then the innermost ``[]``/``{}`` pairs are removed
    round after round: a balanced text empties in as many rounds as it is deep. What stays is
    unmatched, and json stops at its first closer after an opener: a run of more than ``limit``
    openers (looked for every round) is what would take it deep. Cost: a few C-speed passes over
    the payload, then at most ``limit`` + 1 over its brackets."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    quotes_and_brackets = data.translate(None, _NOT_STRUCTURE)
    # strings without a bracket are now "": dropping those pairs leaves the structure, unless a
    # string held brackets (a quote is left): then cut every string out
    brackets = quotes_and_brackets.replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(quotes_and_brackets.split(b'"')[::2])
    for _ in range(limit + 1):
        if _OPEN_RUN.search(brackets):
            return True
        inner = _PAIR.sub(b"", brackets)
        if len(inner) == len(brackets):
            return False
        brackets = inner
    return True  # still removing pairs after limit + 1 rounds


class _Bad:
    """What a number parse hook returns instead of a number the protocol refuses."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what


def _find(value: Any, hit: Any, path: str = "") -> str | None:
    """The path (``series[3].delta``) of the first value or key where ``hit(v)`` is true."""
    if hit(value):
        return path
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if hit(k):
                return sub
            found = _find(v, hit, sub)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _find(v, hit, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _lone_surrogate(v: Any) -> bool:
    if not isinstance(v, str) or v.isascii():
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _load(where: str, payload: Any, max_size: int, size_option: str) -> Any:
    """The JSON value of a payload, within the limits; :class:`ProtocolError` otherwise."""
    if isinstance(payload, str):
        if len(payload) <= max_size:
            payload = payload.encode("utf-8", "surrogatepass")
    elif isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    elif not isinstance(payload, bytes):
        raise ProtocolError(f"{where}: payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_size:
        raise ProtocolError(
            f"{where}: payload of {len(payload)} bytes exceeds the limit of {max_size} bytes "
            f"(raise it with {size_option})",
            reason="too-large",
        )
    if _too_deep(payload):
        raise ProtocolError(f"{where}: payload nests arrays/objects deeper than {MAX_DEPTH} levels", reason="too-deep")
    plain = _plain_numbers(payload)
    if plain and orjson is not None:
        # orjson refuses what json turns into a refusal below (invalid UTF-8, NaN and Infinity,
        # lone surrogates), and with plain numbers no integer is beyond 64 bits: what it takes,
        # json takes alike; what it refuses goes the long way, which says why
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{where}: payload is not UTF-8 ({e.reason} at byte {e.start})") from None
    bad: list[_Bad] = []

    def parse_constant(name: str) -> _Bad:
        bad.append(_Bad(name))
        return bad[-1]

    try:
        if plain:
            obj = json.loads(text, parse_constant=parse_constant)
        else:
            obj = _load_numbers(text, bad, parse_constant)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{where}: payload is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:  # _too_deep makes this unreachable; kept so that it stays a refusal
        raise ProtocolError(f"{where}: payload nests too deep", reason="too-deep") from None
    if bad:
        path = _find(obj, lambda v: isinstance(v, _Bad))
        field = f"field {_show(path)}" if path else "the payload"
        raise ProtocolError(
            f"{where}: {field} holds {bad[0].what}: numbers must be finite and integers within [-2**63, 2**64)"
        )
    if _SURROGATE_ESCAPE.search(text):
        path = _find(obj, _lone_surrogate)
        if path is not None:
            field = f"field {_show(path)}" if path else "the payload"
            raise ProtocolError(f"{where}: {field} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
    return obj


def _plain_numbers(data: bytes) -> bool:
    """True when no number of JSON text ``data`` can be out of range: no run of 19 digits (every
    integer within ±10**18) and no exponent of 3 digits (with mantissa runs under 19 digits, every
    float below 1e118). Hex and names may look like numbers here: they only take the slow path."""
    shapes = data.translate(_NUMBER_SHAPES)
    return b"0" * 19 not in shapes and b"e000" not in shapes and b"e+000" not in shapes


def _load_numbers(text: str, bad: list[_Bad], parse_constant: Any) -> Any:
    """json.loads checking every number: one out of range becomes a :class:`_Bad` (so that the
    error can name its field) and is added to ``bad``."""

    def parse_int(digits: str) -> int | _Bad:
        if len(digits.lstrip("-")) <= 20:  # (no int-str conversion of a huge number: it is quadratic)
            n = int(digits)
            if INT_MIN <= n <= INT_MAX:
                return n
            bad.append(_Bad(f"the integer {digits}"))
        else:
            bad.append(_Bad(f"an integer of {len(digits.lstrip('-'))} digits"))
        return bad[-1]

    def parse_float(digits: str) -> float | _Bad:
        v = float(digits)
        if math.isfinite(v):
            return v
        bad.append(_Bad(f"{_show(digits)}, beyond the float range"))
        return bad[-1]

    return json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)


def decode(
    topic: str, payload: bytes | str, max_size: int = MAX_MESSAGE_SIZE, size_option: str = "--max-message-size"
) -> tuple[Topic, Message]:
    """Parse and validate one message. Raises :class:`ProtocolError` with a precise reason, and
    nothing else, whatever ``topic`` and ``payload`` hold. ``max_size``: the largest payload
    accepted, in bytes; ``size_option`` is what the refusal tells the operator to raise."""
    t = parse_topic(topic)
    where = f"{t.kind} on {topic}"
    obj = _load(where, payload, max_size, size_option)
    f = _Fields(where, obj)
    version = obj.get("v")
    if isinstance(version, bool) or version not in (VERSIONS if t.kind in _LINE_KINDS else (VERSION,)):
        also = f" and {LINE_VERSION} (lines, in birth, data and history)" if t.kind in _LINE_KINDS else ""
        raise ProtocolError(
            f"{where}: protocol version {_show(version)} is not supported (this side speaks {VERSION}{also})"
        )
    lines = version == LINE_VERSION
    mtype = obj.get("type")
    expected = t.kind
    if mtype != expected:
        raise ProtocolError(f"{where}: field 'type' must be {expected!r}, got {_show(mtype)}")
    msg: Message
    if t.kind == "birth":
        msg = Birth(
            session=f.int("session"),
            agent=f.str("agent"),
            tick=_tick(f),
            ts=f.num("ts"),
            series=_series_table(f, where, with_values=True, lines=lines),
            seq=f.int("seq"),
            backlog=f.int("backlog") if obj.get("backlog") is not None else 0,
        )
    elif t.kind == "data":
        values, sloped = _pairs(f.list("values"), f"{where}: values", lines)
        msg = Data(
            session=f.int("session"),
            seq=f.int("seq"),
            ts=f.num("ts"),
            values=values,
            stale=_aliases(f, "stale"),
            gone=_aliases(f, "gone"),
            lines=sloped,
        )
    elif t.kind == "history":
        series = _series_table(f, where, with_values=False)
        frames = []
        for i, raw in enumerate(f.list("frames")):
            at = f"{where}: frames[{i}]"
            if not isinstance(raw, list) or len(raw) != 4:
                raise ProtocolError(f"{at} must be [ts, values, stale, gone], got {_show(raw)}")
            ff = _Fields(at, {"ts": raw[0], "values": raw[1], "stale": raw[2], "gone": raw[3]})
            values, sloped = _pairs(ff.list("values"), f"{at} values", lines)
            frames.append(Frame(ff.num("ts"), values, _aliases(ff, "stale"), _aliases(ff, "gone"), sloped))
        if not frames:
            raise ProtocolError(f"{where}: field 'frames' must not be empty")
        known = {s.alias for s in series}
        for i, fr in enumerate(frames):
            unknown = sorted(({a for a, _ in fr.values} | set(fr.stale) | set(fr.gone)) - known)
            if unknown:
                raise ProtocolError(f"{where}: frames[{i}] names aliases {unknown[:5]} missing from its series table")
        msg = History(
            session=f.int("session"),
            segment=f.int("segment"),
            first=f.int("first"),
            remaining=f.int("remaining"),
            tick=_tick(f),
            series=series,
            frames=frames,
        )
    elif t.kind == "death":
        msg = Death(session=f.int("session"), ts=f.num("ts", optional=True), reason=f.str("reason", optional=True))
    elif t.kind == "cmd":
        msg = Command(
            id=f.str("id"),
            command=f.str("command"),
            params=f.dict("params"),
            ts=f.num("ts"),
            timeout=f.num("timeout", optional=True),
            expires=f.num("expires", optional=True),
            **{k: (f.str(k) if obj.get(k) is not None else None) for k in ("site", "host", "nonce", "kid", "sig")},
        )
        msg.raw = obj
        if msg.id != t.request_id:
            raise ProtocolError(
                f"{where}: field 'id' {_show(msg.id)} differs from the topic's request id {t.request_id!r}"
            )
    elif t.kind == "reply":
        status = f.str("status")
        if status not in REPLY_STATUSES:
            raise ProtocolError(
                f"{where}: field 'status' must be one of {', '.join(REPLY_STATUSES)}, got {_show(status)}"
            )
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            raise ProtocolError(f"{where}: field 'error' must be a string or null, got {_show(error)}")
        msg = Reply(id=f.str("id"), status=status, ts=f.num("ts"), result=f.dict("result"), error=error)
        if msg.id != t.request_id:
            raise ProtocolError(
                f"{where}: field 'id' {_show(msg.id)} differs from the topic's request id {t.request_id!r}"
            )
    else:
        controller = f.str("controller", optional=True) or str(t.request_id)
        if controller != t.request_id:
            raise ProtocolError(f"{where}: field 'controller' {_show(controller)} differs from the topic's name")
        msg = (State if t.kind == "state" else Beat)(
            online=f.bool("online"),
            ts=f.num("ts", optional=True),
            controller=controller,
            rank=f.int("rank", minimum=0) if "rank" in obj else 0,
            active=f.bool("active") if "active" in obj else False,
        )
    return t, msg

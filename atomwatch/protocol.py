"""The wire protocol between agents and controllers: topics, message schemas, validation.

Both sides import this module and nothing else defines a topic or a payload. Every payload is a
JSON object with ``"v": VERSION`` and ``"type"``. Only MQTT 3.1.1 features are used (QoS 0/1,
retained messages, the last will), so any broker works, the embedded amqtt one included.

Topics, under ``atomwatch/v1/<site>/<host>/``::

    birth           retained, QoS 1  session, agent version, tick, series table and current values,
                                     the sequence number the next data message will carry
    data            QoS 1            session, seq, ts, the (alias, value) pairs the tracker sent,
                                     explicit stale and gone aliases
    death           QoS 1            the agent's last will; also published on a clean stop
    cmd/<id>        QoS 1            controller -> agent: rebirth, set-delta, introspect, terminate …
                                     signed (Ed25519, :mod:`atomwatch.signing`): site, host,
                                     expires, nonce, kid and sig beside id, command, params, ts
    reply/<id>      QoS 1            agent -> controller: accepted, progress, ok or error

and ``atomwatch/v1/<site>/controller/state`` (retained): the controller online or offline.

:func:`decode` turns (topic, payload) into a typed message or raises :class:`ProtocolError`
naming the topic, the field and what is wrong; receivers count and drop such messages.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .series import SeriesKey

VERSION = 1
ROOT = "atomwatch/v1"
CONTROLLER_HOST = "controller"

_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


class ProtocolError(ValueError):
    """A message that does not follow the protocol. The text names the topic and the field."""


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


def cmd_topic(site: str, host: str, request_id: str) -> str:
    return host_topic(site, host, f"cmd/{request_id}")


def reply_topic(site: str, host: str, request_id: str) -> str:
    return host_topic(site, host, f"reply/{request_id}")


def state_topic(site: str) -> str:
    return f"{ROOT}/{site}/{CONTROLLER_HOST}/state"


def agent_filters(site: str) -> list[str]:
    """What a controller subscribes to for one site (``+`` is every host)."""
    return [
        f"{ROOT}/{site}/+/birth",
        f"{ROOT}/{site}/+/data",
        f"{ROOT}/{site}/+/death",
        f"{ROOT}/{site}/+/reply/+",
    ]


@dataclass(frozen=True)
class Topic:
    site: str
    host: str
    kind: str  # birth | data | death | cmd | reply | state
    request_id: str | None = None


def parse_topic(topic: str) -> Topic:
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != ROOT:
        raise ProtocolError(f"topic {topic!r} is not under {ROOT}/<site>/<host>/")
    site, host, kind = parts[2], parts[3], parts[4]
    if kind in ("cmd", "reply"):
        if len(parts) != 6 or not parts[5]:
            raise ProtocolError(f"topic {topic!r}: {kind} needs a request id as its last level")
        return Topic(site, host, kind, parts[5])
    if len(parts) != 5 or kind not in ("birth", "data", "death", "state"):
        raise ProtocolError(f"topic {topic!r}: unknown message kind {kind!r}")
    if kind == "state" and host != CONTROLLER_HOST:
        raise ProtocolError(f"topic {topic!r}: state is published only by the controller")
    return Topic(site, host, kind)


# --------------------------------------------------------------------------- messages


@dataclass
class SeriesInfo:
    """One row of a birth's series table."""

    alias: int
    key: SeriesKey
    delta: float
    value: float | None = None  # the tracker's current value at birth (None: stale)


@dataclass
class Birth:
    session: int
    agent: str
    tick: float
    ts: float
    series: list[SeriesInfo]
    seq: int = 0  # the seq of the next data message of this session
    type: str = field(default="birth", init=False)


@dataclass
class Data:
    session: int
    seq: int
    ts: float
    values: list[tuple[int, float]]
    stale: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    type: str = field(default="data", init=False)


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
    online: bool
    ts: float | None = None
    controller: str = ""
    type: str = field(default="state", init=False)


Message = Birth | Data | Death | Command | Reply | State


# --------------------------------------------------------------------------- encoding


#: a command's optional fields, present only when it is signed
_SIGNED_FIELDS = ("site", "host", "expires", "nonce", "kid", "sig")


def _num(v: float | None) -> float | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return float(v)


def encode(msg: Message) -> bytes:
    """The JSON payload of a message (compact; floats kept exactly by repr)."""
    body: dict[str, Any] = {"v": VERSION, "type": msg.type}
    if isinstance(msg, Birth):
        body.update(
            session=msg.session,
            seq=msg.seq,
            agent=msg.agent,
            tick=msg.tick,
            ts=msg.ts,
            series=[
                {
                    "alias": s.alias,
                    "vm_uuid": s.key.vm_uuid,
                    "vm_name": s.key.vm_name,
                    "metric": s.key.metric,
                    "unit": s.key.unit,
                    "delta": s.delta,
                    "value": _num(s.value),
                }
                for s in msg.series
            ],
        )
    elif isinstance(msg, Data):
        body.update(session=msg.session, seq=msg.seq, ts=msg.ts, values=[[a, float(v)] for a, v in msg.values])
        if msg.stale:
            body["stale"] = list(msg.stale)
        if msg.gone:
            body["gone"] = list(msg.gone)
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
        body.update(online=msg.online, ts=msg.ts, controller=msg.controller)
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
        got = self.obj.get(name, "<missing>")
        return ProtocolError(f"{self.where}: field {name!r} must be {what}, got {got!r}"[:500])

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


def _aliases(f: _Fields, name: str) -> list[int]:
    out = f.list(name, optional=True)
    for a in out:
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise ProtocolError(f"{f.where}: field {name!r} must hold alias integers ≥ 0, got {a!r}")
    return out


def decode(topic: str, payload: bytes | str) -> tuple[Topic, Message]:
    """Parse and validate one message. Raises :class:`ProtocolError` with a precise reason."""
    t = parse_topic(topic)
    where = f"{t.kind} on {topic}"
    if isinstance(payload, (bytes, bytearray)):
        if len(payload) > 16 * 1024 * 1024:
            raise ProtocolError(f"{where}: payload of {len(payload)} bytes exceeds 16 MiB")
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{where}: payload is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{where}: payload is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    f = _Fields(where, obj)
    if obj.get("v") != VERSION:
        raise ProtocolError(f"{where}: protocol version {obj.get('v')!r} is not supported (this side speaks {VERSION})")
    mtype = obj.get("type")
    expected = {"birth": "birth", "data": "data", "death": "death", "cmd": "cmd", "reply": "reply", "state": "state"}[
        t.kind
    ]
    if mtype != expected:
        raise ProtocolError(f"{where}: field 'type' must be {expected!r}, got {mtype!r}")
    msg: Message
    if t.kind == "birth":
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
            series.append(SeriesInfo(alias, key, delta, sf.num("value", optional=True)))
        tick = f.num("tick")
        if tick <= 0:
            raise ProtocolError(f"{where}: field 'tick' must be > 0, got {tick!r}")
        msg = Birth(
            session=f.int("session"), agent=f.str("agent"), tick=tick, ts=f.num("ts"), series=series, seq=f.int("seq")
        )
    elif t.kind == "data":
        values = []
        for i, pair in enumerate(f.list("values")):
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or isinstance(pair[0], bool)
                or not isinstance(pair[0], int)
                or pair[0] < 0
                or isinstance(pair[1], bool)
                or not isinstance(pair[1], (int, float))
                or not math.isfinite(pair[1])
            ):
                raise ProtocolError(f"{where}: values[{i}] must be [alias ≥ 0, finite number], got {pair!r}"[:500])
            values.append((pair[0], float(pair[1])))
        msg = Data(
            session=f.int("session"),
            seq=f.int("seq"),
            ts=f.num("ts"),
            values=values,
            stale=_aliases(f, "stale"),
            gone=_aliases(f, "gone"),
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
            raise ProtocolError(f"{where}: field 'id' {msg.id!r} differs from the topic's request id {t.request_id!r}")
    elif t.kind == "reply":
        status = f.str("status")
        if status not in REPLY_STATUSES:
            raise ProtocolError(f"{where}: field 'status' must be one of {', '.join(REPLY_STATUSES)}, got {status!r}")
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            raise ProtocolError(f"{where}: field 'error' must be a string or null, got {error!r}")
        msg = Reply(id=f.str("id"), status=status, ts=f.num("ts"), result=f.dict("result"), error=error)
        if msg.id != t.request_id:
            raise ProtocolError(f"{where}: field 'id' {msg.id!r} differs from the topic's request id {t.request_id!r}")
    else:
        msg = State(
            online=f.bool("online"), ts=f.num("ts", optional=True), controller=f.str("controller", optional=True)
        )
    return t, msg

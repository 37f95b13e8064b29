"""The decoder is total: for every message kind, 20,000 payloads generated valid, then mutated
(byte flips, truncation, inserted tokens, numbers out of range, NaN/Infinity, wrong types, deep
nesting, unicode oddities, odd topics), give a message or a ProtocolError, never another
exception; and whatever it accepts the receivers can encode again (and, for a command, check the
signature of) without an exception either.

Hypothesis costs about 1.6 ms of CPU per example here even with a trivial strategy (200 s for
120,000), so each of its examples is a batch: the message and mutations Hypothesis drew, then
:data:`BATCH` - 1 more mutation chains of that message from a seed it drew too. 500 examples of
40 payloads make the 20,000 per kind (about 4.5 s of CPU per kind, 27 s for the six); a failure
names the exact topic and payload. ``ATOMWATCH_FUZZ_PAYLOADS`` changes the count per kind.
"""

from __future__ import annotations

import json
import os
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomwatch import protocol, signing
from atomwatch.series import SeriesKey

PAYLOADS = int(os.environ.get("ATOMWATCH_FUZZ_PAYLOADS", "20000"))
#: payloads per Hypothesis example
BATCH = 40
KINDS = ("birth", "data", "death", "cmd", "reply", "state")

# ----------------------------------------------------------------------------- valid messages

names = st.text(max_size=12)
floats = st.floats(allow_nan=False, allow_infinity=False)
stamps = st.one_of(floats, st.integers(-(2**70), 2**70))
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), floats, names)
json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3), max_leaves=8
)
json_objects = st.dictionaries(names, json_values, max_size=3)

series = st.builds(
    protocol.SeriesInfo,
    alias=st.integers(0, 2**20),
    key=st.builds(SeriesKey, names, names, names, names),
    delta=st.floats(0, 1e6),
    value=st.none() | floats,
    slope=st.just(0.0) | floats,  # (trend tracking: a line, or 0 for a constant)
    age=st.integers(0, 2**40),
)


def _with_lines(data_and_slopes: tuple[protocol.Data, list[tuple[float, int]]]) -> protocol.Data:
    """Some of a data message's values sent as lines (trend tracking)."""
    msg, slopes = data_and_slopes
    msg.lines = {a: line for (a, _), line in zip(msg.values, slopes, strict=False) if line[0]}
    return msg


messages = {
    "birth": st.builds(
        protocol.Birth,
        session=st.integers(0, 2**62),
        agent=names,
        tick=st.floats(1e-3, 1e4),
        ts=floats,
        series=st.lists(series, max_size=4, unique_by=lambda s: s.alias),
        seq=st.integers(0, 2**62),
    ),
    "data": st.builds(
        protocol.Data,
        session=st.integers(0, 2**62),
        seq=st.integers(0, 2**62),
        ts=floats,
        values=st.lists(st.tuples(st.integers(0, 2**20), floats), max_size=6),
        stale=st.lists(st.integers(0, 2**20), max_size=3),
        gone=st.lists(st.integers(0, 2**20), max_size=3),
    )
    | st.tuples(
        st.builds(
            protocol.Data,
            session=st.integers(0, 2**62),
            seq=st.integers(0, 2**62),
            ts=floats,
            values=st.lists(st.tuples(st.integers(0, 2**20), floats), max_size=6),
        ),
        st.lists(st.tuples(floats, st.integers(0, 2**40)), max_size=6),
    ).map(_with_lines),
    "death": st.builds(protocol.Death, session=st.integers(0, 2**62), ts=st.none() | floats, reason=names),
    "cmd": st.builds(
        protocol.Command,
        id=st.just("r1"),
        command=st.sampled_from(["rebirth", "set-delta", "introspect", "terminate"]),
        params=json_objects,
        ts=floats,
        timeout=st.none() | floats,
        site=st.none() | names,
        host=st.none() | names,
        expires=st.none() | floats,
        nonce=st.none() | names,
        kid=st.none() | names,
        sig=st.none() | names,
    ),
    "reply": st.builds(
        protocol.Reply,
        id=st.just("r1"),
        status=st.sampled_from(protocol.REPLY_STATUSES),
        ts=floats,
        result=json_objects,
        error=st.none() | names,
    ),
    "state": st.builds(protocol.State, online=st.booleans(), ts=st.none() | floats, controller=names),
}
TOPICS = {
    "birth": protocol.birth_topic("s1", "hv1"),
    "data": protocol.data_topic("s1", "hv1"),
    "death": protocol.death_topic("s1", "hv1"),
    "cmd": protocol.cmd_topic("s1", "hv1", "r1"),
    "reply": protocol.reply_topic("s1", "hv1", "r1"),
    "state": protocol.state_topic("s1", "c1"),
    "beat": protocol.beat_topic("s1", "c1"),
}
ODD_TOPICS = [
    "",
    "atomwatch/v1",
    "atomwatch/v1/s1/hv1",
    "atomwatch/v1/s1/hv1/cmd",
    "atomwatch/v1/s1/hv1/cmd/",
    "atomwatch/v1/s1/hv1/reply/r1/extra",
    "atomwatch/v1/s1//data",
    "atomwatch/v1/+/hv1/data",
    "atomwatch/v1/s1/hv1/state/c1",
    "atomwatch/v1/s1/controller/birth",
    "atomwatch/v1/s1/hv\udc80/data",
    "atomwatch/v1/s1/hv1/reply/" + "x" * 300,
    "atomwatch/v2/s1/hv1/data",
    "/" * 10,
]

# ----------------------------------------------------------------------------- mutations

HUGE = b"4" * 400
TOKENS = [
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b"\\",
    b",",
    b":",
    b"null",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e999",
    HUGE,
    b"9" * 5000,
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\xef\xbb\xbf",
    b'"\\ud800"',
    b"[" * 100 + b"]" * 100,
    b'{"a":' * 40 + b"1" + b"}" * 40,
]
NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1E+309", HUGE, b"-" + HUGE, b"9" * 5000, b"2" * 20, b"0.5"]
STRING_ODDITIES = [
    b"\\ud800",
    b"\\udfff",
    b"\\ud83d\\ude00",
    b"\\u0000",
    b"\\uZZZZ",
    b"\\",
    b"\xed\xa0\x80",  # a surrogate spelled in UTF-8
    b"\xc0\xaf",  # overlong
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    "\u202e\u0301\ufffe".encode(),
    "😀".encode(),
    b"\x7f",
]
WRONG = [None, True, "x", "", [], {}, -1, 1.5, 2**64, -(2**63) - 1, [[1, "a"]], {"a": [1]}, 10**30, -0.0]
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
QUOTE = re.compile(rb'"')


def mutate(payload: bytes, op: int, where: int, pick: int) -> bytes:
    n = len(payload)
    if op == 0:  # flip a byte
        if n:
            i = where % n
            payload = payload[:i] + bytes([payload[i] ^ (1 + pick % 255)]) + payload[i + 1 :]
    elif op == 1:  # truncate
        payload = payload[: where % (n + 1)]
    elif op == 2:  # insert a token
        i = where % (n + 1)
        payload = payload[:i] + TOKENS[pick % len(TOKENS)] + payload[i:]
    elif op == 3:  # a number out of range, or not finite
        found = list(NUMBER.finditer(payload))
        if found:
            m = found[where % len(found)]
            payload = payload[: m.start()] + NUMBERS[pick % len(NUMBERS)] + payload[m.end() :]
    elif op in (4, 5, 6):  # a field of the wrong type, nested deep, or gone
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):  # not JSON (or too deep for this helper): left as it is
            return payload
        if isinstance(obj, dict) and obj:
            key = sorted(obj)[where % len(obj)]
            if op == 4:
                obj[key] = WRONG[pick % len(WRONG)]
            elif op == 5:
                depth = (31, 32, 33, 100, 3000)[pick % 5]
                obj[key] = json.loads("[" * depth + "]" * depth) if depth < 900 else None
                if depth >= 900:  # too deep for json.dumps: splice the text in
                    text = json.dumps(obj, allow_nan=True).encode()
                    return text.replace(b"null", b"[" * depth + b"]" * depth, 1)
            else:
                del obj[key]
            payload = json.dumps(obj, allow_nan=True).encode()
    elif op == 7:  # unicode oddities inside a string
        quotes = [m.start() for m in QUOTE.finditer(payload)]
        if quotes:
            i = quotes[where % len(quotes)] + 1
            payload = payload[:i] + STRING_ODDITIES[pick % len(STRING_ODDITIES)] + payload[i:]
    elif op == 8:  # the whole payload wrapped deep
        depth = (32, 33, 100, 100_000)[pick % 4]
        payload = b"[" * depth + payload + b"]" * depth
    return payload


mutations = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**16), st.integers(0, 2**10)), max_size=3)
topics = st.one_of(st.just(None), st.just(None), st.just(None), st.sampled_from(ODD_TOPICS), st.text(max_size=30))


def check_total(topic: str, payload: bytes, max_size: int = protocol.MAX_MESSAGE_SIZE) -> str:
    """Decode; fail on anything but a message or a ProtocolError. Returns what happened."""
    try:
        t, msg = protocol.decode(topic, payload, max_size)
    except protocol.ProtocolError as e:
        assert str(e) and len(str(e)) < 2000, "an error names what is wrong, briefly"
        assert e.reason in ("invalid", "too-large", "too-deep")
        return e.reason
    except Exception as e:
        raise AssertionError(f"decode({topic!r}, {payload[:300]!r}…) raised {type(e).__name__}: {e}") from e
    # what decode accepts, the receivers can use: encode it again, check a command's signature
    assert msg.type == t.kind
    protocol.encode(msg)
    if isinstance(msg, protocol.Command):
        signing.canonical_bytes(msg.raw)
    return "message"


def random_chain(rng: random.Random) -> list[tuple[int, int, int]]:
    return [(rng.randrange(9), rng.randrange(2**16), rng.randrange(2**10)) for _ in range(rng.randrange(4))]


@pytest.mark.parametrize("kind", KINDS)
def test_decode_gives_a_message_or_a_protocol_error(kind):
    seen: dict[str, int] = {}

    @settings(
        max_examples=max(1, PAYLOADS // BATCH),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(msg=messages[kind], ops=mutations, topic=topics, seed=st.integers(0, 2**32))
    def run(msg, ops, topic, seed):
        valid = protocol.encode(msg)
        rng = random.Random(seed)
        for n in range(BATCH):
            payload = valid
            for op in ops if n == 0 else random_chain(rng):
                payload = mutate(payload, *op)
            if n == 0 and topic is not None:
                where = topic
            elif n and rng.random() < 0.05:
                where = rng.choice(ODD_TOPICS)
            else:
                where = TOPICS[kind]
            # now and then a size limit below the payload's
            limit = protocol.MAX_MESSAGE_SIZE if not n or rng.random() > 0.02 else rng.randrange(len(payload) + 1)
            outcome = check_total(where, payload, limit)
            seen[outcome] = seen.get(outcome, 0) + 1

    run()
    # every outcome was reached: the mutations are neither all harmless nor all fatal (the share
    # still decoding varies from run to run, each example's 40 payloads alike: one run of the small
    # state message had 4.4 %, below the 5 % this asked before; 1 run in 5 failed so)
    assert seen.get("message", 0) > 0.02 * PAYLOADS, seen
    assert {"invalid", "too-large", "too-deep"} <= set(seen) or PAYLOADS < 5000, seen


def test_the_mutations_reach_every_refusal():
    """The fuzzer is not vacuous: its mutations produce each kind of refusal, and valid messages."""
    birth = protocol.encode(
        protocol.Birth(1, "a", 1.0, 2.0, [protocol.SeriesInfo(0, SeriesKey("u", "n", "m", "%"), 1.0, 3.0)])
    )
    topic = TOPICS["birth"]
    refusals = {}
    for op, pick in [(3, 5), (3, 0), (3, 3), (5, 3), (8, 3), (7, 0), (4, 0), (1, 0)]:
        try:
            protocol.decode(topic, mutate(birth, op, 0, pick))
        except protocol.ProtocolError as e:
            refusals[(op, pick)] = str(e)
    assert "holds an integer of 400 digits" in refusals[(3, 5)]
    assert "holds NaN" in refusals[(3, 0)]
    assert "1e400" in refusals[(3, 3)]
    assert "deeper than 32 levels" in refusals[(5, 3)] and "deeper than 32 levels" in refusals[(8, 3)]
    assert "lone UTF-16 surrogate" in refusals[(7, 0)]
    assert "must be" in refusals[(4, 0)]
    assert "not JSON" in refusals[(1, 0)]
    assert protocol.decode(topic, birth)[1].series[0].value == 3.0

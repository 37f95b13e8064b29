"""The wire protocol: round trips, and precise errors for every kind of bad message."""

from __future__ import annotations

import json

import pytest

from atomwatch import protocol
from atomwatch.series import SeriesKey

KEY = SeriesKey("0f6b-uuid", "web-1", "CPUUtilization", "%")


def roundtrip(topic, msg):
    t, back = protocol.decode(topic, protocol.encode(msg))
    assert back == msg
    return t


def test_every_message_kind_round_trips():
    birth = protocol.Birth(
        session=7,
        agent="0.1.0",
        tick=10.0,
        ts=1.5,
        series=[protocol.SeriesInfo(0, KEY, 2.5, 41.0), protocol.SeriesInfo(3, KEY, 0.0, None)],
    )
    assert roundtrip(protocol.birth_topic("eu", "hv1"), birth) == protocol.Topic("eu", "hv1", "birth")
    roundtrip(protocol.data_topic("eu", "hv1"), protocol.Data(7, 0, 2.0, [(0, 1e-300), (3, -5.0)], stale=[1], gone=[2]))
    roundtrip(protocol.death_topic("eu", "hv1"), protocol.Death(7, 3.0, "clean stop"))
    t = roundtrip(
        protocol.cmd_topic("eu", "hv1", "abc"), protocol.Command("abc", "set-delta", {"metrics": {"X": 1}}, 4.0, 30.0)
    )
    assert t.request_id == "abc"
    roundtrip(protocol.reply_topic("eu", "hv1", "abc"), protocol.Reply("abc", "ok", 5.0, {"rows": [1]}, None))
    roundtrip(protocol.state_topic("eu"), protocol.State(True, 6.0, "c1"))


def test_floats_cross_the_wire_exactly():
    v = 0.1 + 0.2
    _, msg = protocol.decode(protocol.data_topic("s", "h"), protocol.encode(protocol.Data(1, 0, 0.0, [(0, v)])))
    assert msg.values[0][1] == v


@pytest.mark.parametrize(
    "topic, payload, expected",
    [
        ("atomwatch/v1/s/h/data", b"\xff\xfe", "not UTF-8"),
        ("atomwatch/v1/s/h/data", b"{nope", "not JSON"),
        ("atomwatch/v1/s/h/data", b"[1, 2]", "must be a JSON object"),
        ("atomwatch/v1/s/h/data", b'{"v": 2, "type": "data"}', "protocol version 2 is not supported"),
        ("atomwatch/v1/s/h/data", b'{"v": 1, "type": "birth"}', "field 'type' must be 'data'"),
        (
            "atomwatch/v1/s/h/data",
            b'{"v": 1, "type": "data", "session": 1, "seq": -1, "ts": 0, "values": []}',
            "field 'seq' must be an integer ≥ 0, got -1",
        ),
        (
            "atomwatch/v1/s/h/data",
            b'{"v": 1, "type": "data", "session": 1, "seq": 0, "ts": 0, "values": [[0, "x"]]}',
            "values[0] must be [alias ≥ 0, finite number]",
        ),
        (
            "atomwatch/v1/s/h/data",
            b'{"v": 1, "type": "data", "session": 1, "seq": 0, "ts": 0, "values": [], "stale": ["a"]}',
            "field 'stale' must hold alias integers",
        ),
        (
            "atomwatch/v1/s/h/birth",
            b'{"v": 1, "type": "birth", "session": 1, "agent": "x", "tick": 0, "ts": 0, "series": []}',
            "field 'tick' must be > 0",
        ),
        (
            "atomwatch/v1/s/h/birth",
            b'{"v": 1, "type": "birth", "session": 1, "agent": "x", "tick": 1, "ts": 0, "series": [{"alias": 0, "vm_uuid": "u", "vm_name": "n", "metric": "m", "delta": -1}]}',
            "field 'delta' must be ≥ 0",
        ),
        (
            "atomwatch/v1/s/h/birth",
            b'{"v": 1, "type": "birth", "session": 1, "agent": "x", "tick": 1, "ts": 0, "series": [{"alias": 0, "vm_uuid": "u", "vm_name": "n", "metric": "m", "delta": 1}, {"alias": 0, "vm_uuid": "u", "vm_name": "n", "metric": "k", "delta": 1}]}',
            "alias 0 appears twice",
        ),
        (
            "atomwatch/v1/s/h/reply/r1",
            b'{"v": 1, "type": "reply", "id": "r2", "status": "ok", "ts": 0}',
            "differs from the topic's request id",
        ),
        (
            "atomwatch/v1/s/h/reply/r1",
            b'{"v": 1, "type": "reply", "id": "r1", "status": "maybe", "ts": 0}',
            "field 'status' must be one of",
        ),
        ("atomwatch/v1/s/h/oops", b"{}", "unknown message kind 'oops'"),
        ("other/v1/s/h/data", b"{}", "is not under atomwatch/v1"),
        ("atomwatch/v1/s/h/state", b"{}", "state is published only by the controller"),
    ],
)
def test_bad_messages_get_precise_errors(topic, payload, expected):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode(topic, payload)
    assert expected in str(err.value)
    assert topic in str(err.value) or "topic" in str(err.value)


def test_names_are_checked():
    with pytest.raises(protocol.ProtocolError, match="host name 'a/b' is not valid"):
        protocol.check_name("host", "a/b")
    with pytest.raises(protocol.ProtocolError, match="site name '\\+' is not valid"):
        protocol.check_name("site", "+")


def test_non_finite_values_cannot_be_encoded():
    with pytest.raises(ValueError):
        protocol.encode(protocol.Data(1, 0, 0.0, [(0, float("nan"))]))
    # a birth's unknown value travels as null
    birth = protocol.Birth(1, "x", 1.0, 0.0, [protocol.SeriesInfo(0, KEY, 1.0, float("nan"))])
    assert json.loads(protocol.encode(birth))["series"][0]["value"] is None

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
    roundtrip(protocol.state_topic("eu", "c1"), protocol.State(True, 6.0, "c1"))
    roundtrip(protocol.state_topic("eu", "c2"), protocol.State(True, 6.0, "c2", rank=2, active=True))
    roundtrip(protocol.beat_topic("eu", "c2"), protocol.Beat(True, 6.0, "c2", rank=1))


def test_lines_cross_the_wire_only_where_a_slope_is_not_zero():
    """Trend tracking: a constant series costs what it costs (no slope, version 1); a line adds its
    slope (and age) and makes the message version 2, which a version-1 receiver refuses."""
    plain = protocol.Data(7, 0, 2.0, [(0, 1.0), (3, -5.0)])
    assert json.loads(protocol.encode(plain))["v"] == protocol.VERSION
    sloped = protocol.Data(7, 1, 2.0, [(0, 1.0), (3, -5.0), (4, 2.0)], lines={3: (0.25, 0), 4: (-1e-9, 12)})
    body = json.loads(protocol.encode(sloped))
    assert body["v"] == protocol.LINE_VERSION
    assert body["values"] == [[0, 1.0], [3, -5.0, 0.25], [4, 2.0, -1e-9, 12]]
    roundtrip(protocol.data_topic("eu", "hv1"), sloped)
    birth = protocol.Birth(7, "x", 1.0, 1.5, [protocol.SeriesInfo(0, KEY, 2.5, 41.0, slope=0.5, age=3)], seq=9)
    assert json.loads(protocol.encode(birth))["series"][0] | {} == {
        **protocol.series_record(protocol.SeriesInfo(0, KEY, 2.5, 41.0)),
        "slope": 0.5,
        "age": 3,
    }
    roundtrip(protocol.birth_topic("eu", "hv1"), birth)
    frames = [protocol.Frame(1.0, [(0, 1.0)], lines={0: (2.0, 5)}), protocol.Frame(2.0, [])]
    history = protocol.History(7, 11, 0, 0, 1.0, [protocol.SeriesInfo(0, KEY, 2.5)], frames)
    roundtrip(protocol.history_topic("eu", "hv1"), history)


@pytest.mark.parametrize(
    "payload, expected",
    [
        (
            b'{"v":1,"type":"data","session":1,"seq":1,"ts":1,"values":[[0,1.0,2.0]]}',
            "a slope needs protocol version 2",
        ),
        (b'{"v":2,"type":"data","session":1,"seq":1,"ts":1,"values":[[0,1.0,0]]}', "finite slope ≠ 0"),
        (b'{"v":2,"type":"data","session":1,"seq":1,"ts":1,"values":[[0,1.0,1.0,-1]]}', "age ≥ 0"),
        (b'{"v":2,"type":"data","session":1,"seq":1,"ts":1,"values":[[0,1.0,1.0,1.5]]}', "age ≥ 0"),
        (b'{"v":2,"type":"data","session":1,"seq":1,"ts":1,"values":[[0,1.0,"x"]]}', "values[0] must be"),
        (b'{"v":2,"type":"data","session":1,"seq":1,"ts":1,"values":[[0,1.0,1.0,1,1]]}', "values[0] must be"),
        (b'{"v":2,"type":"data","session":1,"seq":1,"ts":1,"values":[[0,1.0,true]]}', "values[0] must be"),
        (b'{"v":2,"type":"data","session":1,"seq":1,"ts":1,"values":[[0,1.0,1e400]]}', "'values[0][2]' holds"),
    ],
)
def test_bad_lines_are_refused_naming_the_entry(payload, expected):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode(protocol.data_topic("s", "h"), payload)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"slope": 0.5}, "a slope needs protocol version 2"),
        ({"slope": 0}, "must be a number ≠ 0 beside a value"),
        ({"slope": 0.5, "value": None}, "must be a number ≠ 0 beside a value"),
        ({"slope": "up"}, "field 'slope' must be a finite number"),
        ({"slope": 0.5, "age": -2}, "field 'age' must be an integer ≥ 0"),
    ],
)
def test_bad_lines_in_a_birth_are_refused(record, expected):
    row = protocol.series_record(protocol.SeriesInfo(0, KEY, 2.5, 41.0)) | record
    version = 1 if "version 2" in expected else 2
    payload = json.dumps(
        {"v": version, "type": "birth", "session": 1, "seq": 0, "agent": "x", "tick": 1, "ts": 0, "series": [row]}
    )
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode(protocol.birth_topic("s", "h"), payload.encode())
    assert expected in str(err.value) and "series[0]" in str(err.value)


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
        ("atomwatch/v1/s/h/data", b'{"v": 3, "type": "data"}', "protocol version 3 is not supported"),
        ("atomwatch/v1/s/h/death", b'{"v": 2, "type": "death"}', "protocol version 2 is not supported"),
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
        ("atomwatch/v1/s/h/state/c1", b"{}", "state is published only by a controller"),
        ("atomwatch/v1/s/controller/state", b"{}", "state needs a controller name as its last level"),
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


# ----------------------------------------------------------------------------- limits (issue 14)

DEATH = "atomwatch/v1/s/h/death"


def death_with(ts: bytes) -> bytes:
    return b'{"v": 1, "type": "death", "session": 1, "ts": ' + ts + b"}"


@pytest.mark.parametrize(
    "ts, expected",
    [
        (b"4" * 400, "field 'ts' holds an integer of 400 digits"),
        (b"-" + b"4" * 5000, "field 'ts' holds an integer of 5000 digits"),  # past Python's int-str limit
        (b"18446744073709551616", "field 'ts' holds the integer 18446744073709551616"),
        (b"-9223372036854775809", "field 'ts' holds the integer -9223372036854775809"),
        (b"1e400", "field 'ts' holds '1e400', beyond the float range"),
        (b"NaN", "field 'ts' holds NaN"),
        (b"-Infinity", "field 'ts' holds -Infinity"),
        (b'[1, {"x": [Infinity]}]', "field 'ts[1].x[0]' holds Infinity"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_field(ts, expected):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode(DEATH, death_with(ts))
    assert expected in str(err.value) and "integers within [-2**63, 2**64)" in str(err.value)
    assert err.value.reason == "invalid"


def test_numbers_at_the_edges_of_the_range_are_kept():
    for ts, value in [(b"18446744073709551615", 2.0**64), (b"-9223372036854775808", -(2.0**63)), (b"1e308", 1e308)]:
        assert protocol.decode(DEATH, death_with(ts))[1].ts == value
    # a huge integer anywhere refuses the message, naming where: here inside a command's params
    cmd = b'{"v": 1, "type": "cmd", "id": "r1", "command": "x", "ts": 0, "params": {"a": [0, 1' + b"0" * 30 + b"]}}"
    with pytest.raises(protocol.ProtocolError, match=r"field 'params.a\[1\]' holds an integer of 31 digits"):
        protocol.decode("atomwatch/v1/s/h/cmd/r1", cmd)


@pytest.mark.parametrize("depth", [33, 100, 100_000])
def test_deep_nesting_is_refused_before_parsing(depth):
    for payload in (b"[" * depth + b"]" * depth, b"[" * depth, death_with(b'{"a":' * depth + b"1" + b"}" * depth)):
        with pytest.raises(protocol.ProtocolError, match=r"nests arrays/objects deeper than 32 levels") as err:
            protocol.decode(DEATH, payload, max_size=1 << 24)
        assert err.value.reason == "too-deep"


def test_nesting_up_to_the_limit_and_brackets_in_strings_pass():
    params = json.loads("[" * 30 + "]" * 30)
    cmd = protocol.Command("r1", "x", {"p": params, "s": "[[[[" * 50 + '"\\'}, 0.0)
    _, back = protocol.decode("atomwatch/v1/s/h/cmd/r1", protocol.encode(cmd))
    assert back.params == cmd.params


def test_the_size_limit_names_its_option():
    payload = death_with(b"1" + b" " * (protocol.MAX_MESSAGE_SIZE + 1000))
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode(DEATH, payload)
    assert err.value.reason == "too-large"
    assert f"payload of {len(payload)} bytes exceeds the limit of {protocol.MAX_MESSAGE_SIZE} bytes" in str(err.value)
    assert "--max-message-size" in str(err.value)
    assert protocol.decode(DEATH, payload, max_size=len(payload))[1].ts == 1.0
    with pytest.raises(protocol.ProtocolError, match="raise it with --max-reply-size"):
        protocol.decode(DEATH, payload, max_size=1000, size_option="--max-reply-size")


def test_a_1000_series_birth_fits_the_default_limit_with_headroom():
    series = [
        protocol.SeriesInfo(
            a, SeriesKey(f"{a:08d}-d8f1-6adf-91b7-584a2265b1f5", f"prod-eu-west-1a-web-{a:04d}", m, "%"), 0.1, 1e9 / 7
        )
        for a, m in enumerate(["CPUUtilization", "NetworkIn", "DiskWriteBytes", "MemoryUtilization"] * 250)
    ]
    payload = protocol.encode(protocol.Birth(1712345678901, "0.4.0", 10.0, 1712345678.25, series, 123456))
    assert 2 * len(payload) < protocol.MAX_MESSAGE_SIZE
    assert len(protocol.decode("atomwatch/v1/s/h/birth", payload)[1].series) == 1000


def test_lone_surrogates_and_odd_payloads_are_refused():
    with pytest.raises(protocol.ProtocolError, match="field 'reason' holds a lone UTF-16 surrogate"):
        protocol.decode(DEATH, b'{"v": 1, "type": "death", "session": 1, "reason": "ab\\udc80"}')
    # a pair is a character
    assert (
        protocol.decode(DEATH, b'{"v": 1, "type": "death", "session": 1, "reason": "\\ud83d\\ude00"}')[1].reason == "😀"
    )
    with pytest.raises(protocol.ProtocolError, match="payload must be bytes, got int"):
        protocol.decode(DEATH, 5)
    with pytest.raises(protocol.ProtocolError, match="topic must be a string, got bytes"):
        protocol.decode(DEATH.encode(), b"{}")


@pytest.mark.parametrize(
    "topic, expected",
    [
        ("atomwatch/v1/s//data", "host name '' is not valid"),
        ("atomwatch/v1/s p/h/data", "site name 's p' is not valid"),
        ("atomwatch/v1/s/h/reply/a b", "request id 'a b' is not valid"),
        ("atomwatch/v1/s/h/reply/a/b", "reply needs a request id as its last level"),
    ],
)
def test_topic_levels_are_names(topic, expected):
    with pytest.raises(protocol.ProtocolError, match=expected):
        protocol.decode(topic, b"{}")

"""Controller ingest: sessions, sequence numbers, rebirth requests, stale and gone markers."""

from __future__ import annotations

import math

from atomwatch import protocol
from atomwatch.controller.ingest import Ingest
from atomwatch.series import SeriesKey

A = SeriesKey("u1", "vm1", "CPUUtilization", "%")
B = SeriesKey("u1", "vm1", "NetworkIn", "bytes/s")


def birth(session=1, values=(10.0, 20.0)):
    return protocol.encode(
        protocol.Birth(
            session,
            "t",
            1.0,
            0.0,
            [protocol.SeriesInfo(0, A, 1.0, values[0]), protocol.SeriesInfo(1, B, 5.0, values[1])],
        )
    )


def data(seq, values=(), stale=(), gone=(), session=1):
    return protocol.encode(protocol.Data(session, seq, 0.0, list(values), list(stale), list(gone)))


T_BIRTH = protocol.birth_topic("s", "h")
T_DATA = protocol.data_topic("s", "h")


def make():
    asked = []
    ing = Ingest(request_rebirth=lambda site, host: asked.append((site, host)))
    return ing, asked


def test_values_are_a_step_function():
    ing, asked = make()
    ing.handle(T_BIRTH, birth())
    ing.handle(T_DATA, data(0, [(0, 11.0)]))
    ing.handle(T_DATA, data(1, []))  # silence: the value holds
    snap = ing.host("s", "h").snapshot()
    assert snap == {A: 11.0, B: 20.0}
    assert not asked and not ing.dropped


def test_lines_are_evaluated_at_every_seq_exactly_as_the_agent_does():
    """Trend tracking: a line sent at seq k is ``value + slope * float(seq − k0)`` at each later
    seq; a birth's line holds ``age`` ticks before its tick (seq − 1); a constant replaces a line."""
    ing, asked = make()
    series = [protocol.SeriesInfo(0, A, 1.0, 10.0, slope=0.1, age=4), protocol.SeriesInfo(1, B, 5.0, 20.0)]
    ing.handle(T_BIRTH, protocol.encode(protocol.Birth(1, "t", 1.0, 0.0, series, seq=3)))
    host = ing.host("s", "h")
    assert host.snapshot() == {A: 10.0 + 0.1 * 4.0, B: 20.0}  # the birth's tick is seq 2
    ing.handle(T_DATA, protocol.encode(protocol.Data(1, 3, 0.0, [])))
    assert host.snapshot()[A] == 10.0 + 0.1 * 5.0
    ing.handle(T_DATA, protocol.encode(protocol.Data(1, 4, 0.0, [(1, 30.0)], lines={1: (-2.5, 0)})))
    assert host.snapshot() == {A: 10.0 + 0.1 * 6.0, B: 30.0}
    for seq in range(5, 9):
        ing.handle(T_DATA, data(seq))
    assert host.snapshot() == {A: 10.0 + 0.1 * 10.0, B: 30.0 + -2.5 * 4.0}
    ing.handle(T_DATA, data(9, [(0, 7.0)], stale=[1]))  # a constant ends A's line, B is unknown
    ing.handle(T_DATA, data(10))
    snap = host.snapshot()
    assert snap[A] == 7.0 and math.isnan(snap[B]) and host.lines == {}
    assert not asked and not ing.dropped


def test_stale_and_gone_markers():
    ing, _ = make()
    ing.handle(T_BIRTH, birth())
    ing.handle(T_DATA, data(0, stale=[0]))
    snap = ing.host("s", "h").snapshot()
    assert math.isnan(snap[A]) and snap[B] == 20.0
    ing.handle(T_DATA, data(1, [(0, 12.0)], gone=[1]))
    assert ing.host("s", "h").snapshot() == {A: 12.0}


def test_sequence_gap_asks_for_rebirth_and_values_become_unknown():
    ing, asked = make()
    ing.handle(T_BIRTH, birth())
    ing.handle(T_DATA, data(0))
    ing.handle(T_DATA, data(2, [(0, 99.0)]))
    assert asked == [("s", "h")]
    assert ing.dropped["seq-gap"] == 1
    assert all(math.isnan(v) for v in ing.host("s", "h").snapshot().values())
    ing.handle(T_DATA, data(3, [(0, 98.0)]))  # still waiting: dropped, rebirth not re-asked at once
    assert asked == [("s", "h")]
    ing.handle(T_BIRTH, birth(values=(98.0, 21.0)))
    assert ing.host("s", "h").snapshot() == {A: 98.0, B: 21.0}


def test_unknown_alias_and_unknown_session_ask_for_rebirth():
    ing, asked = make()
    ing.handle(T_BIRTH, birth())
    ing.handle(T_DATA, data(0, [(7, 1.0)]))
    assert ing.dropped["unknown-alias"] == 1 and asked
    ing2, asked2 = make()
    ing2.handle(T_DATA, data(0, [(0, 1.0)], session=5))
    assert ing2.dropped["unknown-session"] == 1 and asked2 == [("s", "h")]


def test_old_session_and_will_of_replaced_session_are_ignored():
    ing, _ = make()
    ing.handle(T_BIRTH, birth(session=2))
    ing.handle(T_DATA, data(0, [(0, 1.0)], session=1))
    assert ing.dropped["old-session"] == 1
    ing.handle(protocol.death_topic("s", "h"), protocol.encode(protocol.Death(1, 0.0, "old will")))
    assert ing.host("s", "h").alive
    ing.handle(protocol.death_topic("s", "h"), protocol.encode(protocol.Death(2, 0.0, "connection lost")))
    assert not ing.host("s", "h").alive
    assert all(math.isnan(v) for v in ing.host("s", "h").snapshot().values())


def test_bad_payload_is_counted_and_dropped():
    ing, _ = make()
    ing.handle(T_DATA, b"garbage")
    ing.handle("atomwatch/v1/s/h/nonsense", b"{}")
    assert ing.dropped["invalid"] == 2
    assert ing.hosts == {}


def test_a_rebirth_continues_the_sequence():
    ing, asked = make()
    ing.handle(T_BIRTH, birth())
    ing.handle(T_DATA, data(0, [(0, 11.0)]))
    ing.handle(T_DATA, data(1, [(0, 12.0)]))
    rebirth = protocol.Birth(
        1, "t", 1.0, 0.0, [protocol.SeriesInfo(0, A, 1.0, 12.0), protocol.SeriesInfo(1, B, 5.0, 20.0)], seq=2
    )
    ing.handle(T_BIRTH, protocol.encode(rebirth))
    ing.handle(T_DATA, data(2, [(0, 13.0)]))
    assert ing.host("s", "h").snapshot()[A] == 13.0
    assert not asked and not ing.dropped

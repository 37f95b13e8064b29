"""The agent's store-and-forward backlog: bounded, drop-oldest without breaking the rebuild, chunks
that stand alone, a file that survives a restart and a torn last line; the history message's wire
form and its refusals."""

from __future__ import annotations

import random

import pytest

from atomwatch import protocol
from atomwatch.agent.backlog import Backlog, apply_frame
from atomwatch.series import SeriesKey

KEYS = {a: (SeriesKey(f"uuid-{a % 3}", f"vm{a % 3}", f"M{a}", "%"), 0.5) for a in range(6)}


def _frames(n: int, seed: int = 1):
    """n ticks of random tracker output over 6 series (some values sent, now and then a stale one),
    with the tracker's full state after each."""
    rng = random.Random(seed)
    state = {a: 0.0 for a in KEYS}
    out = []
    for i in range(n):
        values = [(a, round(rng.uniform(0, 100), 3)) for a in KEYS if rng.random() < 0.4]
        stale = [a for a in KEYS if a not in dict(values) and rng.random() < 0.05]
        frame = protocol.Frame(1000.0 + i, values, stale, [])
        apply_frame(state, frame)
        out.append((frame, dict(state)))
    return out


def _rebuild(chunks: list[protocol.History]) -> list[tuple[float, dict[int, float]]]:
    """What a controller rebuilds from history messages: the state at each frame."""
    states = []
    for chunk in chunks:
        state: dict[int, float] = {}
        for i, f in enumerate(chunk.frames):
            if i == 0:
                state = dict(f.values)
            else:
                apply_frame(state, f)
            states.append((f.ts, dict(state)))
    return states


def _drain(b: Backlog, max_bytes: int = 2000) -> list[protocol.History]:
    chunks = []
    while (c := b.next_chunk(7, 1.0, max_bytes=max_bytes)) is not None:
        chunks.append(c)
        b.sent(c)
    return chunks


def test_every_kept_tick_is_rebuilt_exactly_from_chunks_that_stand_alone():
    b = Backlog()
    ticks = _frames(300)
    for frame, state in ticks:
        b.add(frame, KEYS.get, lambda state=state: state)
    assert len(b) == 300
    chunks = _drain(b)
    assert len(chunks) > 3, "small chunks: several messages"
    assert [c.remaining for c in chunks][-1] == 0 and len(b) == 0 and b.frames_sent == 300
    assert _rebuild(chunks) == [(f.ts, s) for f, s in ticks]
    # each message names the aliases it uses
    for c in chunks:
        named = {s.alias for s in c.series}
        assert all(a in named for f in c.frames for a, _ in f.values)


def _line_frames(n: int, seed: int = 3):
    """n ticks of a trend tracker's output (values sent now and then as lines) over 6 series, with
    the copy at each tick as the controller must rebuild it."""
    rng = random.Random(seed)
    lines: dict[int, tuple[float, float, int]] = {a: (float(a), 0.0, 0) for a in KEYS}  # value, slope, k0
    out = []
    for k in range(n):
        values, sloped = [], {}
        for a in KEYS:
            if rng.random() < 0.3:
                v, slope = round(rng.uniform(0, 100), 3), rng.choice([0.0, rng.uniform(-1, 1)])
                age = rng.choice([0, 0, 3])
                lines[a] = (v, slope, k - age)
                values.append((a, v))
                if slope:
                    sloped[a] = (slope, age)
        copy = {a: v + s * float(k - k0) for a, (v, s, k0) in lines.items()}
        out.append((protocol.Frame(1000.0 + k, values, [], [], sloped), copy))
    return out


def _rebuild_lines(chunks: list[protocol.History]) -> list[tuple[float, dict[int, float]]]:
    """What the controller's history replay rebuilds (controller.ingest.HostState.apply)."""
    from atomwatch.controller.ingest import HostState

    states = []
    for chunk in chunks:
        scratch = HostState("s", "h")
        for i, f in enumerate(chunk.frames):
            scratch.apply(f.values, f.stale, f.gone, f.lines, chunk.first + i)
            states.append((f.ts, dict(scratch.values)))
    return states


@pytest.mark.parametrize("max_frames", [10_000, 40])
def test_lines_are_rebuilt_exactly_from_chunks_that_stand_alone(tmp_path, max_frames):
    """Trend tracking: a chunk's first frame restates every line with its age, dropping the oldest
    ticks folds their lines into the segment's base, and the file keeps lines across a restart."""
    ticks = _line_frames(200)
    path = tmp_path / "b.backlog"
    b = Backlog(max_frames=max_frames, path=path)
    copy0 = {a: float(a) for a in KEYS}
    # the tracker's state when the segment starts: at tick 0, lines 3 ticks old
    state = {a: (v - 0.5 * 3, 0.5, 3) for a, v in copy0.items()}
    first, _ = ticks[0]
    for a, v in first.values:  # what tick 0 sent is in the state after it
        state[a] = (v, *first.lines.get(a, (0.0, 0)))
    carried = {a: (v, s, -age) for a, (v, s, age) in state.items()}  # value, slope, k0
    for k, (frame, _) in enumerate(ticks):
        for a, v in frame.values:
            s, age = frame.lines.get(a, (0.0, 0))
            carried[a] = (v, s, k - age)
        ticks[k] = (frame, {a: v + s * float(k - k0) for a, (v, s, k0) in carried.items()})
    for frame, _ in ticks:
        b.add(frame, KEYS.get, lambda: state)
    b.close()
    again = Backlog(max_frames=max_frames, path=path)
    assert len(again) == min(200, max_frames)
    assert _rebuild_lines(_drain(again, max_bytes=1500)) == [(f.ts, c) for f, c in ticks[-max_frames:]]


def test_a_full_backlog_drops_the_oldest_ticks_and_still_rebuilds_the_rest_exactly():
    b = Backlog(max_frames=50)
    ticks = _frames(200, seed=2)
    for frame, state in ticks:
        b.add(frame, KEYS.get, lambda state=state: state)
    assert len(b) == 50 and b.dropped == 150
    assert _rebuild(_drain(b)) == [(f.ts, s) for f, s in ticks[-50:]]


def test_the_byte_bound_holds_too():
    b = Backlog(max_bytes=2000)
    for frame, state in _frames(200, seed=3):
        b.add(frame, KEYS.get, lambda state=state: state)
    assert b.bytes <= 2000 and b.dropped > 0 and len(b) + b.dropped == 200


def test_a_new_segment_starts_from_the_trackers_state_after_each_reconnection():
    """Frames of two outages must not be chained: the live ticks between them are missing."""
    b = Backlog()
    ticks = _frames(40, seed=4)
    for frame, state in ticks[:10]:
        b.add(frame, KEYS.get, lambda state=state: state)
    b.close_segment()  # a birth went out: the controller is right again
    for frame, state in ticks[30:]:
        b.add(frame, KEYS.get, lambda state=state: state)
    assert len(b.segments) == 2
    assert _rebuild(_drain(b)) == [(f.ts, s) for f, s in ticks[:10] + ticks[30:]]


def test_the_backlog_file_survives_a_restart_and_a_torn_last_line(tmp_path):
    path = tmp_path / "default+hv1.backlog"
    b = Backlog(max_frames=100, path=path)
    ticks = _frames(120, seed=5)
    for frame, state in ticks:
        b.add(frame, KEYS.get, lambda state=state: state)
    b.close()
    with path.open("a") as f:
        f.write('{"frame":[2000.0,[[0,1')  # the agent was killed while writing
    again = Backlog(max_frames=100, path=path)
    assert len(again) == 100
    assert _rebuild(_drain(again, max_bytes=10**6)) == [(f.ts, s) for f, s in ticks[-100:]]
    assert not path.exists(), "a sent backlog leaves no file"


def test_an_unreadable_backlog_file_is_said_and_left_behind(tmp_path, caplog):
    path = tmp_path / "default+hv1.backlog"
    path.write_text("not json\n")
    b = Backlog(path=path)
    assert len(b) == 0
    assert "line 1 is not readable" in caplog.text


def test_history_messages_round_trip_and_refuse_what_does_not_rebuild():
    ticks = _frames(5)
    b = Backlog()
    for frame, state in ticks:
        b.add(frame, KEYS.get, lambda state=state: state)
    chunk = b.next_chunk(7, 1.0)
    topic = protocol.history_topic("s1", "hv1")
    _, back = protocol.decode(topic, protocol.encode(chunk))
    assert back == chunk
    good = protocol.encode(chunk).decode()
    bad = {
        "unknown alias": good.replace(
            '"series":[',
            '"series":[{"alias":99,"vm_uuid":"u","vm_name":"v","metric":"m","unit":"","delta":1}],"x":[',
            1,
        ).replace('"alias":0,', '"alias":98,'),
        "no frames": good[: good.index('"frames":')] + '"frames":[]}',
        "short frame": good[: good.index('"frames":')] + '"frames":[[1.0,[]]]}',
        "infinite ts": good[: good.index('"frames":')] + '"frames":[[1e999,[],[],[]]]}',
    }
    for what, payload in bad.items():
        with pytest.raises(protocol.ProtocolError) as e:
            protocol.decode(topic, payload.encode())
        assert "history on" in str(e.value), what


def test_ticks_published_just_before_an_outage_join_the_backlog_after_older_ones():
    """The agent keeps its last published ticks in a small ring: a broker killed after acknowledging
    them may not have passed them on, so they go back into the backlog, in order, when the
    connection is lost (the controller skips those it had)."""
    ticks = _frames(60, seed=6)
    backlog, recent = Backlog(), Backlog(max_frames=8)
    for frame, state in ticks[:10]:  # an earlier outage, not sent yet
        backlog.add(frame, KEYS.get, lambda state=state: state)
    backlog.close_segment()
    for frame, state in ticks[10:40]:  # published live; the ring keeps the last 8
        recent.add(frame, KEYS.get, lambda state=state: state)
    backlog.take(recent)
    for frame, state in ticks[40:]:  # the new outage
        backlog.add(frame, KEYS.get, lambda state=state: state)
    assert len(recent) == 0 and len(backlog) == 10 + 8 + 20
    assert _rebuild(_drain(backlog)) == [(f.ts, s) for f, s in ticks[:10] + ticks[32:]]

"""Store-and-forward: the ticks an agent sampled while it could not publish, kept in order.

What lives here: :class:`Backlog`, bounded by frames and bytes (the oldest tick is dropped first
and counted), optionally kept in a file so an agent restart does not lose it, and cut into
:class:`~atomwatch.protocol.History` messages once the broker is back. What does not: when a tick
is queued or a chunk sent (:mod:`.runtime`), and what the controller does with it
(:mod:`atomwatch.controller.history`).

A *segment* is one run of frames of one agent process: its aliases belong to its own series
table, so a backlog read back from the file after a restart keeps its meaning whatever the new
process numbers its series. Each segment keeps the state before its oldest frame (``base``, every
known value, and ``lines``, the values sent as lines with their anchor's frame index); dropping a
frame folds it into ``base``, so what is left still rebuilds exactly. Every history message starts
with the full state at its first frame (a line with its age) and stands alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from atomwatch import protocol
from atomwatch.series import SeriesKey

log = logging.getLogger(__name__)

#: defaults of ``--backlog-frames`` and ``--backlog-bytes``: a day of ten-second ticks, and what
#: 64 MiB of memory holds (a frame costs ≈ 40 bytes + 24 per value sent)
BACKLOG_FRAMES = 8640
BACKLOG_BYTES = 64 * 1024 * 1024
#: a history message's frames stop at this many bytes (well under the receivers' 1 MiB default)
CHUNK_BYTES = 256 * 1024
#: the file is rewritten (dropped and sent frames cut out) once this share of it is dead
_REWRITE_SHARE = 0.25


_last_segment = 0


def _segment_id() -> int:
    """A new segment's id: milliseconds since the epoch, strictly increasing in this process
    (and, since a process starts later than the last ended, across restarts)."""
    global _last_segment
    _last_segment = max(int(time.time() * 1000), _last_segment + 1)
    return _last_segment


def frame_cost(frame: protocol.Frame) -> int:
    """Bytes a frame is charged: about what it weighs encoded."""
    return 40 + 24 * len(frame.values) + 24 * len(frame.lines) + 8 * (len(frame.stale) + len(frame.gone))


@dataclass
class Segment:
    id: int
    #: alias → (key, Δ) of every alias any frame of the segment names
    table: dict[int, tuple[SeriesKey, float]] = field(default_factory=dict)
    #: the state before ``frames[0]``: alias → value (absent: stale or unknown)
    base: dict[int, float] = field(default_factory=dict)
    #: of ``base``, the values that are lines: alias → (slope, k0), k0 the index in the segment of
    #: the frame the value holds at (negative: before the segment's first frame)
    lines: dict[int, tuple[float, int]] = field(default_factory=dict)
    frames: deque[protocol.Frame] = field(default_factory=deque)
    #: index of ``frames[0]`` in the segment (frames dropped or sent before it are counted)
    first: int = 0

    def fold(self) -> protocol.Frame:
        """Take the oldest frame out, keeping its effect in ``base``."""
        frame = self.frames.popleft()
        apply_frame(self.base, frame, self.lines, self.first)
        self.first += 1
        return frame


def apply_frame(
    state: dict[int, float], frame: protocol.Frame, lines: dict[int, tuple[float, int]] | None = None, index: int = 0
) -> None:
    """``frame`` (the one of index ``index`` in its segment) applied to ``state``; ``lines``, when
    given, keeps which values are lines: alias → (slope, index of the frame the value holds at)."""
    for a, v in frame.values:
        state[a] = v
        if lines is not None:
            line = frame.lines.get(a)
            if line is None:
                lines.pop(a, None)
            else:
                lines[a] = (line[0], index - line[1])
    for a in (*frame.stale, *frame.gone):
        state.pop(a, None)
        if lines is not None:
            lines.pop(a, None)


class Backlog:
    """The ticks not yet published, oldest first, within ``max_frames`` and ``max_bytes``."""

    def __init__(
        self,
        max_frames: int = BACKLOG_FRAMES,
        max_bytes: int = BACKLOG_BYTES,
        path: Path | None = None,
        ring: bool = False,
    ):
        #: a ring (the agent's last published ticks) drops its oldest tick by design, silently
        self.ring = ring
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.path = path
        self.segments: deque[Segment] = deque()
        self.frames = 0
        self.bytes = 0
        #: frames dropped to stay within the bounds (samples lost), and frames sent
        self.dropped = 0
        self.frames_sent = 0
        self._open: Segment | None = None  # the segment this process appends to
        self._file = None
        self._dead_lines = 0
        self._lines = 0
        self._loading = False
        if path is not None:
            self._loading = True
            try:
                self._load()
            finally:
                self._loading = False

    def __len__(self) -> int:
        return self.frames

    # ------------------------------------------------------------------ adding

    def add(
        self,
        frame: protocol.Frame,
        table: Callable[[int], tuple[SeriesKey, float] | None],
        state: Callable[[], dict[int, float]],
    ) -> None:
        """Queue one tick. ``table(alias)`` is (key, Δ) of an alias (None: not a series any
        more); ``state()`` every value the tracker holds after this tick, asked for only when the
        tick starts a segment (its base): alias → value, or (value, slope, age) for a line."""
        seg = self._open
        named: Iterable[int] = (a for a, _ in frame.values)
        if seg is None:
            seg = self._open = Segment(id=_segment_id())
            for a, held in state().items():
                if isinstance(held, tuple):
                    value, slope, age = held
                    seg.base[a] = value
                    if slope:
                        seg.lines[a] = (slope, -age)  # this tick is the segment's frame 0
                else:
                    seg.base[a] = held
            self.segments.append(seg)
            self._write(_segment_record(seg))
            named = (*seg.base, *named)
        new = {}
        for a in named:
            if a not in seg.table and a not in new and (entry := table(a)) is not None:
                new[a] = entry
        if new:
            seg.table.update(new)
            self._write(_series_records(new))
        seg.frames.append(frame)
        self.frames += 1
        self.bytes += frame_cost(frame)
        self._write(_frame_record(frame))
        self._bound()

    def take(self, other: Backlog) -> None:
        """Append ``other``'s ticks (newer than this backlog's) and empty it; the next tick
        added here starts a segment of its own."""
        for seg in other.segments:
            if not seg.frames:
                continue
            self.segments.append(seg)
            for record in _records(seg):
                self._write(record)
            self.frames += len(seg.frames)
            self.bytes += sum(map(frame_cost, seg.frames))
        other.clear()
        self._open = None
        self._bound()

    def clear(self) -> None:
        """Forget every tick (the memory-only ring of recently published ticks, after a birth)."""
        self.segments.clear()
        self.frames = self.bytes = 0
        self._open = None

    def close_segment(self) -> None:
        """The next frame starts a new segment (its base taken afresh from the tracker)."""
        self._open = None

    def _bound(self) -> None:
        while self.frames > self.max_frames or (self.bytes > self.max_bytes and self.frames > 1):
            seg = self.segments[0]
            self._fold(seg)
            self.dropped += 1
            if not self.ring and (self.dropped == 1 or self.dropped % 1000 == 0):
                log.warning(
                    "backlog full (%d frames, %d bytes; --backlog-frames %d, --backlog-bytes %d): the oldest tick "
                    "is dropped (%d so far)",
                    self.frames + 1,
                    self.bytes,
                    self.max_frames,
                    self.max_bytes,
                    self.dropped,
                )
            if not seg.frames and seg is not self._open:
                self.segments.popleft()
        self._compact()

    # ------------------------------------------------------------------ sending

    def next_chunk(self, session: int, tick: float, max_bytes: int = CHUNK_BYTES) -> protocol.History | None:
        """The oldest frames as one history message (not taken out: :meth:`sent` does that)."""
        while self.segments and not self.segments[0].frames:
            if self.segments[0] is self._open:
                return None
            self.segments.popleft()
        if not self.segments:
            return None
        seg = self.segments[0]
        state, lines = dict(seg.base), dict(seg.lines)
        apply_frame(state, seg.frames[0], lines, seg.first)
        first = seg.frames[0]
        ages = {a: (slope, seg.first - k0) for a, (slope, k0) in lines.items()}
        frames = [protocol.Frame(first.ts, sorted(state.items()), [], [], ages)]
        size = frame_cost(frames[0])
        for frame in list(seg.frames)[1:]:
            cost = frame_cost(frame)
            if size + cost > max_bytes:
                break
            frames.append(frame)
            size += cost
        used = {a for f in frames for a in (*(a for a, _ in f.values), *f.stale, *f.gone)}
        series = [protocol.SeriesInfo(a, seg.table[a][0], seg.table[a][1]) for a in sorted(used) if a in seg.table]
        return protocol.History(
            session=session,
            segment=seg.id,
            first=seg.first,
            remaining=self.frames - len(frames),
            tick=tick,
            series=series,
            frames=frames,
        )

    def sent(self, chunk: protocol.History) -> None:
        """The broker took ``chunk``: its frames leave the backlog."""
        seg = next((s for s in self.segments if s.id == chunk.segment), None)
        if seg is None:
            return
        n = chunk.first + len(chunk.frames) - seg.first
        for _ in range(max(0, min(n, len(seg.frames)))):
            self._fold(seg)
            self.frames_sent += 1
        if not seg.frames and seg is not self._open:
            self.segments.remove(seg)
        if not self.frames:
            self._rewrite()
        else:
            self._compact()

    def _fold(self, seg: Segment) -> None:
        """Take ``seg``'s oldest frame out of the backlog (dropped or sent), its effect kept."""
        frame = seg.fold()
        self.frames -= 1
        self.bytes -= frame_cost(frame)
        self._dead_lines += 1

    def _compact(self) -> None:
        if self.path is not None and not self._loading and self._dead_lines > _REWRITE_SHARE * max(1, self._lines):
            self._rewrite()

    # ------------------------------------------------------------------ the file

    def _write(self, record: dict) -> None:
        if self.path is None:
            return
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._file.write(_line(record))
            self._file.flush()
            self._lines += 1
        except (OSError, ValueError) as e:
            log.error("backlog file %s: %s; the backlog is kept in memory only from now on", self.path, e)
            self.path = None

    def _rewrite(self) -> None:
        """Write the file afresh from memory (atomically): what was dropped or sent goes."""
        if self.path is None:
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lines = self._dead_lines = 0
        try:
            if not self.frames:
                self.path.unlink(missing_ok=True)
                self._open = None  # the next outage starts a new segment
                return
            records = [r for seg in self.segments for r in _records(seg)]
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as out:
                out.writelines(map(_line, records))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            self._lines = len(records)
        except (OSError, ValueError) as e:
            log.error("backlog file %s: %s; the backlog is kept in memory only from now on", self.path, e)
            self.path = None

    def close(self) -> None:
        """Flush the file to disk (the agent is stopping)."""
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            except OSError as e:
                log.error("backlog file %s: %s", self.path, e)
            self._file = None

    def _load(self) -> None:
        """Read the file a previous process left; a torn last line (a kill) ends it."""
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("backlog file %s cannot be read (%s): starting with an empty backlog", self.path, e)
            return
        seg: Segment | None = None
        for number, line in enumerate(text.splitlines(), 1):
            try:
                seg = self._load_line(json.loads(line), seg)
            except (ValueError, TypeError, KeyError, IndexError) as e:  # ProtocolError is a ValueError
                log.warning("backlog file %s line %d is not readable (%s): the rest is dropped", self.path, number, e)
                break
        loaded = self.frames
        self._rewrite()  # a clean file, the torn tail cut
        if loaded:
            log.info(
                "backlog of %d ticks in %d segment(s) read from %s: sent once the broker is reachable",
                loaded,
                len(self.segments),
                self.path,
            )

    def _load_line(self, record: dict, seg: Segment | None) -> Segment | None:
        if "segment" in record:
            seg = Segment(id=int(record["segment"]), first=int(record.get("first", 0)))
            for entry in record["base"]:
                a, v = int(entry[0]), _finite(entry[1])
                seg.base[a] = v
                if len(entry) == 4:
                    seg.lines[a] = (_finite(entry[2]), int(entry[3]))
            self.segments.append(seg)
        elif seg is None:
            raise ValueError("a record before the first segment")
        elif "series" in record:
            for info in protocol.read_series(record["series"], f"{self.path} series"):
                seg.table[info.alias] = (info.key, info.delta)
        else:
            ts, values, stale, gone = record["frame"]
            frame = protocol.Frame(
                _finite(ts),
                [(int(e[0]), _finite(e[1])) for e in values],
                [int(a) for a in stale],
                [int(a) for a in gone],
                {int(e[0]): (_finite(e[2]), int(e[3])) for e in values if len(e) == 4},
            )
            seg.frames.append(frame)
            self.frames += 1
            self.bytes += frame_cost(frame)
            self._bound()
        return seg


def _finite(v: object) -> float:
    f = float(v)  # type: ignore[arg-type]
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError(f"{v!r} is not a finite number")
    return f


def _line(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


def _segment_record(seg: Segment) -> dict:
    base = [[a, v, *seg.lines[a]] if a in seg.lines else [a, v] for a, v in seg.base.items()]
    return {"segment": seg.id, "base": base, "first": seg.first}


def _series_records(table: dict[int, tuple[SeriesKey, float]]) -> dict:
    infos = (protocol.SeriesInfo(a, k, d) for a, (k, d) in sorted(table.items()))
    return {"series": [protocol.series_record(i, value=False) for i in infos]}


def _frame_record(f: protocol.Frame) -> dict:
    values = [[a, v, *f.lines[a]] if a in f.lines else [a, v] for a, v in f.values]
    return {"frame": [f.ts, values, f.stale, f.gone]}


def _records(seg: Segment) -> list[dict]:
    """All of a segment as file records: its start, its series table, its frames."""
    return [_segment_record(seg), _series_records(seg.table), *map(_frame_record, seg.frames)]

"""Historical data: an agent's ticks of a broker outage, rebuilt in order and held in line with live rows.

What lives here: :class:`History`, which turns a ``history`` message into the host's state at each
of its frames (skipping frames already applied: a repeated message, or a tick no later than the
values the host's last live row was made from), and keeps a host's live rows waiting while its
announced backlog comes, so that its detectors see rows in time order: before the outage, the outage (late), after it. What does not:
making rows of those states (:mod:`.scopes`), scoring them (:mod:`.app`), the wire format
(:mod:`atomwatch.protocol`).

A birth announcing ``backlog`` ticks starts the hold; the history message with ``remaining = 0``
ends it, and so do the host's death, a birth announcing none, or :data:`HOLD_TIMEOUT` seconds
without a history message (the agent lost the broker again: it will announce the rest in its next
birth). Held rows are bounded (:data:`MAX_HELD`); beyond it the oldest are dropped and counted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from atomwatch import protocol

from .ingest import HostState

log = logging.getLogger(__name__)

#: seconds a host's live rows wait for its next history message before they go on without it
HOLD_TIMEOUT = 30.0
#: live rows held per host at most while its history comes
MAX_HELD = 10000
#: segments remembered per host to recognise a repeated history message
_SEGMENTS_KEPT = 16


@dataclass
class _Host:
    #: segment → index of the next frame not applied yet
    applied: dict[int, int] = field(default_factory=dict)
    #: while the backlog comes: its last sign of progress (monotonic), else None
    holding_since: float | None = None
    held: deque[tuple[HostState, float]] = field(default_factory=deque)


def frozen(state: HostState) -> HostState:
    """A copy of ``state``'s values as they are now; it shares the series table (never changed in
    place: :class:`.ingest.HostState`), so rows of the copies reuse the scope's column order."""
    copy = HostState(state.site, state.host, session=state.session, tick=state.tick)
    copy.keys = state.keys
    copy.deltas = state.deltas
    copy.values = dict(state.values)
    copy.synced = state.synced
    copy.alive = state.alive
    return copy


class History:
    def __init__(self) -> None:
        self.hosts: dict[str, _Host] = {}
        #: frames rebuilt into late rows; frames skipped by reason; live rows held, dropped while held
        self.frames_applied = 0
        self.skipped: Counter[str] = Counter()
        self.held_total = 0
        self.held_dropped = 0

    def _host(self, scope: str) -> _Host:
        h = self.hosts.get(scope)
        if h is None:
            h = self.hosts[scope] = _Host()
        return h

    # ------------------------------------------------------------------ the hold

    def on_birth(self, state: HostState, birth: protocol.Birth) -> list[tuple[HostState, float]]:
        """A live birth: hold the host's rows if it announces a backlog; else release any hold."""
        h = self._host(state.scope)
        if birth.backlog > 0:
            if h.holding_since is None:
                log.info(
                    "%s: %d ticks of an outage announced: its rows wait for them (up to %g s without progress)",
                    state.scope,
                    birth.backlog,
                    HOLD_TIMEOUT,
                )
            h.holding_since = time.monotonic()
            return []
        return self.release(state.scope)

    def holding(self, scope: str) -> bool:
        h = self.hosts.get(scope)
        if h is None or h.holding_since is None:
            return False
        if time.monotonic() - h.holding_since > HOLD_TIMEOUT:
            return False
        return True

    def expired(self, scope: str) -> bool:
        """Whether ``scope``'s hold ran out of time (its held rows are to be released)."""
        h = self.hosts.get(scope)
        return h is not None and h.holding_since is not None and time.monotonic() - h.holding_since > HOLD_TIMEOUT

    def timed_out(self) -> list[str]:
        """Scopes whose hold ran out of time (their held rows are to be released)."""
        now = time.monotonic()
        return [
            s for s, h in self.hosts.items() if h.holding_since is not None and now - h.holding_since > HOLD_TIMEOUT
        ]

    def hold(self, state: HostState, ts: float) -> None:
        """Keep the host's state at ``ts`` for a row made once its history is in."""
        h = self._host(state.scope)
        h.held.append((frozen(state), ts))
        self.held_total += 1
        if len(h.held) > MAX_HELD:
            h.held.popleft()
            self.held_dropped += 1
            if self.held_dropped == 1 or self.held_dropped % 1000 == 0:
                log.warning(
                    "%s: more than %d live rows wait for this host's history: the oldest is dropped (%d so far)",
                    state.scope,
                    MAX_HELD,
                    self.held_dropped,
                )

    def release(self, scope: str) -> list[tuple[HostState, float]]:
        """End the hold of ``scope``: its held states, oldest first."""
        h = self.hosts.get(scope)
        if h is None or (h.holding_since is None and not h.held):
            return []
        if h.holding_since is not None and time.monotonic() - h.holding_since > HOLD_TIMEOUT:
            log.warning(
                "%s: no history for %g s: its live rows go on without the rest of its outage", scope, HOLD_TIMEOUT
            )
        h.holding_since = None
        out = list(h.held)
        h.held.clear()
        return out

    # ------------------------------------------------------------------ replay

    def replay(self, state: HostState, msg: protocol.History) -> list[tuple[HostState, float]]:
        """The host's state at each new frame of ``msg``, oldest first (a state per frame)."""
        h = self._host(state.scope)
        if h.holding_since is not None:
            h.holding_since = time.monotonic()
        done = h.applied.get(msg.segment, 0)
        scratch = HostState(state.site, state.host, session=msg.session, tick=msg.tick)
        scratch.keys = {s.alias: s.key for s in msg.series}
        scratch.deltas = {s.alias: s.delta for s in msg.series}
        scratch.synced = scratch.alive = True
        out = []
        for i, frame in enumerate(msg.frames):
            index = msg.first + i
            if i == 0:  # every known value: the message stands alone
                scratch.forget_values()
            scratch.apply(frame.values, frame.stale if i else [], frame.gone, frame.lines, index)
            if index < done:
                self.skipped["repeated"] += 1
            elif frame.ts <= state.rowed_ts:
                self.skipped["sent-live"] += 1
            else:
                out.append((frozen(scratch), frame.ts))
        h.applied[msg.segment] = max(done, msg.first + len(msg.frames))
        while len(h.applied) > _SEGMENTS_KEPT:
            del h.applied[min(h.applied)]
        self.frames_applied += len(out)
        return out

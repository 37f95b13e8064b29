"""Ingest: per-host sessions, sequence numbers, and every series rebuilt as a step function.

A birth replaces a host's series table and values. A data message of the current session
applies its values (silence means "within Δ of the last value", or of the series' line for a value
sent with a slope: trend tracking, evaluated at each message's seq), its stale markers (the value is
unknown until a new one arrives) and gone markers (the series left the table). A sequence gap,
an unknown alias or data from an unknown session marks the host's values unknown and asks for a
rebirth (rate-limited). A death marks every series of the host stale, and so does losing the
broker (:meth:`Ingest.lost_broker`): rows resume with the next live birth. A *retained* birth (one
the broker hands over on subscribing, of any age, perhaps of a dead agent) names the host's series
but its values are not taken as live: the host waits for a live birth, which the controller's
``online`` state asks every agent for. A ``history`` message goes to the listeners untouched (the
host's live values are not its business: :mod:`.history`). Bad payloads are counted
by reason and dropped (``invalid``, ``too-large``, ``too-deep`` …); nothing here raises on input:
an unexpected exception (a bug) is counted in the controller's :class:`~atomwatch.mqtt.Faults`,
logged once per kind, and the message dropped as ``internal``.

A payload above ``max_message_size`` is refused before it is parsed, except a reply to a command
the controller is waiting for (``awaits_reply``), which may weigh up to ``max_reply_size``.

A birth announcing more series than ``max_series`` (the controller's ``--max-series-per-host``) is
refused whole before anything of it is stored: the host keeps what it had, the refusal is said once
per host and session and counted (``too-many-series``), and that session's data is dropped
(``refused-session``) until a birth within the limit comes (asked for every few minutes).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from atomwatch import protocol
from atomwatch.mqtt import Faults
from atomwatch.series import SeriesKey

from .config import MAX_SERIES_PER_HOST

log = logging.getLogger(__name__)

#: a host's values are current while its last live message is at most this many of its ticks old …
FRESH_TICKS = 1.5
#: … plus this many seconds (transport and scheduling)
FRESH_MARGIN = 0.25
#: seconds between two rebirth requests to one host while waiting for its birth
REBIRTH_INTERVAL = 2.0
#: seconds between two rebirth requests to a host whose birth was refused as too large (the same
#: birth would come back at once; asking now and then notices a table that has shrunk)
REFUSED_REBIRTH_INTERVAL = 300.0


@dataclass
class HostState:
    site: str
    host: str
    session: int | None = None
    seq: int = -1
    tick: float = 10.0
    agent_version: str = ""
    #: alias → series, and alias → Δ: never changed in place, replaced whole (a birth, a ``gone``
    #: marker), so copies of the state may share them and :class:`.scopes.ScopeRows` knows the
    #: table changed when the dict is another one
    keys: dict[int, SeriesKey] = field(default_factory=dict)
    deltas: dict[int, float] = field(default_factory=dict)
    values: dict[int, float] = field(default_factory=dict)  # alias → value; absent = unknown/stale
    #: alias → (value, slope, k0) of the series whose copy is a line (trend tracking): its value at
    #: tick index k (a data message's seq) is ``value + slope * float(k − k0)``
    lines: dict[int, tuple[float, float, int]] = field(default_factory=dict)
    last_ts: float | None = None
    last_seen: float = 0.0
    alive: bool = False
    synced: bool = False  # False after a gap until the next birth
    rebirth_asked: float = 0.0
    #: the session whose birth was refused as too large (its data is dropped), None when none
    refused_session: int | None = None
    #: when the last live birth or data message arrived (time.monotonic()); 0: none yet
    fresh_at: float = 0.0
    #: the agent's ts of the values the host's last live row was made from: a history frame at or
    #: before it reached the detectors live
    rowed_ts: float = 0.0

    @property
    def scope(self) -> str:
        return f"{self.site}/{self.host}"

    def is_live(self) -> bool:
        """Whether the host's values are current: its agent is alive, its values synced, and it
        spoke within :data:`FRESH_TICKS` of its ticks (an agent publishes every tick, so a longer
        silence means its values may have moved unseen)."""
        if not self.alive or not self.synced:
            return False
        return time.monotonic() - self.fresh_at <= FRESH_TICKS * self.tick + FRESH_MARGIN

    def snapshot(self) -> dict[SeriesKey, float]:
        """Current value of every series (NaN where unknown or stale)."""
        if not self.synced:
            return {k: np.nan for k in self.keys.values()}
        return {k: self.values.get(a, np.nan) for a, k in self.keys.items()}

    def take_table(self, birth: protocol.Birth) -> None:
        """The session, sequence, tick and series table a birth announces (not its values)."""
        self.session = birth.session
        self.seq = birth.seq - 1
        self.tick = birth.tick
        self.agent_version = birth.agent
        self.keys = {s.alias: s.key for s in birth.series}
        self.deltas = {s.alias: s.delta for s in birth.series}

    def take_values(self, series: list[protocol.SeriesInfo], k: int) -> None:
        """A birth's values, its lines evaluated at its tick index ``k`` (the next seq − 1)."""
        self.values = {}
        self.lines = {}
        for s in series:
            if s.value is None:
                continue
            if s.slope:
                self.lines[s.alias] = (s.value, s.slope, k - s.age)
                self.values[s.alias] = s.value + s.slope * float(s.age)
            else:
                self.values[s.alias] = s.value

    def forget_values(self) -> None:
        """Every value unknown (a death, a lost broker, a retained birth)."""
        self.values.clear()
        self.lines.clear()

    def apply(
        self,
        values: list[tuple[int, float]],
        stale: list[int],
        gone: list[int],
        lines: protocol.Lines | None = None,
        k: int = 0,
    ) -> None:
        """One tick's changes at tick index ``k``: the lines held move on to ``k``, then the values
        sent (``lines``: those sent as lines), the stale ones unknown, the gone ones out of the table."""
        held = self.lines
        for a, (v, slope, k0) in held.items():
            self.values[a] = v + slope * float(k - k0)
        for a, v in values:
            line = lines.get(a) if lines else None
            if line is None:
                self.values[a] = v
                if held:
                    held.pop(a, None)
            else:
                slope, age = line
                held[a] = (v, slope, k - age)
                self.values[a] = v + slope * float(age)
        for a in stale:
            self.values.pop(a, None)
            held.pop(a, None)
        if gone:
            out = set(gone)
            for a in out:
                self.values.pop(a, None)
                held.pop(a, None)
            self.keys = {a: k for a, k in self.keys.items() if a not in out}
            self.deltas = {a: d for a, d in self.deltas.items() if a not in out}

    def key_deltas(self) -> dict[SeriesKey, float]:
        """Each series' tracking error Δ as the last birth announced it."""
        return {k: self.deltas.get(a, np.nan) for a, k in self.keys.items()}


#: listener(host_state, message) called after a birth or data message was applied
Listener = Callable[[HostState, protocol.Message], None]


class Ingest:
    def __init__(
        self,
        request_rebirth: Callable[[str, str], None] | None = None,
        *,
        faults: Faults | None = None,
        max_message_size: int = protocol.MAX_MESSAGE_SIZE,
        max_reply_size: int = protocol.MAX_REPLY_SIZE,
        awaits_reply: Callable[[protocol.Topic], bool] | None = None,
        max_series: int = MAX_SERIES_PER_HOST,
    ):
        self.hosts: dict[tuple[str, str], HostState] = {}
        #: the most series one host's birth may announce (``--max-series-per-host``)
        self.max_series = max_series
        self.request_rebirth = request_rebirth or (lambda site, host: None)
        self.faults = faults if faults is not None else Faults(log)
        self.max_message_size = max_message_size
        self.max_reply_size = max_reply_size
        self.awaits_reply = awaits_reply or (lambda topic: False)
        self.dropped: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.values_ingested = 0
        self.listeners: list[Listener] = []
        #: called with every controller state and beat heard
        self.presence: list[Callable[[protocol.Topic, protocol.State], None]] = []
        self.replies: list[Callable[[protocol.Topic, protocol.Reply], None]] = []

    def host(self, site: str, host: str) -> HostState:
        state = self.hosts.get((site, host))
        if state is None:
            state = self.hosts[(site, host)] = HostState(site, host)
        return state

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        # one log line per message would let a flood fill the disk: log the first of each kind,
        # then every 100th
        n = self.dropped[reason]
        if n == 1 or n % 100 == 0:
            log.warning("dropped message (%s, %d so far): %s", reason, n, detail)

    def drop(self, reason: str, detail: str) -> None:
        """Count and drop a message another part judged (a reply nobody asked for …)."""
        self._drop(reason, detail)

    def _resync(self, state: HostState, why: str) -> None:
        state.synced = False
        now = time.monotonic()
        if now - state.rebirth_asked >= REBIRTH_INTERVAL:
            state.rebirth_asked = now
            log.info("%s: %s; asking for a rebirth", state.scope, why)
            self.request_rebirth(state.site, state.host)

    def _limit(self, topic: str, payload: bytes) -> tuple[int, str]:
        """The size limit of one message, and the option that sets it."""
        if "/reply/" in topic and isinstance(payload, (bytes, bytearray)) and len(payload) > self.max_message_size:
            try:
                if self.awaits_reply(protocol.parse_topic(topic)):
                    return self.max_reply_size, "--max-reply-size"
            except protocol.ProtocolError:
                pass
        return self.max_message_size, "--max-message-size"

    def _refuse_birth(self, state: HostState, msg: protocol.Birth) -> None:
        """Refuse a birth with more than ``max_series`` series: nothing of it is stored."""
        self.dropped["too-many-series"] += 1
        if state.refused_session != msg.session:
            state.refused_session = msg.session
            state.rebirth_asked = time.monotonic()  # the next request waits REFUSED_REBIRTH_INTERVAL
            log.warning(
                "%s: birth of session %d announces %d series, more than max_series_per_host = %d: refused whole, "
                "and this session's data is dropped; the host's %d stored series are kept. Raise "
                "--max-series-per-host (max_series_per_host in the config file) to accept it.",
                state.scope,
                msg.session,
                len(msg.series),
                self.max_series,
                len(state.keys),
            )

    def lost_broker(self) -> None:
        """The controller's connection is gone: nothing it holds is known to be current."""
        for state in self.hosts.values():
            if state.synced or state.alive:
                state.synced = state.alive = False
                state.forget_values()

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Apply one MQTT message (``retained``: the broker's stored copy, delivered on
        subscribing). Never raises."""
        try:
            t, msg = protocol.decode(topic, payload, *self._limit(topic, payload))
        except protocol.ProtocolError as e:
            self._drop(e.reason, str(e))
            return
        except Exception as e:  # decode is total: this is a bug, which must not stop ingest
            self.faults.note("decode", e)
            self._drop("internal", f"{topic}: {type(e).__name__}: {e}")
            return
        self.messages[t.kind] += 1
        try:
            self._apply(t, msg, retained)
        except Exception as e:  # a bug here must not stop ingest
            self.faults.note(f"ingest of a {t.kind} message", e)
            self._drop("internal", f"{topic}: {type(e).__name__}: {e}")

    def _retained_birth(self, state: HostState, msg: protocol.Birth) -> None:
        """Learn the host's series from a retained birth; its values wait for a live birth."""
        if state.session is not None and msg.session < state.session:
            self._drop(
                "old-birth", f"{state.scope}: retained birth of session {msg.session} older than {state.session}"
            )
            return
        if state.synced and state.session == msg.session:
            return  # this very session is live here already
        state.take_table(msg)
        state.forget_values()
        state.synced = state.alive = False
        self.messages["retained-birth"] += 1
        log.info(
            "%s: retained birth of session %d (%.0f s old, %d series): its values wait for a live birth",
            state.scope,
            msg.session,
            max(0.0, time.time() - msg.ts),
            len(msg.series),
        )

    def _apply(self, t: protocol.Topic, msg: protocol.Message, retained: bool = False) -> None:
        if isinstance(msg, protocol.Reply):
            for cb in self.replies:
                cb(t, msg)
            return
        if isinstance(msg, protocol.State):  # another controller's state or beat (states: .election)
            for cb in self.presence:
                cb(t, msg)
            return
        if isinstance(msg, protocol.Command):
            return
        state = self.host(t.site, t.host)
        if isinstance(msg, protocol.Birth) and len(msg.series) > self.max_series:
            self._refuse_birth(state, msg)
            return
        if isinstance(msg, protocol.History):
            for listener in self.listeners:
                listener(state, msg)
            return
        if isinstance(msg, protocol.Birth) and retained:
            self._retained_birth(state, msg)
            return
        if isinstance(msg, protocol.Data) and msg.session == state.refused_session:
            # no last_seen: a host whose every message is refused leaves the live set, and its
            # stored values are not handed to the detectors as if they were current
            self.dropped["refused-session"] += 1
            now = time.monotonic()
            if now - state.rebirth_asked >= REFUSED_REBIRTH_INTERVAL:
                state.rebirth_asked = now
                self.request_rebirth(state.site, state.host)
            return
        state.last_seen = time.time()
        if isinstance(msg, protocol.Birth):
            if state.session is not None and msg.session < state.session:
                self._drop("old-birth", f"{state.scope}: birth of session {msg.session} older than {state.session}")
                return
            if state.refused_session is not None:
                log.info("%s: birth of session %d within the series limit: accepted again", state.scope, msg.session)
                state.refused_session = None
            state.take_table(msg)
            state.take_values(msg.series, msg.seq - 1)
            state.last_ts = msg.ts
            state.alive = True
            state.synced = True
            state.fresh_at = time.monotonic()
            self.values_ingested += len(state.values)
            log.info("%s: birth, session %d, %d series", state.scope, msg.session, len(msg.series))
        elif isinstance(msg, protocol.Data):
            if msg.session != state.session:
                if state.session is None or msg.session > state.session:
                    self._drop("unknown-session", f"{state.scope}: data of session {msg.session}, no birth seen for it")
                    self._resync(state, f"data from unknown session {msg.session}")
                else:
                    self._drop("old-session", f"{state.scope}: data of old session {msg.session}")
                return
            if not state.synced:
                self._drop("unsynced", f"{state.scope}: data while waiting for a rebirth")
                self._resync(state, "still waiting for a rebirth")
                return
            if msg.seq != state.seq + 1:
                gap = f"sequence gap (seq {msg.seq} after {state.seq})"
                self._drop("seq-gap", f"{state.scope}: {gap}")
                state.seq = msg.seq
                self._resync(state, gap)
                return
            unknown = [a for a, _ in msg.values if a not in state.keys] + [
                a for a in msg.stale + msg.gone if a not in state.keys
            ]
            if unknown:
                self._drop("unknown-alias", f"{state.scope}: aliases {unknown[:5]} not in the birth")
                self._resync(state, f"unknown aliases {unknown[:5]}")
                return
            state.seq = msg.seq
            state.apply(msg.values, msg.stale, msg.gone, msg.lines, msg.seq)
            state.last_ts = msg.ts
            state.alive = True
            state.fresh_at = time.monotonic()
            self.values_ingested += len(msg.values)
        elif isinstance(msg, protocol.Death):
            if state.session is not None and msg.session < state.session:
                return  # the will of a session already replaced
            state.alive = False
            state.forget_values()
            log.info("%s: death (%s)", state.scope, msg.reason or "no reason")
        for listener in self.listeners:
            listener(state, msg)

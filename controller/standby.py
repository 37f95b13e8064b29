"""Hot standby in the controller process: what it does with the election's decision.

:class:`Roles` runs the role loop — beats every :data:`.election.BEAT` seconds, a retained state
on each role change, the alarms file taken over on becoming active and let go on becoming a
standby everywhere — and keeps the anomalies a standby found in the last :data:`HELD_FOR` seconds,
recorded when it takes over (the store skips the rows the previous controller recorded). What does
not live here: the election's rules (:mod:`.election`), the store's takeover (:mod:`.alarms`),
what the controller gates on the role (:mod:`.app`, :mod:`.commands`). ``docs/design.md`` ("Scale")
says why it works so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from atomwatch import protocol
from atomwatch.alarm import Alarm
from atomwatch.config import ConfigError
from atomwatch.mqtt import wait_or_timeout
from atomwatch.types import Anomaly

from .alarms import AlarmStore
from .election import BEAT, DEAD_AFTER, Election

log = logging.getLogger(__name__)

#: a standby keeps the anomalies it found this many seconds (at most HELD_MAX), to record on taking over
HELD_FOR = 60.0
HELD_MAX = 10_000
#: seconds between two warnings that the alarms file cannot be taken over yet
WARN_EVERY = 60.0


def site_of(scope: str) -> str:
    return scope.split("/", 1)[0]


class Roles:
    """One controller's side of the hot standby: ``election`` decides, this acts on it."""

    def __init__(
        self,
        election: Election,
        alarms: AlarmStore,
        takeover_gap: float,
        client: Callable[[], aiomqtt.Client | None],
        spawn: Callable[[Awaitable[Any], str], Any],
        announce: Callable[[Alarm, bool | None, Anomaly], None],
    ) -> None:
        self.election, self.alarms = election, alarms
        self.takeover_gap = takeover_gap
        self.client, self.spawn, self.announce = client, spawn, announce
        #: a standby's anomalies of late (monotonic time found, anomaly, columns, values)
        self.held: deque[tuple[float, Anomaly, Any, Any]] = deque()
        #: set when another controller's state or beat changes something: decide at once
        self.wake = asyncio.Event()
        self._warned = 0.0

    # ------------------------------------------------------------------ what the controller asks

    def acts_on(self, site: str) -> bool:
        """Whether an anomaly of ``site`` is recorded now (else held)."""
        return self.election.is_active(site) and self.alarms.writable

    def standby_reason(self, site: str) -> str | None:
        """Why this controller may not act on ``site`` now (None: it may)."""
        if self.election.is_active(site):
            return None
        peer = self.election.active_peer(site)
        return f"this controller ({self.election.name}) is a standby on site {site}" + (
            f"; the active one is {peer}" if peer else "; no controller is active there yet"
        )

    def heard(self, topic: protocol.Topic, msg: protocol.State) -> None:
        """Another controller's state or beat (an ingest listener)."""
        before = self.election.members.get(topic.site, {}).get(msg.controller)
        self.election.heard(topic.site, msg)
        if before is None or (before.online, before.active) != (msg.online, msg.active):
            self.wake.set()  # (a will saying offline: the standby takes over now)

    def state(self, site: str, online: bool = True, beat: bool = False) -> protocol.State:
        """This controller's state (or beat) on ``site``."""
        return (protocol.Beat if beat else protocol.State)(
            online=online,
            ts=time.time(),
            controller=self.election.name,
            rank=self.election.rank or 0,
            active=online and self.election.is_active(site),
        )

    def hold(self, anomaly: Anomaly, columns: Any, values: Any) -> None:
        now = time.monotonic()
        self.held.append((now, anomaly, columns, values))
        while self.held and (now - self.held[0][0] > HELD_FOR or len(self.held) > HELD_MAX):
            self.held.popleft()

    # ------------------------------------------------------------------ the loop

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: decide, act on changes, beat. Never raises (one failure is logged
        and the loop goes on)."""
        next_beat = 0.0
        while not stopping.is_set():
            try:
                next_beat = await self._step(next_beat)
            except Exception:
                log.exception("the hot standby's role loop failed; going on")
            await wait_or_timeout(self.wake, BEAT / 4)
            self.wake.clear()

    async def _step(self, next_beat: float) -> float:
        changed = self.election.decide()
        for site, active in changed:
            peer = self.election.active_peer(site)
            log.warning(
                "site %s: this controller (%s) is now %s",
                site,
                self.election.name,
                "the active one" if active else "a standby" + (f" ({peer} is active)" if peer else ""),
            )
        active = [s for s in self.election.sites if self.election.is_active(s)]
        if active and not self.alarms.writable:
            try:
                await asyncio.to_thread(self.alarms.take_over, self.takeover_gap, self.election.name)
            except ConfigError as e:
                if time.monotonic() - self._warned >= WARN_EVERY:
                    self._warned = time.monotonic()
                    log.warning("cannot take the alarms file over yet (%s); anomalies are held meanwhile", e)
        elif not active and changed and self.alarms.writable and self.election.enabled:
            await asyncio.to_thread(self.alarms.release)
        if self.alarms.writable:
            self._record_held()
        client = self.client()
        if client is None:
            return next_beat
        for site, _ in changed:  # (a task: a broker slow to store it must not hold the beats)
            topic = protocol.state_topic(site, self.election.name)
            payload = protocol.encode(self.state(site))
            self.spawn(client.publish(topic, payload, qos=1, retain=True), f"state of {site}")
        if self.election.enabled and time.monotonic() >= next_beat:
            next_beat = time.monotonic() + BEAT
            try:
                for site in self.election.sites:
                    beat = protocol.encode(self.state(site, beat=True))
                    await client.publish(protocol.beat_topic(site, self.election.name), beat, qos=0)
            except aiomqtt.MqttError:
                pass  # the connection loop says it and reconnects
        return next_beat

    def _record_held(self) -> None:
        """Record the held anomalies of the sites this controller now acts on, in the order found."""
        keep: deque = deque()
        while self.held:
            item = self.held.popleft()
            anomaly = item[1]
            if not self.election.is_active(site_of(anomaly.scope)):
                keep.append(item)
                continue
            try:
                alarm, opened = self.alarms.record(anomaly, item[2], item[3])
            except Exception:
                log.exception("could not record the anomaly of %s on %s", anomaly.detector, anomaly.scope)
                continue
            self.announce(alarm, opened, anomaly)
        self.held = keep


def takeover_gap(merge_gap: int, tick: float) -> float:
    """Seconds after a taken-over alarm's last change within which an anomaly extends it."""
    return (merge_gap + 1) * tick + DEAD_AFTER + BEAT

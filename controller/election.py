"""Which controller of a site acts: hot standbys elected through the broker.

Several controllers may watch the same sites (a shard); all of them receive its data and keep their
detectors warm, and on each site exactly one is *active* (records alarms, sends commands, pushes
Δ) while the others only watch. Each publishes, per site, a retained ``state`` (online, its
``rank``, whether active; its last will says offline) and a ``beat`` every :data:`BEAT` seconds.
:class:`Election` turns what it hears into a decision, by these rules (lowest ``(rank, name)``
first):

- a member is *alive* while its state says online and its last beat (or state) is at most
  :data:`DEAD_AFTER` seconds old (a node of a clustered broker that dies takes its clients' wills
  with it: the beats say it);
- an active controller stays active unless an alive member that ranks before it also says active
  (two actives after a partition heal: the later one yields) — no preemption otherwise, so a
  restarted controller with cold models does not take over from a warm one;
- a standby takes over when no alive member is active and none that ranks before it is alive,
  once :data:`SETTLE` seconds have passed since it connected (the retained states and a beat of
  every alive member have arrived by then);
- a controller away from the broker for :data:`DEAD_AFTER` seconds steps down (the others take
  over then).

Without a rank (``--rank`` not given) there is no election: the controller is always active, as a
lone controller is. What does not live here: publishing states and beats (:mod:`.app`), what being
active gates (:mod:`.app`, :mod:`.commands`), taking over the alarms file (:mod:`.alarms`).
``docs/scale.md`` has the failover figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from atomwatch import protocol

#: seconds between two heartbeats of a controller
BEAT = 1.0
#: a member whose last beat is older than this is dead (five beats missed: a busy process may
#: stall a few seconds; a killed one is seen at once, by its last will)
DEAD_AFTER = 5.0
#: seconds after subscribing before a standby may take over (retained states and two beats heard)
SETTLE = 2.5 * BEAT


@dataclass
class Member:
    """What this controller last heard of another controller of one site."""

    name: str
    rank: int
    online: bool
    active: bool
    heard: float  # monotonic time of its last state or beat

    def key(self) -> tuple[int, str]:
        return (self.rank, self.name)


class Election:
    """The decision of one controller (``name``, ``rank``; ``rank`` None: no election, always
    active) on each of its ``sites``. Feed it with :meth:`heard`, :meth:`connected` and
    :meth:`disconnected`; :meth:`decide` returns the sites whose role changed."""

    def __init__(
        self, name: str, rank: int | None, sites: list[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name, self.rank, self.sites = name, rank, list(sites)
        self.clock = clock
        self.members: dict[str, dict[str, Member]] = {s: {} for s in self.sites}
        self.active: dict[str, bool] = {s: rank is None for s in self.sites}
        self.connected_at: float | None = None
        self.away_since: float | None = clock()
        #: takeovers and step-downs so far (``atomwatch_controller_role_changes_total``)
        self.changes = 0

    @property
    def enabled(self) -> bool:
        return self.rank is not None

    def is_active(self, site: str) -> bool:
        """Whether this controller acts on ``site`` (always, without an election)."""
        return self.rank is None or self.active.get(site, False)

    def key(self) -> tuple[int, str]:
        return (self.rank or 0, self.name)

    def heard(self, site: str, msg: protocol.State) -> None:
        """A state or beat of a controller on ``site`` (our own are ignored)."""
        if site not in self.members or msg.controller == self.name:
            return
        self.members[site][msg.controller] = Member(msg.controller, msg.rank, msg.online, msg.active, self.clock())

    def connected(self) -> None:
        """Subscribed again: the retained states of the others are (being) heard."""
        self.connected_at, self.away_since = self.clock(), None

    def disconnected(self) -> None:
        self.connected_at = None
        self.away_since = self.away_since or self.clock()
        for members in self.members.values():  # what was heard is stale: hear it again
            members.clear()

    def alive(self, site: str) -> list[Member]:
        now = self.clock()
        return [m for m in self.members.get(site, {}).values() if m.online and now - m.heard <= DEAD_AFTER]

    def active_peer(self, site: str) -> str | None:
        """The name of another alive controller that says it is active on ``site``."""
        return next((m.name for m in sorted(self.alive(site), key=Member.key) if m.active), None)

    def decide(self) -> list[tuple[str, bool]]:
        """Apply the rules; returns ``(site, now_active)`` for each site whose role changed."""
        if not self.enabled:
            return []
        now = self.clock()
        changed = []
        for site in self.sites:
            was = self.active[site]
            if self.connected_at is None:
                active = was and now - (self.away_since or now) < DEAD_AFTER
            else:
                alive = self.alive(site)
                if was:
                    active = not any(m.active and m.key() < self.key() for m in alive)
                else:
                    settled = now - self.connected_at >= SETTLE
                    active = (
                        settled and not any(m.active for m in alive) and not any(m.key() < self.key() for m in alive)
                    )
            if active != was:
                self.active[site] = active
                self.changes += 1
                changed.append((site, active))
        return changed

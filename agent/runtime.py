"""The agent process: the tick loop (collect → track → publish) and its MQTT session.

Each tick the sampler reads every collector, the series table notes which series appeared or
went, the tracker decides which values leave their feasible interval, and one ``data`` message
carries only those (plus stale and gone markers). A new series, a (re)connection, a rebirth
request or the controller coming online makes the agent publish a fresh ``birth`` whose table and
current tracked values let the controller start over in one message.

Sampling and tracking go on while the broker is unreachable or no controller's state says online
(its retained state, offline after its will, or none yet; none heard, the agent subscribes to
the states again, a few times a minute at most): each tick no controller is known to hear
goes to the :class:`~.backlog.Backlog` (store-and-forward, as Sparkplug edge nodes do while their
primary host is away). On reconnection the birth carries the tracker's values, so the controller
is right again from the first tick after it, and says how many ticks are queued; they follow as
``history`` messages, oldest first, between the live ticks. On SIGTERM the agent sends what it can
of its backlog within a few seconds, then keeps the rest in ``--backlog-dir`` (when given) and
publishes its death.

No received message ends the session: one that does not decode (``--max-message-size`` included)
is counted by reason and dropped, an unexpected exception while handling one is counted (logged
once per kind) and the next message handled; the counts are on ``--metrics`` (:mod:`.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from atomwatch import __version__, protocol, signing
from atomwatch.mqtt import Faults, stay_connected, stop_on_signals, subscribe, wait_or_timeout
from atomwatch.pluginmanager import call_safely
from atomwatch.series import SeriesKey
from atomwatch.tracking import AdaptiveTracker, make_tracker
from atomwatch.types import CommandError, CommandHandler

from .backlog import Backlog
from .commands import CommandRunner
from .config import AgentConfig
from .metrics import PhaseTimes
from .sampling import Sampler
from .series_table import SeriesTable

log = logging.getLogger(__name__)

#: what a tick published: ("data", session, seq), ("birth", session, births so far) or None
Published = tuple[str, int, int] | None
#: seconds a stopping agent spends sending its backlog before it keeps the rest (file) or drops it
STOP_FLUSH_SECONDS = 5.0
#: ticks published as data that go back into the backlog when the connection is lost: a broker
#: killed after acknowledging them may not have passed them on (the controller skips those its
#: last live row already held)
RECENT_FRAMES = 8
#: seconds after connecting without any controller's state before the agent subscribes to the
#: states again (the broker then sends the retained ones again: a cluster node failing over may
#: not have sent them the first time), doubling up to STATE_ASK_MAX
STATE_ASK_AFTER = 5.0
STATE_ASK_MAX = 60.0

#: called after every tick with (agent, true values in alias order, send mask, what was published)
TickListener = Callable[["Agent", np.ndarray, np.ndarray, Published], None]


def _new_session() -> int:
    """A session is one MQTT connection; its number increases across reconnections and restarts
    (milliseconds since the epoch). A rebirth within a connection keeps the session (so the last
    will, which names it, always matches) and the sequence goes on: the birth names the sequence
    number of the next data message, so (session, seq) identifies one message."""
    return int(time.time() * 1000)


class Agent:
    def __init__(self, config: AgentConfig, pm: Any):
        self.config = config
        self.pm = pm
        collectors = []
        for plugin, result in call_safely(pm, "register_collectors", config=config):
            collectors.extend(result)
            log.info("plugin %s runs collector(s) %s", plugin, ", ".join(getattr(c, "name", "?") for c in result))
        if not collectors:
            log.warning("no collector runs on this agent: it will publish empty births")
        self.sampler = Sampler(collectors, config.budget)
        handlers: dict[str, CommandHandler] = {}
        for _plugin, result in call_safely(pm, "register_agent_commands", config=config):
            handlers.update(result)
        handlers.update({"rebirth": self._cmd_rebirth, "set-delta": self._cmd_set_delta})
        self.commands = CommandRunner(handlers)

        self.table = SeriesTable()
        rule = config.one_tracking_rule
        #: one rule for every series, or (rules by metric) the adaptive tracker with series pinned to theirs
        self.tracker = make_tracker(rule, gamma=config.gamma) if rule else AdaptiveTracker(gamma=config.gamma)
        self.stale_sent = np.zeros(0, dtype=bool)
        #: the Δ last asked for each alias (in force from the series' next round)
        self.deltas = np.zeros(0)
        self._controller_online: bool | None = None
        #: a tick was kept (not published live) since the last birth: the next live message is a birth
        self._kept_since_birth = False
        #: each controller of the site heard since connecting → online (any online: someone hears)
        self._controllers: dict[str, bool] = {}
        #: (monotonic time, seconds) of the last subscription to the states and the wait before the next
        self._states_asked = (0.0, STATE_ASK_AFTER)
        self._asking: asyncio.Future | None = None
        self.session = 0
        self.seq = 0
        self.client: aiomqtt.Client | None = None
        self.need_birth = True
        #: a tick was tracked and its message not published yet
        self._tick_pending = False
        self.publish_lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.ticks = 0
        self.listeners: list[TickListener] = []
        self.stats = {
            "births": 0,
            "data": 0,
            "values_sent": 0,
            "samples": 0,
            "bad_commands": 0,
            "publish_failed": 0,
            "commands_refused": 0,
            "history": 0,
            # of the readable values sampled: those the tracking rule sent (they left their feasible
            # interval; published live or kept in the backlog) and those it held back (within Δ)
            "values_sampled": 0,
            "values_tracked": 0,
            "values_suppressed": 0,
        }
        #: seconds each phase of a tick took (collect, track, publish), for --metrics
        self.tick_times = PhaseTimes(("collect", "track", "publish"))
        #: series whose last reading was stale, and the VMs they belong to (after the last tick)
        self.stale_series = 0
        self.stale_vms = 0
        #: refused commands by reason (unsigned, bad-signature, wrong-addressee, expired, future, replayed, no-key)
        self.refused: dict[str, int] = {}
        #: received messages dropped by reason (invalid, too-large, too-deep)
        self.dropped: Counter[str] = Counter()
        #: unexpected exceptions on the receive path, by (where, type)
        self.faults = Faults(log)
        self.metrics_server = None
        self.verifier = signing.Verifier(
            config.controller_keys,
            config.site,
            config.host,
            lifetime=config.command_lifetime,
            skew=config.command_skew,
        )
        self.connected = asyncio.Event()
        path = None if config.backlog_dir is None else Path(config.backlog_dir) / f"{config.site}+{config.host}.backlog"
        self.backlog = Backlog(config.backlog_frames, config.backlog_bytes, path=path)
        #: the last ticks published as data, sent again after an outage (see :meth:`tick`)
        self._recent = Backlog(RECENT_FRAMES, ring=True)
        self._flushing: asyncio.Task | None = None

    # ------------------------------------------------------------------ Δ

    def _delta_for(self, key: SeriesKey, default: float | None) -> float:
        d = self.config.deltas
        if key.metric in d:
            return d[key.metric]
        if "*" in d:
            return d["*"]
        return float(default) if default is not None else 0.0

    # ------------------------------------------------------------------ tick

    async def tick(self) -> None:
        started = time.perf_counter()
        reading = await self.sampler.sample()
        collected = time.perf_counter()
        self.tick_times.observe("collect", collected - started)
        change = self.table.update(reading.values.keys())
        if change.new:
            new_keys = [self.table.keys[a] for a in change.new]
            deltas = np.array([self._delta_for(k, reading.deltas.get(k)) for k in new_keys])
            grow = len(self.table) - len(self.deltas)
            self.tracker.resize(len(self.table), 0.0)
            self.deltas = np.concatenate([self.deltas, np.zeros(grow)])
            self.stale_sent = np.concatenate([self.stale_sent, np.zeros(grow, dtype=bool)])
            idx = np.array(change.new)
            self.tracker.invalidate(idx)  # (a series that came back starts a new round)
            self.tracker.set_delta(idx, deltas)
            if isinstance(self.tracker, AdaptiveTracker) and self.config.one_tracking_rule is None:
                self.tracker.set_rule(idx, [self.config.tracking_rule(k.metric) for k in new_keys])
            self.deltas[idx] = deltas
            self.need_birth = True
            log.info(
                "%d new series (%s)",
                len(change.new),
                ", ".join(k.column for k in new_keys[:5]) + (" …" if len(new_keys) > 5 else ""),
            )
        if change.gone:
            self.tracker.invalidate(np.array(change.gone))
            log.info(
                "%d series gone (%s)", len(change.gone), ", ".join(self.table.keys[a].column for a in change.gone[:5])
            )
        f = self.table.vector(reading.values)
        send = self.tracker.step(f)
        active = self.table.active
        stale_now = active & np.isnan(f)
        new_stale = stale_now & ~self.stale_sent
        self.stale_sent = (self.stale_sent | stale_now) & ~send
        self.stale_sent[~active] = False
        self.ticks += 1
        self.stats["samples"] += int(active.sum())
        readable = int((active & ~np.isnan(f)).sum())
        tracked = int((send & active).sum())
        self.stats["values_sampled"] += readable
        self.stats["values_tracked"] += tracked
        self.stats["values_suppressed"] += max(0, readable - tracked)
        self.stale_series = int(stale_now.sum())
        self.stale_vms = len({self.table.keys[a].vm_uuid for a in np.flatnonzero(stale_now)})
        sent = np.flatnonzero(send & active)
        value, slope, age = self.tracker.line(sent)
        values = [(int(a), float(v)) for a, v in zip(sent, value, strict=True)]
        lines = {int(sent[i]): (float(slope[i]), int(age[i])) for i in np.flatnonzero(slope)}
        msg_stale = [int(a) for a in np.flatnonzero(new_stale)]
        ts = time.time()
        tracked_at = time.perf_counter()
        self.tick_times.observe("track", tracked_at - collected)
        self._tick_pending = True  # (a birth published before this tick's message covers it)
        published = await self._publish_tick(ts, values, msg_stale, change.gone, lines)
        frame = protocol.Frame(ts, values, msg_stale, list(change.gone), lines)
        if published is None:
            self._queue(frame)
        elif published[0] == "data" and self.config.backlog_frames:
            # a broker that dies holding it loses a tick it acknowledged: the last few are sent
            # again after an outage (the controller skips those it had)
            self._recent.add(frame, self._series_of, self._tracked)
        else:  # a birth: the controller is right from here
            self._recent.clear()
        self.tick_times.observe("publish", time.perf_counter() - tracked_at)
        for listener in self.listeners:
            listener(self, f, send, published)

    def _series_of(self, alias: int) -> tuple[SeriesKey, float] | None:
        """(key, Δ) of an active alias, else None."""
        if alias >= len(self.table) or not self.table.active[alias]:
            return None
        return self.table.keys[alias], float(self.deltas[alias])

    def _tracked(self) -> dict[int, tuple[float, float, int]]:
        """Every value the tracker holds (the controller's copy), by alias: (value, slope, age)."""
        aliases = np.array([a for a in self.table.active_aliases() if not np.isnan(self.tracker.g[a])], dtype=np.intp)
        value, slope, age = self.tracker.line(aliases)
        return {int(a): (float(v), float(s), int(k)) for a, v, s, k in zip(aliases, value, slope, age, strict=True)}

    def _queue(self, frame: protocol.Frame) -> None:
        """Keep a tick no controller is known to hear (store-and-forward), within the backlog's bounds."""
        if self.config.backlog_frames == 0:
            return
        if not len(self.backlog):
            # (at start, before the first connection, this is the rule, not news)
            log.log(
                logging.INFO if self.stats["births"] else logging.DEBUG,
                "no controller can hear this agent (broker unreachable or controller offline): ticks are kept to be "
                "sent once it is back (--backlog-frames %d)",
                self.config.backlog_frames,
            )
        self.backlog.add(frame, self._series_of, self._tracked)

    async def _publish_tick(
        self,
        ts: float,
        values: list[tuple[int, float]],
        stale: list[int],
        gone: list[int],
        lines: protocol.Lines | None = None,
    ) -> Published:
        async with self.publish_lock:
            pending, self._tick_pending = self._tick_pending, False
            if not pending:
                # a birth went out after this tick was tracked (a command or a controller coming
                # online took the lock first): it holds this tick, whose index its seq − 1 is
                return ("birth", self.session, self.stats["births"])
            if self.client is None:
                return None
            if self._controller_online is not True:
                # no controller is known to hear it (its state says offline, or has not come since
                # this connection began): the tick is kept for when one is; a birth still goes
                # out, retained, for a controller to find the host by
                if self.need_birth:
                    await self._publish_birth_locked()
                # kept after the birth: the controller's live copy misses this tick, so the live
                # stream resumes with a new birth (its values include every kept tick's)
                self._kept_since_birth = True
                return None
            if self.need_birth or self._kept_since_birth:
                if await self._publish_birth_locked():
                    return ("birth", self.session, self.stats["births"])
                return None
            msg = protocol.Data(
                session=self.session, seq=self.seq, ts=ts, values=values, stale=stale, gone=gone, lines=lines or {}
            )
            if await self._publish(protocol.data_topic(self.config.site, self.config.host), msg, qos=1):
                self.seq += 1
                self.stats["data"] += 1
                self.stats["values_sent"] += len(values)
                return ("data", self.session, msg.seq)
            return None

    async def _publish_birth_locked(self) -> bool:
        # a tick tracked but not published yet is in this birth: its own message is not sent
        covers_tick = self._tick_pending
        series = []
        aliases = np.array(self.table.active_aliases(), dtype=np.intp)
        value, slope, age = self.tracker.line(aliases)
        for i, alias in enumerate(aliases.tolist()):
            known = not np.isnan(self.tracker.g[alias])
            series.append(
                protocol.SeriesInfo(
                    alias=alias,
                    key=self.table.keys[alias],
                    delta=float(self.deltas[alias]),
                    value=float(value[i]) if known else None,
                    slope=float(slope[i]) if known else 0.0,
                    age=int(age[i]) if known else 0,
                )
            )
        birth = protocol.Birth(
            session=self.session,
            agent=__version__,
            tick=self.config.tick,
            ts=time.time(),
            series=series,
            seq=self.seq,
            backlog=len(self.backlog),
        )
        if await self._publish(protocol.birth_topic(self.config.site, self.config.host), birth, qos=1, retain=True):
            self.need_birth = self._kept_since_birth = False
            if covers_tick:
                self._tick_pending = False
            self.stats["births"] += 1
            # the controller is right again from here: a later outage starts a new segment
            self.backlog.close_segment()
            log.info("birth: session %d, %d series", self.session, len(series))
            self._start_flush()
            return True
        return False

    def _start_flush(self) -> None:
        """Send the backlog in the background, if there is one and a controller is there to hear
        it (its retained state says online: history is not stored by the broker)."""
        if len(self.backlog) and self._controller_online and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush_backlog())

    async def _flush_backlog(self, deadline: float | None = None) -> None:
        """Send the backlog, oldest first, one history message at a time between the live ticks;
        stop at the first failure (the next birth starts again) or at ``deadline`` (monotonic)."""
        topic = protocol.history_topic(self.config.site, self.config.host)
        started, frames = time.monotonic(), len(self.backlog)
        log.info("sending %d ticks kept while no controller could hear them", frames)
        while len(self.backlog) and (deadline is None or time.monotonic() < deadline):
            async with self.publish_lock:
                if self.client is None or self.need_birth or not self._controller_online:
                    return
                chunk = self.backlog.next_chunk(self.session, self.config.tick)
                if chunk is None:
                    return
                if not await self._publish(topic, chunk, qos=1):
                    return
                self.backlog.sent(chunk)
                self.stats["history"] += 1
            await asyncio.sleep(0)
        if not len(self.backlog):
            log.info("backlog sent: %d ticks in %.2f s", frames, time.monotonic() - started)

    async def publish_birth(self) -> None:
        async with self.publish_lock:
            if self.client is not None:
                await self._publish_birth_locked()

    async def _publish(self, topic: str, msg: protocol.Message, qos: int = 1, retain: bool = False) -> bool:
        """Publish, giving up after a short timeout: a connection that died without the client
        noticing yet must not stall sampling. A failure makes the next tick a birth."""
        client = self.client
        if client is None:
            return False
        timeout = min(5.0, max(0.5, 2 * self.config.tick))
        try:
            await asyncio.wait_for(client.publish(topic, protocol.encode(msg), qos=qos, retain=retain), timeout)
            return True
        except (TimeoutError, aiomqtt.MqttError) as e:
            self.stats["publish_failed"] += 1
            log.warning("publish to %s failed: %s", topic, str(e) or "timed out")
            self.need_birth = True
            return False

    # ------------------------------------------------------------------ commands

    async def _cmd_rebirth(self, params: dict, progress: Any) -> dict:
        self.need_birth = True
        await self.publish_birth()
        return {"session": self.session}

    async def _cmd_set_delta(self, params: dict, progress: Any) -> dict:
        """``{"aliases": {"<alias>": Δ}}`` and/or ``{"metrics": {"<metric>": Δ}}``; Δ ≥ 0."""
        updates: dict[int, float] = {}
        by_metric = params.get("metrics") or {}
        by_alias = params.get("aliases") or {}
        if not isinstance(by_metric, dict) or not isinstance(by_alias, dict):
            raise CommandError("set-delta: 'metrics' and 'aliases' must be objects")
        if not by_metric and not by_alias:
            raise CommandError("set-delta needs 'metrics' {metric: Δ} or 'aliases' {alias: Δ}")

        def check(name: str, v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise CommandError(f"set-delta: Δ for {name} must be a finite number ≥ 0, got {v!r}")
            return float(v)

        for metric, v in by_metric.items():
            d = check(f"metric {metric!r}", v)
            for alias, key in enumerate(self.table.keys):
                if key.metric == metric:
                    updates[alias] = d
        for alias_text, v in by_alias.items():
            try:
                alias = int(alias_text)
            except ValueError:
                raise CommandError(f"set-delta: alias {alias_text!r} is not an integer") from None
            if not 0 <= alias < len(self.table):
                raise CommandError(f"set-delta: alias {alias} is not in this agent's series table")
            updates[alias] = check(f"alias {alias}", v)
        if updates:
            idx = np.array(sorted(updates))
            values = np.array([updates[i] for i in idx])
            self.tracker.set_delta(idx, values)
            self.deltas[idx] = values
            self.need_birth = True  # the retained birth announces each series' current Δ
        return {"applied": len(updates), "from": "next round of each series"}

    async def _handle_message(self, message: aiomqtt.Message) -> None:
        """Handle one received message; never raises (but for a lost connection)."""
        topic = str(message.topic)
        try:
            t, msg = protocol.decode(topic, message.payload, self.config.max_message_size)
        except protocol.ProtocolError as e:
            self.stats["bad_commands"] += 1
            self.dropped[e.reason] += 1
            n = self.dropped[e.reason]
            if n == 1 or n % 100 == 0:  # a flood must not fill the disk
                log.warning("dropped message (%s, %d so far): %s", e.reason, n, e)
            return
        try:
            await self._apply(message, topic, msg)
        except aiomqtt.MqttError:
            raise
        except Exception as e:
            self.faults.note(f"handling a {t.kind} message", e)

    async def _apply(self, message: aiomqtt.Message, topic: str, msg: protocol.Message) -> None:
        if isinstance(msg, protocol.State):
            # Each controller of the site says whether it is online (retained; its last will says
            # offline). A retained one arrives on every subscription; a live "online" means that
            # controller (re)started and has not seen this agent's birth, except the one retained.
            was = self._controller_online
            self._controllers[msg.controller] = msg.online
            self._controller_online = any(self._controllers.values())
            if msg.online and not message.retain:
                log.info("controller %s came online: rebirth", msg.controller or "?")
                self.need_birth = True
                await self.publish_birth()
            elif msg.online:
                self._start_flush()
            elif not self._controller_online and was is not False:
                # it may have died holding the last ticks, unscored: they go again with the rest
                if len(self._recent):
                    self.backlog.take(self._recent)
                log.warning(
                    "the controller (%s) is offline: ticks are kept (--backlog-frames %d) until it is back",
                    msg.controller or "?",
                    self.config.backlog_frames,
                )
        elif isinstance(msg, protocol.Command):

            async def reply(r: protocol.Reply, request_id: str = msg.id) -> None:
                await self._publish(protocol.reply_topic(self.config.site, self.config.host, request_id), r, qos=1)

            try:
                self.verifier.check(msg)
            except signing.Refused as e:
                self.stats["commands_refused"] += 1
                self.refused[e.reason] = self.refused.get(e.reason, 0) + 1
                log.warning("command refused (%s) on %s: %s", e.reason, topic, e)
                await reply(protocol.Reply(id=msg.id, status="error", ts=time.time(), error=str(e)))
                return
            log.info("command %s (%s), signed by key %s", msg.command, msg.id, msg.kid)
            self.commands.start(msg, reply)

    # ------------------------------------------------------------------ loops

    async def _tick_loop(self) -> None:
        tick = self.config.tick
        next_at = time.monotonic()
        while not self.stopping.is_set():
            try:
                self._ask_for_states()
                await self.tick()
            except Exception:  # one bad tick must not end the agent
                log.exception("tick failed")
            next_at += tick
            delay = next_at - time.monotonic()
            if delay < 0:  # overran: skip the missed ticks rather than bursting
                next_at = time.monotonic()
                delay = 0
            await wait_or_timeout(self.stopping, delay)

    @property
    def controller_heard(self) -> bool:
        """Whether a controller's state on this connection says online: live ticks go out (else
        they are kept in the backlog)."""
        return self.connected.is_set() and self._controller_online is True

    def _ask_for_states(self) -> None:
        """Subscribe to the controllers' states again (in the background) while none has been
        heard on this connection: the broker sends the retained ones on each subscription. Without
        a state the agent keeps every tick in its backlog; a retained message a clustered broker
        failed to send once (a node failing over) must not keep it so for good."""
        client = self.client
        asked, wait = self._states_asked
        if client is None or self._controller_online is not None or time.monotonic() - asked < wait:
            return
        self._states_asked = (time.monotonic(), min(STATE_ASK_MAX, 2 * wait))
        log.log(
            logging.INFO if wait == STATE_ASK_AFTER else logging.DEBUG,
            "no controller's state heard on this connection yet: asking the broker for the retained states again",
        )
        self._asking = asyncio.ensure_future(self._subscribe_states(client))

    async def _subscribe_states(self, client: aiomqtt.Client) -> None:
        try:
            await asyncio.wait_for(
                subscribe(client, [protocol.state_filter(self.config.site)], self.config.broker.qos), 5
            )
        except (TimeoutError, aiomqtt.MqttError) as e:
            log.warning("subscribing to the controllers' states again failed: %s", str(e) or "timed out")

    async def _connection_loop(self) -> None:
        cfg = self.config
        next_session = 0

        def will() -> aiomqtt.Will:
            nonlocal next_session
            next_session = max(_new_session(), self.session + 1)
            death = protocol.Death(session=next_session, reason="connection lost")
            return aiomqtt.Will(protocol.death_topic(cfg.site, cfg.host), protocol.encode(death), qos=1)

        async def on_connect(client: aiomqtt.Client) -> None:
            self._controller_online = None
            self._controllers.clear()
            self._states_asked = (time.monotonic(), STATE_ASK_AFTER)
            filters = [protocol.cmd_topic(cfg.site, cfg.host, "+"), protocol.state_filter(cfg.site)]
            await subscribe(client, filters, cfg.broker.qos)
            async with self.publish_lock:
                self.client = client
                self.session = next_session
                self.seq = 0
                await self._publish_birth_locked()
            self.connected.set()
            log.info("connected to %s as %s/%s", cfg.broker, cfg.site, cfg.host)

        def on_disconnect() -> None:
            self.client = None
            self.connected.clear()
            self.need_birth = True
            if len(self._recent):
                self.backlog.take(self._recent)

        await stay_connected(
            cfg.broker,
            identifier=f"atomwatch-agent-{cfg.site}-{cfg.host}",
            will=will,
            keepalive=max(5, int(cfg.tick * 3)),
            stopping=self.stopping,
            on_connect=on_connect,
            on_message=self._handle_message,
            on_disconnect=on_disconnect,
            log=log,
            faults=self.faults,
        )

    async def run(self) -> None:
        """Run until :meth:`stop`, SIGINT/SIGTERM or ``config.duration``."""
        if not self.config.controller_keys:
            log.warning(
                "no controller public key: every command (introspect, terminate, set-delta, rebirth) will be "
                "refused; give one with --controller-key FILE (controller_key in the config file, or "
                "ATOMWATCH_CONTROLLER_KEY)"
            )
        metrics = self.config.metrics_address()
        if metrics is not None:
            from .metrics import MetricsServer

            self.metrics_server = MetricsServer(self, metrics)
            self.metrics_server.start()
        stop_on_signals(self.stop)
        conn = asyncio.create_task(self._connection_loop(), name="agent-connection")
        ticks = asyncio.create_task(self._tick_loop(), name="agent-ticks")
        if self.config.duration:
            asyncio.get_running_loop().call_later(self.config.duration, self.stop)
        try:
            await self.stopping.wait()
        finally:
            ticks.cancel()
            await asyncio.gather(ticks, return_exceptions=True)
            await self.commands.close()
            await self._keep_backlog()
            client = self.client
            if client is not None:
                try:
                    death = protocol.Death(session=self.session, ts=time.time(), reason="clean stop")
                    await client.publish(
                        protocol.death_topic(self.config.site, self.config.host), protocol.encode(death), qos=1
                    )
                except aiomqtt.MqttError:
                    pass
            conn.cancel()
            await asyncio.gather(conn, return_exceptions=True)
            self.sampler.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            log.info(
                "agent stopped after %d ticks: %s, commands refused %s, messages dropped %s, unexpected errors %s",
                self.ticks,
                self.stats,
                self.refused,
                dict(self.dropped),
                {f"{where}: {kind}": n for (where, kind), n in self.faults.counts.items()},
            )

    async def _keep_backlog(self) -> None:
        """At stop: send what of the backlog fits in a few seconds; keep the rest on disk (when a
        file holds it) or say how many ticks are lost."""
        if self._flushing is not None and not self._flushing.done():
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)
        if len(self.backlog) and self.client is not None and not self.need_birth:
            try:
                await self._flush_backlog(deadline=time.monotonic() + STOP_FLUSH_SECONDS)
            except Exception as e:  # stopping must go on
                log.warning("could not send the backlog at stop: %s", e)
        if len(self.backlog):
            if self.backlog.path is not None:
                log.info("%d ticks of backlog kept in %s for the next start", len(self.backlog), self.backlog.path)
            else:
                log.warning(
                    "%d ticks of backlog are lost at stop (give --backlog-dir to keep them across restarts)",
                    len(self.backlog),
                )
        self.backlog.close()

    def stop(self) -> None:
        self.stopping.set()

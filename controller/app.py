"""The controller process: the MQTT session and the detection tick, and the object tying the parts.

Every ``config.tick`` seconds each live host scope yields one row of its rebuilt values (or, with
``config.rows = "data"``, one row as each data message of the host leaves them: one per agent
tick, whatever the phase of the two clocks); the rows go to the detectors in a worker thread
(or worker processes, ``detect_workers``), one tick's rows scored while the next tick's are made,
and every anomaly goes to the ``anomaly_detected`` hook (and, once the alarms store is
configured, opens or extends an alarm; the log gets one line per alarm event, :mod:`.alarm_log`,
and the anomalies of single rows only at DEBUG). The controller announces itself on the
retained ``state`` topic (its last will says offline), so agents re-birth when it comes back.

No row is made from values that may be wrong: a host whose last live message is older than
:data:`.ingest.FRESH_TICKS` of its ticks (plus a margin), whose agent died, or whose values
the controller lost with the broker, has no row until fresh data comes. An agent's history (its
ticks of an outage, :mod:`.history`) becomes late rows, scored in time order before the host's
live rows, which wait meanwhile; an alarm a late row opens or extends says so.

Controllers of one shard (the same sites) elect one *active* controller per site through the
broker (:mod:`.election`, ``--rank``); a standby makes its rows and runs its detectors like the
active one, but records no alarm, calls no orchestration hook and sends no command but a rebirth;
the anomalies it found lately are recorded when it takes over (those the previous controller had
recorded skipped), with the alarms file it then writes.

What does not live here (:class:`Controller` keeps its methods, which delegate): commands to
agents and their replies (:mod:`.commands`), verdicts, findings and closing alarms
(:mod:`.verdicts`), the μ → Δ push (:mod:`.delta_push`), what plugins are handed
(:mod:`.handle`), ingest (:mod:`.ingest`), the alarms store (:mod:`.alarms`), the HTTP API, the
tick's timing figures (:mod:`.timing`; the loop here records them).
"""

from __future__ import annotations

import asyncio
import cProfile
import inspect
import logging
import os
import pstats
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from atomwatch import protocol, signing
from atomwatch.alarm import Alarm, AlarmError, AlarmStoreUnavailable
from atomwatch.config import ConfigError
from atomwatch.detectors import detector_factories
from atomwatch.handles import CommandFailed, Progress, ScopeStatus
from atomwatch.mqtt import Faults, stay_connected, stop_on_signals, subscribe, wait_or_timeout
from atomwatch.options import did_you_mean
from atomwatch.pluginmanager import PluginManager, call_safely
from atomwatch.types import Anomaly, Row

from .alarm_log import AlarmLog
from .alarms import AlarmStore
from .commands import AgentCommands
from .config import ControllerConfig
from .delta_push import DeltaPush
from .detect_pool import DetectionPool
from .detection import Detection, DetectorSet
from .election import Election
from .handle import PluginHandle
from .history import History
from .ingest import HostState, Ingest
from .scopes import ScopeRows
from .standby import Roles, site_of, takeover_gap
from .timing import TickTiming
from .verdicts import Verdicts, alarm_rows

log = logging.getLogger(__name__)

#: rows = "data": rows taken while this many still wait for detection are skipped (and counted)
MAX_PENDING_ROWS = 100

# re-exported: older code imports these from here
__all__ = ["Controller", "CommandFailed", "Progress", "alarm_rows"]


class Controller:
    def __init__(self, config: ControllerConfig, pm: PluginManager):
        self.config = config
        self.pm = pm
        self.client: aiomqtt.Client | None = None
        self.tasks: set[asyncio.Task] = set()
        signer = signing.Signer(config.signing_key, config.command_lifetime) if config.signing_key else None
        self.commands = AgentCommands(
            lambda: self.client,
            self.spawn,
            signer,
            drop=lambda r, d: self.ingest.drop(r, d),
            max_pending=config.max_pending_commands,
            max_pending_per_host=config.max_pending_commands_per_host,
        )
        #: unexpected exceptions on the receive paths, by (where, type): atomwatch_unexpected_errors
        self.faults = Faults(log)
        self.ingest = Ingest(
            request_rebirth=self.commands.rebirth_soon,
            faults=self.faults,
            max_message_size=config.max_message_size,
            max_reply_size=config.max_reply_size,
            awaits_reply=self.commands.awaits,
            max_series=config.max_series_per_host,
        )
        self.ingest.replies.append(self.commands.on_reply)
        self.scope_rows = ScopeRows(max_columns=config.max_columns_per_scope)
        factories = detector_factories(pm)
        if config.detectors:
            unknown = [d for d in config.detectors if d not in factories]
            if unknown:
                raise ConfigError(
                    f"--detector {', '.join(unknown)}: no such detector{did_you_mean(unknown, factories)}; "
                    f"loaded: {', '.join(sorted(factories)) or 'none'}"
                )
            factories = {d: factories[d] for d in config.detectors}
        self.detectors = DetectorSet(factories, config.options)
        #: the detection worker processes (``detect_workers``; started by :meth:`run`)
        self.pool: DetectionPool | None = None
        #: which sites this controller acts on (hot standby, --rank); a standby reads the alarms file
        self.election = Election(config.name, config.rank, config.sites)
        self.alarms = AlarmStore(
            config.db,
            merge_gap=config.merge_gap,
            max_rows=config.alarm_rows,
            retention=config.alarm_retention * 86400.0,
            pending_max=config.alarm_pending,
            readonly=self.election.enabled and config.db != ":memory:",
        )
        #: the last status of every detector of every scope (written after each tick)
        self.scope_status: dict[str, ScopeStatus] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.http = None
        self.stopping = asyncio.Event()
        self.connected = asyncio.Event()
        #: ATOMWATCH_PROFILE=DIR (benchmarks/scale.py): cProfile of the event loop and of the
        #: detection thread, written to DIR when the controller stops
        self.profile_dir = os.environ.get("ATOMWATCH_PROFILE") or None
        self._profiles: dict[str, cProfile.Profile] = {}
        self.executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="detect",
            initializer=(lambda: self._profile_start("detect")) if self.profile_dir else None,
        )
        self.alarm_log = AlarmLog(config.alarm_log_every)
        #: hot standby: what this controller does with the election's decision
        self.roles = Roles(
            self.election,
            self.alarms,
            takeover_gap(config.merge_gap, config.tick),
            lambda: self.client,
            self.spawn,
            self._announce,
        )
        self.ingest.presence.append(self.roles.heard)
        self.commands.standby = self.roles.standby_reason
        self.verdicts = Verdicts(
            self.alarms, lambda: self.detection, self.executor, self.dispatch, alarm_log=self.alarm_log
        )
        self.deltas = DeltaPush(self.ingest.hosts, lambda: self.detection, self.executor, self.commands.send)
        #: what event hooks get instead of the controller (one per controller)
        self.handle = PluginHandle(
            self.commands, self.alarms, self.verdicts, self.scope_status, lambda name: self.config.plugin_options(name)
        )
        self.rows_handled = 0
        #: rows = "data": rows taken and not yet through detection; rows skipped for that
        self.rows_pending = 0
        self.rows_skipped = 0
        #: agents' historical data: late rows, and live rows held in line behind them
        self.history = History()
        self.rows_late = 0
        #: the tick loop's lateness, skipped ticks, tick durations and rows' delays (docs/scale.md)
        self.timing = TickTiming()
        #: the last batch of rows handed to the detectors (the next one waits for it)
        self._rows_tail: asyncio.Task | None = None
        self.ingest.listeners.append(self._on_host_message)
        if config.rows == "data":
            self.ingest.listeners.append(self._row_on_data)
        #: test and embedding hooks: called with each row / each anomaly
        self.row_listeners: list[Callable[[Row], None]] = []
        self.anomaly_listeners: list[Callable[[Anomaly], None]] = []

    # ------------------------------------------------------------------ plugins

    def dispatch(self, hook: str, **kwargs: Any) -> None:
        """Call an event hook on every plugin; schedule returned awaitables; never raise."""
        for plugin, result in call_safely(self.pm, hook, handle=self.handle, **kwargs):
            if inspect.isawaitable(result):
                self.spawn(result, f"{plugin}.{hook}")

    def spawn(self, aw: Awaitable[Any], name: str) -> asyncio.Task:
        async def guarded() -> None:
            try:
                await aw
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", name)

        task = asyncio.ensure_future(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # ------------------------------------------------------------------ delegated

    async def send_command(
        self,
        site: str,
        host: str,
        command: str,
        params: dict[str, Any] | None = None,
        timeout: float = 60.0,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Send a command to an agent and wait for its final reply (:meth:`AgentCommands.send`)."""
        return await self.commands.send(site, host, command, params, timeout=timeout, on_progress=on_progress)

    async def give_verdict(
        self, alarm_id: int, verdict: str, actor: str, params: dict[str, Any] | None = None
    ) -> Alarm:
        """The operator's verdict (:meth:`Verdicts.give_verdict`)."""
        try:
            sites = [self.alarms.get(alarm_id).scope.split("/", 1)[0]]
        except AlarmError:  # (not in the file yet, on a standby) said below, or by the verdict
            sites = list(self.config.sites)
        why = next((w for w in map(self.roles.standby_reason, sites) if w), None)
        if why:
            raise AlarmStoreUnavailable(f"alarm {alarm_id}: no verdict here: {why}")
        return await self.verdicts.give_verdict(alarm_id, verdict, actor, params)

    @property
    def held(self):
        """A standby's anomalies of late (:class:`.standby.Roles`)."""
        return self.roles.held

    def add_findings(self, alarm_id: int, actor: str, finding: dict[str, Any]) -> Alarm:
        return self.verdicts.add_findings(alarm_id, actor, finding)

    def close_alarm(self, alarm_id: int, actor: str, resolution: str, details: dict[str, Any] | None = None) -> Alarm:
        return self.verdicts.close_alarm(alarm_id, actor, resolution, details)

    async def push_deltas(self, scope: str) -> None:
        """ATOM's tracking/monitoring interaction (:meth:`DeltaPush.push` at the configured μ)."""
        if self.config.mu is not None:
            await self.deltas.push(scope, self.config.mu)

    # ------------------------------------------------------------------ detection tick

    @property
    def detection(self) -> Detection:
        """Where rows are scored: the worker processes, or ``detectors`` in the detection thread."""
        return self.pool if self.pool is not None else self.detectors

    def _detect(self, rows: list[Row]) -> list[Anomaly]:
        found, status = self.detection.run(rows)
        self.scope_status.update(status)
        return found

    async def tick(self) -> None:
        """One row of every live host's rebuilt values to the detectors (``rows = "tick"``)."""
        if self.config.rows != "tick":
            return
        now = time.time()
        for scope in self.history.timed_out():
            self._release(scope)
        rows = []
        sampled: list[float] = []  # the agent's time of each row's newest data
        for state in list(self.ingest.hosts.values()):
            if not state.is_live():
                continue
            if self.history.holding(state.scope):
                self.history.hold(state, now)
                continue
            row = self.scope_rows.row(state, now)
            if row is not None:
                rows.append(row)
                state.rowed_ts = max(state.rowed_ts, state.last_ts or 0.0)
                sampled.append(state.last_ts if state.last_ts is not None else np.nan)
        if rows:
            before = self._rows_tail
            scored = self._submit(rows, "the tick's rows")
            scored.add_done_callback(
                lambda _: self.timing.row_delay.observe(np.maximum(time.time() - np.array(sampled), 0.0))
            )
            # one batch in flight: this tick's rows are scored while the next tick's are made (in a
            # worker process with detect_workers); the loop waits for the batch before, so a
            # detection that falls behind still slows the ticks instead of piling rows up
            if before is not None and not before.done():
                await asyncio.wait([before])

    def _submit(self, rows: list[Row], what: str) -> asyncio.Task:
        """Hand ``rows`` to :meth:`handle_rows` after every batch submitted before them: late
        rows, held rows and live rows reach the detectors in the order they were made."""
        previous = self._rows_tail

        async def in_turn() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await self.handle_rows(rows)

        task = self._rows_tail = self.spawn(in_turn(), what)
        return task

    def _on_host_message(self, state: HostState, msg: protocol.Message) -> None:
        """Ingest listener: a live birth may announce a backlog (hold the host's rows); history
        becomes late rows; the last history message, a death or a birth with no backlog release the
        held rows after them."""
        if isinstance(msg, protocol.History):
            states = self.history.replay(state, msg)
            rows = [r for s, ts in states if (r := self.scope_rows.row(s, ts, late=True)) is not None]
            if rows:
                self.rows_late += len(rows)
                self._submit(rows, f"{len(rows)} late rows of {state.scope}")
            if msg.remaining == 0:
                self._release(state.scope)
        elif isinstance(msg, protocol.Birth):
            self._release(state.scope, self.history.on_birth(state, msg))
        elif isinstance(msg, protocol.Death):
            self._release(state.scope)

    def _release(self, scope: str, held: list[tuple[HostState, float]] | None = None) -> None:
        """The rows of ``scope`` held behind its history, to the detectors now (in order)."""
        held = self.history.release(scope) if held is None else held
        rows = [r for s, ts in held if (r := self.scope_rows.row(s, ts)) is not None]
        if rows:
            self._submit(rows, f"{len(rows)} held rows of {scope}")

    def _row_on_data(self, state: HostState, msg: protocol.Message) -> None:
        """Ingest listener of ``rows = "data"``: the host's row as this data message left it, to
        the detectors in arrival order (the snapshot is taken now; detection runs FIFO)."""
        if not isinstance(msg, protocol.Data) or not state.synced:
            return
        if self.history.expired(state.scope):  # (the tick loop, which releases these, does not run here)
            self._release(state.scope)
        if self.history.holding(state.scope):
            self.history.hold(state, time.time())
            return
        if self.rows_pending >= MAX_PENDING_ROWS:
            self.rows_skipped += 1
            if self.rows_skipped == 1 or self.rows_skipped % 1000 == 0:
                log.warning(
                    "detection is %d rows behind: the row of %s is skipped (%d so far)",
                    self.rows_pending,
                    state.scope,
                    self.rows_skipped,
                )
            return
        row = self.scope_rows.row(state, time.time())
        if row is None:
            return
        state.rowed_ts = max(state.rowed_ts, state.last_ts or 0.0)
        self.rows_pending += 1

        def handled(task: asyncio.Task) -> None:
            self.rows_pending -= 1

        self._submit([row], f"row {row.index} of {row.scope}").add_done_callback(handled)

    async def handle_rows(self, rows: list[Row]) -> None:
        """Hand ``rows`` to the detectors; open or extend alarms for their anomalies."""
        if not rows:
            return
        debug = log.isEnabledFor(logging.DEBUG)
        for row in rows:
            if debug:
                stale = int(np.isnan(row.values).sum())
                log.debug("row %d of %s: %d columns, %d stale", row.index, row.scope, len(row.columns), stale)
            for listener in self.row_listeners:
                listener(row)
        self.rows_handled += len(rows)
        by_row = {(row.scope, row.index): row for row in rows}
        anomalies = await asyncio.get_running_loop().run_in_executor(self.executor, self._detect, rows)
        for anomaly in anomalies:
            row = by_row.get((anomaly.scope, anomaly.index))
            if row is not None and row.late:
                # scored after an outage: the alarm's trail and log line say so
                anomaly.details["late"] = True
                anomaly.details["late_by"] = round(max(0.0, time.time() - row.ts), 3)
            # one line per abnormal row at DEBUG; the operator's lines are the alarm events (AlarmLog)
            log.debug(
                "anomaly: %s on %s row %d, score %.4g > %.4g; blames %s",
                anomaly.detector,
                anomaly.scope,
                anomaly.index,
                anomaly.score,
                anomaly.threshold,
                ", ".join(f"{b.column.column} {b.direction}" for b in anomaly.blame) or "nothing",
            )
            for listener in self.anomaly_listeners:
                listener(anomaly)
            columns, values = (row.columns, row.values) if row else (None, None)
            if not self.roles.acts_on(site_of(anomaly.scope)):
                self.roles.hold(anomaly, columns, values)  # a standby: recorded if it takes over
                continue
            try:  # in memory, at once: the store's writer thread writes it
                alarm, opened = self.alarms.record(anomaly, columns, values)
            except Exception:
                log.exception("could not record the anomaly of %s on %s", anomaly.detector, anomaly.scope)
                continue
            self._announce(alarm, opened, anomaly)
        if self.config.mu is not None:
            for row in rows:
                if row.index % self.config.mu_every == self.config.mu_every - 1 and self.election.is_active(
                    site_of(row.scope)
                ):
                    self.spawn(self.push_deltas(row.scope), f"set-delta for {row.scope}")

    def _announce(self, alarm: Alarm, opened: bool | None, anomaly: Anomaly) -> None:
        """The hooks, audit note and log line of a recorded anomaly."""
        if opened is None:
            return  # the controller this one took over from had recorded it
        self.dispatch("anomaly_detected", anomaly=anomaly)
        audit = anomaly.details.get("audit") if isinstance(anomaly.details, dict) else None
        if isinstance(audit, dict) and isinstance(audit.get("action"), str):
            try:  # what the detector did about this alarm (e.g. re-baselined while it waits)
                self.alarms.note(alarm.id, anomaly.detector, audit["action"], audit.get("details") or {})
            except Exception:
                log.exception("could not note %r on alarm %s", audit["action"], alarm.id)
        if opened:
            self.alarm_log.opened(alarm, anomaly.details.get("late_by"))
            self.dispatch("alarm_opened", alarm=alarm)
        else:
            self.alarm_log.extended(alarm)
            self.dispatch("alarm_updated", alarm=alarm, change="extended")

    async def _tick_loop(self) -> None:
        next_at = time.monotonic() + self.config.tick
        while not self.stopping.is_set():
            if await wait_or_timeout(self.stopping, next_at - time.monotonic()):
                break
            started = time.monotonic()
            self.timing.lateness.observe(max(0.0, started - next_at))
            try:
                await self.tick()
            except Exception:
                log.exception("controller tick failed")
            now = time.monotonic()
            self.timing.duration.observe(now - started)
            self.timing.ticks += 1
            next_at += self.config.tick
            if next_at < now:
                # the tick ran past the next one(s): they are skipped, not run late in a burst
                self.timing.skipped += int((now - next_at) // self.config.tick) + 1
                next_at = now + self.config.tick

    # ------------------------------------------------------------------ session

    async def _connection_loop(self) -> None:
        cfg = self.config

        def will() -> aiomqtt.Will:
            # MQTT has one will per connection: it marks the first site offline (the other
            # controllers of the shard see the rest in the beats stopping; docs/scale.md)
            offline = self.roles.state(cfg.sites[0], online=False)
            return aiomqtt.Will(
                protocol.state_topic(cfg.sites[0], cfg.name), protocol.encode(offline), qos=1, retain=True
            )

        async def on_connect(client: aiomqtt.Client) -> None:
            # the agents' messages at QoS 0: no PUBACK per message (a third of the receive path's
            # CPU), and no broker in-flight window that drops a stalled controller's messages beyond
            # its queue (Mosquitto's defaults kept 1,020 of a 10,000-message burst at QoS 1, 6,246 at
            # QoS 0: benchmarks/receive.py); a message lost either way is a sequence gap → a rebirth
            await subscribe(client, [f for site in cfg.sites for f in protocol.agent_filters(site)], qos=0)
            # the other controllers at QoS 0: beats are sent so, and a clustered broker serves a
            # QoS 0 subscription at once (NATS backs each QoS 1 one with a replicated consumer)
            await subscribe(client, [f for site in cfg.sites for f in protocol.controller_filters(site)], qos=0)
            self.client = client
            for site in cfg.sites:
                await client.publish(
                    protocol.state_topic(site, cfg.name), protocol.encode(self.roles.state(site)), qos=1, retain=True
                )
            self.election.connected()  # subscribed: the others' retained states are on their way
            self.connected.set()
            log.info("connected to %s; watching site(s) %s", cfg.broker, ", ".join(cfg.sites))

        def on_message(message: aiomqtt.Message) -> None:  # plain: called as each packet is read
            self.ingest.handle(str(message.topic), message.payload, retained=bool(message.retain))

        def on_disconnect() -> None:
            self.client = None
            self.connected.clear()
            self.election.disconnected()
            # what arrives while away is lost to this side: no row until each host's live birth
            self.ingest.lost_broker()

        await stay_connected(
            cfg.broker,
            identifier=f"atomwatch-{cfg.name}-{uuid.uuid4().hex[:8]}",
            will=will,
            keepalive=15,
            stopping=self.stopping,
            on_connect=on_connect,
            on_message=on_message,
            on_disconnect=on_disconnect,
            log=log,
            faults=self.faults,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop_on_signals(self.stop)
        if self.config.duration:
            loop.call_later(self.config.duration, self.stop)
        self.loop = loop
        if self.profile_dir:
            self._profile_start("loop")
        blas = self._limit_blas()
        if self.config.detect_workers:
            self.pool = await asyncio.to_thread(
                DetectionPool,
                self.config.detect_workers,
                self.detectors.names,
                self.config.options,
                self.pm,
                self.config.blas_threads,
            )
            log.info("detection in %d worker processes", self.config.detect_workers)
        if self.commands.signer is None:
            log.warning(
                "no command-signing key: commands to agents go unsigned and every agent refuses them; "
                "give one with --signing-key FILE (signing_key in the config file, or ATOMWATCH_SIGNING_KEY)"
            )
        else:
            log.info("commands to agents are signed with key %s", self.commands.signer.kid)
        address = self.config.http_address()
        if address is not None:
            from .api import ApiServer

            if self.config.http_exposed_insecurely:
                log.warning(
                    "--http-insecure: the HTTP API listens on %s without TLS and a tokens file: tokens and "
                    "tenants' alarms cross the network in clear text. Add --http-cert/--http-key and --http-tokens.",
                    self.config.http,
                )
            self.http = ApiServer(
                self, address, tokens=self.config.http_tokens, cert=self.config.http_cert, key=self.config.http_key
            )
            self.http.start()
        conn = asyncio.create_task(self._connection_loop(), name="controller-connection")
        ticks = asyncio.create_task(self._tick_loop(), name="controller-ticks")
        roles = asyncio.create_task(self.roles.run(self.stopping), name="controller-roles")
        try:
            await self.stopping.wait()
        finally:
            ticks.cancel()
            await asyncio.gather(ticks, roles, return_exceptions=True)
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            client = self.client
            if client is not None:
                for site in self.config.sites:
                    try:
                        state = self.roles.state(site, online=False)
                        await client.publish(
                            protocol.state_topic(site, self.config.name), protocol.encode(state), qos=1, retain=True
                        )
                    except aiomqtt.MqttError:
                        pass
            conn.cancel()
            await asyncio.gather(conn, return_exceptions=True)
            if self.profile_dir:
                self._profile_write("loop")
                await loop.run_in_executor(self.executor, self._profile_write, "detect")
            self.executor.shutdown(wait=False, cancel_futures=True)
            if self.pool is not None:
                await asyncio.to_thread(self.pool.close)
            if self.http is not None:
                self.http.stop()
            await asyncio.to_thread(self.alarms.shutdown)
            if blas is not None:
                blas.restore_original_limits()
            log.info(
                "controller stopped: %d rows (%d late), messages %s, dropped %s, unexpected errors %s",
                self.rows_handled,
                self.rows_late,
                dict(self.ingest.messages),
                dict(self.ingest.dropped),
                {f"{where}: {kind}": n for (where, kind), n in self.faults.counts.items()},
            )

    def stop(self) -> None:
        self.stopping.set()

    def _limit_blas(self) -> Any:
        """Hold numpy's BLAS to ``blas_threads`` threads while the controller runs (its limiter,
        to restore at stop; None when threadpoolctl is missing, which is said)."""
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            log.warning(
                "threadpoolctl is not installed: numpy's BLAS keeps its own thread count, which costs many "
                "times the CPU on small matrices; pip install threadpoolctl (a dependency of atomwatch)"
            )
            return None
        return threadpool_limits(limits=self.config.blas_threads, user_api="blas")

    # ------------------------------------------------------------------ profiling (benchmarks)

    def _profile_start(self, name: str) -> None:
        profile = self._profiles[name] = cProfile.Profile()
        profile.enable()

    def _profile_write(self, name: str) -> None:
        """Stop the profile of the calling thread and write it (``NAME.prof`` and ``NAME.txt``)."""
        profile = self._profiles.pop(name, None)
        if profile is None or self.profile_dir is None:
            return
        profile.disable()
        where = Path(self.profile_dir)
        where.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(where / f"{name}.prof")
        with open(where / f"{name}.txt", "w") as out:
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(40)
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(60)

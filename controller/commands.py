"""Commands to agents: send one and await its final reply, match replies, ask for rebirths.

What lives here: :class:`AgentCommands` — signs (:class:`atomwatch.signing.Signer`) and publishes
``cmd/<id>`` messages on the controller's MQTT connection, routes each ``reply/<id>`` to the
command waiting for it (progress replies to its callback) and sends the rebirth requests ingest
asks for. A reply is accepted only on the reply topic of the site and host its command went to
and only for an outstanding request id; any other is counted (``drop(reason, detail)``: ingest's
``dropped`` counters, ``reply-unknown-request`` / ``reply-wrong-host``) and dropped. What does not: the MQTT session
itself (:mod:`atomwatch.controller.app`), which commands an agent knows (the agent's plugins),
and what the controller does with a result (orchestrator plugins, :mod:`.delta_push`).

At most ``max_pending`` commands wait for their reply at once, ``max_pending_per_host`` of them
to one host (``--max-pending-commands``, ``--max-pending-commands-per-host``): one more is refused
at once with a :class:`CommandFailed` naming the option, and counted (:attr:`AgentCommands.refused`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from atomwatch import protocol, signing
from atomwatch.handles import CommandFailed, Progress

from .config import MAX_PENDING_COMMANDS, MAX_PENDING_COMMANDS_PER_HOST

log = logging.getLogger(__name__)

__all__ = ["AgentCommands", "CommandFailed", "Progress"]


class AgentCommands:
    """Commands in flight on one controller's connection.

    ``client`` returns the connected MQTT client or None; ``spawn`` runs a coroutine as a task
    of the controller (so it is cancelled when the controller stops)."""

    def __init__(
        self,
        client: Callable[[], aiomqtt.Client | None],
        spawn: Callable[[Awaitable[Any], str], Any],
        signer: signing.Signer | None = None,
        drop: Callable[[str, str], None] | None = None,
        max_pending: int = MAX_PENDING_COMMANDS,
        max_pending_per_host: int = MAX_PENDING_COMMANDS_PER_HOST,
    ) -> None:
        self.client = client
        self.max_pending = max_pending
        self.max_pending_per_host = max_pending_per_host
        #: commands refused by a limit, by the limit's option name
        self.refused: Counter[str] = Counter()
        #: (site, host) → commands to it waiting for their reply
        self.pending_per_host: Counter[tuple[str, str]] = Counter()
        self.spawn = spawn
        self.signer = signer
        self.drop = drop or (lambda reason, detail: None)
        #: request id → (future, progress callback, site, host)
        self.pending: dict[str, tuple[asyncio.Future, Progress | None, str, str]] = {}
        #: rebirth requests: request id → (site, host, monotonic deadline); their replies are expected, not awaited
        self.unawaited: dict[str, tuple[str, str, float]] = {}
        #: site → why this controller may not command its agents now (a standby), None when it may;
        #: a rebirth, which only asks an agent to say its values again, is always allowed
        self.standby: Callable[[str], str | None] = lambda site: None

    def command(self, site: str, host: str, command: str, params: dict[str, Any], timeout: float) -> protocol.Command:
        """A new command to ``site``/``host``, signed when the controller has a signing key."""
        cmd = protocol.Command(
            id=uuid.uuid4().hex[:16], command=command, params=params, ts=time.time(), timeout=timeout
        )
        if self.signer is not None:
            self.signer.sign(cmd, site, host)
        return cmd

    async def send(
        self,
        site: str,
        host: str,
        command: str,
        params: dict[str, Any] | None = None,
        timeout: float = 60.0,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Send a command to an agent and wait for its final reply; returns the result dict.
        Raises :class:`CommandFailed` with the agent's error, or on timeout / no connection."""
        client = self.client()
        if client is None:
            raise CommandFailed(f"{command} to {site}/{host}: the controller is not connected to the broker")
        why = self.standby(site) if command != "rebirth" else None
        if why:
            raise CommandFailed(f"{command} to {site}/{host}: not sent: {why}")
        self._check_limits(site, host, command)
        cmd = self.command(site, host, command, params or {}, timeout)
        request_id = cmd.id
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = (fut, on_progress, site, host)
        self.pending_per_host[(site, host)] += 1
        try:
            await client.publish(protocol.cmd_topic(site, host, request_id), protocol.encode(cmd), qos=1)
            reply: protocol.Reply = await asyncio.wait_for(fut, timeout + 5.0)
        except TimeoutError:
            raise CommandFailed(f"{command} to {site}/{host}: no answer within {timeout + 5.0:g} s") from None
        except aiomqtt.MqttError as e:
            raise CommandFailed(f"{command} to {site}/{host}: not sent ({e})") from None
        finally:
            self.pending.pop(request_id, None)
            self.pending_per_host[(site, host)] -= 1
            if self.pending_per_host[(site, host)] <= 0:
                del self.pending_per_host[(site, host)]
        if reply.status == "error":
            raise CommandFailed(f"{command} on {site}/{host} failed: {reply.error}")
        return reply.result

    def awaits(self, topic: protocol.Topic) -> bool:
        """Whether ``topic`` is the reply topic of a command sent to its site and host and still
        waiting for its final reply (ingest lets such a reply be larger: ``--max-reply-size``)."""
        entry = self.pending.get(topic.request_id or "")
        return entry is not None and topic.kind == "reply" and entry[2:] == (topic.site, topic.host)

    def _check_limits(self, site: str, host: str, command: str) -> None:
        """Refuse one more command when the controller or ``site``/``host`` has as many waiting for
        their reply as its limit allows (CommandFailed naming the option)."""
        waiting = self.pending_per_host[(site, host)]
        if waiting >= self.max_pending_per_host:
            option, limit, what = "max_pending_commands_per_host", self.max_pending_per_host, f"to {site}/{host}"
        elif len(self.pending) >= self.max_pending:
            option, limit, what = "max_pending_commands", self.max_pending, "on this controller"
        else:
            return
        self.refused[option] += 1
        n = self.refused[option]
        message = (
            f"{command} to {site}/{host}: refused, {limit} commands {what} are already waiting for their reply "
            f"({option} = {limit}; raise --{option.replace('_', '-')} or wait for their replies)"
        )
        if n == 1 or n % 100 == 0:
            log.warning("%s (%d refused so far)", message, n)
        raise CommandFailed(message)

    def on_reply(self, topic: protocol.Topic, reply: protocol.Reply) -> None:
        """Ingest's reply listener: the final reply ends the waiting command, progress goes to
        its callback. A reply for no outstanding request, or from another host than the one the
        command went to, is counted and dropped."""
        entry = self.pending.get(reply.id)
        if entry is None:
            now = time.monotonic()
            for rid in [r for r, (_, _, deadline) in self.unawaited.items() if deadline < now]:
                del self.unawaited[rid]
            expected = self.unawaited.get(reply.id)
            if expected is not None and expected[:2] == (topic.site, topic.host):
                if reply.status in ("ok", "error"):
                    self.unawaited.pop(reply.id, None)
                    if reply.status == "error":
                        log.warning("rebirth request to %s/%s failed: %s", topic.site, topic.host, reply.error)
                return
            self.drop(
                "reply-unknown-request",
                f"reply on {protocol.reply_topic(topic.site, topic.host, reply.id)}: no outstanding command {reply.id}",
            )
            return
        fut, on_progress, site, host = entry
        if (topic.site, topic.host) != (site, host):
            self.drop(
                "reply-wrong-host",
                f"reply on {protocol.reply_topic(topic.site, topic.host, reply.id)}: command {reply.id} went to "
                f"{site}/{host}",
            )
            return
        if reply.status in ("ok", "error"):
            if not fut.done():
                fut.set_result(reply)
        elif on_progress is not None:
            try:
                on_progress(reply)
            except Exception:
                log.exception("progress callback of %s failed", reply.id)

    def rebirth_soon(self, site: str, host: str) -> None:
        """Ask the agent of ``site``/``host`` for a fresh birth (no reply awaited)."""

        async def ask() -> None:
            client = self.client()
            if client is None:
                return
            cmd = self.command(site, host, "rebirth", {}, 30.0)
            now = time.monotonic()
            for rid in [r for r, (_, _, deadline) in self.unawaited.items() if deadline < now]:
                del self.unawaited[rid]
            self.unawaited[cmd.id] = (site, host, now + 60.0)
            await client.publish(protocol.cmd_topic(site, host, cmd.id), protocol.encode(cmd), qos=1)

        self.spawn(ask(), f"rebirth request to {site}/{host}")

"""Commands to agents: send one and await its final reply, match replies, ask for rebirths.

What lives here: :class:`AgentCommands` — publishes ``cmd/<id>`` messages on the controller's
MQTT connection, routes each ``reply/<id>`` to the command waiting for it (progress replies to
its callback) and sends the rebirth requests ingest asks for. What does not: the MQTT session
itself (:mod:`atomwatch.controller.app`), which commands an agent knows (the agent's plugins),
and what the controller does with a result (orchestrator plugins, :mod:`.delta_push`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from atomwatch import protocol
from atomwatch.handles import CommandFailed, Progress

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
    ) -> None:
        self.client = client
        self.spawn = spawn
        self.pending: dict[str, tuple[asyncio.Future, Progress | None]] = {}

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
        request_id = uuid.uuid4().hex[:16]
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = (fut, on_progress)
        cmd = protocol.Command(id=request_id, command=command, params=params or {}, ts=time.time(), timeout=timeout)
        try:
            await client.publish(protocol.cmd_topic(site, host, request_id), protocol.encode(cmd), qos=1)
            reply: protocol.Reply = await asyncio.wait_for(fut, timeout + 5.0)
        except TimeoutError:
            raise CommandFailed(f"{command} to {site}/{host}: no answer within {timeout + 5.0:g} s") from None
        except aiomqtt.MqttError as e:
            raise CommandFailed(f"{command} to {site}/{host}: not sent ({e})") from None
        finally:
            self.pending.pop(request_id, None)
        if reply.status == "error":
            raise CommandFailed(f"{command} on {site}/{host} failed: {reply.error}")
        return reply.result

    def on_reply(self, topic: protocol.Topic, reply: protocol.Reply) -> None:
        """Ingest's reply listener: the final reply ends the waiting command, progress goes to
        its callback; replies nobody waits for are ignored."""
        entry = self.pending.get(reply.id)
        if entry is None:
            return
        fut, on_progress = entry
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
            cmd = protocol.Command(id=uuid.uuid4().hex[:16], command="rebirth", params={}, ts=time.time(), timeout=30.0)
            await client.publish(protocol.cmd_topic(site, host, cmd.id), protocol.encode(cmd), qos=1)

        self.spawn(ask(), f"rebirth request to {site}/{host}")

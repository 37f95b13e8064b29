"""Commands the controller sends an agent (``cmd/<id>``) and the replies it gets (``reply/<id>``).

Built in: ``rebirth`` (publish a fresh birth) and ``set-delta`` (new tracking errors, applied from
each series' next round). Plugins add more through ``register_agent_commands`` (introspect,
terminate …). Every command gets an ``accepted`` reply at once, ``progress`` replies if its
handler reports any, then exactly one ``ok`` or ``error`` reply; a handler that overruns the
command's timeout is cancelled and answered with an error naming the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from atomwatch import protocol
from atomwatch.types import CommandError, CommandHandler

log = logging.getLogger(__name__)

Publish = Callable[[protocol.Reply], Awaitable[None]]

#: used when a command carries no timeout
DEFAULT_TIMEOUT = 600.0


class CommandRunner:
    def __init__(self, handlers: dict[str, CommandHandler]):
        self.handlers = dict(handlers)
        self.tasks: set[asyncio.Task] = set()

    def names(self) -> list[str]:
        return sorted(self.handlers)

    def start(self, cmd: protocol.Command, publish: Publish) -> None:
        task = asyncio.create_task(self.run(cmd, publish), name=f"cmd-{cmd.command}-{cmd.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, cmd: protocol.Command, publish: Publish) -> None:
        async def reply(status: str, result: dict[str, Any] | None = None, error: str | None = None) -> None:
            try:
                await publish(
                    protocol.Reply(id=cmd.id, status=status, ts=time.time(), result=result or {}, error=error)
                )
            except Exception as e:  # the broker went away: the controller will time out
                log.warning("reply %s to %s %s not sent: %s", status, cmd.command, cmd.id, e)

        handler = self.handlers.get(cmd.command)
        if handler is None:
            await reply("error", error=f"unknown command {cmd.command!r}; this agent knows {', '.join(self.names())}")
            return
        await reply("accepted")

        async def progress(info: dict[str, Any]) -> None:
            await reply("progress", result=info)

        timeout = cmd.timeout if cmd.timeout and cmd.timeout > 0 else DEFAULT_TIMEOUT
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(handler(cmd.params, progress), timeout)
        except TimeoutError:
            await reply("error", error=f"{cmd.command} timed out after {timeout:g} s")
        except CommandError as e:
            await reply("error", error=str(e))
        except asyncio.CancelledError:
            await reply("error", error=f"{cmd.command} cancelled: the agent is stopping")
            raise
        except Exception as e:
            log.exception("command %s %s failed", cmd.command, cmd.id)
            await reply("error", error=f"{cmd.command} failed: {type(e).__name__}: {e}")
        else:
            result = dict(result or {})
            result.setdefault("seconds", round(time.monotonic() - started, 3))
            await reply("ok", result=result)

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

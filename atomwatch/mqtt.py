"""MQTT plumbing the agent and the controller share: one connection kept up with exponential
backoff (with jitter, so a fleet does not reconnect in lock step), and stopping on signals."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import Awaitable, Callable

import aiomqtt

from .config import BrokerAddress

INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 30.0


async def wait_or_timeout(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True when it was set."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
        return True
    except TimeoutError:
        return False


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGINT and SIGTERM call ``stop`` (where the loop can install handlers: the main thread)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError, ValueError):
            pass


async def stay_connected(
    broker: BrokerAddress,
    *,
    identifier: str,
    will: Callable[[], aiomqtt.Will],
    keepalive: int,
    stopping: asyncio.Event,
    on_connect: Callable[[aiomqtt.Client], Awaitable[None]],
    on_message: Callable[[aiomqtt.Message], Awaitable[None]],
    on_disconnect: Callable[[], None],
    log: logging.Logger,
) -> None:
    """Connect, run ``on_connect`` then ``on_message`` for every message, and on any connection
    failure call ``on_disconnect`` and try again after a growing pause, until ``stopping``."""
    backoff = INITIAL_BACKOFF
    while not stopping.is_set():
        try:
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                username=broker.username,
                password=broker.password,
                identifier=identifier,
                will=will(),
                keepalive=keepalive,
                max_queued_outgoing_messages=10000,
            ) as client:
                await on_connect(client)
                backoff = INITIAL_BACKOFF
                async for message in client.messages:
                    await on_message(message)
        except aiomqtt.MqttError as e:
            if stopping.is_set():
                break
            log.warning("broker %s: %s; reconnecting in %.1f s", broker, e, backoff)
        finally:
            on_disconnect()
        if await wait_or_timeout(stopping, backoff * (0.5 + random.random())):
            break
        backoff = min(backoff * 2, MAX_BACKOFF)

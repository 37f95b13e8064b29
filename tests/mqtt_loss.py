"""A TCP relay between MQTT clients and a real broker that loses chosen messages on their way to
the client, for tests of what the agent and the controller do when a broker fails to deliver (as
a NATS node failing over did with the controllers' retained states, in one CI run). Client →
broker bytes pass untouched; broker → client packets are read whole (fixed header, remaining
length) and a PUBLISH for which ``drop(topic, retained)`` says True is not passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from conftest import free_port


async def _packet(reader: asyncio.StreamReader) -> bytes:
    """One MQTT control packet, whole (raises IncompleteReadError at the end of the stream)."""
    head = await reader.readexactly(1)
    length, shift, raw = 0, 0, b""
    while True:
        b = await reader.readexactly(1)
        raw += b
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    return head + raw + await reader.readexactly(length)


def _publish(packet: bytes) -> tuple[str, bool] | None:
    """(topic, retain flag) of a PUBLISH packet, else None."""
    if packet[0] >> 4 != 3:
        return None
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1
    n = int.from_bytes(packet[i : i + 2], "big")
    return packet[i + 2 : i + 2 + n].decode("utf-8", "replace"), bool(packet[0] & 1)


class LossyRelay:
    """``async with LossyRelay(port, drop) as relay``: clients connect to ``relay.url``;
    ``relay.dropped`` lists the topics of the messages lost."""

    def __init__(self, broker_port: int, drop: Callable[[str, bool], bool]):
        self.broker_port = broker_port
        self.drop = drop
        self.port = free_port()
        self.dropped: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LossyRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)

        async def up() -> None:
            while data := await client_r.read(65536):
                broker_w.write(data)
                await broker_w.drain()

        async def down() -> None:
            while True:
                packet = await _packet(broker_r)
                publish = _publish(packet)
                if publish is not None and self.drop(*publish):
                    self.dropped.append(publish[0])
                    continue
                client_w.write(packet)
                await client_w.drain()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            for w in (client_w, broker_w):
                with contextlib.suppress(Exception):
                    w.close()

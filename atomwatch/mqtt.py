"""MQTT plumbing the agent and the controller share: one connection kept up with exponential
backoff (with jitter, so a fleet does not reconnect in lock step), stopping on signals, and
:class:`Faults`, the count of unexpected exceptions on the receive paths.

A broker that is away (connection refused, reset, timed out) is tried again at most
:data:`AWAY_CAP` seconds apart, so both sides are back within about a second of its return; a
broker that refuses this client (credentials, TLS) or a session that keeps ending on an unexpected
error backs off up to :data:`MAX_BACKOFF`, since trying again soon cannot help. A clustered broker
(several URLs) is tried node after node: when the current node fails or its session ends, the next
one is tried at once, and the pauses above come only after every node failed in turn.

A message handler that raises does not end the session: the exception is counted and the next
message handled. A plain (not async) handler is called as paho reads each packet, on the event loop,
without the task and wait aiomqtt's message iterator costs per message (a third of the receive
path's CPU: ``benchmarks/receive.py``); a coroutine handler is awaited message after message. If the session ends for any reason (the broker gone, or an exception nothing
expected), :func:`stay_connected` says so in the log and reconnects after a pause; only
``stopping`` ends it."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiomqtt

from .config import BrokerAddress

INITIAL_BACKOFF = 0.2
#: the longest pause between two tries while the broker is away (jittered down to half of it)
AWAY_CAP = 1.0
#: the longest pause after a refusal or an unexpected end of the session
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


class Faults:
    """Unexpected exceptions on the receive paths (a bug, or an input nothing foresaw), counted
    by (where, exception type). The first of each kind is logged with its traceback; the same
    kind again is only counted (``counts``, exported as ``atomwatch_unexpected_errors``), so a
    flood of one bad message cannot fill the disk."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self.counts: Counter[tuple[str, str]] = Counter()

    def note(self, where: str, error: BaseException) -> None:
        kind = (where, type(error).__name__)
        self.counts[kind] += 1
        if self.counts[kind] == 1:
            self.log.error(
                "unexpected %s in %s: %s (kept going; this kind is logged once, then counted in "
                "atomwatch_unexpected_errors)",
                kind[1],
                where,
                error,
                exc_info=error,
            )


#: CONNACK return codes of MQTT 3.1.1 that mean "not you" rather than "not now"
_REFUSED = {4: "bad user name or password", 5: "not authorized"}


def describe_failure(broker: BrokerAddress, error: aiomqtt.MqttError, detail: str | None = None) -> str:
    """What a connection failure means for the operator: a TLS handshake or a credentials refusal
    said in words (with what to check), anything else as aiomqtt put it. ``detail`` is the MQTT
    library's last logged error, which names a TLS alert when aiomqtt only saw a timeout."""
    return _failure(broker, error, detail)[0]


def _failure(broker: BrokerAddress, error: aiomqtt.MqttError, detail: str | None) -> tuple[str, bool]:
    """(:func:`describe_failure`'s text, whether the broker refused this client rather than being
    away)."""
    text = str(error)
    if detail and detail not in text:
        text = f"{text}; {detail}"
    rc = getattr(error, "rc", None)
    code = getattr(rc, "value", rc)
    if code in _REFUSED or "not authori" in text.lower() or "bad user name" in text.lower():
        who = f"user {broker.username!r}" if broker.username else "this client"
        cert = f" and the identity of --broker-cert {broker.cert}" if broker.cert else ""
        return f"the broker refused the credentials of {who} ({text}): check the username, password{cert}", True
    lowered = text.lower()
    if broker.tls and any(w in lowered for w in ("ssl", "tls", "certificate", "handshake", "eof occurred")):
        ca = f"--broker-ca {broker.ca}" if broker.ca else "the system's CAs"
        return (
            f"TLS handshake failed ({text}): check that the broker's certificate is signed by {ca} and names "
            f"{broker.host!r}, and that the broker accepts --broker-cert {broker.cert or '(none given)'}"
        ), True
    if broker.tls and "timed out" in lowered:
        return (
            f"no answer to CONNECT ({text}): over TLS, a broker refusing this client's certificate looks like this; "
            f"check that --broker-cert {broker.cert or '(none given)'} is signed by the broker's CA"
        ), True
    return text, False


async def stay_connected(
    broker: BrokerAddress,
    *,
    identifier: str,
    will: Callable[[], aiomqtt.Will],
    keepalive: int,
    stopping: asyncio.Event,
    on_connect: Callable[[aiomqtt.Client], Awaitable[None]],
    on_message: Callable[[aiomqtt.Message], Awaitable[None]] | Callable[[aiomqtt.Message], None],
    on_disconnect: Callable[[], None],
    log: logging.Logger,
    faults: Faults | None = None,
) -> None:
    """Connect, run ``on_connect`` then ``on_message`` for every message, and whenever the session
    ends call ``on_disconnect`` and try again after a growing pause, until ``stopping``.

    ``on_message`` is a coroutine function (awaited per message, in turn) or a plain function (called
    as each packet is read: it must not wait). An exception of ``on_message`` other than
    :class:`aiomqtt.MqttError` (which means the connection is gone) is counted in ``faults`` and the next message handled. A connection
    failure is logged as one line, without a traceback; a TLS or credentials refusal is said in
    words once (an error), and the same refusal again only as a short warning. A session ended by
    anything else (an exception of ``on_connect``, of the MQTT library, the message stream ending)
    is logged as an error naming it, and reconnected like a failure."""
    faults = faults if faults is not None else Faults(log)
    nodes = broker.nodes()
    at = 0  # the node tried now
    failed = 0  # nodes failed in a row: a pause only once each of them has failed
    backoff = INITIAL_BACKOFF
    cap = AWAY_CAP
    said_at = 0.0
    streak = 0  # sessions in a row ended by something unexpected
    tls_context = broker.ssl_context()
    queue_type = None if inspect.iscoroutinefunction(on_message) else _dispatching_queue(on_message, faults)
    last_failure = None
    # paho reports a refused TLS handshake only in its log ("failed to receive on socket: [SSL: …]")
    # while aiomqtt raises a bare timeout: keep paho's last error to say what happened
    paho_errors = _LastError()
    paho_log = logging.getLogger(f"{log.name}.paho")
    paho_log.propagate = False
    paho_log.addHandler(paho_errors)
    try:
        while not stopping.is_set():
            paho_errors.message = None
            started = time.monotonic()
            node = nodes[at]
            try:
                async with aiomqtt.Client(
                    node.host,
                    node.port,
                    username=broker.username,
                    password=broker.password,
                    tls_context=tls_context,
                    logger=paho_log,
                    # a cluster's node may hold the previous session's record where a dead node
                    # left it (NATS waits on it for seconds): each connection is a new session
                    identifier=identifier if len(nodes) == 1 else f"{identifier}-{random.getrandbits(32):08x}",
                    will=will(),
                    keepalive=keepalive,
                    max_queued_outgoing_messages=10000,
                    queue_type=queue_type,
                ) as client:
                    await on_connect(client)
                    if len(nodes) > 1:
                        log.info("broker node %s: connected (%d of %d)", node, at + 1, len(nodes))
                    backoff = INITIAL_BACKOFF
                    last_failure = None
                    failed = 0
                    try:  # with a plain handler the queue stays empty: this waits for the disconnection
                        async for message in client.messages:
                            try:
                                await on_message(message)
                            except aiomqtt.MqttError:
                                raise
                            except Exception as e:  # one message must not end the session
                                faults.note("on_message", e)
                    except aiomqtt.MqttError as e:
                        cause = e.__cause__
                        if cause is not None and not isinstance(cause, (OSError, aiomqtt.MqttError)):
                            raise cause from None  # the library's read path broke: not the broker going
                        raise
                    if not stopping.is_set():
                        raise _StreamEnded("the broker's message stream ended without an error")
            except aiomqtt.MqttError as e:
                if stopping.is_set():
                    break
                failure, refused = _failure(node, e, paho_errors.message)
                cap = MAX_BACKOFF if refused else AWAY_CAP
                if not refused:  # the broker is away, the network down …
                    now = time.monotonic()
                    if last_failure != failure or now - said_at >= 60:  # a long outage: once a minute
                        said_at = now
                        again = "the next node at once" if failed + 1 < len(nodes) else "again every second or less"
                        log.warning("broker %s: %s; trying %s", node, e, again)
                elif failure != last_failure:
                    log.error("broker %s: %s; retrying with growing pauses (up to %g s)", node, failure, MAX_BACKOFF)
                else:  # the same refusal again: said in full above
                    log.warning("broker %s: %s again; retrying in %.1f s", node, failure.split(" (")[0], backoff)
                last_failure = failure
            except Exception as e:
                if stopping.is_set():
                    break
                # a session that keeps ending right after connecting backs off like a failure
                streak = 1 if time.monotonic() - started > MAX_BACKOFF else streak + 1
                cap = MAX_BACKOFF
                backoff = max(backoff, min(MAX_BACKOFF, INITIAL_BACKOFF * 2**streak))
                if not isinstance(e, _StreamEnded):
                    faults.note("the MQTT session", e)
                log.error(
                    "broker %s: the MQTT session ended on an unexpected %s (%s); reconnecting in %.1f s",
                    node,
                    type(e).__name__,
                    e,
                    backoff,
                )
            finally:
                on_disconnect()
            failed += 1
            if len(nodes) > 1:
                at = (at + 1) % len(nodes)
                if failed < len(nodes):
                    continue  # another node may be up: no pause
                failed = 0
            pause = min(backoff, cap)
            if await wait_or_timeout(stopping, pause * (0.5 + 0.5 * random.random())):
                break
            backoff = min(backoff * 2, cap)
    finally:
        paho_log.removeHandler(paho_errors)


async def subscribe(client: aiomqtt.Client, filters: list[str], qos: int = 1) -> None:
    """Subscribe to every filter in one SUBSCRIBE; raise :class:`aiomqtt.MqttError` naming the
    filters the broker refused (a SUBACK code of 128, e.g. a clustered broker whose storage is
    recovering after a node died), so the session is made again rather than left deaf."""
    granted = await client.subscribe([(f, qos) for f in filters])
    codes = [getattr(g, "value", g) for g in granted]
    refused = [f for f, code in zip(filters, codes, strict=False) if not isinstance(code, int) or code >= 128]
    if refused or len(codes) != len(filters):
        raise aiomqtt.MqttError(f"the broker refused the subscription to {', '.join(refused) or 'some filters'}")


def _dispatching_queue(handle: Callable[[aiomqtt.Message], None], faults: Faults) -> type[asyncio.Queue]:
    """A message "queue" for aiomqtt that hands each message to ``handle`` as paho parses it (on the
    event loop's thread, inside the socket's read callback) and keeps nothing. An exception of
    ``handle`` is counted, never raised: raised there, it would end the session."""

    class Dispatching(asyncio.Queue):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            try:
                handle(item)
            except Exception as e:  # one message must not end the session
                faults.note("on_message", e)

    return Dispatching


class _StreamEnded(Exception):
    """The message iterator ended while nobody asked to stop."""


class _LastError(logging.Handler):
    """Keeps the last error the MQTT library logged."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()

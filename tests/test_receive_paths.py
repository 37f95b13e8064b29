"""No message ends a session (issue 14): a real controller and a real agent on a real Mosquitto get
the payloads that used to silence them (an integer of 400 digits in ``ts``, 100 levels of nesting,
a payload over the size limit), stay connected on the same connection, say so in their
``/metrics`` (``atomwatch_connected 1``) and handle the next good message. An exception nothing
expected, in a handler or in the MQTT library itself, is counted and logged once, and a session it
ends is reconnected, with a log line saying so."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.error
import urllib.request

import aiomqtt
import aiomqtt.client
import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY, Counting, until

import atomwatch
from atomwatch import protocol
from atomwatch.agent.config import AgentConfig
from atomwatch.agent.runtime import Agent
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.pluginmanager import PluginManager
from atomwatch.series import SeriesKey

KEY = SeriesKey("u1", "vm1", "CPUUtilization", "%")
HUGE = b"4" * 400


class Plugin:
    """A collector, and an agent command ``big`` answering ``size`` bytes of result."""

    @atomwatch.hookimpl
    def register_collectors(self, config):
        return [Counting(KEY)]

    @atomwatch.hookimpl
    def register_agent_commands(self, config):
        async def big(params, progress):
            return {"blob": "x" * int(params["size"])}

        return {"big": big}


async def start(mosquitto, site, *, controller_options=None, agent_options=None):
    pm = PluginManager()
    pm.register(Plugin(), name="test-plugin")
    broker = BrokerAddress.parse(mosquitto.url)
    agent = Agent(
        AgentConfig(
            broker=broker,
            controller_key=CONTROLLER_KEY,
            site=site,
            host="hv",
            tick=0.05,
            metrics="127.0.0.1:0",
            **(agent_options or {}),
        ),
        pm,
    )
    controller = Controller(
        ControllerConfig(
            broker=broker,
            signing_key=SIGNING_KEY,
            sites=[site],
            tick=0.1,
            http="127.0.0.1:0",
            **(controller_options or {}),
        ),
        pm,
    )
    tasks = [asyncio.create_task(agent.run()), asyncio.create_task(controller.run())]
    await asyncio.wait_for(agent.connected.wait(), 10)
    await asyncio.wait_for(controller.connected.wait(), 10)
    await until(lambda: controller.ingest.host(site, "hv").synced, "the controller to see the agent's birth")
    return agent, controller, tasks


async def stop(agent, controller, tasks):
    agent.stop()
    controller.stop()
    await asyncio.gather(*tasks)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def metrics(url: str) -> str:
    status, text = await asyncio.to_thread(get, url)
    assert status == 200
    return text


def controller_metrics(controller) -> str:
    return f"http://127.0.0.1:{controller.http.server.server_address[1]}/metrics"


async def publish(mosquitto, *messages: tuple[str, bytes]) -> None:
    """Publish as a stray client would, in order (QoS 1, one connection)."""
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"stray-{time.monotonic_ns()}") as stray:
        for topic, payload in messages:
            await stray.publish(topic, payload, qos=1)


def data_payload(ts: bytes = b"1", values: bytes = b"[]") -> bytes:
    return b'{"v": 1, "type": "data", "session": 1, "seq": 0, "ts": ' + ts + b', "values": ' + values + b"}"


def cmd_payload(request_id: str, ts: bytes = b"1", params: bytes = b"{}") -> bytes:
    return (
        b'{"v": 1, "type": "cmd", "id": "'
        + request_id.encode()
        + b'", "command": "rebirth", "ts": '
        + ts
        + b', "params": '
        + params
        + b"}"
    )


NESTED = b"[" * 100 + b"]" * 100
#: over the default --max-message-size
OVERSIZED_VALUES = b"[" + b",".join([b"[0, 1.5]"] * (protocol.MAX_MESSAGE_SIZE // 8)) + b"]"
OVERSIZED_PARAMS = b'{"pad": "' + b"x" * (protocol.MAX_MESSAGE_SIZE + 1000) + b'"}'

CASES = {
    "400-digit ts": (data_payload(ts=HUGE), cmd_payload("bad1", ts=HUGE), "invalid", "field 'ts' holds an integer"),
    "100 levels of nesting": (
        data_payload(values=NESTED),
        cmd_payload("bad2", params=NESTED),
        "too-deep",
        "deeper than 32 levels",
    ),
    "oversized": (
        data_payload(values=OVERSIZED_VALUES),
        cmd_payload("bad3", params=OVERSIZED_PARAMS),
        "too-large",
        "(raise it with --max-message-size)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_bad_payload_leaves_controller_and_agent_connected_and_working(mosquitto, site, case, caplog):
    to_controller, to_agent, reason, says = CASES[case]
    caplog.set_level(logging.WARNING)
    agent, controller, tasks = await start(mosquitto, site)
    try:
        client, session = controller.client, agent.session
        data_before = controller.ingest.messages["data"]
        # the controller's receive path (a host's data topic) and the agent's (its command topic),
        # each followed by a good message from the same publisher
        probe = protocol.Birth(1, "probe", 1.0, time.time(), [protocol.SeriesInfo(0, KEY, 0.0, 7.0)])
        await publish(
            mosquitto,
            (protocol.data_topic(site, "hv"), to_controller),
            (protocol.birth_topic(site, "probe"), protocol.encode(probe)),
            (protocol.cmd_topic(site, "hv", "bad"), to_agent),
        )
        await until(lambda: controller.ingest.dropped[reason] == 1, f"the controller to drop the {case} payload")
        await until(lambda: agent.dropped[reason] == 1, f"the agent to drop the {case} payload")
        assert sum(1 for r in caplog.records if says in r.getMessage()) == 2, "each side said why, once"

        # still connected, on the same connection (no reconnection, same session)
        assert controller.connected.is_set() and controller.client is client
        assert agent.connected.is_set() and agent.session == session
        assert not controller.faults.counts and not agent.faults.counts
        controller_text = await metrics(controller_metrics(controller))
        agent_text = await metrics(agent.metrics_server.url)
        assert "atomwatch_connected 1.0" in controller_text
        assert f'atomwatch_connected{{host="hv",site="{site}"}} 1.0' in agent_text
        assert f'atomwatch_messages_dropped_total{{reason="{reason}"}} 1.0' in controller_text
        assert f'atomwatch_messages_dropped_total{{host="hv",reason="{reason}",site="{site}"}} 1.0' in agent_text

        # and still working: the next good message is handled on both sides
        await until(lambda: controller.ingest.host(site, "probe").values == {0: 7.0}, "the probe's birth")
        await until(lambda: controller.ingest.messages["data"] > data_before + 5, "more data from the agent")
        result = await controller.send_command(site, "hv", "rebirth", timeout=5)
        assert result["session"] == agent.session == session
    finally:
        await stop(agent, controller, tasks)


async def test_an_exception_in_a_handler_is_counted_logged_once_and_the_session_goes_on(
    mosquitto, site, caplog, monkeypatch
):
    caplog.set_level(logging.ERROR)
    agent, controller, tasks = await start(mosquitto, site)
    try:
        client, session = controller.client, agent.session

        def broken_listener(state, msg):
            raise ZeroDivisionError("a listener bug")

        controller.ingest.listeners.append(broken_listener)
        await until(lambda: controller.faults.counts[("ingest of a data message", "ZeroDivisionError")] >= 3, "faults")

        def broken_check(cmd, now=None):
            raise TypeError("a verifier bug")

        monkeypatch.setattr(agent.verifier, "check", broken_check)
        for n in range(2):
            await publish(mosquitto, (protocol.cmd_topic(site, "hv", f"r{n}"), cmd_payload(f"r{n}")))
        await until(lambda: agent.faults.counts[("handling a cmd message", "TypeError")] == 2, "the agent's faults")

        # logged once per kind, with the traceback; counted every time
        logged = [r for r in caplog.records if r.getMessage().startswith("unexpected ")]
        kinds = [r.getMessage().split(":")[0] for r in logged]
        for kind in (
            "unexpected ZeroDivisionError in ingest of a data message",
            "unexpected TypeError in handling a cmd message",
        ):
            assert kinds.count(kind) == 1, kinds
        assert all(r.exc_info for r in logged)
        text = await metrics(agent.metrics_server.url)
        assert (
            f'atomwatch_unexpected_errors_total{{host="hv",site="{site}",type="TypeError",where="handling a cmd message"}} 2.0'
            in text
        )
        text = await metrics(controller_metrics(controller))
        assert 'atomwatch_unexpected_errors_total{type="ZeroDivisionError",where="ingest of a data message"}' in text
        assert controller.ingest.dropped["internal"] >= 3

        # the sessions went on
        assert controller.client is client and agent.session == session
        controller.ingest.listeners.remove(broken_listener)
        monkeypatch.undo()
        assert (await controller.send_command(site, "hv", "rebirth", timeout=5))["session"] == session
    finally:
        await stop(agent, controller, tasks)


async def test_an_unexpected_exception_ending_the_mqtt_loop_reconnects_and_says_so(
    mosquitto, site, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    agent, controller, tasks = await start(mosquitto, site)
    try:
        old_client, old_session = controller.client, agent.session
        # the MQTT library raises what nobody expects, once for each side: in the agent, its message
        # iterator; in the controller (whose handler runs as paho reads each packet), paho's read path
        victims = {id(controller.client), id(agent.client)}
        original = aiomqtt.client.MessagesIterator.__anext__

        async def broken(self):
            if id(self._client) in victims:
                victims.discard(id(self._client))
                raise RuntimeError("the MQTT library broke")
            return await original(self)

        monkeypatch.setattr(aiomqtt.client.MessagesIterator, "__anext__", broken)
        paho_client = controller.client._client
        read = paho_client.on_message

        def broken_read(client, userdata, message):
            if id(controller.client) in victims:
                victims.discard(id(controller.client))
                raise RuntimeError("the MQTT library broke")
            read(client, userdata, message)

        paho_client.on_message = broken_read
        # the controller receives data all the time; the agent gets a message to reach the patch
        await publish(mosquitto, (protocol.cmd_topic(site, "hv", "wake"), cmd_payload("wake")))
        await until(lambda: not victims, "both message loops to hit the broken iterator")
        await until(
            lambda: controller.connected.is_set() and controller.client not in (None, old_client),
            "the controller to reconnect",
        )
        await until(lambda: agent.connected.is_set() and agent.session != old_session, "the agent to reconnect")

        for name in ("atomwatch.controller.app", "atomwatch.agent.runtime"):
            said = [
                r.getMessage()
                for r in caplog.records
                if r.name == name and "the MQTT session ended on an unexpected RuntimeError" in r.getMessage()
            ]
            assert len(said) == 1 and "(the MQTT library broke); reconnecting in" in said[0], name
        assert controller.faults.counts == {("the MQTT session", "RuntimeError"): 1}
        assert agent.faults.counts == {("the MQTT session", "RuntimeError"): 1}

        # and everything works again: the agent's new birth and data reach the controller, commands the agent
        await until(lambda: controller.ingest.host(site, "hv").session == agent.session, "the new session's birth")
        data = controller.ingest.messages["data"]
        await until(lambda: controller.ingest.messages["data"] > data + 5, "data of the new session")
        assert (await controller.send_command(site, "hv", "rebirth", timeout=5))["session"] == agent.session
        assert f'atomwatch_connected{{host="hv",site="{site}"}} 1.0' in await metrics(agent.metrics_server.url)
        assert "atomwatch_connected 1.0" in await metrics(controller_metrics(controller))
    finally:
        await stop(agent, controller, tasks)


async def test_a_disconnected_side_says_connected_0(mosquitto_private, site):
    agent, controller, tasks = await start(mosquitto_private, site)
    try:
        mosquitto_private.stop()
        await until(lambda: not agent.connected.is_set() and not controller.connected.is_set(), "the outage")
        assert f'atomwatch_connected{{host="hv",site="{site}"}} 0.0' in await metrics(agent.metrics_server.url)
        assert "atomwatch_connected 0.0" in await metrics(controller_metrics(controller))
    finally:
        await stop(agent, controller, tasks)


async def test_replies_the_controller_waits_for_may_be_larger(mosquitto, site):
    agent, controller, tasks = await start(
        mosquitto, site, controller_options={"max_message_size": "2KiB", "max_reply_size": "64KiB"}
    )
    try:
        result = await controller.send_command(site, "hv", "big", {"size": 20_000}, timeout=5)
        assert len(result["blob"]) == 20_000
        # over --max-reply-size: dropped (the command would time out)
        waiting = asyncio.create_task(controller.send_command(site, "hv", "big", {"size": 100_000}, timeout=5))
        await until(lambda: controller.ingest.dropped["too-large"] == 1, "the reply over --max-reply-size")
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        # a reply nobody waits for gets the small limit
        stray = protocol.Reply("0" * 16, "ok", time.time(), {"blob": "x" * 5000})
        await publish(mosquitto, (protocol.reply_topic(site, "hv", stray.id), protocol.encode(stray)))
        await until(lambda: controller.ingest.dropped["too-large"] == 2, "the unsolicited reply to be dropped")
        assert controller.connected.is_set()
    finally:
        await stop(agent, controller, tasks)


async def test_the_agent_metrics_endpoint_serves_get_metrics_only(mosquitto, site):
    agent, controller, tasks = await start(mosquitto, site)
    try:
        url = agent.metrics_server.url
        assert agent.metrics_server.address[0] == "127.0.0.1"
        text = await metrics(url)
        for name in (
            "atomwatch_connected",
            "atomwatch_messages_dropped_total",
            "atomwatch_commands_refused_total",
            "atomwatch_unexpected_errors_total",
            'kind="birth"',
            "atomwatch_publish_failed_total",
        ):
            assert name in text
        assert (await asyncio.to_thread(get, url.replace("/metrics", "/")))[0] == 404
        assert (await asyncio.to_thread(get, url + "?name=x"))[0] == 200
        request = urllib.request.Request(url, data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            await asyncio.to_thread(urllib.request.urlopen, request, None, 10)
        assert err.value.code == 501
    finally:
        await stop(agent, controller, tasks)


def test_the_options_and_their_refusals(mosquitto):
    broker = BrokerAddress.parse(mosquitto.url)
    assert AgentConfig(broker=broker, host="hv").metrics_address() is None
    assert AgentConfig(broker=broker, host="hv", metrics="9471").metrics_address() == ("127.0.0.1", 9471)
    assert AgentConfig(broker=broker, host="hv", metrics="[::1]:9471").metrics_address() == ("::1", 9471)
    assert AgentConfig(broker=broker, host="hv", max_message_size="1MiB").max_message_size == 1 << 20
    assert ControllerConfig(broker=broker, max_message_size=4096).max_message_size == 4096
    for bad, says in [
        ({"metrics": "localhost:http"}, "--metrics 'localhost:http': expected [HOST:]PORT"),
        ({"metrics": ":9471"}, "--metrics ':9471': expected [HOST:]PORT"),
        ({"max_message_size": 100}, "--max-message-size 100: must be at least 1024 bytes"),
        ({"max_message_size": "lots"}, "--max-message-size 'lots': expected a number of bytes"),
    ]:
        with pytest.raises(ConfigError, match=f"^{re.escape(says)}"):
            AgentConfig(broker=broker, host="hv", **bad)
    with pytest.raises(ConfigError, match="--max-reply-size 2048 is below --max-message-size 4096"):
        ControllerConfig(broker=broker, max_message_size=4096, max_reply_size=2048)


def test_the_command_line_and_config_file_give_the_options(tmp_path):
    from atomwatch.cli import agent as agent_cmd
    from atomwatch.cli import build_parser
    from atomwatch.cli import controller as controller_cmd

    def agent(argv, file_config=None):
        args = build_parser("agent").parse_args(["agent", "--broker", "mqtt://127.0.0.1:1", "--host", "hv1", *argv])
        return agent_cmd.build_config(args, file_config or {}, {})

    def controller(argv, file_config=None):
        args = build_parser("controller").parse_args(["controller", "--broker", "mqtt://127.0.0.1:1", *argv])
        return controller_cmd.build_config(args, file_config or {}, {})

    assert agent([]).max_message_size == 1024 * 1024 and agent([]).metrics_address() is None
    config = agent(["--max-message-size", "64KiB", "--metrics", "9471"])
    assert config.max_message_size == 65536 and config.metrics_address() == ("127.0.0.1", 9471)
    config = agent([], {"max_message_size": 4096, "metrics": "0.0.0.0:9471"})
    assert config.max_message_size == 4096 and config.metrics_address() == ("0.0.0.0", 9471)
    config = controller(["--max-message-size", "1M", "--max-reply-size", "32MiB"])
    assert (config.max_message_size, config.max_reply_size) == (1 << 20, 32 << 20)
    assert controller([], {"max_message_size": 2048}).max_message_size == 2048


@pytest.mark.parametrize(
    "argv, says",
    [
        (["agent", "--max-message-size", "12"], "--max-message-size '12': must be at least 1024 bytes"),
        (["agent", "--metrics", "127.0.0.1:x"], "--metrics '127.0.0.1:x': expected [HOST:]PORT"),
        (["controller", "--max-message-size", "big"], "--max-message-size 'big': expected a number of bytes"),
    ],
)
def test_a_bad_size_or_address_is_one_line_and_exit_2(argv, says, tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "atomwatch", *argv, "--broker", "mqtt://127.0.0.1:1", "--duration", "1"],
        cwd=tmp_path,
        env={**os.environ, "ATOMWATCH_LOAD_PLUGINS": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"atomwatch {argv[0]}: {says}")
    assert "Traceback" not in proc.stderr

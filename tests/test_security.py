"""Issue 13's attacks, each replayed on the real Mosquitto the suite starts, against a real agent
(and a real controller where one takes part): unsigned, foreign-key, expired, future-dated,
replayed and misaddressed commands are refused and counted; a forged set-delta leaves Δ alone;
stray replies are dropped and counted while the real agent's answer is used; a terminate without
authorization, or without the hypervisor owner's consent, is refused. Also the key files'
errors and the canonical bytes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid

import aiomqtt
import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY, Counting, until

import atomwatch
from atomwatch import CommandFailed, protocol, signing
from atomwatch.agent.config import AgentConfig
from atomwatch.agent.runtime import Agent
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.pluginmanager import PluginManager

CPU = atomwatch.SeriesKey("u1", "vm1", "CPUUtilization", "%")
HOST = "hv"


class TestPlugin:
    """A collector, and a slow command that lets a stray client answer before the agent does."""

    @atomwatch.hookimpl
    def register_collectors(self, config):
        return [Counting(CPU, 0.5)]

    @atomwatch.hookimpl
    def register_agent_commands(self, config):
        async def slow(params, progress):
            await asyncio.sleep(0.5)
            return {"real": True}

        return {"slow": slow}


def plugins(*entry_points: str) -> PluginManager:
    pm = PluginManager()
    if entry_points:
        pm.load_entry_points(allow=",".join(entry_points))
    pm.register(TestPlugin(), name="test-plugin")
    return pm


class Attacker:
    """A broker client with no credentials: publishes on any topic, records replies."""

    def __init__(self, client: aiomqtt.Client):
        self.client = client
        self.messages: list[tuple[str, dict]] = []

    async def listen(self) -> None:
        async for m in self.client.messages:
            self.messages.append((str(m.topic), json.loads(m.payload)))

    def replies(self, request_id: str) -> list[dict]:
        return [p for t, p in self.messages if t.endswith(f"/reply/{request_id}")]

    async def final_reply(self, request_id: str, timeout: float = 5.0) -> dict:
        final = await until(
            lambda: [r for r in self.replies(request_id) if r["status"] in ("ok", "error")],
            f"a final reply to {request_id}",
            timeout=timeout,
        )
        return final[0]

    async def send(self, site: str, host: str, cmd: protocol.Command) -> dict:
        await self.client.publish(protocol.cmd_topic(site, host, cmd.id), protocol.encode(cmd), qos=1)
        return await self.final_reply(cmd.id)

    async def publish_raw(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)


def command(name: str, params: dict | None = None) -> protocol.Command:
    return protocol.Command(id=uuid.uuid4().hex[:16], command=name, params=params or {}, ts=time.time(), timeout=10)


class Setup:
    def __init__(self, agent: Agent, controller: Controller | None, attacker: Attacker):
        self.agent, self.controller, self.attacker = agent, controller, attacker


async def _run(mosquitto, site, body, *, options=None, controller=True, entry_points=(), agent_key=CONTROLLER_KEY):
    pm = plugins(*entry_points)
    broker = BrokerAddress.parse(mosquitto.url)
    agent = Agent(
        AgentConfig(
            broker=broker, site=site, host=HOST, tick=0.05, controller_key=agent_key, options=dict(options or {})
        ),
        pm,
    )
    ctl = (
        Controller(ControllerConfig(broker=broker, signing_key=SIGNING_KEY, sites=[site], tick=0.1), pm)
        if controller
        else None
    )
    tasks = [asyncio.create_task(agent.run())] + ([asyncio.create_task(ctl.run())] if ctl else [])
    try:
        await asyncio.wait_for(agent.connected.wait(), 10)
        if ctl is not None:
            await asyncio.wait_for(ctl.connected.wait(), 10)
        async with aiomqtt.Client(broker.host, broker.port, identifier=f"stray-{uuid.uuid4().hex[:8]}") as client:
            await client.subscribe(f"{protocol.ROOT}/{site}/+/reply/+", qos=1)
            await client.subscribe(f"{protocol.ROOT}/{site}/+/cmd/+", qos=1)
            attacker = Attacker(client)
            listener = asyncio.create_task(attacker.listen())
            try:
                await asyncio.sleep(0.3)
                await body(Setup(agent, ctl, attacker))
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
    finally:
        agent.stop()
        if ctl is not None:
            ctl.stop()
        await asyncio.gather(*tasks)


def run(mosquitto, site, body, **kw) -> None:
    asyncio.run(_run(mosquitto, site, body, **kw))


def cpu_delta(agent: Agent) -> float:
    return float(agent.deltas[agent.table.aliases[CPU]])


# ----------------------------------------------------------------------------- signed commands


def test_unsigned_command_is_refused(mosquitto, site, caplog):
    async def body(s: Setup):
        before = cpu_delta(s.agent)
        reply = await s.attacker.send(site, HOST, command("set-delta", {"metrics": {"CPUUtilization": 7.0}}))
        assert reply["status"] == "error" and "unsigned command" in reply["error"]
        assert s.agent.refused == {"unsigned": 1} and s.agent.stats["commands_refused"] == 1
        assert cpu_delta(s.agent) == before
        assert not [r for r in s.attacker.messages if r[1].get("status") == "accepted"], "never even accepted"

    with caplog.at_level(logging.WARNING, "atomwatch.agent.runtime"):
        run(mosquitto, site, body, controller=False)
    assert any("command refused (unsigned)" in r.getMessage() for r in caplog.records)


def test_command_signed_with_another_key_is_refused(mosquitto, site):
    other, _ = signing.generate_key_pair()

    async def body(s: Setup):
        cmd = signing.Signer(other).sign(command("rebirth"), site, HOST)
        reply = await s.attacker.send(site, HOST, cmd)
        assert reply["status"] == "error" and "bad signature" in reply["error"]
        assert s.agent.refused == {"bad-signature": 1}

    run(mosquitto, site, body, controller=False)


def test_tampered_signed_command_is_refused(mosquitto, site):
    """A real signature over other parameters: changing one signed byte breaks it."""

    async def body(s: Setup):
        cmd = signing.Signer(SIGNING_KEY).sign(command("set-delta", {"metrics": {"CPUUtilization": 1.0}}), site, HOST)
        cmd.params = {"metrics": {"CPUUtilization": 1e300}}
        reply = await s.attacker.send(site, HOST, cmd)
        assert reply["status"] == "error" and "bad signature" in reply["error"]
        assert cpu_delta(s.agent) == 0.5

    run(mosquitto, site, body, controller=False)


def test_expired_command_is_refused(mosquitto, site):
    async def body(s: Setup):
        signer = signing.Signer(SIGNING_KEY)
        stale = signer.sign(command("rebirth"), site, HOST, now=time.time() - 200)
        reply = await s.attacker.send(site, HOST, stale)
        assert reply["status"] == "error" and "expired" in reply["error"]
        dated_1970 = signer.sign(command("introspect", {"vm": "vm1", "metrics": []}), site, HOST, now=0.0)
        reply = await s.attacker.send(site, HOST, dated_1970)
        assert reply["status"] == "error" and "expired" in reply["error"]
        # a signature valid for a day is refused as well: the agent bounds the lifetime it accepts
        long = signing.Signer(SIGNING_KEY, lifetime=86400).sign(command("rebirth"), site, HOST)
        reply = await s.attacker.send(site, HOST, long)
        assert reply["status"] == "error" and "lifetime" in reply["error"]
        assert s.agent.refused == {"expired": 3}
        # within the skew an old-ish command still runs
        late = signer.sign(command("rebirth"), site, HOST, now=time.time() - 80)
        assert (await s.attacker.send(site, HOST, late))["status"] == "ok"

    run(mosquitto, site, body, controller=False)


def test_future_dated_command_is_refused(mosquitto, site):
    async def body(s: Setup):
        signer = signing.Signer(SIGNING_KEY)
        ahead = signer.sign(command("rebirth"), site, HOST, now=time.time() + 120)
        reply = await s.attacker.send(site, HOST, ahead)
        assert reply["status"] == "error" and "in the future" in reply["error"]
        assert s.agent.refused == {"future": 1}
        slightly = signer.sign(command("rebirth"), site, HOST, now=time.time() + 10)  # within the 30 s skew
        assert (await s.attacker.send(site, HOST, slightly))["status"] == "ok"

    run(mosquitto, site, body, controller=False)


def test_replayed_command_is_refused(mosquitto, site):
    """The controller's own signed set-delta, captured on the wire and published again."""

    async def body(s: Setup):
        result = await s.controller.send_command(site, HOST, "set-delta", {"metrics": {"CPUUtilization": 3.0}}, 5)
        assert result["applied"] == 1 and cpu_delta(s.agent) == 3.0
        s.agent.tracker.set_delta([s.agent.table.aliases[CPU]], [0.5])
        s.agent.deltas[s.agent.table.aliases[CPU]] = 0.5
        topic, payload = next((t, p) for t, p in s.attacker.messages if "/cmd/" in t and p["command"] == "set-delta")
        assert payload["sig"] and payload["nonce"]
        await s.attacker.publish_raw(topic, json.dumps(payload).encode())
        await asyncio.sleep(0.3)
        finals = [r for r in s.attacker.replies(payload["id"]) if r["status"] in ("ok", "error")]
        assert [r["status"] for r in finals] == ["ok", "error"] and "already seen" in finals[1]["error"]
        assert s.agent.refused == {"replayed": 1} and cpu_delta(s.agent) == 0.5

    run(mosquitto, site, body)


def test_command_for_another_host_is_refused(mosquitto, site):
    """A command signed for hv-other, re-published on this host's topic."""

    async def body(s: Setup):
        cmd = signing.Signer(SIGNING_KEY).sign(
            command("set-delta", {"metrics": {"CPUUtilization": 9.0}}), site, "hv-other"
        )
        reply = await s.attacker.send(site, HOST, cmd)
        assert reply["status"] == "error" and f"addressed to {site}/hv-other" in reply["error"]
        other_site = signing.Signer(SIGNING_KEY).sign(command("rebirth"), "elsewhere", HOST)
        reply = await s.attacker.send(site, HOST, other_site)
        assert reply["status"] == "error" and "addressed to elsewhere/" in reply["error"]
        assert s.agent.refused == {"wrong-addressee": 2} and cpu_delta(s.agent) == 0.5

    run(mosquitto, site, body, controller=False)


def test_forged_set_delta_leaves_delta_unchanged(mosquitto, site):
    """Issue 13's 1e300 set-delta: unsigned, with a made-up signature, and with the controller's
    key id but another key: Δ stays what it was, so detection keeps seeing changes."""

    async def body(s: Setup):
        other, _ = signing.generate_key_pair()
        forged = [command("set-delta", {"metrics": {"CPUUtilization": 1e300}}) for _ in range(3)]
        forged[1].sig = "A" * 88
        signing.Signer(other).sign(forged[2], site, HOST)
        forged[2].kid = signing.key_id(CONTROLLER_KEY)
        for cmd in forged:
            reply = await s.attacker.send(site, HOST, cmd)
            assert reply["status"] == "error", reply
        assert cpu_delta(s.agent) == 0.5 and s.agent.stats["commands_refused"] == 3
        # the retained birth still announces the real Δ
        await asyncio.sleep(0.3)
        assert s.controller.ingest.host(site, HOST).deltas[s.agent.table.aliases[CPU]] == 0.5

    run(mosquitto, site, body)


def test_agent_without_controller_key_refuses_every_command_naming_the_option(mosquitto, site, caplog):
    async def body(s: Setup):
        with pytest.raises(CommandFailed, match="--controller-key FILE"):
            await s.controller.send_command(site, HOST, "rebirth", {}, 5)
        assert s.agent.refused == {"no-key": 1}

    with caplog.at_level(logging.WARNING, "atomwatch.agent.runtime"):
        run(mosquitto, site, body, agent_key=None)
    starts = [r for r in caplog.records if r.getMessage().startswith("no controller public key")]
    assert len(starts) == 1 and starts[0].levelno == logging.WARNING


def test_agent_trusts_several_keys_during_a_rotation(mosquitto, site):
    new, new_public = signing.generate_key_pair()

    async def body(s: Setup):
        for key in (SIGNING_KEY, new):
            cmd = signing.Signer(key).sign(command("rebirth"), site, HOST)
            assert (await s.attacker.send(site, HOST, cmd))["status"] == "ok"

    run(mosquitto, site, body, controller=False, agent_key=[CONTROLLER_KEY, new_public])


# ----------------------------------------------------------------------------- replies


def test_stray_reply_with_a_wrong_request_id_is_dropped_and_counted(mosquitto, site, caplog):
    async def body(s: Setup):
        async def stray():
            while not any("/cmd/" in t for t, _ in s.attacker.messages):
                await asyncio.sleep(0.01)
            _, cmd = next((t, p) for t, p in s.attacker.messages if "/cmd/" in t)
            fake = protocol.Reply(id="f" * 16, status="ok", ts=time.time(), result={"forged": True})
            await s.attacker.publish_raw(protocol.reply_topic(site, HOST, fake.id), protocol.encode(fake))

        forger = asyncio.create_task(stray())
        result = await s.controller.send_command(site, HOST, "slow", {}, 5)
        await forger
        assert result["real"] is True and "forged" not in result
        assert s.controller.ingest.dropped["reply-unknown-request"] == 1

    with caplog.at_level(logging.WARNING, "atomwatch.controller.ingest"):
        run(mosquitto, site, body)
    assert any(f"{site}/{HOST}/reply/ffff" in r.getMessage() for r in caplog.records)


def test_stray_reply_on_another_hosts_topic_is_dropped_and_the_real_answer_used(mosquitto, site):
    """The stray client answers first, with the right request id, on another host's reply topic."""

    async def body(s: Setup):
        async def stray():
            while not any("/cmd/" in t for t, _ in s.attacker.messages):
                await asyncio.sleep(0.01)
            _, cmd = next((t, p) for t, p in s.attacker.messages if "/cmd/" in t)
            for status in ("accepted", "ok"):
                fake = protocol.Reply(id=cmd["id"], status=status, ts=time.time(), result={"forged": True})
                await s.attacker.publish_raw(protocol.reply_topic(site, "hv-stray", cmd["id"]), protocol.encode(fake))
            return cmd["id"]

        forger = asyncio.create_task(stray())
        result = await s.controller.send_command(site, HOST, "slow", {}, 5)
        request_id = await forger
        assert result["real"] is True and "forged" not in result
        assert s.controller.ingest.dropped["reply-wrong-host"] == 2

        # the forged final reply came before the real one (the observer may see the real one after
        # the controller took it: wait for it, a few seconds at most)
        def finals() -> list[str]:
            return [t for t, p in s.attacker.messages if t.endswith(request_id) and p.get("status") == "ok"]

        await until(lambda: any(f"/{HOST}/" in t for t in finals()), "the real final reply", timeout=5)
        assert "hv-stray" in finals()[0] and f"/{HOST}/" in finals()[-1]

    run(mosquitto, site, body)


def test_dropped_replies_show_in_metrics(mosquitto, site):
    async def body(s: Setup):
        fake = protocol.Reply(id="0" * 16, status="ok", ts=time.time())
        await s.attacker.publish_raw(protocol.reply_topic(site, HOST, fake.id), protocol.encode(fake))
        await asyncio.sleep(0.3)
        from atomwatch.controller.metrics import render_metrics

        text = render_metrics(s.controller).decode()
        assert 'atomwatch_messages_dropped_total{reason="reply-unknown-request"} 1.0' in text

    run(mosquitto, site, body)


# ----------------------------------------------------------------------------- terminate


def authorized(**extra) -> dict:
    return {
        "vm": "vm1",
        "pid": 4242,
        "name": "cryptominer",
        "start_time": 12.5,
        "alarm": 7,
        "authorization": {"by": "verdict", "verdict": "malicious", "actor": "operator", "at": time.time()},
        **extra,
    }


def test_terminate_without_authorization_is_refused(mosquitto, site, caplog):
    async def body(s: Setup):
        bare = {"vm": "vm1", "pid": 4242, "name": "cryptominer", "start_time": 12.5}
        with pytest.raises(CommandFailed, match="refused: terminate without 'alarm'.*'authorization'"):
            await s.controller.send_command(site, HOST, "terminate", bare, 5)
        no_identity = {k: v for k, v in authorized().items() if k != "start_time"}
        with pytest.raises(CommandFailed, match="refused: terminate without 'start_time'"):
            await s.controller.send_command(site, HOST, "terminate", no_identity, 5)
        policy_without_name = authorized(authorization={"by": "policy"})
        with pytest.raises(CommandFailed, match="authorization.policy"):
            await s.controller.send_command(site, HOST, "terminate", policy_without_name, 5)

    with caplog.at_level(logging.WARNING):
        run(
            mosquitto,
            site,
            body,
            options={"introspection": {"terminate": "on"}},
            entry_points=["introspection-commands"],
        )
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit: terminate REFUSED")]
    assert len(audit) == 3


def test_terminate_is_off_by_default_and_the_refusal_names_the_option(mosquitto, site):
    async def body(s: Setup):
        with pytest.raises(CommandFailed, match=r"refused: terminate is off.*--set introspection.terminate=on"):
            await s.controller.send_command(site, HOST, "terminate", authorized(), 5)

    run(mosquitto, site, body, entry_points=["introspection-commands"])


def test_terminate_dry_run_kills_nothing(mosquitto, site, monkeypatch, caplog):
    from atomwatch.introspection import guest_agent

    def never(*a, **k):
        raise AssertionError("dry-run reached the guest agent")

    monkeypatch.setattr(guest_agent, "terminate", never)

    async def body(s: Setup):
        result = await s.controller.send_command(site, HOST, "terminate", authorized(), 5)
        assert result["dry_run"] is True
        assert result["target"] == {
            "vm": "vm1",
            "pid": 4242,
            "name": "cryptominer",
            "start_time": 12.5,
            "signal": 9,
            "group": False,
        }

    with caplog.at_level(logging.WARNING):
        run(
            mosquitto,
            site,
            body,
            options={"introspection": {"terminate": "dry-run"}},
            entry_points=["introspection-commands"],
        )
    assert any("audit: terminate ACCEPTED" in r.getMessage() and "dry run" in r.getMessage() for r in caplog.records)


def test_terminate_of_a_never_kill_name_is_refused(mosquitto, site):
    async def body(s: Setup):
        with pytest.raises(CommandFailed, match="'sshd' is in this agent's never_kill list"):
            await s.controller.send_command(site, HOST, "terminate", authorized(name="sshd"), 5)
        with pytest.raises(CommandFailed, match="'cryptominer' is in this agent's never_kill"):
            await s.controller.send_command(site, HOST, "terminate", authorized(), 5)

    run(
        mosquitto,
        site,
        body,
        options={"introspection": {"terminate": "on", "never_kill": ["sshd", "cryptominer"]}},
        entry_points=["introspection-commands"],
    )


def test_introspect_interval_is_refused_without_a_guest(mosquitto, site, monkeypatch, tmp_path):
    """No guest here: libvirt's connection is stubbed to fail, so the first introspection fails at
    the dump; it still counts, and the second within the interval is refused before any dump."""
    from atomwatch.introspection.acquire import AcquireError
    from atomwatch.plugins import introspection_commands

    def no_libvirt(self):
        raise AcquireError("no libvirt in this test")

    monkeypatch.setattr(introspection_commands.IntrospectionCommands, "conn", no_libvirt)

    async def body(s: Setup):
        params = {"vm": "vm1", "metrics": ["CPUUtilization"]}
        with pytest.raises(CommandFailed, match="dump failed: no libvirt in this test"):
            await s.controller.send_command(site, HOST, "introspect", params, 5)
        with pytest.raises(CommandFailed, match=r"refused: introspect: vm1 was introspected 0 s ago.*next allowed in"):
            await s.controller.send_command(site, HOST, "introspect", params, 5)

    run(
        mosquitto,
        site,
        body,
        options={"introspection": {"symbols": str(tmp_path), "introspect_min_interval": "1h"}},
        entry_points=["introspection-commands"],
    )


def test_orchestrator_records_a_consent_refusal_as_termination_refused_without_a_guest():
    """The orchestrator's side of a consent refusal, with a scripted handle (no agent)."""
    from test_plugins import FakeHandle

    import atomwatch.plugins.orchestrate as orch

    refusal = (
        "terminate on s/h failed: refused: terminate is off on this agent (the hypervisor owner's consent); "
        "enable it with --set introspection.terminate=on (or dry-run)"
    )
    finding = {"vm_uuid": "u1", "vm_name": "vm1", "suspects": [{"pid": 42, "name": "cryptominer", "start_time": 5.0}]}
    handle = FakeHandle({}, {"introspect": finding, "terminate": CommandFailed(refusal)})

    async def scenario():
        await orch.alarm_opened(alarm=handle.alarm, handle=handle)
        await orch.verdict_given(alarm=handle.alarm, verdict="malicious", actor="op", params={}, handle=handle)

    asyncio.run(scenario())
    refused = [f for f in handle.alarm.findings if f["kind"] == "termination-refused"]
    assert len(refused) == 1 and "--set introspection.terminate=on" in refused[0]["error"]
    assert handle.alarm.state == "open"

    dry = FakeHandle({}, {"introspect": finding, "terminate": {"dry_run": True, "target": {"pid": 42}}})

    async def dry_scenario():
        await orch.alarm_opened(alarm=dry.alarm, handle=dry)
        await orch.verdict_given(alarm=dry.alarm, verdict="malicious", actor="op", params={}, handle=dry)

    asyncio.run(dry_scenario())
    assert [f["kind"] for f in dry.alarm.findings][-1] == "termination-dry-run" and dry.alarm.state == "open"


# ----------------------------------------------------------------------------- keys and bytes


def test_key_files_load_and_their_errors_name_the_file(tmp_path):
    key_path = tmp_path / "controller" / "command-signing.key"
    pub_path = tmp_path / "agents" / "hv1" / "command-signing.pub"
    key = signing.write_key_pair(key_path, pub_path)
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    assert signing.key_id(signing.load_private_key(key_path).public_key()) == signing.key_id(key.public_key())
    assert signing.key_id(signing.load_public_key(pub_path)) == signing.key_id(key.public_key())
    with pytest.raises(ConfigError, match=f"{tmp_path}/nope.key: no such file"):
        signing.load_private_key(tmp_path / "nope.key")
    os.chmod(key_path, 0o640)
    with pytest.raises(ConfigError, match=r"readable by group or others \(mode 0640\).*chmod 600"):
        signing.load_private_key(key_path)
    os.chmod(key_path, 0o604)
    with pytest.raises(ConfigError, match="readable by group or others"):
        signing.load_private_key(key_path)
    os.chmod(key_path, 0o600)
    with pytest.raises(ConfigError, match=f"{pub_path}: not a PEM private key"):
        os.chmod(pub_path, 0o600)
        signing.load_private_key(pub_path)
    with pytest.raises(ConfigError, match=f"{key_path}: not a PEM public key"):
        signing.load_public_key(key_path)
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_path = tmp_path / "ec.pub"
    ec_path.write_bytes(
        ec_key.public_key().public_bytes(
            signing.serialization.Encoding.PEM, signing.serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match=f"{ec_path}: an? .*EC.*key, expected an Ed25519 public key"):
        signing.load_public_key(ec_path)
    assert len(signing.load_public_keys(f"{pub_path},{pub_path}")) == 2
    with pytest.raises(ConfigError, match="is a directory"):
        signing.load_public_key(tmp_path)


def test_canonical_bytes_are_sorted_compact_utf8_without_the_signature():
    cmd = signing.Signer(SIGNING_KEY).sign(command("set-delta", {"metrics": {"Δcpu": 2.0}}), "s1", "hv1", now=100.0)
    body = json.loads(protocol.encode(cmd))
    data = signing.canonical_bytes(body)
    assert b'"sig"' not in data and b" " not in data and "Δcpu".encode() in data
    keys = list(json.loads(data))
    assert keys == sorted(keys) and set(keys) == {
        "v",
        "type",
        "id",
        "command",
        "params",
        "ts",
        "timeout",
        "site",
        "host",
        "expires",
        "nonce",
        "kid",
    }
    assert body["expires"] == 160.0 and len(body["nonce"]) == 32
    # what the agent verifies: the payload as parsed from the wire
    _, decoded = protocol.decode(protocol.cmd_topic("s1", "hv1", cmd.id), protocol.encode(cmd))
    CONTROLLER_KEY.verify(__import__("base64").b64decode(decoded.sig), signing.canonical_bytes(decoded.raw))


def test_replay_cache_is_bounded_and_forgets_what_can_no_longer_be_accepted():
    verifier = signing.Verifier([CONTROLLER_KEY], "s", "h", cache_size=3)
    signer = signing.Signer(SIGNING_KEY)
    now = time.time()
    for _ in range(3):
        verifier.check(signer.sign(command("rebirth"), "s", "h", now=now), now=now)
    with pytest.raises(signing.Refused, match="replay cache full"):
        verifier.check(signer.sign(command("rebirth"), "s", "h", now=now), now=now)
    later = now + 95  # past expiry (60) + skew (30): the old entries go, new commands run again
    verifier.check(signer.sign(command("rebirth"), "s", "h", now=later), now=later)
    assert len(verifier.seen) == 1


def test_command_line_takes_keys_from_flags_config_file_and_environment(tmp_path, monkeypatch, capsys):
    from atomwatch.cli import agent as agent_cmd
    from atomwatch.cli import build_parser, main
    from atomwatch.cli import controller as controller_cmd

    key_path, pub_path = tmp_path / "controller" / "command-signing.key", tmp_path / "agents/hv1/command-signing.pub"
    signing.write_key_pair(key_path, pub_path)
    new_pub = tmp_path / "new.pub"
    signing.write_key_pair(tmp_path / "new.key", new_pub)
    monkeypatch.delenv("ATOMWATCH_CONTROLLER_KEY", raising=False)
    monkeypatch.delenv("ATOMWATCH_SIGNING_KEY", raising=False)

    def agent_config(argv, file_config=None):
        args = build_parser("agent").parse_args(["agent", "--broker", "mqtt://127.0.0.1:1", "--host", "hv1", *argv])
        return agent_cmd.build_config(args, file_config or {}, {})

    assert agent_config([]).controller_keys == []
    assert len(agent_config(["--controller-key", str(pub_path), "--controller-key", str(new_pub)]).controller_keys) == 2
    assert len(agent_config([], {"controller_key": [str(pub_path), str(new_pub)]}).controller_keys) == 2
    monkeypatch.setenv("ATOMWATCH_CONTROLLER_KEY", f"{pub_path},{new_pub}")
    cfg = agent_config(["--command-skew", "5", "--command-lifetime", "20"])
    assert len(cfg.controller_keys) == 2 and (cfg.command_skew, cfg.command_lifetime) == (5.0, 20.0)

    args = build_parser("controller").parse_args(["controller", "--broker", "mqtt://127.0.0.1:1"])
    assert controller_cmd.build_config(args, {}, {}).signing_key is None
    assert controller_cmd.build_config(args, {"signing_key": str(key_path)}, {}).signing_key is not None
    monkeypatch.setenv("ATOMWATCH_SIGNING_KEY", str(key_path))
    assert controller_cmd.build_config(args, {}, {}).signing_key is not None

    os.chmod(key_path, 0o644)
    assert main(["controller", "--broker", "mqtt://127.0.0.1:1", "--signing-key", str(key_path)]) == 2
    assert (
        f"atomwatch controller: command-signing key {key_path}: readable by group or others" in capsys.readouterr().err
    )
    assert main(["agent", "--broker", "mqtt://127.0.0.1:1", "--controller-key", str(tmp_path / "none.pub")]) == 2
    assert f"controller public key {tmp_path / 'none.pub'}: no such file" in capsys.readouterr().err

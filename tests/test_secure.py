"""Issue 13, transport: ``atomwatch secure init`` writes a CA, certificates and a Mosquitto
configuration with an ACL; a real Mosquitto started with exactly that configuration (only the
port, bound to loopback, differs) lets the legitimate agent and controller work over TLS and
refuses every attack below. Also ``BrokerAddress``: mqtts://, the TLS files, passwords."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import ssl
import stat
import subprocess
import time

import aiomqtt
import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY, Counting, free_port, secured_site, wait_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

import atomwatch
from atomwatch import pki, protocol
from atomwatch.agent.config import AgentConfig
from atomwatch.agent.runtime import Agent
from atomwatch.cli import main as cli_main
from atomwatch.config import PASSWORD_ENV, BrokerAddress, ConfigError
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.mqtt import describe_failure
from atomwatch.pluginmanager import PluginManager

SITE = "sec"
#: the series the test collector counts up
COUNTED = atomwatch.SeriesKey("u1", "vm1", "CPUUtilization", "%")
HOSTS = ["hv1", "hv2"]
#: how long an attack's message is waited for before concluding the broker dropped it
QUIET = 1.5


# ----------------------------------------------------------------------------- the secured broker


@pytest.fixture(scope="module")
def secured():
    with secured_site(SITE, HOSTS) as broker:
        yield broker


async def received(client: aiomqtt.Client, seconds: float) -> list[aiomqtt.Message]:
    """Every message ``client`` gets within ``seconds``."""
    out: list[aiomqtt.Message] = []

    async def collect():
        async for m in client.messages:
            out.append(m)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), seconds)
    return out


def payloads(messages) -> list[bytes]:
    return [bytes(m.payload) for m in messages]


def data_payload(seq: int) -> bytes:
    return protocol.encode(protocol.Data(session=1, seq=seq, ts=time.time(), values=[(0, float(seq))]))


async def connect_fails(client: aiomqtt.Client) -> str:
    with pytest.raises(aiomqtt.MqttError) as e:
        async with client:
            await client.subscribe(protocol.agent_filters(SITE)[0])
            await asyncio.sleep(1.0)  # a connection that was let in would stay up
            raise AssertionError("the broker let the client in")
    return str(e.value)


# ----------------------------------------------------------------------------- what init writes


def test_init_writes_every_file_with_private_keys_0600(tmp_path):
    root = tmp_path / "site"
    files = {str(p.relative_to(root)) for p in pki.init(root, pki.Site("eu1", ["hv1", "hv2"]))}
    for name in (
        "ca.crt",
        "ca.key",
        "README.md",
        "broker/server.crt",
        "broker/server.key",
        "broker/ca.crt",
        "broker/mosquitto.conf",
        "broker/acl",
        "controller/client.crt",
        "controller/client.key",
        "controller/ca.crt",
        "controller/command-signing.key",
        "controller/api-tokens",
        "controller/api-token",
        "controller/api.crt",
        "controller/api.key",
        "agents/hv1/client.crt",
        "agents/hv1/client.key",
        "agents/hv1/ca.crt",
        "agents/hv1/command-signing.pub",
        "agents/hv2/client.key",
    ):
        assert name in files, name
    for private in ("ca.key", "broker/server.key", "controller/client.key", "controller/command-signing.key"):
        assert stat.S_IMODE((root / private).stat().st_mode) == 0o600, private
    for private in ("controller/api-tokens", "controller/api-token", "agents/hv1/client.key"):
        assert stat.S_IMODE((root / private).stat().st_mode) == 0o600, private

    def cn(path):
        cert = x509.load_pem_x509_certificate((root / path).read_bytes())
        return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    assert cn("controller/client.crt") == "controller" and cn("agents/hv2/client.crt") == "hv2"
    server = x509.load_pem_x509_certificate((root / "broker/server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # the agents' public key is the controller's signing key's
    signing = serialization.load_pem_private_key((root / "controller/command-signing.key").read_bytes(), None)
    pub = signing.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert (root / "agents/hv1/command-signing.pub").read_bytes() == pub
    name, token = (root / "controller/api-tokens").read_text().splitlines()[-1].split()
    assert name == "operator" and len(token) >= 43
    assert (root / "controller/api-token").read_text().strip() == token
    conf = (root / "broker/mosquitto.conf").read_text()
    for line in ("listener 8883", "require_certificate true", "use_identity_as_username true", "allow_anonymous false"):
        assert line in conf
    assert [ln for ln in conf.splitlines() if ln.startswith("listener")] == ["listener 8883"], "no plain listener"


def test_init_refuses_an_existing_site_and_bad_host_names(tmp_path):
    root = tmp_path / "site"
    pki.init(root, pki.Site("eu1", ["hv1"]))
    key = (root / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite its keys"):
        pki.init(root, pki.Site("eu1", ["hv1"]))
    assert (root / "ca.key").read_bytes() == key
    pki.init(root, pki.Site("eu1", ["hv9"]), force=True)
    assert (root / "ca.key").read_bytes() != key and not (root / "agents/hv1").exists()
    for bad in ("controller", "a/b", "hv+", "#", "", "x" * 129):
        with pytest.raises(ConfigError):
            pki.init(tmp_path / "other", pki.Site("eu1", [bad]))
    with pytest.raises(ConfigError, match="site name"):
        pki.init(tmp_path / "other", pki.Site("eu/1", ["hv1"]))


def test_add_host_issues_one_more_agent_and_touches_nothing_else(tmp_path):
    root = tmp_path / "site"
    pki.init(root, pki.Site("eu1", ["hv1"]))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert cli_main(["secure", "add-host", str(root), "hv2"]) == 0
    assert all(p.read_bytes() == data for p, data in before.items())
    new = root / "agents/hv2"
    assert sorted(p.name for p in new.iterdir()) == ["ca.crt", "client.crt", "client.key", "command-signing.pub"]
    ca = x509.load_pem_x509_certificate((root / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate((new / "client.crt").read_bytes()).verify_directly_issued_by(ca)
    assert (new / "command-signing.pub").read_bytes() == (root / "agents/hv1/command-signing.pub").read_bytes()
    for refused in ("hv1", "controller", "a/b"):
        assert cli_main(["secure", "add-host", str(root), refused]) == 2
    assert cli_main(["secure", "init", str(root), "--site", "eu1", "--host", "hv3"]) == 2


def test_acl_grants_agents_only_their_own_topics():
    text = pki.acl("eu1")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "pattern write atomwatch/v1/eu1/%u/birth",
        "pattern write atomwatch/v1/eu1/%u/data",
        "pattern write atomwatch/v1/eu1/%u/history",
        "pattern write atomwatch/v1/eu1/%u/death",
        "pattern write atomwatch/v1/eu1/%u/reply/+",
        "pattern read atomwatch/v1/eu1/%u/cmd/+",
        "pattern read atomwatch/v1/eu1/controller/state/+",
        "user controller",
        "topic write atomwatch/v1/eu1/+/cmd/+",
        "topic readwrite atomwatch/v1/eu1/controller/state/+",
        "topic readwrite atomwatch/v1/eu1/controller/beat/+",
        "topic read atomwatch/v1/eu1/+/birth",
        "topic read atomwatch/v1/eu1/+/data",
        "topic read atomwatch/v1/eu1/+/history",
        "topic read atomwatch/v1/eu1/+/death",
        "topic read atomwatch/v1/eu1/+/reply/+",
    ]


# ----------------------------------------------------------------------------- BrokerAddress


def test_broker_address_refuses_a_password_in_the_url():
    with pytest.raises(ConfigError, match="password in the URL is refused.*--broker-password-file.*" + PASSWORD_ENV):
        BrokerAddress.parse("mqtt://alice:s3cret@broker:1883")
    for url in ("mqtts://alice:s3cret@broker", "http://alice:s3cret@broker", "mqtt://alice:s3cret@broker:99999"):
        with pytest.raises(ConfigError) as e:
            BrokerAddress.parse(url)
        assert "s3cret" not in str(e.value), "the error does not repeat the password"


def test_broker_address_reads_the_password_from_a_file_or_the_environment(tmp_path):
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    a = BrokerAddress.parse("mqtt://alice@broker", password_file=str(f), environ={PASSWORD_ENV: "from-env"})
    assert (a.username, a.password, a.port, a.tls) == ("alice", "from-file", 1883, False)
    a = BrokerAddress.parse("mqtt://broker", username="bob", environ={PASSWORD_ENV: "from-env"})
    assert (a.username, a.password) == ("bob", "from-env")
    assert "from-env" not in repr(a) and "from-env" not in str(a)
    with pytest.raises(ConfigError, match="no such file"):
        BrokerAddress.parse("mqtt://alice@broker", password_file=str(tmp_path / "nope"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        BrokerAddress.parse("mqtt://alice@broker", password_file=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no username"):
        BrokerAddress.parse("mqtt://broker", environ={PASSWORD_ENV: "x"})


def test_broker_address_mqtts_checks_its_files(tmp_path):
    root = tmp_path / "site"
    pki.init(root, pki.Site("eu1", ["hv1", "hv2"]))
    hv1, hv2 = root / "agents/hv1", root / "agents/hv2"
    a = BrokerAddress.parse(
        "mqtts://broker.example", ca=str(hv1 / "ca.crt"), cert=str(hv1 / "client.crt"), key=str(hv1 / "client.key")
    )
    assert (a.port, a.tls, str(a)) == (8883, True, "mqtts://broker.example:8883")
    ctx = a.ssl_context()
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ConfigError, match=r"--broker-ca .*nope: no such file"):
        BrokerAddress.parse("mqtts://b", ca=str(tmp_path / "nope"))
    (tmp_path / "junk.pem").write_text("hello\n")
    with pytest.raises(ConfigError, match=r"--broker-ca .*junk.pem: not a PEM CA certificate"):
        BrokerAddress.parse("mqtts://b", ca=str(tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match=r"--broker-key .*junk.pem: not a PEM private key"):
        BrokerAddress.parse("mqtts://b", cert=str(hv1 / "client.crt"), key=str(tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match=r"--broker-key .*hv2/client.key does not match the certificate"):
        BrokerAddress.parse("mqtts://b", cert=str(hv1 / "client.crt"), key=str(hv2 / "client.key"))
    with pytest.raises(ConfigError, match="plain MQTT: use mqtts://"):
        BrokerAddress.parse("mqtt://b", ca=str(hv1 / "ca.crt"))
    if os.geteuid() != 0:  # root reads anything
        (tmp_path / "locked.pem").write_bytes((hv1 / "ca.crt").read_bytes())
        (tmp_path / "locked.pem").chmod(0)
        with pytest.raises(ConfigError, match="cannot be read"):
            BrokerAddress.parse("mqtts://b", ca=str(tmp_path / "locked.pem"))


def test_up_refuses_tls_options_without_a_broker(tmp_path):
    assert cli_main(["up", "--broker-ca", str(tmp_path / "ca.crt"), "--duration", "1"]) == 2


def test_a_refused_handshake_is_said_in_words():
    a = BrokerAddress("broker", 8883, tls=True, ca="/x/ca.crt", cert="/x/c.crt", key="/x/c.key")
    text = describe_failure(
        a,
        aiomqtt.MqttError("Operation timed out"),
        "failed to receive on socket: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required",
    )
    assert text.startswith("TLS handshake failed") and "CERTIFICATE_REQUIRED" in text and "/x/ca.crt" in text
    assert "refused the credentials" in describe_failure(a, aiomqtt.MqttCodeError(5, "Not authorized"))
    assert "refusing this client's certificate" in describe_failure(a, aiomqtt.MqttError("Operation timed out"))
    plain = BrokerAddress("broker", 1883)
    assert (
        describe_failure(plain, aiomqtt.MqttError("[Errno 111] Connection refused")) == "[Errno 111] Connection refused"
    )


# ----------------------------------------------------------------------------- on a real Mosquitto


class Plugin:
    @atomwatch.hookimpl
    def register_collectors(self, config):
        return [Counting(COUNTED)]


async def test_the_agent_and_the_controller_work_over_tls_with_their_certificates(secured):
    pm = PluginManager()
    pm.register(Plugin(), name="test-collectors")
    agent = Agent(
        AgentConfig(broker=secured.address("hv1"), site=SITE, host="hv1", tick=0.05, controller_key=CONTROLLER_KEY), pm
    )
    controller = Controller(
        ControllerConfig(broker=secured.address("controller"), sites=[SITE], tick=0.1, signing_key=SIGNING_KEY), pm
    )
    rows = []
    controller.row_listeners.append(rows.append)
    tasks = [asyncio.create_task(agent.run()), asyncio.create_task(controller.run())]
    try:
        await asyncio.wait_for(agent.connected.wait(), 10)
        await asyncio.wait_for(controller.connected.wait(), 10)
        deadline = time.monotonic() + 10
        while len(rows) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(rows) >= 5, "data flows from the agent to the controller over TLS"
        # a command goes down (cmd/+ read by hv1) and its reply comes back (reply/+ written by hv1)
        result = await controller.send_command(SITE, "hv1", "rebirth", timeout=5)
        assert isinstance(result, dict)
    finally:
        agent.stop()
        controller.stop()
        await asyncio.gather(*tasks)


async def test_a_client_without_a_certificate_cannot_connect(secured):
    error = await connect_fails(secured.client(None))
    assert "timed out" in error or "certificate" in error.lower()


async def test_a_client_with_a_certificate_of_another_ca_cannot_connect(secured, tmp_path):
    other = tmp_path / "other"
    pki.init(other, pki.Site(SITE, ["hv1"]))  # same names, another CA
    ctx = BrokerAddress.parse(
        secured.url,
        ca=str(secured.root / "ca.crt"),  # it trusts the real broker ...
        cert=str(other / "agents/hv1/client.crt"),  # ... but shows a certificate the broker's CA did not sign
        key=str(other / "agents/hv1/client.key"),
    ).ssl_context()
    await connect_fails(secured.client("hv1", tls_context=ctx))
    # and the other way round: a client trusting only the other CA refuses the real broker
    wrong_ca = BrokerAddress.parse(secured.url, ca=str(other / "ca.crt")).ssl_context()
    error = await connect_fails(secured.client("x", tls_context=wrong_ca))
    assert "certificate verify failed" in error


async def test_plain_tcp_to_the_tls_port_fails(secured):
    await connect_fails(secured.client("plain", tls_context=None))


async def test_agent_hv1_cannot_publish_hv2s_birth_or_data(secured):
    async with secured.client("controller") as watcher, secured.client("hv1") as hv1:
        for f in protocol.agent_filters(SITE):
            await watcher.subscribe(f, qos=1)
        forged = data_payload(666)
        await hv1.publish(protocol.data_topic(SITE, "hv2"), forged, qos=1)
        await hv1.publish(protocol.birth_topic(SITE, "hv2"), forged, qos=1)
        await hv1.publish(protocol.death_topic(SITE, "hv2"), forged, qos=1)
        own = data_payload(1)
        await hv1.publish(protocol.data_topic(SITE, "hv1"), own, qos=1)
        got = await received(watcher, QUIET)
    assert [(str(m.topic), bytes(m.payload)) for m in got if bytes(m.payload) in (own, forged)] == [
        (protocol.data_topic(SITE, "hv1"), own)
    ], "hv1's own data arrives, its forgeries for hv2 do not"


async def test_an_agent_cannot_publish_commands_to_another_agent_or_itself(secured):
    async with secured.client("hv1") as hv1, secured.client("hv2") as hv2, secured.client("controller") as ctl:
        await hv1.subscribe(protocol.cmd_topic(SITE, "hv1", "+"), qos=1)
        await hv2.subscribe(protocol.cmd_topic(SITE, "hv2", "+"), qos=1)
        cmd = protocol.encode(protocol.Command(id="evil", command="terminate", params={}, ts=time.time()))
        await hv1.publish(protocol.cmd_topic(SITE, "hv2", "evil"), cmd, qos=1)
        await hv1.publish(protocol.cmd_topic(SITE, "hv1", "evil"), cmd, qos=1)
        real = protocol.encode(protocol.Command(id="real", command="rebirth", params={}, ts=time.time()))
        await ctl.publish(protocol.cmd_topic(SITE, "hv2", "real"), real, qos=1)
        got = await asyncio.gather(received(hv1, QUIET), received(hv2, QUIET))
    assert [payloads(g) for g in got] == [[], [real]], "only the controller's command arrives"


async def test_an_agent_cannot_read_another_agents_commands(secured):
    async with secured.client("controller") as controller, secured.client("hv1") as hv1:
        with contextlib.suppress(aiomqtt.MqttError):  # refused at SUBSCRIBE or at delivery: either will do
            await hv1.subscribe(protocol.cmd_topic(SITE, "hv2", "+"), qos=1)
        await hv1.subscribe(protocol.cmd_topic(SITE, "hv1", "+"), qos=1)
        secret = protocol.encode(protocol.Command(id="a1", command="introspect", params={}, ts=time.time()))
        await controller.publish(protocol.cmd_topic(SITE, "hv2", "a1"), secret, qos=1)
        mine = protocol.encode(protocol.Command(id="a2", command="rebirth", params={}, ts=time.time()))
        await controller.publish(protocol.cmd_topic(SITE, "hv1", "a2"), mine, qos=1)
        got = await received(hv1, QUIET)
    assert [str(m.topic) for m in got] == [protocol.cmd_topic(SITE, "hv1", "a2")], "only its own command"


async def test_an_agent_cannot_publish_the_controllers_state(secured):
    async with secured.client("hv2") as hv2, secured.client("hv1") as hv1:
        await hv2.subscribe(protocol.state_filter(SITE), qos=1)
        await received(hv2, 0.5)  # any retained state of the real controller
        forged = json.dumps({"v": 1, "type": "state", "online": False, "forged": True}).encode()
        await hv1.publish(protocol.state_topic(SITE, "controller"), forged, qos=1, retain=True)
        got = await received(hv2, QUIET)
        async with secured.client("controller") as ctl:
            real = json.dumps({"v": 1, "type": "state", "online": True, "test": time.time()}).encode()
            await ctl.publish(protocol.state_topic(SITE, "controller"), real, qos=1)
            got += await received(hv2, QUIET)
    assert payloads(got) == [real], "the controller's state arrives, the agent's forgery does not"


async def test_the_mosquitto_log_names_the_refusals(secured):
    """The broker logs a refused handshake, for the operator to find."""
    await connect_fails(secured.client(None))
    log = secured.log.read_text(errors="replace")
    assert "peer did not return a certificate" in log or "certificate required" in log


def test_secure_init_command_line(tmp_path, capsys):
    root = tmp_path / "s"
    argv = ["secure", "init", str(root), "--site", "eu1", "--host", "hv1", "--broker-host", "mqtt.example"]
    argv += ["--broker-ip", "10.0.0.5", "--broker-port", "8884", "--controller-host", "ctl.example"]
    assert cli_main(argv) == 0
    assert "listener 8884" in (root / "broker/mosquitto.conf").read_text()
    server = x509.load_pem_x509_certificate((root / "broker/server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    api = x509.load_pem_x509_certificate((root / "controller/api.crt").read_bytes())
    san = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "ctl.example"}
    readme = (root / "README.md").read_text()
    assert "mqtts://mqtt.example:8884" in readme and "ca.key" in readme
    assert cli_main(["secure", "init", str(tmp_path / "t"), "--site", "eu1", "--broker-ip", "nope"]) == 2


async def test_an_agent_refused_by_the_broker_says_why_without_tracebacks(secured, caplog):
    pm = PluginManager()
    pm.register(Plugin(), name="test-collectors")
    agent = Agent(AgentConfig(broker=secured.address(None), site=SITE, host="hv1", tick=0.1), pm)

    def atomwatch_errors():
        # paho's own log (a child ``….paho`` logger) carries the raw SSL alert; atomwatch's line says it in words
        return [
            r
            for r in caplog.records
            if r.levelname == "ERROR" and r.name.startswith("atomwatch") and not r.name.endswith(".paho")
        ]

    task = asyncio.create_task(agent.run())
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not atomwatch_errors():
            await asyncio.sleep(0.2)
    finally:
        agent.stop()
        await task
    errors = atomwatch_errors()
    assert errors, "the refusal is logged as an error"
    text = errors[0].getMessage()
    assert "TLS handshake failed" in text or "refusing this client's certificate" in text, text
    assert not agent.connected.is_set()
    assert all(r.exc_info is None for r in caplog.records), "no traceback"


async def test_the_password_file_alternative_over_tls(secured):
    """docs/security.md's alternative: usernames and passwords instead of client
    certificates, over the same TLS listener and the same ACL (``%u`` is the MQTT username)."""
    tmp_path = secured.root / "password-alternative"  # where mosquitto's own user can read
    tmp_path.mkdir()
    passwd = tmp_path / "passwd"
    for user, password in (("hv1", "pw-hv1"), ("controller", "pw-ctl")):
        create = ["-c"] if user == "hv1" else []
        subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), user, password], check=True)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam("mosquitto")
            os.chown(passwd, user.pw_uid, user.pw_gid)
    written = (secured.root / "broker" / "mosquitto.conf").read_text()
    port = free_port()
    conf = written.replace("listener 8883\n", f"listener {port} 127.0.0.1\n").replace(
        "require_certificate true\nuse_identity_as_username true\n", f"password_file {passwd}\n"
    )
    assert f"password_file {passwd}" in conf
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
        stdout=(tmp_path / "log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port)
        url = f"mqtts://127.0.0.1:{port}"
        ca = str(secured.root / "ca.crt")
        (tmp_path / "hv1-password").write_text("pw-hv1\n")
        hv1 = BrokerAddress.parse(f"mqtts://hv1@127.0.0.1:{port}", ca=ca, password_file=str(tmp_path / "hv1-password"))
        ctl = BrokerAddress.parse(url, ca=ca, username="controller", environ={PASSWORD_ENV: "pw-ctl"})

        def client(a: BrokerAddress) -> aiomqtt.Client:
            return aiomqtt.Client(
                a.host, a.port, username=a.username, password=a.password, tls_context=a.ssl_context(), timeout=5
            )

        async with client(ctl) as watcher, client(hv1) as agent:
            await watcher.subscribe(protocol.agent_filters(SITE)[1], qos=1)
            own, forged = data_payload(1), data_payload(666)
            await agent.publish(protocol.data_topic(SITE, "hv2"), forged, qos=1)
            await agent.publish(protocol.data_topic(SITE, "hv1"), own, qos=1)
            got = await received(watcher, QUIET)
        assert payloads(got) == [own], "the same ACL holds with usernames"
        wrong = BrokerAddress.parse(url, ca=ca, username="hv1", environ={PASSWORD_ENV: "guess"})
        with pytest.raises(aiomqtt.MqttError) as e:
            async with client(wrong):
                pass
        assert "refused the credentials of user 'hv1'" in describe_failure(wrong, e.value)
    finally:
        proc.terminate()
        proc.wait(5)


def test_the_broker_options_come_from_the_command_line_or_the_config_file(tmp_path, monkeypatch, caplog):
    from atomwatch.cli import agent as agent_cmd
    from atomwatch.cli import build_parser
    from atomwatch.cli import controller as controller_cmd

    root = tmp_path / "site"
    pki.init(root, pki.Site("eu1", ["hv1"]))
    hv1, ctl = root / "agents/hv1", root / "controller"
    args = build_parser("agent").parse_args(
        ["agent", "--broker", "mqtts://b.example", "--broker-ca", str(hv1 / "ca.crt")]
        + ["--broker-cert", str(hv1 / "client.crt"), "--broker-key", str(hv1 / "client.key")]
    )
    config = agent_cmd.build_config(args, {}, {}, host="hv1")
    assert (config.broker.tls, config.broker.port, config.broker.cert) == (True, 8883, str(hv1 / "client.crt"))
    assert "names" not in caplog.text
    agent_cmd.build_config(args, {}, {}, host="hv2")  # hv1's certificate for host hv2: the ACL would drop all
    assert "names 'hv1' but this agent's --host is 'hv2'" in caplog.text
    (tmp_path / "pw").write_text("secret\n")
    file_config = {
        "broker": "mqtts://b.example:8884",
        "broker_ca": str(ctl / "ca.crt"),
        "broker_cert": str(ctl / "client.crt"),
        "broker_key": str(ctl / "client.key"),
        "broker_username": "controller",
        "broker_password_file": str(tmp_path / "pw"),
    }
    args = build_parser("controller").parse_args(["controller"])
    monkeypatch.delenv("ATOMWATCH_BROKER", raising=False)
    config = controller_cmd.build_config(args, file_config, {})
    b = config.broker
    assert (b.port, b.key, b.username, b.password) == (8884, str(ctl / "client.key"), "controller", "secret")

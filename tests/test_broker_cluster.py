"""What the wire protocol needs from a clustered broker, checked ACROSS the nodes of a real
three-node NATS cluster (the ``broker_cluster`` fixture) with plain aiomqtt clients: retained
messages, the last will, QoS 1 order, retained messages after a node's SIGKILL, and what becomes of
the will of a client whose node dies. docs/scale.md ("Clustered broker") records the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest
from conftest import free_port

from atomwatch.lab.broker_cluster import running_pids
from benchmarks.brokers import first_message

pytestmark = pytest.mark.slow

#: how long a surviving node may take to serve clients again after a node's SIGKILL: measured
#: 0-16 s (JetStream elects new leaders for the MQTT streams the dead node led)
FAILOVER = 40.0

# A client with a retained QoS 1 will that keeps itself connected to the first node of argv that
# answers, and says "up <port>" on stdout each time it is connected.
WILL_CLIENT = """
import asyncio, sys, aiomqtt
topic, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
async def main():
    while True:
        for port in ports:
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier="will-" + topic.replace("/", "-"),
                        timeout=3, keepalive=5, will=aiomqtt.Will(topic, b"dead", qos=1, retain=True)) as c:
                    print("up", port, flush=True)
                    async for _ in c.messages:
                        pass
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)
asyncio.run(main())
"""


def topic(name: str) -> str:
    return f"atomwatch/v1/c{uuid.uuid4().hex[:8]}/{name}"


def client(port: int, **kw) -> aiomqtt.Client:
    kw.setdefault("timeout", 5)
    return aiomqtt.Client("127.0.0.1", port, identifier=f"t-{uuid.uuid4().hex[:10]}", **kw)


async def retained_via(ports: list[int], t: str, deadline: float, qos: int = 1) -> tuple[int, aiomqtt.Message | None]:
    """Connect to the first of ``ports`` that serves (trying them in turn until ``deadline``),
    subscribe to ``t``; the port and the retained message it sends (None if none in 3 s)."""
    while True:
        for port in ports:
            try:
                async with client(port, timeout=2) as c:
                    await c.subscribe(t, qos=1, timeout=3)
                    return port, await first_message(c, 3)
            except aiomqtt.MqttError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def publish_retained(ports: list[int], t: str, payload: bytes, deadline: float) -> int:
    """Publish ``payload`` retained (QoS 1) on ``t`` through the first of ``ports`` that
    acknowledges it, reconnecting as an agent does while the cluster fails over (a node whose
    JetStream does not answer within 5 s closes the connection without a PUBACK); the port."""
    while True:
        for port in ports:
            try:
                async with client(port, timeout=2) as pub:
                    await pub.publish(t, payload, qos=1, retain=True, timeout=8)
                    return port
            except aiomqtt.MqttError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


def start_will_client(t: str, ports: list[int]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WILL_CLIENT, t, *map(str, ports)], stdout=subprocess.PIPE, text=True)


async def read_line(proc: subprocess.Popen, seconds: float) -> str:
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), seconds)
    assert line, f"the will client ended (status {proc.poll()})"
    return line.strip()


def end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


async def test_retained_message_on_node0_is_seen_by_a_subscriber_on_node2(broker_cluster):
    t = topic("h1/birth")
    async with client(broker_cluster.mqtt_port(0)) as pub:
        await pub.publish(t, b"birth-1", qos=1, retain=True)
    async with client(broker_cluster.mqtt_port(2)) as sub:
        await sub.subscribe(t, qos=1)
        m = await first_message(sub, 5)
    assert m is not None and m.payload == b"birth-1" and m.retain


async def test_will_of_a_client_killed_on_node1_is_seen_on_node2(broker_cluster):
    t = topic("h1/birth")
    async with client(broker_cluster.mqtt_port(2)) as sub:
        await sub.subscribe(t, qos=1)
        proc = start_will_client(t, [broker_cluster.mqtt_port(1)])
        try:
            assert await read_line(proc, 15) == f"up {broker_cluster.mqtt_port(1)}"
            assert await first_message(sub, 0.5) is None  # no will while it lives
        finally:
            end(proc)  # SIGKILL: the kernel closes its socket, no DISCONNECT
        m = await first_message(sub, 10)
    assert m is not None and m.payload == b"dead"
    # retained: a controller that subscribes later still learns of the death, on any node
    async with client(broker_cluster.mqtt_port(0)) as late:
        await late.subscribe(t, qos=1)
        m = await first_message(late, 5)
    assert m is not None and m.payload == b"dead" and m.retain


async def test_a_thousand_qos1_messages_via_node0_arrive_in_order_on_node2(broker_cluster):
    t, n = topic("h1/data"), 1000
    got: list[int] = []
    async with (
        client(broker_cluster.mqtt_port(2)) as sub,
        client(broker_cluster.mqtt_port(0), max_inflight_messages=100) as pub,
    ):
        await sub.subscribe(t, qos=1)
        await asyncio.sleep(0.3)  # the subscription reaches every node's interest graph

        async def receive():
            async for m in sub.messages:
                got.append(int(m.payload[:6]))
                if len(got) == n:
                    return

        rx = asyncio.create_task(receive())
        for k in range(0, n, 100):  # 100 in flight at a time, sent in this order on one connection
            await asyncio.gather(*(pub.publish(t, b"%06d" % i + b"x" * 294, qos=1) for i in range(k, k + 100)))
        await asyncio.wait_for(rx, 30)
    assert got == list(range(n))


async def test_retained_message_outlives_sigkill_of_its_node_and_clients_move(broker_cluster):
    c = broker_cluster
    t = topic("controller/state")
    async with client(c.mqtt_port(0)) as pub:
        await pub.publish(t, b"state-1", qos=1, retain=True)
    try:
        async with client(c.mqtt_port(0), keepalive=2) as watcher:
            await watcher.subscribe(t, qos=1)
            assert (await first_message(watcher, 5)).payload == b"state-1"
            c.kill_node(0)
            with pytest.raises(aiomqtt.MqttError):  # the client sees its node go
                await asyncio.wait_for(first_message(watcher, 10), 15)
        t0 = time.monotonic()
        port, m = await retained_via([c.mqtt_port(1), c.mqtt_port(2)], t, t0 + FAILOVER)
        print(f"failover: served by port {port} after {time.monotonic() - t0:.1f} s")
        assert m is not None and m.payload == b"state-1" and m.retain
        # the survivors take new retained messages (once the streams have leaders again: until
        # then a publish may go unacknowledged and the node closes the connection after 5 s);
        # the dead node learns them when it is back
        await publish_retained([port], t, b"state-2", t0 + FAILOVER)
        print(f"failover: retained publish acknowledged after {time.monotonic() - t0:.1f} s")
        c.restart_node(0)
        async with client(c.mqtt_port(0)) as sub:
            await sub.subscribe(t, qos=1)
            m = await first_message(sub, 5)
        assert m is not None and m.payload == b"state-2"
    finally:
        c.heal()


async def test_will_of_a_client_whose_node_is_killed_is_never_published(broker_cluster):
    """The facts, measured: a node holds its clients' wills in memory, so when the NODE dies the
    wills of its clients die with it (nobody publishes them, on any node). The client lives on,
    reconnects to another node and sets its will there; its own death after that publishes the
    will to the subscribers of every surviving node. But while the dead node is away, that will's
    retained copy was readable by a later subscriber in only 1 of 6 probe runs: the controller
    must not rely on the will alone, nor on its retained copy (docs/scale.md)."""
    c = broker_cluster
    t = topic("h2/birth")
    proc = start_will_client(t, [c.mqtt_port(1), c.mqtt_port(2)])
    try:
        # QoS 0: delivered from the node's own interest graph, not through a JetStream consumer
        # whose leader may be the node about to die
        async with client(c.mqtt_port(2)) as on2, client(c.mqtt_port(0)) as on0:
            await on2.subscribe(t, qos=0)
            await on0.subscribe(t, qos=0)
            assert await read_line(proc, 15) == f"up {c.mqtt_port(1)}"
            c.kill_node(1)
            t0 = time.monotonic()
            assert await read_line(proc, FAILOVER) == f"up {c.mqtt_port(2)}"  # moved to node 2
            await publish_retained([c.mqtt_port(2)], topic("probe"), b"x", t0 + FAILOVER)  # failed over
            assert await first_message(on2, 1) is None  # node 1's will died with it ...
            assert await first_message(on0, 0.1) is None  # ... on every node
            end(proc)
            m2, m0 = await first_message(on2, 10), await first_message(on0, 10)
        assert m2 is not None and m2.payload == b"dead"  # the will it set on node 2
        assert m0 is not None and m0.payload == b"dead"
    finally:
        end(proc)
        c.heal()


def atomwatch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atomwatch", "broker-cluster", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


async def test_broker_cluster_up_prints_the_urls_leaves_it_running_and_down_stops_it(tmp_path, broker_cluster):
    up = atomwatch("up", "--nodes", "3", "--dir", str(tmp_path))
    try:
        assert up.returncode == 0, up.stderr
        urls = up.stdout.strip().split(",")
        assert len(urls) == 3 and all(u.startswith("mqtt://127.0.0.1:") for u in urls)
        pids = running_pids(tmp_path)
        assert len(pids) == 3  # still running after the command returned
        again = atomwatch("up", "--dir", str(tmp_path))
        assert again.returncode == 1 and "down --dir" in again.stderr
        t = topic("h1/birth")
        async with client(int(urls[0].rsplit(":", 1)[1])) as pub:
            await pub.publish(t, b"b", qos=1, retain=True)
        async with client(int(urls[2].rsplit(":", 1)[1])) as sub:
            await sub.subscribe(t, qos=1)
            assert (await first_message(sub, 5)).payload == b"b"
    finally:
        down = atomwatch("down", "--dir", str(tmp_path))
    assert down.returncode == 0 and "stopped 3 node(s)" in down.stdout
    assert running_pids(tmp_path) == [] and not any(Path(f"/proc/{p}").exists() for p in pids)


def test_broker_cluster_without_nats_server_names_the_package(tmp_path):
    done = atomwatch("up", "--dir", str(tmp_path), env={"ATOMWATCH_NATS_SERVER": str(tmp_path / "absent")})
    assert done.returncode == 2 and "apt-get install nats-server" in done.stderr and "Traceback" not in done.stderr
    done = atomwatch("down", "--dir", str(tmp_path / "absent"))
    assert done.returncode == 2 and "no such directory" in done.stderr


# ----------------------------------------------------------------------------- deploy/nats/

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nats" / "nats-node.conf"


def healthy(port: int) -> bool:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return json.loads(r.read()).get("status") == "ok"
    except OSError:
        return False


def route_certificate(site_dir: Path) -> None:
    """broker/route.crt and route.key, signed by the site's CA, with both TLS usages, for
    localhost: what deploy/nats/README.md has the operator make with openssl."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((site_dir / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((site_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "route")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (site_dir / "broker" / "route.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (site_dir / "broker" / "route.crt").write_bytes(cert.public_bytes(pem))


async def test_deploy_template_runs_three_tls_nodes_with_the_acl_of_secure_init(tmp_path, broker_cluster):
    """deploy/nats/nats-node.conf as the README says to adapt it (three nodes, here on loopback):
    mutual-TLS routes, TLS MQTT with the certificates of `atomwatch secure init`, one user per
    certificate subject with the ACL's permissions: the controller's retained state written on
    node 0 is read on node 2; an agent publishes its own birth but not another host's, nor may it
    subscribe to another host's commands."""
    import ssl

    from atomwatch import pki
    from atomwatch.lab.broker_cluster import find_nats_server, mqtt_connect_ok

    site = tmp_path / "site"
    pki.init(site, pki.Site("eu", ["hv1"]))
    route_certificate(site)
    ports = [{k: free_port() for k in ("client", "http", "cluster", "mqtt")} for _ in range(3)]
    procs = []
    try:
        for i, p in enumerate(ports):
            text = TEMPLATE.read_text().replace("SITE", "eu").replace("/etc/atomwatch/broker", str(site / "broker"))
            text = text.replace("/var/lib/nats/jetstream", str(tmp_path / f"js{i}"))
            text = text.replace('server_name: "broker1"', f'server_name: "broker{i + 1}"')
            for old, new in (("127.0.0.1:4222", p["client"]), ("127.0.0.1:8222", p["http"])):
                text = text.replace(f'"{old}"', f'"127.0.0.1:{new}"')
            text = text.replace('"0.0.0.0:6222"', f'"127.0.0.1:{p["cluster"]}"')
            text = text.replace('"0.0.0.0:8883"', f'"127.0.0.1:{p["mqtt"]}"')
            for j, q in enumerate(ports):
                text = text.replace(f"@broker{j + 1}.example:6222", f"@localhost:{q['cluster']}")
            conf = tmp_path / f"n{i}.conf"
            conf.write_text(text)
            log = (tmp_path / f"n{i}.log").open("wb")
            procs.append(subprocess.Popen([find_nats_server(), "-c", str(conf)], stdout=log, stderr=log))

        def tls(who: str) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(site / who / "ca.crt"))
            ctx.load_cert_chain(str(site / who / "client.crt"), str(site / who / "client.key"))
            return ctx

        def tls_client(i: int, who: str) -> aiomqtt.Client:
            return aiomqtt.Client(
                "localhost", ports[i]["mqtt"], identifier=f"{who}-{i}", tls_context=tls(who), timeout=5
            )

        deadline = time.monotonic() + 30
        for p in ports:  # as the README says: every node's /healthz is ok (JetStream current)
            while not healthy(p["http"]):
                assert time.monotonic() < deadline, f"node on {p['mqtt']} not healthy in 30 s"
                await asyncio.sleep(0.2)
        while True:  # the cluster is up once the controller's retained publish is acknowledged
            try:
                async with tls_client(0, "controller") as ctl:
                    await ctl.publish("atomwatch/v1/eu/controller/state", b"s1", qos=1, retain=True)
                break
            except aiomqtt.MqttError:
                assert time.monotonic() < deadline, "the template's cluster did not serve in 30 s"
                await asyncio.sleep(0.5)
        assert not mqtt_connect_ok(ports[1]["mqtt"])  # no plain MQTT

        async def connected(stack: contextlib.AsyncExitStack, i: int, who: str) -> aiomqtt.Client:
            # a CONNECT may still time out while the young cluster places its MQTT streams
            while True:
                try:
                    return await stack.enter_async_context(tls_client(i, who))
                except aiomqtt.MqttError:
                    assert time.monotonic() < deadline, f"{who} could not connect to node {i} in 30 s"
                    await asyncio.sleep(0.2)

        deadline = time.monotonic() + 30
        async with contextlib.AsyncExitStack() as stack:
            ctl = await connected(stack, 2, "controller")
            await ctl.subscribe("atomwatch/v1/eu/controller/state", qos=1, timeout=15)
            assert (await first_message(ctl, 5)).payload == b"s1"
            await ctl.subscribe("atomwatch/v1/eu/+/birth", qos=1, timeout=15)
            async with contextlib.AsyncExitStack() as agent_stack:
                agent = await connected(agent_stack, 1, "agents/hv1")
                await agent.publish("atomwatch/v1/eu/hv1/birth", b"hv1", qos=1, retain=True)
                await agent.publish("atomwatch/v1/eu/hv2/birth", b"forged", qos=1, retain=True)
                (granted,) = await agent.subscribe("atomwatch/v1/eu/hv1/cmd/+", qos=1)
                (refused,) = await agent.subscribe("atomwatch/v1/eu/hv2/cmd/+", qos=1)
            assert granted.value == 1 and refused.is_failure
            births = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    async for m in ctl.messages:
                        births.append((str(m.topic), m.payload))
        assert births == [("atomwatch/v1/eu/hv1/birth", b"hv1")]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def test_a_cluster_of_its_own_directory_leaves_nothing_behind(broker_cluster):
    from atomwatch.lab.broker_cluster import NatsCluster

    c = NatsCluster(1).start()
    pid, workdir = c.procs[0].pid, c.dir
    assert running_pids(workdir) == [pid] and mqtt_port_open(c.mqtt_port(0))
    c.kill_node(0)
    assert not Path(f"/proc/{pid}").exists() and not mqtt_port_open(c.mqtt_port(0))
    c.restart_node(0)
    assert mqtt_port_open(c.mqtt_port(0))
    pid = c.procs[0].pid
    c.stop()
    assert not Path(f"/proc/{pid}").exists() and not workdir.exists()


def mqtt_port_open(port: int) -> bool:
    from atomwatch.lab.broker_cluster import mqtt_connect_ok

    return mqtt_connect_ok(port, timeout=1)

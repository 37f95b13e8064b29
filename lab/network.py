"""The lab's private network: a bridge with no host address, and a traffic target in a netns.

Guests' taps join :data:`~atomwatch.lab.paths.BRIDGE` (libvirt adds them at boot). The target is a network
namespace :data:`~atomwatch.lab.paths.NETNS` attached to the bridge by a veth pair; inside it runs
:mod:`atomwatch.lab.target_server` (HTTP on 8080, a TCP sink on 9000) at :data:`~atomwatch.lab.paths.TARGET_IP`.
The host has no address on the bridge, so guest traffic reaches only hosts the lab created.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .paths import BRIDGE, NETNS, SUBNET_PREFIX, TARGET_HTTP_PORT, TARGET_IP, VETH_HOST, VETH_NS

log = logging.getLogger(__name__)


class NetworkError(RuntimeError):
    """A lab network step failed; the text names the command and its error."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise NetworkError("ip: not installed (apt-get install iproute2)") from None
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_exists(name: str = NETNS) -> bool:
    return Path("/run/netns", name).exists()


def _server_pidfile(workdir: Path) -> Path:
    return workdir / "target-server.pid"


def server_pid(workdir: Path) -> int | None:
    try:
        pid = int(_server_pidfile(workdir).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def up(workdir: Path) -> None:
    """Create the bridge, the target namespace with its veth and start the target server. Idempotent."""
    if not link_exists(BRIDGE):
        _ip("link", "add", BRIDGE, "type", "bridge")
    # No host address on the bridge, and no forwarding of its frames to the host stack.
    _ip("addr", "flush", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    if not netns_exists():
        _ip("netns", "add", NETNS)
    if not link_exists(VETH_HOST):
        _ip("link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        _ip("link", "set", VETH_NS, "netns", NETNS)
    _ip("link", "set", VETH_HOST, "master", BRIDGE)
    _ip("link", "set", VETH_HOST, "up")
    _ip("-n", NETNS, "link", "set", "lo", "up")
    _ip("-n", NETNS, "link", "set", VETH_NS, "up")
    addrs = _ip("-n", NETNS, "-o", "addr", "show", "dev", VETH_NS).stdout
    if f"{TARGET_IP}/" not in addrs:
        _ip("-n", NETNS, "addr", "add", f"{TARGET_IP}/24", "dev", VETH_NS)
    start_server(workdir)


def start_server(workdir: Path) -> int:
    pid = server_pid(workdir)
    if pid is not None:
        return pid
    workdir.mkdir(parents=True, exist_ok=True)
    logf = (workdir / "target-server.log").open("ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, sys.executable, "-m", "atomwatch.lab.target_server", TARGET_IP],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _server_pidfile(workdir).write_text(f"{proc.pid}\n")
    # wait until it listens (checked from inside the namespace)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "netns", "exec", NETNS, "ss", "-ltn"], capture_output=True, text=True).stdout
        if f":{TARGET_HTTP_PORT} " in out:
            return proc.pid
        if proc.poll() is not None:
            raise NetworkError(f"the target server exited ({proc.returncode}); see {workdir / 'target-server.log'}")
        time.sleep(0.1)
    raise NetworkError(f"the target server does not listen on {TARGET_IP}:{TARGET_HTTP_PORT} after 10 s")


def stop_server(workdir: Path) -> None:
    pid = server_pid(workdir)
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
    _server_pidfile(workdir).unlink(missing_ok=True)


def _kill_netns_processes() -> None:
    """End what still runs in the lab namespace (a target server started from another work dir)."""
    if not netns_exists():
        return
    pids = _ip("netns", "pids", NETNS, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except (OSError, ValueError):
            pass


def down(workdir: Path) -> None:
    """Remove the target server, the namespace, the veth and the bridge. Idempotent."""
    stop_server(workdir)
    _kill_netns_processes()
    if link_exists(VETH_HOST):
        _ip("link", "del", VETH_HOST, check=False)
    if netns_exists():
        _ip("netns", "del", NETNS, check=False)
    if link_exists(BRIDGE):
        _ip("link", "del", BRIDGE, check=False)


def status(workdir: Path) -> dict:
    return {
        "bridge": link_exists(BRIDGE),
        "netns": netns_exists(),
        "target": f"{TARGET_IP}:{TARGET_HTTP_PORT}",
        "target_server_pid": server_pid(workdir),
        "subnet": f"{SUBNET_PREFIX}.0/24",
    }


def target_stats(workdir: Path) -> dict:
    """Bytes the target's interface received and sent (from inside the namespace)."""
    out = _ip("-n", NETNS, "-s", "-j", "link", "show", "dev", VETH_NS, check=False).stdout
    try:
        import json

        st = json.loads(out)[0]["stats64"]
        return {"rx_bytes": st["rx"]["bytes"], "tx_bytes": st["tx"]["bytes"]}
    except (ValueError, IndexError, KeyError):
        return {}

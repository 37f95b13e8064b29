"""Where the lab keeps its files, and the fixed names of what it creates on the host.

The work directory is ``$ATOMWATCH_LAB_DIR`` when set, else ``/var/lib/atomwatch-lab`` for root
and ``~/.cache/atomwatch/lab`` for anyone else. It holds the guest image (``vmlinuz``,
``initrd.img``, ``image.json``) and, per guest, a disk and a console log under ``guests/``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: every libvirt domain, link and namespace the lab creates starts with this, so ``down`` finds them
PREFIX = "awlab"
BRIDGE = f"{PREFIX}-br0"
NETNS = f"{PREFIX}-target"
#: the target's veth pair: host end on the bridge, peer moved into the namespace
VETH_HOST = f"{PREFIX}-vh"
VETH_NS = f"{PREFIX}-vn"
#: the lab's private subnet: the target is .1, guest i is .(10 + i); nothing else is on it
SUBNET_PREFIX = "10.77.0"
TARGET_IP = f"{SUBNET_PREFIX}.1"
TARGET_HTTP_PORT = 8080
TARGET_SINK_PORT = 9000


def guest_name(i: int) -> str:
    """The domain name of guest ``i`` (1-based)."""
    return f"{PREFIX}-guest{i}"


def guest_ip(i: int) -> str:
    return f"{SUBNET_PREFIX}.{10 + i}"


def tap_name(i: int) -> str:
    return f"{PREFIX}-tap{i}"


def default_dir() -> Path:
    env = os.environ.get("ATOMWATCH_LAB_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/atomwatch-lab")
    return Path.home() / ".cache" / "atomwatch" / "lab"


FILES = Path(__file__).resolve().parent / "files"

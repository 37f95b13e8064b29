"""``atomwatch lab up`` / ``down`` / ``status``: the whole test bed as one idempotent unit.

``up`` checks the prerequisites (libvirt reachable, QEMU present, image built), creates the
private network (:mod:`atomwatch.lab.network`), chooses the domain type (KVM only when the cheap probe
allows it *and* the first guest really answers its agent; TCG otherwise), boots the guests in
parallel and waits for every guest agent. ``down`` removes every domain, link, namespace and
process the lab made. Both may run any number of times.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from . import domains, network
from .build import Image
from .domains import AgentError, GuestSpec, LabError
from .paths import guest_name

log = logging.getLogger(__name__)

MAX_GUESTS = 8


def _state_file(workdir: Path) -> Path:
    return workdir / "state.json"


def read_state(workdir: Path) -> dict:
    try:
        return json.loads(_state_file(workdir).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(workdir: Path, state: dict) -> None:
    _state_file(workdir).write_text(json.dumps(state, indent=2) + "\n")


def check_prerequisites(uri: str):
    """The libvirt connection; a :class:`LabError` naming what is missing otherwise."""
    domains.qemu_binary()
    if shutil.which("ip") is None:
        raise LabError("ip: not installed (apt-get install iproute2)")
    return domains.connect(uri)


def up(
    workdir: Path,
    guests: int,
    uri: str = domains.DEFAULT_URI,
    memory_mib: int = domains.MEMORY_MIB,
    nice: int = domains.GUEST_NICE,
) -> dict:
    """Bring the lab to ``guests`` running guests with answering agents; returns the state.

    The guests' QEMU threads run at ``nice`` (default −10, see :func:`atomwatch.lab.domains.prioritize`).
    """
    if not 1 <= guests <= MAX_GUESTS:
        raise LabError(f"--guests must be between 1 and {MAX_GUESTS}, got {guests}")
    conn = check_prerequisites(uri)
    image = Image.load(workdir)
    network.up(workdir)
    state = read_state(workdir)
    dtype = state.get("domain_type")
    why = state.get("domain_type_reason", "")
    if dtype is None:
        dtype, why = domains.probe_domain_type()
        if dtype == "kvm":
            spec = GuestSpec(1, workdir, "kvm", memory_mib)
            try:
                domains.boot(conn, spec, image.kernel, image.initrd)
                why += "; the first KVM guest answered its agent"
            except (AgentError, LabError) as e:
                log.warning("KVM guest did not come up (%s); falling back to TCG", e)
                domains.destroy(conn, spec.name)
                dtype, why = "qemu", f"KVM looked available but a KVM guest did not answer: {e}"
        log.info("domain type %s (%s)", dtype, why)
    # remove guests beyond N (a smaller lab than before)
    for dom in domains.lab_domains(conn):
        idx = int(dom.name().rsplit("guest", 1)[1] or 0)
        if idx > guests:
            domains.destroy(conn, dom.name())
    specs = [GuestSpec(i, workdir, dtype, memory_mib) for i in range(1, guests + 1)]
    started = []
    for spec in specs:
        dom = domains.find(conn, spec.name)
        if dom is not None and dom.isActive() and domains.domain_type_of(dom) == dtype:
            continue
        domains.boot(conn, spec, image.kernel, image.initrd, wait=False)
        started.append(spec.name)
    t0 = time.monotonic()
    for spec in specs:
        dom = domains.find(conn, spec.name)
        domains.wait_agent(dom, domains.AGENT_TIMEOUT_TCG)
    if started:
        log.info("guests %s answer their agents %.1f s after start", ", ".join(started), time.monotonic() - t0)
    for spec in specs:
        domains.prioritize(spec.name, nice)
    state = {
        "domain_type": dtype,
        "domain_type_reason": why,
        "uri": uri,
        "guests": [{"name": s.name, "ip": s.ip, "uuid": domains.find(conn, s.name).UUIDString()} for s in specs],
        "image": image.info.get("initrd_sha256"),
        "kernel_release": image.kernel_release,
        "nice": nice,
    }
    _write_state(workdir, state)
    conn.close()
    return state


def down(workdir: Path, uri: str = domains.DEFAULT_URI) -> list[str]:
    """Remove every lab domain and the lab network; returns what was removed."""
    removed: list[str] = []
    try:
        conn = domains.connect(uri)
    except LabError as e:
        log.warning("%s; removing the network only", e)
        conn = None
    if conn is not None:
        for dom in domains.lab_domains(conn):
            name = dom.name()
            if domains.destroy(conn, name):
                removed.append(name)
        conn.close()
    had_net = network.link_exists(network.BRIDGE) or network.netns_exists()
    network.down(workdir)
    if had_net:
        removed.append("network")
    guests_dir = workdir / "guests"
    if guests_dir.exists():
        shutil.rmtree(guests_dir)
    _state_file(workdir).unlink(missing_ok=True)
    return removed


def status(workdir: Path, uri: str = domains.DEFAULT_URI) -> dict:
    out: dict = {"workdir": str(workdir), "image": None, "network": network.status(workdir), "guests": []}
    try:
        out["image"] = Image.load(workdir).info
    except Exception as e:  # noqa: BLE001 (status reports, never fails)
        out["image_error"] = str(e)
    state = read_state(workdir)
    out["domain_type"] = state.get("domain_type")
    try:
        conn = domains.connect(uri)
    except LabError as e:
        out["libvirt_error"] = str(e)
        return out
    for dom in domains.lab_domains(conn):
        active = bool(dom.isActive())
        out["guests"].append(
            {
                "name": dom.name(),
                "uuid": dom.UUIDString(),
                "running": active,
                "type": domains.domain_type_of(dom),
                "agent": domains.agent_ping(dom, 2) if active else False,
            }
        )
    conn.close()
    return out


def guest_domains(conn, count: int) -> list:
    """The running lab guests 1..count, in order; :class:`LabError` when one is missing."""
    doms = []
    for i in range(1, count + 1):
        dom = domains.find(conn, guest_name(i))
        if dom is None or not dom.isActive():
            raise LabError(f"{guest_name(i)} is not running; run `atomwatch lab up --guests {count}` first")
        doms.append(dom)
    return doms

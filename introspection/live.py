"""Live memory: a running guest's RAM read in place, from the shared file QEMU maps it from.

A guest whose memory is backed by a shared file (libvirt ``<memoryBacking><source type='file'/>
<access mode='shared'/>``, or ``memfd``, or a hugetlbfs or ``/dev/shm`` path; QEMU
``memory-backend-file,share=on``) has its RAM in a file the hypervisor can read while the guest runs:
no dump. :func:`find` looks for that file in the QEMU process's mappings (a shared mapping with a
path, exactly the guest's memory in size) and says why not (:class:`NotLive`) when there is none, so
the caller falls back to a dump. The file holds guest-physical memory from address 0 only while the
guest's RAM fits below the PCI hole (:func:`linear_limit`); a larger guest is dumped.
:func:`paused` suspends the guest around reads that must be consistent and measures the pause.

What does not live here: the dump (:mod:`atomwatch.introspection.acquire`), Volatility
(:mod:`atomwatch.introspection.warm`).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .acquire import DomainGone, guest_memory_bytes, import_libvirt, state_name


class NotLive(RuntimeError):
    """This guest's memory cannot be read in place; the text says why (the finding carries it)."""


#: where libvirt's QEMU driver writes each domain's QEMU PID (system and session daemons)
PID_DIRS = ("/run/libvirt/qemu", "/var/run/libvirt/qemu")
_MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) [0-9a-f]+ \S+ (\d+)\s+(.*)$")


@dataclass
class LiveMemory:
    """The file a running guest's RAM lives in, and who it belongs to."""

    path: str
    vm_name: str
    vm_uuid: str
    size: int
    qemu_pid: int
    #: identifies the QEMU process (PID and its start time): a guest restarted by libvirt has a
    #: new one, so a warm Volatility context of the old one is never reused for it
    boot_key: str
    #: the pauses taken for consistent reads, seconds each
    pauses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "vm_name": self.vm_name,
            "vm_uuid": self.vm_uuid,
            "memory_file": self.path,
            "memory_bytes": self.size,
            "paused_s": round(sum(self.pauses), 4),
            "pauses": len(self.pauses),
            "notes": list(self.notes),
        }


def linear_limit(machine: str) -> int:
    """Guest RAM below which QEMU maps it at guest-physical 0 in one piece (the file offset is the
    physical address). Above it the RAM is split around the PCI hole: i440fx (``pc``) keeps 3.5 GiB
    low, q35 2 GiB (when the RAM reaches 2.75 GiB), the rest above 4 GiB."""
    return 0xE0000000 if machine.startswith("pc-i440fx") or machine == "pc" else 0xB0000000


def qemu_pid(name: str) -> int | None:
    for d in PID_DIRS:
        try:
            return int(Path(d, f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def process_key(pid: int) -> str:
    """``PID@start`` of a process (its start time in clock ticks): what tells it from a later one
    with the same PID."""
    try:
        # field 22 of /proc/PID/stat (after the command name in parentheses): start time in ticks
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{pid}@{start}"


def memory_mapping(pid: int, size: int) -> tuple[str, str]:
    """(path to read, what it is) of QEMU process ``pid``'s shared file mapping of ``size`` bytes;
    :class:`NotLive` when there is not exactly one."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError as e:
        raise NotLive(f"cannot read the QEMU process's mappings /proc/{pid}/maps: {e.strerror}") from None
    found = []
    for line in maps.splitlines():
        m = _MAPS_RE.match(line)
        if not m:
            continue
        start, end, perms, inode, name = m.groups()
        if perms[3] != "s" or inode == "0" or not name.startswith("/"):
            continue
        if int(end, 16) - int(start, 16) == size:
            found.append((start, end, int(inode), name))
    if not found:
        raise NotLive(
            "its memory is not a shared file (no <memoryBacking><source type='file'/><access mode='shared'/>"
            "</memoryBacking> in the domain)"
        )
    if len(found) > 1:
        raise NotLive(f"its memory is split over {len(found)} shared files (NUMA nodes?): only one is read in place")
    start, end, inode, name = found[0]
    # the file by its path when it is still there (and is the mapped one); a memfd or an unlinked
    # file through the process's mapping itself (root only)
    path = name.removesuffix(" (deleted)")
    try:
        if not name.endswith(" (deleted)") and os.stat(path).st_ino == inode:
            return path, name
    except OSError:
        pass
    return f"/proc/{pid}/map_files/{start}-{end}", name


def find(conn: Any, vm: str) -> tuple[Any, LiveMemory]:
    """(domain, its live memory) for running domain ``vm`` (UUID or name); :class:`NotLive` naming
    why its memory cannot be read in place (a guest that is not there or not running too: the
    dump path then says so in its own words)."""
    from .acquire import lookup

    libvirt = import_libvirt()
    try:
        dom = lookup(conn, vm)
        name, uuid = dom.name(), dom.UUIDString()
        if not dom.isActive():
            raise NotLive(f"VM {name} is not running")
        size = guest_memory_bytes(dom)
        xml = dom.XMLDesc(0)
    except DomainGone as e:
        raise NotLive(str(e)) from None
    except libvirt.libvirtError as e:
        raise NotLive(f"VM {vm}: {e.get_error_message()}") from None
    m = re.search(r"<type [^>]*machine=['\"]([^'\"]+)['\"]", xml)
    machine = m.group(1) if m else "?"
    if size >= linear_limit(machine):
        raise NotLive(
            f"its {size >> 20} MiB of RAM are split around the PCI hole on machine {machine}: "
            "the memory file is not guest-physical memory from address 0"
        )
    pid = qemu_pid(name)
    if pid is None:
        raise NotLive(f"its QEMU process is not known (no {name}.pid in {' or '.join(PID_DIRS)})")
    path, what = memory_mapping(pid, size)
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as e:
        raise NotLive(f"its memory file {what} does not open for this agent: {e.strerror}") from None
    return dom, LiveMemory(path, name, uuid, size, pid, f"{uuid}/{process_key(pid)}")


_SHARED_BACKING_RE = re.compile(r"<memoryBacking>.*?<access\s+mode=['\"]shared['\"]", re.DOTALL)


def shared_memory_guests(conn: Any) -> list[str]:
    """Names of the running domains whose ``<memoryBacking>`` asks for shared access: the guests
    a live introspection may read (what makes a spare worker worth its memory); [] when libvirt
    cannot be asked."""
    try:
        domains = conn.listAllDomains(1)  # VIR_CONNECT_LIST_DOMAINS_ACTIVE
        return [d.name() for d in domains if _SHARED_BACKING_RE.search(d.XMLDesc(0))]
    except Exception:
        return []


_CR3_RE = re.compile(r"\bCR3=([0-9a-fA-F]+)")


def cr3(dom: Any) -> int | None:
    """The page-table base (CR3, without its PCID bits) of the guest's first vCPU now, through
    QEMU's monitor (``info registers``); None when it cannot be had. Tells a warm context whether
    the guest still runs the kernel it was loaded for (:mod:`atomwatch.introspection.warm`).
    libvirt marks a domain whose monitor was used this way as tainted (``custom-monitor``, once)."""
    try:
        import libvirt_qemu  # type: ignore[import-not-found]

        text = libvirt_qemu.qemuMonitorCommand(dom, "info registers", libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    except Exception:
        return None
    m = _CR3_RE.search(text)
    return (int(m.group(1), 16) & 0x000FFFFFFFFFF000) if m else None


@contextlib.contextmanager
def paused(dom: Any, live: LiveMemory) -> Iterator[None]:
    """Suspend a running guest for the block, resume it after (whatever happens) and add the
    pause's length to ``live.pauses``. A guest that was not running is left as it is."""
    libvirt = import_libvirt()
    if state_name(dom) != "running":
        live.notes.append(f"guest was {state_name(dom)}: not paused for the reads")
        yield
        return
    t0 = time.monotonic()
    dom.suspend()
    try:
        yield
    finally:
        try:
            dom.resume()
        except libvirt.libvirtError as e:
            live.notes.append(f"resume after the reads failed: {e.get_error_message()}")
        live.pauses.append(time.monotonic() - t0)

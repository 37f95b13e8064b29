"""Memory acquisition through libvirt: a memory-only ELF core dump of one running domain.

The dump goes into a private directory (mode 0700) as a file of mode 0600; :class:`Dump` is a
context manager that deletes it (and its directory) afterwards unless ``keep`` is set (retention
configured by the operator). libvirt pauses the guest for the dump and resumes it — except that
libvirt 9.0 may leave the guest paused while reporting success (see the lab README), so the
domain's state is checked after every dump and the guest resumed if needed; the result says so.

What does not live here: the analysis of the dump (:mod:`atomwatch.introspection.volatility`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class AcquireError(RuntimeError):
    """The domain cannot be dumped; the text names the domain and the reason."""


class DomainGone(AcquireError):
    """No such domain, or it is not running."""


def import_libvirt():
    try:
        import libvirt  # type: ignore[import-not-found]
    except ImportError:
        raise AcquireError("the libvirt Python module is missing: pip install libvirt-python") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def lookup(conn: Any, vm: str) -> Any:
    """The domain named ``vm`` by UUID or by name; :class:`DomainGone` if there is none."""
    libvirt = import_libvirt()
    if not isinstance(vm, str) or not vm:
        raise DomainGone(f"VM {vm!r}: a VM is named by its UUID or its libvirt name")
    for by in (conn.lookupByUUIDString, conn.lookupByName):
        try:
            return by(vm)
        except libvirt.libvirtError:
            continue
    raise DomainGone(f"VM {vm}: no such domain on this host")


_STATE_NAMES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


def state_name(dom: Any) -> str:
    state, _reason = dom.state()
    return _STATE_NAMES.get(state, str(state))


@dataclass
class Dump:
    """One memory dump on disk; ``with`` it to have it deleted when done (unless ``keep``)."""

    path: Path
    vm_name: str
    vm_uuid: str
    seconds: float
    size: int
    state_before: str
    state_after: str
    resumed: bool = False
    keep: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "vm_name": self.vm_name,
            "vm_uuid": self.vm_uuid,
            "dump_seconds": round(self.seconds, 3),
            "dump_bytes": self.size,
            "state_before": self.state_before,
            "state_after": self.state_after,
            "resumed_by_us": self.resumed,
            "kept": str(self.path) if self.keep else None,
            "notes": list(self.notes),
        }

    def delete(self) -> None:
        if self.keep:
            return
        shutil.rmtree(self.path.parent, ignore_errors=True)

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


def _private_dir(root: Path | None, vm_name: str) -> Path:
    if root is not None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    d = Path(tempfile.mkdtemp(prefix=f"dump-{vm_name}-", dir=str(root) if root else None))
    os.chmod(d, 0o700)
    return d


def dump_memory(conn: Any, vm: str, root: Path | None = None, keep: bool = False) -> Dump:
    """Dump the memory of running domain ``vm`` (UUID or name) as an ELF core.

    ``root``: where the private dump directories go (default: the system temp dir); ``keep``: do
    not delete the dump after use (retention). Raises :class:`DomainGone` or
    :class:`AcquireError`."""
    libvirt = import_libvirt()
    dom = lookup(conn, vm)
    name, uuid = dom.name(), dom.UUIDString()
    try:
        active = dom.isActive()
    except libvirt.libvirtError as e:
        raise DomainGone(f"VM {name}: {e.get_error_message()}") from None
    if not active:
        raise DomainGone(f"VM {name} is not running: nothing to dump")
    before = state_name(dom)
    directory = _private_dir(root, name)
    path = directory / f"{name}.elf"
    # create the file first so it is never readable by others, even for an instant
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    t0 = time.monotonic()
    try:
        dom.coreDumpWithFormat(str(path), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, libvirt.VIR_DUMP_MEMORY_ONLY)
    except libvirt.libvirtError as e:
        shutil.rmtree(directory, ignore_errors=True)
        if not _still_active(dom):
            raise DomainGone(f"VM {name} went away during the dump: {e.get_error_message()}") from None
        raise AcquireError(f"VM {name}: memory dump failed: {e.get_error_message()}") from None
    seconds = time.monotonic() - t0
    os.chmod(path, 0o600)  # libvirt may have replaced the file
    dump = Dump(path, name, uuid, seconds, path.stat().st_size, before, "?", keep=keep)
    dump.state_after, dump.resumed = _ensure_running(dom, before, dump.notes)
    if dump.size == 0:
        dump.delete()
        raise AcquireError(f"VM {name}: the memory dump is empty")
    log.info(
        "dumped %s (%d MiB) in %.2f s; state %s → %s%s",
        name,
        dump.size >> 20,
        seconds,
        before,
        dump.state_after,
        " (resumed by us)" if dump.resumed else "",
    )
    return dump


def _still_active(dom: Any) -> bool:
    try:
        return bool(dom.isActive())
    except Exception:
        return False


def _ensure_running(dom: Any, before: str, notes: list[str]) -> tuple[str, bool]:
    """Resume a guest the dump left paused (libvirt 9.0 bug); (state after, resumed by us)."""
    libvirt = import_libvirt()
    after = state_name(dom)
    if after == "paused" and before != "paused":
        try:
            dom.resume()
        except libvirt.libvirtError as e:
            notes.append(f"libvirt left the guest paused after the dump and resume failed: {e.get_error_message()}")
            return state_name(dom), False
        notes.append("libvirt left the guest paused after the dump; resumed it")
        return state_name(dom), True
    return after, False

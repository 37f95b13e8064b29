"""Memory acquisition through libvirt: a memory-only ELF core dump of one running domain.

The dump goes into a private directory ``atomwatch-dump-<vm>-<random>`` (mode 0700, locked with
``flock`` while its agent works on it) as a file of mode 0600; :class:`Dump` is a context manager
that deletes it (and its directory) afterwards unless ``keep`` is set (retention configured by the
operator: the directory is then renamed ``atomwatch-kept-…``). Before a dump the free space of the
dump directory is checked against the guest's memory plus a margin (:class:`NoSpace`).
:func:`sweep` deletes, at agent start, the dump directories no live agent holds (a killed agent's).
libvirt pauses the guest for the dump and resumes it — except that libvirt 9.0 may leave the guest
paused while reporting success (see the lab README), so the domain's state is checked after every
dump and the guest resumed if needed; the result says so. A guest that vanishes during or right
after its dump is :class:`DomainGone`, its dump deleted.

What does not live here: the analysis of the dump (:mod:`atomwatch.introspection.volatility`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class AcquireError(RuntimeError):
    """The domain cannot be dumped; the text names the domain and the reason."""


class DomainGone(AcquireError):
    """No such domain, or it is not running (or it went away during or right after its dump)."""


class NoSpace(AcquireError):
    """The dump directory has too little free space for the guest's memory plus the margin."""


#: a dump directory this module made (and only such a directory is ever swept): the prefix, the
#: VM's name, then mkdtemp's 8 random characters
DUMP_PREFIX = "atomwatch-dump-"
#: a retained dump's directory once its analysis is done (never swept)
KEPT_PREFIX = "atomwatch-kept-"
_DUMP_DIR_RE = re.compile(re.escape(DUMP_PREFIX) + r".+-[A-Za-z0-9_]{8}")
#: free space asked beyond the guest's memory before a dump (the ELF headers take a few KiB; the
#: rest keeps the file system from being filled to the last block)
DEFAULT_MARGIN = 512 << 20


def default_root() -> Path:
    """Where dump directories go unless configured: the system temp dir."""
    return Path(tempfile.gettempdir())


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
    #: the directory's fd holding its ``flock`` (what tells :func:`sweep` a live agent owns it)
    lock_fd: int | None = field(default=None, repr=False)

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

    def delete(self, failed: bool = False) -> None:
        """Delete the dump and its directory; a retained dump (``keep``) whose work ended well is
        moved to an ``atomwatch-kept-…`` directory instead (one that failed is deleted all the same)."""
        try:
            if self.keep and not failed:
                directory = self.path.parent
                kept = directory.with_name(KEPT_PREFIX + directory.name[len(DUMP_PREFIX) :])
                try:
                    os.rename(directory, kept)
                    self.path = kept / self.path.name
                except OSError as e:
                    self.notes.append(f"dump kept in {directory} (could not rename it to {kept.name}: {e})")
                return
            shutil.rmtree(self.path.parent, ignore_errors=True)
        finally:
            self.unlock()

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.delete(failed=exc_type is not None)


def _lock_dir(path: Path) -> int | None:
    """An fd of directory ``path`` holding an exclusive ``flock``, or None if another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _private_dir(root: Path, vm_name: str) -> tuple[Path, int]:
    """A new dump directory under ``root`` and the fd holding its lock. Made, then locked: another
    agent's :func:`sweep` may take it in between (it is empty and unlocked for that instant), which
    the link count of the locked directory tells; then make another."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for _ in range(5):
        d = Path(tempfile.mkdtemp(prefix=f"{DUMP_PREFIX}{vm_name}-", dir=str(root)))
        os.chmod(d, 0o700)
        try:
            fd = _lock_dir(d)
        except FileNotFoundError:
            continue
        if fd is None:
            continue
        if os.fstat(fd).st_nlink == 0:  # swept before we locked it
            os.close(fd)
            continue
        return d, fd
    raise AcquireError(f"cannot make a dump directory in {root}: it vanished 5 times (another agent sweeping?)")


def guest_memory_bytes(dom: Any) -> int:
    """The guest's memory size in bytes (the largest of its current and maximum memory): what a
    memory-only dump writes, give or take a few KiB of ELF headers."""
    info = dom.info()  # [state, maxMem KiB, memory KiB, vCPUs, cpu time]
    return max(int(info[1]), int(info[2])) * 1024


def check_space(root: Path, vm_name: str, guest_bytes: int, margin: int) -> None:
    """:class:`NoSpace` unless the file system of ``root`` has ``guest_bytes + margin`` available."""
    st = os.statvfs(root)
    available = st.f_bavail * st.f_frsize
    needed = guest_bytes + margin
    if available < needed:
        raise NoSpace(
            f"not enough free space in {root} for a memory dump of VM {vm_name}: needs {needed >> 20} MiB "
            f"(guest memory {guest_bytes >> 20} MiB + margin {margin >> 20} MiB), {available >> 20} MiB available; "
            "free some, or point introspection.dump_dir elsewhere (the margin is introspection.dump_margin_mib)"
        )


def sweep(root: Path | None = None) -> list[tuple[Path, int]]:
    """Delete the dump directories under ``root`` (default: :func:`default_root`) that no live
    agent holds — left by an agent killed during an introspection. Only what is clearly ours is
    touched: a real directory (no symlink) named ``atomwatch-dump-<vm>-<8 chars>``, owned by this
    user, unlocked, holding nothing but regular ``*.elf`` files. Returns (directory, bytes freed)
    of each one removed; each is logged at WARNING, anything left alone that looks ours at INFO."""
    root = default_root() if root is None else Path(root)
    removed: list[tuple[Path, int]] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return removed
    except OSError as e:
        log.warning("cannot sweep the dump directory %s: %s", root, e)
        return removed
    for entry in entries:
        if not _DUMP_DIR_RE.fullmatch(entry.name):
            continue
        path = Path(entry.path)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                log.info("sweep: left %s alone: not a directory of this user", path)
                continue
            fd = _lock_dir(path)
            if fd is None:
                log.info("sweep: left %s alone: a running agent holds it", path)
                continue
            try:
                files = list(os.scandir(path))
                odd = [f.name for f in files if not (f.name.endswith(".elf") and f.is_file(follow_symlinks=False))]
                if odd:
                    log.info("sweep: left %s alone: it holds %s, not only dumps", path, ", ".join(sorted(odd)))
                    continue
                size = 0
                for f in files:
                    size += f.stat(follow_symlinks=False).st_size
                    os.unlink(f.path)
                os.rmdir(path)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warning("sweep: cannot remove %s: %s", path, e)
            continue
        removed.append((path, size))
        log.warning(
            "removed leftover memory dump %s (%d MiB): an introspection that did not finish (agent killed?)",
            path,
            size >> 20,
        )
    return removed


def dump_memory(conn: Any, vm: str, root: Path | None = None, keep: bool = False, margin: int = DEFAULT_MARGIN) -> Dump:
    """Dump the memory of running domain ``vm`` (UUID or name) as an ELF core.

    ``root``: where the private dump directories go (default: the system temp dir); ``keep``: do
    not delete the dump after use (retention); ``margin``: free space asked beyond the guest's
    memory. Raises :class:`DomainGone`, :class:`NoSpace` or :class:`AcquireError`."""
    libvirt = import_libvirt()
    root = default_root() if root is None else Path(root)
    dom = lookup(conn, vm)
    name, uuid = dom.name(), dom.UUIDString()
    try:
        active = dom.isActive()
        before = state_name(dom) if active else "?"
        guest_bytes = guest_memory_bytes(dom) if active else 0
    except libvirt.libvirtError as e:
        raise DomainGone(f"VM {name}: {e.get_error_message()}") from None
    if not active:
        raise DomainGone(f"VM {name} is not running: nothing to dump")
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_space(root, name, guest_bytes, margin)
        directory, lock_fd = _private_dir(root, name)
    except OSError as e:
        raise AcquireError(f"VM {name}: dump directory {root}: {e.strerror or e}") from None
    path = directory / f"{name}.elf"
    dump = Dump(path, name, uuid, 0.0, 0, before, "?", keep=keep, lock_fd=lock_fd)
    try:
        # create the file first so it is never readable by others, even for an instant
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        t0 = time.monotonic()
        try:
            dom.coreDumpWithFormat(str(path), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, libvirt.VIR_DUMP_MEMORY_ONLY)
        except libvirt.libvirtError as e:
            if not _still_active(dom):
                raise DomainGone(
                    f"VM {name} went away during its memory dump ({e.get_error_message()}); the partial dump was deleted"
                ) from None
            raise AcquireError(f"VM {name}: memory dump failed: {e.get_error_message()}") from None
        dump.seconds = time.monotonic() - t0
        os.chmod(path, 0o600)  # libvirt may have replaced the file
        dump.size = path.stat().st_size
        try:
            dump.state_after, dump.resumed = _ensure_running(dom, before, dump.notes)
        except libvirt.libvirtError as e:
            if not _still_active(dom):
                raise DomainGone(
                    f"VM {name} went away right after its memory dump ({e.get_error_message()}); the dump was deleted"
                ) from None
            raise AcquireError(f"VM {name}: state after the dump unknown: {e.get_error_message()}") from None
        if dump.state_after in _GONE_STATES:
            raise DomainGone(
                f"VM {name} went away right after its memory dump ({dump.state_after}); the dump was deleted"
            )
        if dump.size == 0:
            raise AcquireError(f"VM {name}: the memory dump is empty")
    except BaseException:
        dump.delete(failed=True)
        raise
    log.info(
        "dumped %s (%d MiB) in %.2f s; state %s → %s%s",
        name,
        dump.size >> 20,
        dump.seconds,
        before,
        dump.state_after,
        " (resumed by us)" if dump.resumed else "",
    )
    return dump


#: states after a dump in which the guest is no longer there to introspect or act on
_GONE_STATES = ("shutoff", "crashed", "shutdown")


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

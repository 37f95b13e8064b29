"""QEMU guest-agent actions on a VM: list its processes, and terminate one — safely.

Processes are read from the guest's ``/proc/<pid>/stat`` through ``guest-exec`` (one ``cat``):
PID, name (comm), state, parent and start time in seconds since boot (field 22 in USER_HZ ticks,
100 on x86 — the same clock as ``task_struct.start_boottime`` that the memory image shows).

:func:`terminate` refuses unless the target's PID, name *and* start time still match what the
finding saw: a PID reused by another process is never killed. The check is made twice — once
here, to give the reason, and again inside the guest in the same shell line as the ``kill``, so
the window for reuse is a few milliseconds of one shell. Success is reported only after the
process is verified gone (no such PID, a different process under it, or a zombie awaiting reaping).
:func:`read_file` reads one guest file whole (``guest-file-read``; the BTF symbol builder uses it).

What does not live here: the choice of the process (:mod:`atomwatch.introspection.suspects`).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

#: USER_HZ: clock ticks per second of /proc/<pid>/stat on x86 (fixed by the ABI)
USER_HZ = 100
#: start times within this many seconds are the same process (one tick, plus rounding)
START_TOLERANCE = 0.015


class GuestAgentError(RuntimeError):
    """The guest agent did not answer, or a guest command failed."""


class Refused(RuntimeError):
    """Termination refused: the process is not the one the finding saw (the text says why)."""


@dataclass
class Process:
    pid: int
    name: str
    state: str
    ppid: int
    start_time: float  # seconds since boot
    pgrp: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "state": self.state,
            "ppid": self.ppid,
            "start_time": self.start_time,
            "pgrp": self.pgrp,
        }


#: how long a guest-agent command waits for a guest that is paused (a memory dump of it — ours or
#: another tool's — pauses it for a second or more on a loaded host) before it gives up
PAUSED_WAIT = 60.0

#: libvirt's reasons for a paused domain (``VIR_DOMAIN_PAUSED_<NAME>``), in words
_PAUSE_REASONS = {
    "UNKNOWN": "unknown reason",
    "USER": "paused by a user",
    "MIGRATION": "migration",
    "SAVE": "save",
    "DUMP": "memory dump",
    "IOERROR": "disk I/O error",
    "WATCHDOG": "watchdog",
    "FROM_SNAPSHOT": "restored from a snapshot",
    "SHUTTING_DOWN": "shutting down",
    "SNAPSHOT": "snapshot",
    "CRASHED": "the guest crashed",
    "STARTING_UP": "starting up",
    "POSTCOPY": "post-copy migration",
    "POSTCOPY_FAILED": "post-copy migration failed",
}


def _paused_reason(dom: Any) -> str | None:
    """Why the domain is paused (libvirt's reason, in words), or None when it is not paused."""
    import libvirt  # type: ignore[import-not-found]

    try:
        state, reason = dom.state()
    except Exception:
        return None
    if state != libvirt.VIR_DOMAIN_PAUSED:
        return None
    return next(
        (
            words
            for name, words in _PAUSE_REASONS.items()
            if getattr(libvirt, f"VIR_DOMAIN_PAUSED_{name}", None) == reason
        ),
        f"reason {reason}",
    )


def agent_command(dom: Any, command: dict[str, Any], timeout: int = 10, paused_wait: float = PAUSED_WAIT) -> Any:
    """One QEMU guest-agent command; its ``return`` value.

    A paused guest cannot answer (libvirt: "domain is not running"): the command waits up to
    ``paused_wait`` seconds for it to run again and is sent again, then fails saying why it is paused."""
    import libvirt  # type: ignore[import-not-found]
    import libvirt_qemu  # type: ignore[import-not-found]

    deadline = time.monotonic() + paused_wait
    while True:
        try:
            reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(command), timeout, 0)
            return json.loads(reply).get("return", {})
        except libvirt.libvirtError as e:
            error = e.get_error_message()
        why = _paused_reason(dom)
        if why is None:
            raise GuestAgentError(f"{dom.name()}: guest agent {command.get('execute')}: {error}")
        if time.monotonic() > deadline:
            raise GuestAgentError(
                f"{dom.name()}: guest agent {command.get('execute')}: the guest has been paused "
                f"({why}) for over {paused_wait:g} s: {error}"
            )
        while _paused_reason(dom) is not None and time.monotonic() <= deadline:
            time.sleep(0.1)


def exec_in_guest(dom: Any, path: str, args: list[str], timeout: float = 20.0) -> tuple[int, str, str]:
    """Run ``path args`` in the guest and wait: (exit code, stdout, stderr)."""
    res = agent_command(
        dom, {"execute": "guest-exec", "arguments": {"path": path, "arg": args, "capture-output": True}}
    )
    pid = res["pid"]
    deadline = time.monotonic() + timeout
    while True:
        st = agent_command(dom, {"execute": "guest-exec-status", "arguments": {"pid": pid}})
        if st.get("exited"):
            out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
            err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
            return int(st.get("exitcode", -1)), out, err
        if time.monotonic() > deadline:
            raise GuestAgentError(f"{dom.name()}: {path} {' '.join(args)} still runs after {timeout:.0f} s")
        time.sleep(0.02)


def read_file(dom: Any, path: str, limit: int = 64 << 20, offset: int = 0, size: int | None = None) -> bytes:
    """The bytes of a file in the guest (``guest-file-open``/``seek``/``read``/``close``): all of it
    up to ``limit``, or ``size`` bytes from ``offset`` (``/proc/kcore``'s offsets are kernel
    addresses, beyond what a signed seek reaches on some systems: it is only sought when nonzero)."""
    handle = agent_command(dom, {"execute": "guest-file-open", "arguments": {"path": path, "mode": "r"}})
    chunks: list[bytes] = []
    got = 0
    want = limit if size is None else size
    try:
        if offset:
            agent_command(
                dom, {"execute": "guest-file-seek", "arguments": {"handle": handle, "offset": offset, "whence": "set"}}
            )
        while got < want:
            # libvirt carries the reply as one string of at most 4 MiB: 2 MiB is 2.7 MiB in base64
            count = min(2 << 20, want - got) if size is not None else 2 << 20
            r = agent_command(dom, {"execute": "guest-file-read", "arguments": {"handle": handle, "count": count}})
            data = base64.b64decode(r.get("buf-b64", ""))
            chunks.append(data)
            got += len(data)
            if size is None and got > limit:
                raise GuestAgentError(f"{dom.name()}: {path} is over {limit >> 20} MiB")
            if r.get("eof") or not data:
                break
    finally:
        agent_command(dom, {"execute": "guest-file-close", "arguments": {"handle": handle}})
    return b"".join(chunks)


def parse_stat(line: str) -> Process | None:
    """One ``/proc/<pid>/stat`` line; None if it is not one (comm may hold spaces and parens)."""
    line = line.strip()
    open_, close = line.find("("), line.rfind(")")
    if open_ <= 0 or close < open_:
        return None
    try:
        pid = int(line[:open_].strip())
        rest = line[close + 2 :].split()
        return Process(
            pid=pid,
            name=line[open_ + 1 : close],
            state=rest[0],
            ppid=int(rest[1]),
            start_time=round(int(rest[19]) / USER_HZ, 2),
            pgrp=int(rest[2]),
        )
    except (ValueError, IndexError):
        return None


def list_processes(dom: Any) -> list[Process]:
    """Every process of the guest, from /proc (threads not listed)."""
    code, out, err = exec_in_guest(dom, "/bin/sh", ["-c", "cat /proc/[0-9]*/stat 2>/dev/null; true"])
    if code != 0:
        raise GuestAgentError(f"{dom.name()}: reading /proc failed: {err.strip() or code}")
    procs = [p for p in (parse_stat(line) for line in out.splitlines()) if p is not None]
    if not procs:
        raise GuestAgentError(f"{dom.name()}: /proc listed no process (is /proc mounted in the guest?)")
    return sorted(procs, key=lambda p: p.pid)


def find(procs: list[Process], pid: int) -> Process | None:
    return next((p for p in procs if p.pid == pid), None)


def check_identity(proc: Process | None, pid: int, name: str, start_time: float) -> str | None:
    """Why ``proc`` is not the process (pid, name, start_time) — or None when it is."""
    if proc is None:
        return f"PID {pid} no longer exists in the guest: {name} has already ended"
    if proc.name != name[:15]:
        return f"PID {pid} is now {proc.name!r}, not {name!r}: the PID was reused, nothing killed"
    if abs(proc.start_time - float(start_time)) > START_TOLERANCE:
        return (
            f"PID {pid} ({proc.name}) started {proc.start_time:.2f} s after boot, not {float(start_time):.2f} s as "
            "the finding saw: the PID was reused, nothing killed"
        )
    if proc.state == "Z":
        return f"PID {pid} ({name}) has already exited (zombie awaiting its parent)"
    return None


def _guarded_kill_script(pid: int, name: str, start_time: float, signal: int, group: bool = False) -> str:
    """A shell line that re-checks comm and start time in the guest and kills only on a match
    (with ``group``, the whole process group when the target leads one)."""
    lo = int(round((float(start_time) - START_TOLERANCE) * USER_HZ))
    hi = int(round((float(start_time) + START_TOLERANCE) * USER_HZ))
    want = name[:15].replace("'", "'\\''")
    return (
        f"s=$(cat /proc/{pid}/stat 2>/dev/null) || {{ echo gone; exit 3; }}; "
        "c=${s#*(}; c=${c%)*}; r=${s##*) }; set -- $r; t=${20}; "
        f'[ "$c" = \'{want}\' ] || {{ echo "name $c"; exit 4; }}; '
        f'[ "$t" -ge {lo} ] && [ "$t" -le {hi} ] || {{ echo "start $t"; exit 5; }}; '
        + (
            f'if [ "$3" = {pid} ]; then kill -{signal} -{pid} && echo killed group; else kill -{signal} {pid} && echo killed; fi'
            if group
            else f"kill -{signal} {pid} && echo killed"
        )
    )


def terminate(
    dom: Any, pid: int, name: str, start_time: float, signal: int = 9, verify_timeout: float = 5.0, group: bool = False
) -> dict[str, Any]:
    """Kill (pid, name, start_time) in the guest and verify it is gone; with ``group`` and the
    target leading a process group (a workload started with setsid), kill and verify the group.

    Raises :class:`Refused` when it is not the process the finding saw (reused PID, ended already),
    :class:`GuestAgentError` when the guest agent fails or the process survives."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        raise Refused(f"pid {pid!r}: not a process that may be terminated (need an integer > 1)")
    if not isinstance(name, str) or not name:
        raise Refused(f"name {name!r}: the process name the finding saw is required")
    try:
        start_time = float(start_time)
    except (TypeError, ValueError):
        raise Refused(f"start_time {start_time!r}: the start time the finding saw (s since boot) is required") from None
    t0 = time.monotonic()
    before = find(list_processes(dom), pid)
    why = check_identity(before, pid, name, start_time)
    if why:
        raise Refused(why)
    code, out, err = exec_in_guest(dom, "/bin/sh", ["-c", _guarded_kill_script(pid, name, start_time, signal, group)])
    said = out.strip()
    if code == 3:
        raise Refused(f"PID {pid} ({name}) ended before the kill: nothing killed")
    if code in (4, 5):
        raise Refused(f"PID {pid} changed between the check and the kill ({said}): the PID was reused, nothing killed")
    if code != 0:
        raise GuestAgentError(f"{dom.name()}: kill -{signal} {pid} failed: {err.strip() or said or code}")
    killed_group = said.endswith("killed group")
    deadline = time.monotonic() + verify_timeout
    while True:
        procs = list_processes(dom)
        now = find(procs, pid)
        members = [p for p in procs if killed_group and p.pgrp == pid and p.pid != pid and p.state != "Z"]
        if (now is None or abs(now.start_time - start_time) > START_TOLERANCE) and not members:
            outcome = "gone"
            break
        if now is not None and now.state == "Z" and not members:
            outcome = "zombie (dead, awaiting its parent)"
            break
        if time.monotonic() > deadline:
            still = (
                f"{len(members)} member(s) of its group"
                if members and (now is None or now.state == "Z")
                else f"PID {pid} ({name})"
            )
            raise GuestAgentError(f"{dom.name()}: {still} still run(s) {verify_timeout:g} s after kill -{signal}")
        time.sleep(0.1)
    return {
        "pid": pid,
        "name": name,
        "start_time": start_time,
        "signal": signal,
        "verified": outcome,
        "group": killed_group,
        "seconds": round(time.monotonic() - t0, 3),
    }

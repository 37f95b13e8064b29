"""Suspect ranking: what changed inside a VM since a baseline introspection taken when it was healthy.

A process is identified by (PID, start time since boot), so a PID reused by another process is a
new process. Compared with the baseline: processes that are new; the share of the guest's CPU time
each process used between the two images (from ``task_struct`` utime + stime); sockets that are new
(``linux.sockstat``); open files that are new (``linux.lsof``); mapped memory that grew
(``linux.proc.Maps``). Each suspect carries the evidence as sentences and the numbers behind them,
and the identity a later ``terminate`` must check (pid, name, start time). Kernel threads are never
suspects. Without a baseline every user process is "not in a baseline" and ranking rests on the
CPU share since boot and the resources it holds.

What does not live here: obtaining the rows (:mod:`atomwatch.introspection.volatility`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: score weights (documented here so an operator can read why a process ranks where it does)
W_NEW = 2.0
W_CPU = 6.0  # × share of the guest's CPU time since the baseline (0..1); ×2 when CPU was blamed
W_SOCKET = 1.0  # per new socket, at most 5
W_FILE = 0.25  # per new open file, at most 8
W_MAPS = 2.0  # × relative growth of mapped memory, at most 3


@dataclass
class Suspect:
    pid: int
    name: str
    start_time: float | None  # seconds since the guest booted (task_struct start_boottime)
    score: float
    evidence: list[str] = field(default_factory=list)
    cmdline: str | None = None
    ppid: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _procs(analysis: dict[str, Any]) -> dict[tuple[int, float | None], dict[str, Any]]:
    """Processes (thread-group leaders) keyed by (pid, start), CPU summed over their threads."""
    out: dict[tuple[int, float | None], dict[str, Any]] = {}
    leaders = {t["pid"]: t for t in analysis.get("tasks", []) if t["pid"] == t["tid"]}
    for t in analysis.get("tasks", []):
        lead = leaders.get(t["pid"])
        if lead is None:
            continue
        key = (lead["pid"], _round(lead.get("start_s")))
        p = out.setdefault(key, dict(lead, cpu_s=0.0, threads=0))
        p["cpu_s"] += float(t.get("cpu_s") or 0.0)
        p["threads"] += 1
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def _by_pid(rows: list[dict[str, Any]], pid_key: str = "PID") -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        pid = r.get(pid_key)
        if isinstance(pid, int):
            out.setdefault(pid, []).append(r)
    return out


def _plugin_rows(analysis: dict[str, Any], name: str) -> list[dict[str, Any]] | None:
    p = analysis.get("plugins", {}).get(name)
    if p is None or p.get("error"):
        return None
    return list(p.get("rows", []))


def _socket_key(r: dict[str, Any]) -> tuple:
    return tuple(
        str(r.get(k))
        for k in ("Family", "Type", "Proto", "Source Addr", "Source Port", "Destination Addr", "Destination Port")
    )


def _socket_text(r: dict[str, Any]) -> str:
    src = f"{r.get('Source Addr')}:{r.get('Source Port')}"
    dst = f"{r.get('Destination Addr')}:{r.get('Destination Port')}"
    return f"{r.get('Proto') or r.get('Type')} {src} → {dst} {r.get('State') or ''}".strip()


def _maps_size(rows: list[dict[str, Any]]) -> int:
    total = 0
    for r in rows:
        start, end = r.get("Start"), r.get("End")
        if isinstance(start, int) and isinstance(end, int) and end > start:
            total += end - start
    return total


def rank(
    current: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    blamed_metrics: list[str] | None = None,
    limit: int = 10,
) -> list[Suspect]:
    """Suspects in ``current`` (an :class:`~atomwatch.introspection.volatility.Analysis` as dict), most
    suspicious first; ``baseline`` is the same VM's analysis when it was healthy."""
    from .plugins_choice import family

    cpu_blamed = any(family(m) == "cpu" for m in blamed_metrics or [])
    now = _procs(current)
    before = _procs(baseline) if baseline else {}
    base_pids = {pid for pid, _ in before}
    # CPU used between the images, by every process alive now (exited ones are lost: a lower bound)
    cpu_delta: dict[tuple, float] = {}
    for key, p in now.items():
        prev = before.get(key)
        cpu_delta[key] = max(0.0, p["cpu_s"] - (prev["cpu_s"] if prev else 0.0))
    total_cpu = sum(cpu_delta.values()) or 0.0

    args = {r.get("PID"): r.get("ARGS") for r in _plugin_rows(current, "linux.psaux") or []}
    sockets_now = _plugin_rows(current, "linux.sockstat")
    sockets_before = _plugin_rows(baseline or {}, "linux.sockstat") or []
    base_socket_keys = {_socket_key(r) for r in sockets_before}
    files_now = _plugin_rows(current, "linux.lsof")
    files_before = _plugin_rows(baseline or {}, "linux.lsof") or []
    base_files = {(r.get("Process"), r.get("Path")) for r in files_before}
    maps_now = _plugin_rows(current, "linux.proc.Maps")
    maps_before = _by_pid(_plugin_rows(baseline or {}, "linux.proc.Maps") or [])

    socks_by_pid = _by_pid(sockets_now or [])
    files_by_pid = _by_pid(files_now or [])
    maps_by_pid = _by_pid(maps_now or [])

    suspects: list[Suspect] = []
    for key, p in now.items():
        pid, start = key
        if p.get("kernel_thread") or pid in (0, 2) or p.get("ppid") == 2:
            continue
        score = 0.0
        evidence: list[str] = []
        facts: dict[str, Any] = {"cpu_s": round(p["cpu_s"], 3), "threads": p["threads"]}
        is_new = baseline is not None and key not in before
        if is_new:
            score += W_NEW
            reused = " (its PID was another process's in the baseline)" if pid in base_pids else ""
            evidence.append(f"new since the baseline: started {start:.2f} s after boot{reused}")
            facts["new"] = True
        elif baseline is None:
            evidence.append("no baseline to compare with")
        if total_cpu > 0:
            share = cpu_delta[key] / total_cpu
            facts["cpu_share"] = round(share, 4)
            score += W_CPU * share * (2.0 if cpu_blamed else 1.0)
            if share >= 0.05:
                since = "since the baseline" if baseline else "since boot"
                evidence.append(f"used {share:.0%} of the guest's CPU time {since} ({cpu_delta[key]:.1f} s)")
        if sockets_now is not None:
            mine = socks_by_pid.get(pid, [])
            new_socks = [r for r in mine if _socket_key(r) not in base_socket_keys]
            facts["sockets"] = len(mine)
            if new_socks:
                facts["new_sockets"] = len(new_socks)
                score += W_SOCKET * min(len(new_socks), 5)
                shown = "; ".join(_socket_text(r) for r in new_socks[:3])
                evidence.append(f"{len(new_socks)} new socket(s): {shown}" + (" …" if len(new_socks) > 3 else ""))
        if files_now is not None:
            mine = files_by_pid.get(pid, [])
            new_files = [r for r in mine if (r.get("Process"), r.get("Path")) not in base_files]
            facts["open_files"] = len(mine)
            if new_files and baseline is not None:
                score += W_FILE * min(len(new_files), 8)
                shown = ", ".join(sorted({str(r.get("Path")) for r in new_files})[:4])
                evidence.append(f"{len(new_files)} new open file(s): {shown}")
        if maps_now is not None:
            size = _maps_size(maps_by_pid.get(pid, []))
            facts["mapped_bytes"] = size
            prev_size = _maps_size(maps_before.get(pid, [])) if not is_new else 0
            if prev_size and size > prev_size * 1.1:
                growth = size / prev_size - 1.0
                score += W_MAPS * min(growth, 3.0)
                evidence.append(f"mapped memory grew {prev_size >> 20} → {size >> 20} MiB (+{growth:.0%})")
        suspects.append(
            Suspect(
                pid=pid,
                name=p["comm"],
                start_time=start,
                score=round(score, 4),
                evidence=evidence,
                cmdline=args.get(pid),
                ppid=p.get("ppid"),
                facts=facts,
            )
        )
    if baseline is not None:
        suspects = _fold_new_descendants(suspects)
    suspects.sort(key=lambda s: (-s.score, -(s.start_time or 0.0)))
    return suspects[:limit]


def _fold_new_descendants(suspects: list[Suspect]) -> list[Suspect]:
    """A new process whose parent is new too belongs to its oldest new ancestor (e.g. the
    ``wget`` children of a ``ddos-bot`` holding the sockets): its score and evidence go to that
    ancestor, which is what a termination must target (with its process group)."""
    by_pid = {s.pid: s for s in suspects}

    def root_of(s: Suspect) -> Suspect:
        seen = {s.pid}
        while s.ppid in by_pid and by_pid[s.ppid].facts.get("new") and s.ppid not in seen and s.ppid > 1:
            s = by_pid[s.ppid]
            seen.add(s.pid)
        return s

    kept: list[Suspect] = []
    folded: dict[int, list[Suspect]] = {}
    for s in suspects:
        root = root_of(s) if s.facts.get("new") else s
        if root is s:
            kept.append(s)
        else:
            folded.setdefault(root.pid, []).append(s)
    for root in kept:
        kids = folded.get(root.pid)
        if not kids:
            continue
        root.score = round(root.score + sum(k.score for k in kids), 4)
        names: dict[str, int] = {}
        for k in kids:
            names[k.name] = names.get(k.name, 0) + 1
        root.facts["descendants"] = [k.pid for k in kids]
        root.facts["new_sockets"] = root.facts.get("new_sockets", 0) + sum(k.facts.get("new_sockets", 0) for k in kids)
        share = sum(k.facts.get("cpu_share", 0.0) for k in kids)
        root.facts["family_cpu_share"] = round(root.facts.get("cpu_share", 0.0) + share, 4)
        kinds = ", ".join(f"{n} ×{c}" for n, c in sorted(names.items()))
        root.evidence.append(f"{len(kids)} new descendant process(es) ({kinds})")
        for k in kids:
            root.evidence.extend(
                f"{k.name} {k.pid}: {e}" for e in k.evidence if "socket" in e or "CPU" in e or "mapped" in e
            )
    return kept

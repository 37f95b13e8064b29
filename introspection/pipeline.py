"""One introspection of one VM: live memory or a dump → Volatility → suspects, and the per-VM baseline store.

:func:`introspect` reads the VM's memory in place when it is a shared file
(:mod:`atomwatch.introspection.live`, on the guest's warm worker: :mod:`atomwatch.introspection.warm`),
and otherwise dumps it (:mod:`atomwatch.introspection.acquire`) and runs one Volatility worker over the
dump (:mod:`atomwatch.introspection.volatility`), deleting the dump after (unless retention is
configured); either way with the plugins the blamed metrics call for
(:mod:`atomwatch.introspection.plugins_choice`). The result says which (``source``: ``live`` with the
pause measured, or ``dump`` with why it was not live). Then it ranks the suspects against the VM's
baseline (:mod:`atomwatch.introspection.suspects`). With ``baseline=True`` the
analysis is stored as the VM's healthy baseline instead (one JSON file per VM UUID, mode 0600).

What does not live here: the protocol command around it (``plugins/introspection_commands.py``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import acquire, live, plugins_choice, suspects, warm
from .volatility import Cancel, VolatilityConfig, analyse

Progress = Callable[[dict[str, Any]], None]


@dataclass
class IntrospectionConfig:
    volatility: VolatilityConfig = field(default_factory=VolatilityConfig)
    #: where private dump directories are made (None: the system temp dir)
    dump_dir: Path | None = None
    #: keep dumps after a successful analysis (retention); off by default
    keep_dumps: bool = False
    #: free space asked beyond the guest's memory before a dump (bytes)
    dump_margin: int = acquire.DEFAULT_MARGIN
    baseline_dir: Path = field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "atomwatch" / "baselines"
        )
    )
    #: plugins an ``introspect`` request may ask for (beyond these: refused)
    allowed_plugins: tuple[str, ...] = plugins_choice.KNOWN
    #: how many suspects a finding lists
    max_suspects: int = 10
    #: ``auto``: read a guest's memory in place when it is a shared file, dump it otherwise; ``off``: always dump
    live: str = "auto"
    #: when a live introspection pauses the guest (:data:`atomwatch.introspection.warm.PAUSE_MODES`)
    live_pause: str = "tasks"

    def __post_init__(self) -> None:
        if self.live not in ("auto", "off"):
            raise ValueError(f"introspection.live {self.live!r}: 'auto' or 'off'")
        if self.live_pause not in warm.PAUSE_MODES:
            raise ValueError(f"introspection.live_pause {self.live_pause!r}: one of {', '.join(warm.PAUSE_MODES)}")


class BaselineStore:
    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def _path(self, vm_uuid: str) -> Path:
        safe = "".join(c for c in vm_uuid if c.isalnum() or c == "-")
        return self.dir / f"{safe}.json"

    def save(self, vm_uuid: str, analysis: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(vm_uuid)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(analysis, taken_at=time.time()), f)
        os.replace(tmp, path)
        return path

    def load(self, vm_uuid: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(vm_uuid).read_text())
        except (OSError, ValueError):
            return None


def choose_plugins(metrics: list[str], requested: list[str] | None, cfg: IntrospectionConfig) -> list[str]:
    if requested:
        bad = [p for p in requested if p not in cfg.allowed_plugins]
        if bad:
            raise ValueError(f"plugins {', '.join(bad)}: not allowed here; allowed: {', '.join(cfg.allowed_plugins)}")
        chosen = [plugins_choice.PSLIST] + [p for p in requested if p != plugins_choice.PSLIST]
    else:
        chosen = plugins_choice.choose(metrics)
    return chosen


def introspect(
    conn: Any,
    vm: str,
    metrics: list[str],
    cfg: IntrospectionConfig,
    plugins: list[str] | None = None,
    progress: Progress | None = None,
    baseline: bool = False,
    cancel: Cancel | None = None,
    pool: warm.WarmPool | None = None,
) -> dict[str, Any]:
    """Introspect VM ``vm`` (UUID or name); ``cancel`` stops it from another thread (the worker is
    killed, a dump deleted); ``pool``: the agent's warm workers (None: a worker for this call only).
    Raises ``acquire.AcquireError`` (``DomainGone``, ``NoSpace``), ``volatility.VolatilityError``
    (``NoSymbols``, ``VolatilityTimeout``, ``Cancelled``) or ``ValueError``."""
    say = progress or (lambda _m: None)
    chosen = choose_plugins(list(metrics), plugins, cfg)
    t0 = time.monotonic()
    if cancel is not None:
        cancel.check()
    not_live = "introspection.live is off" if cfg.live == "off" else None
    memory = None
    if not_live is None:
        try:
            dom, memory = live.find(conn, vm)
        except live.NotLive as e:
            not_live = str(e)
    if memory is not None:
        say({"stage": "live", "vm": vm, "memory_file": memory.path})
        own = pool is None
        pool = warm.WarmPool(size=0) if own else pool
        try:
            analysis, facts = warm.analyse_live(
                dom,
                memory,
                chosen,
                cfg.volatility,
                pool,
                pause=cfg.live_pause,
                progress=lambda m: say(dict(m, stage="volatility-" + m.get("stage", ""))),
                cancel=cancel,
            )
        finally:
            if own:
                pool.close()
        vm_uuid, vm_name = memory.vm_uuid, memory.vm_name
        source: dict[str, Any] = {"source": "live", "live": dict(memory.summary(), **facts), "dump": None}
        timings = dict(analysis.timings, paused=round(sum(memory.pauses), 4), volatility=analysis.seconds)
        how = f"read live, guest paused {sum(memory.pauses) * 1000:.0f} ms" + (
            ", warm context" if facts["warm"] else ""
        )
    else:
        say({"stage": "dump", "vm": vm, "not_live": not_live})
        dump = acquire.dump_memory(conn, vm, cfg.dump_dir, keep=cfg.keep_dumps, margin=cfg.dump_margin)
        with dump:  # deleted on any failure, the worker's included (killed, timed out, crashed)
            if cancel is not None:
                cancel.check()
            say({"stage": "dumped", "seconds": round(dump.seconds, 3), "bytes": dump.size, "notes": dump.notes})
            analysis = analyse(
                dump.path,
                chosen,
                cfg.volatility,
                progress=lambda m: say(dict(m, stage="volatility-" + m.get("stage", ""))),
                cancel=cancel,
            )
        vm_uuid, vm_name = dump.vm_uuid, dump.vm_name
        source = {"source": "dump", "not_live": not_live, "dump": dump.summary()}
        timings = dict(analysis.timings, dump=round(dump.seconds, 3), volatility=analysis.seconds)
        how = f"memory dump: not live because {not_live}"
    result: dict[str, Any] = {
        "vm_uuid": vm_uuid,
        "vm_name": vm_name,
        "metrics": list(metrics),
        "plugins": chosen,
        "banner": analysis.banner,
        **source,
        "timings": timings,
        "rows": {name: p.get("rows", []) for name, p in analysis.plugins.items()},
        "errors": {name: p["error"] for name, p in analysis.plugins.items() if p.get("error")},
        "tasks": analysis.tasks,
    }
    store = BaselineStore(cfg.baseline_dir)
    current = analysis.to_dict()
    if baseline:
        path = store.save(vm_uuid, current)
        result["baseline"] = {"saved": str(path)}
        result["suspects"] = []
        result["summary"] = f"baseline of {vm_name} saved ({len(analysis.tasks)} tasks; {how})"
    else:
        base = store.load(vm_uuid)
        ranked = suspects.rank(current, base, list(metrics), limit=cfg.max_suspects)
        result["baseline"] = {"taken_at": base.get("taken_at")} if base else None
        result["suspects"] = [s.to_dict() for s in ranked]
        top = ranked[0] if ranked else None
        result["summary"] = (
            (
                f"top suspect in {vm_name}: {top.name} (pid {top.pid}): {'; '.join(top.evidence) or 'no evidence'}"
                if top
                else f"no suspect found in {vm_name}"
            )
            + ("" if base else " (no baseline to compare with)")
            + f" [{how}]"
        )
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result

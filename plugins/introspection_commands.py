"""Agent commands ``introspect`` and ``terminate``: Volatility 3 on one VM, and killing one process.

``introspect`` reads the guest's memory in place when it is a shared file, on a Volatility worker
kept warm for that guest (``atomwatch.introspection.live``, ``.warm``), and dumps it otherwise; the
result's ``source`` says which (``live`` with the guest's pause measured, or ``dump`` with
``not_live``, the reason). Params: ``vm`` (UUID or libvirt name; ``vm_uuid``/``vm_name`` accepted too),
``metrics`` (the blamed metric names; they choose the plugins), optional ``plugins`` (explicit
list, each one of ``atomwatch.introspection.plugins_choice.KNOWN``), optional ``baseline`` (true: store the
analysis as the VM's healthy baseline), optional ``timeout`` (s, caps Volatility's own limit).
Progress replies: live read started (with the memory file) or dump started/done, image loaded (with the kernel banner), each plugin done.
The result holds the suspects with their evidence, the Volatility rows per plugin, the banner,
the dump summary (with whether the guest had to be resumed) and timings.

``terminate`` params: ``vm``, ``pid``, ``name``, ``start_time`` (s since guest boot, as the
finding saw it), ``alarm`` (the alarm id), ``authorization`` (what allowed it: ``{"by": "verdict",
"actor": …, "at": time}`` or ``{"by": "policy", "policy": name}``), optional ``signal`` (default 9).
Refused — an error reply starting with ``refused:`` — without alarm, authorization or process
identity, unless the hypervisor owner consents (below), or unless PID, name and start time still
match; ``ok`` only once the process is gone.

The hypervisor owner's consent (this agent's options, not the controller's): ``terminate`` is
``off`` (default: refused, the refusal names ``--set introspection.terminate=on``), ``dry-run``
(nothing is killed: the reply is ``ok`` with ``dry_run: true`` and the target) or ``on``;
``never_kill`` lists process names never killed (default init, systemd, sshd, qemu-ga);
``introspect_min_interval`` (default 60 s) is the least time between two introspections of one
guest. Every accepted or refused introspect or terminate is logged at WARNING (``audit:``).

Every failure is an error reply naming it: VM gone (before, during or right after its dump), not
enough free space for the dump (naming the directory, the space needed and available), dump
failed, no symbol table for the kernel's banner, Volatility failed, ran out of memory or timed
out, guest agent failed. Nothing stays behind: the dump is deleted on every failure, the
Volatility worker is killed when the command is cancelled (agent stopping, command timeout) and
dies with the agent (see :mod:`atomwatch.introspection.volatility`), and the dumps a killed agent
left are swept when the agent starts (logged at WARNING).

Options (``--set introspection.KEY=VALUE``, the fields of :class:`IntrospectionOptions`): ``enabled``
(default true), ``uri`` (libvirt, default ``qemu:///system``),
``symbols`` (symbol directory, ``;`` for several; default ``$ATOMWATCH_SYMBOLS`` or ``/var/lib/atomwatch/symbols``;
a given path that is not a directory is a misconfiguration, an absent built-in default only
makes ``introspect`` refuse, before any dump, until one exists), ``cache``
(Volatility cache dir), ``timeout`` (s, the worker's wall-clock limit, default 120), ``memory_mib``
(the worker's data-segment limit, RLIMIT_DATA, default 2048), ``dump_dir`` (default: the system temp
dir), ``dump_margin_mib`` (free space asked beyond the guest's memory before a dump, default 512),
``keep_dumps`` (retention of successfully analysed dumps, default false), ``baseline_dir``,
``concurrency`` (introspections at once, default 1: each holds ~0.5 GB), ``live`` (``auto``: read a
guest's memory in place when it is a shared file, else dump it; ``off``: always dump), ``live_pause``
(``tasks``, ``all`` or ``none``: what a live read pauses the guest for), ``warm_workers`` (default 2:
guests whose loaded Volatility context is kept between introspections), ``warm_idle`` (default
600 s: a warm context unused that long is dropped), ``warm_spare`` (default true: one more worker
kept ready with Volatility imported and the last used symbol tables parsed, for a guest with no
warm context yet), ``terminate``,
``never_kill``, ``introspect_min_interval`` (the consent above).

Entry point (pyproject.toml, group ``atomwatch``):
``introspection-commands = "atomwatch.plugins.introspection_commands"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import atomwatch
from atomwatch import Duration, Range
from atomwatch.introspection.volatility import DEFAULT_SYMBOL_DIRS
from atomwatch.types import CommandError

log = logging.getLogger(__name__)

OPTIONS_NAME = "introspection"


@atomwatch.declare_options(OPTIONS_NAME)
@dataclass(frozen=True)
class IntrospectionOptions:
    """``--set introspection.KEY=VALUE``, read by :func:`atomwatch.parse_options`; None: the
    default of :class:`~atomwatch.introspection.pipeline.IntrospectionConfig` /
    :class:`~atomwatch.introspection.volatility.VolatilityConfig`."""

    enabled: bool = True
    uri: str = "qemu:///system"
    symbols: str | tuple[str, ...] | None = None  # a directory, ';' between several, or a list
    cache: str | None = None
    timeout: Annotated[float, Duration, Range(gt=0)] | None = None
    memory_mib: Annotated[float, Range(gt=0)] | None = None
    validate_isf: bool | None = None
    dump_dir: str | None = None
    dump_margin_mib: Annotated[float, Range(ge=0)] | None = None
    keep_dumps: bool | None = None
    baseline_dir: str | None = None
    concurrency: Annotated[int, Range(ge=1)] = 1
    live: Literal["auto", "off"] = "auto"
    live_pause: Literal["tasks", "all", "none"] = "tasks"
    warm_workers: Annotated[int, Range(ge=0)] = 2
    warm_idle: Annotated[float, Duration, Range(gt=0)] = 600.0
    warm_spare: bool = True
    # the hypervisor owner's consent
    terminate: Literal["off", "dry-run", "on"] = "off"
    never_kill: tuple[str, ...] = ("init", "systemd", "sshd", "qemu-ga")
    introspect_min_interval: Annotated[float, Duration, Range(ge=0)] = 60.0


def _audit(command: str, accepted: bool, params: dict[str, Any], why: str) -> None:
    """The agent's own audit line for a destructive command: who asked, for what, and why it was
    accepted or refused."""
    auth = params.get("authorization")
    if isinstance(auth, dict) and auth.get("by") == "verdict":
        who = f"verdict of {auth.get('actor')!s} at {auth.get('at')!s}"
    elif isinstance(auth, dict) and auth.get("by") == "policy":
        who = f"policy {auth.get('policy')!s}"
    else:
        who = "the controller"
    target = {k: params.get(k) for k in ("vm", "vm_name", "pid", "name", "start_time", "metrics") if k in params}
    log.warning(
        "audit: %s %s (alarm %s, asked by %s) target %s: %s",
        command,
        "ACCEPTED" if accepted else "REFUSED",
        params.get("alarm"),
        who,
        target,
        why,
    )


def _authorization(params: dict[str, Any]) -> str:
    """Why this terminate may run (for the audit line), or CommandError for a request without
    alarm id, authorization or the process identity."""
    missing = []
    alarm = params.get("alarm")
    if isinstance(alarm, bool) or not isinstance(alarm, int):
        missing.append("'alarm' (the alarm id)")
    auth = params.get("authorization")
    if not isinstance(auth, dict):
        missing.append("'authorization' (a verdict with actor and time, or a policy with its name)")
    elif auth.get("by") == "verdict":
        if not isinstance(auth.get("actor"), str) or not auth["actor"]:
            missing.append("'authorization.actor'")
        at = auth.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            missing.append("'authorization.at' (the verdict's time)")
    elif auth.get("by") == "policy":
        if not isinstance(auth.get("policy"), str) or not auth["policy"]:
            missing.append("'authorization.policy' (its name)")
    else:
        missing.append("'authorization.by' ('verdict' or 'policy')")
    pid = params.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int):
        missing.append("'pid'")
    if not isinstance(params.get("name"), str) or not params.get("name"):
        missing.append("'name'")
    st = params.get("start_time")
    if isinstance(st, bool) or not isinstance(st, (int, float)):
        missing.append("'start_time'")
    if missing:
        raise CommandError(f"refused: terminate without {', '.join(missing)}")
    return "verdict" if auth["by"] == "verdict" else "policy"


def _vm_param(params: dict[str, Any], command: str) -> str:
    vm = params.get("vm") or params.get("vm_uuid") or params.get("vm_name")
    if not isinstance(vm, str) or not vm:
        raise CommandError(f"{command}: param 'vm' (the VM's UUID or libvirt name) is required, got {vm!r}")
    return vm


class IntrospectionCommands:
    def __init__(self, options: IntrospectionOptions | dict[str, Any]):
        from atomwatch.introspection.pipeline import IntrospectionConfig
        from atomwatch.introspection.volatility import VolatilityConfig

        if not isinstance(options, IntrospectionOptions):
            options = atomwatch.parse_options(OPTIONS_NAME, IntrospectionOptions, options)
        self.uri = options.uri
        volatility = {k: getattr(options, k) for k in ("symbols", "cache", "timeout", "memory_mib", "validate_isf")}
        kw: dict[str, Any] = {
            "volatility": VolatilityConfig.from_options({k: v for k, v in volatility.items() if v is not None})
        }
        if options.dump_dir:
            kw["dump_dir"] = Path(options.dump_dir)
        if options.keep_dumps is not None:
            kw["keep_dumps"] = options.keep_dumps
        if options.dump_margin_mib is not None:
            kw["dump_margin"] = int(options.dump_margin_mib * (1 << 20))
        if options.baseline_dir:
            kw["baseline_dir"] = Path(options.baseline_dir)
        kw["live"], kw["live_pause"] = options.live, options.live_pause
        self.cfg = IntrospectionConfig(**kw)
        from atomwatch.introspection.warm import WarmPool

        #: one warm Volatility worker per guest read live (its context loaded), across introspections
        self.warm = WarmPool(
            options.warm_workers, options.warm_idle, spare=options.warm_spare and options.live != "off"
        )
        self.slots = asyncio.Semaphore(options.concurrency)
        self._conn: Any = None
        self.terminate_mode = options.terminate
        self.never_kill = frozenset(options.never_kill)
        self.min_interval = options.introspect_min_interval
        #: guest (as named in a request, UUID and name once known) → monotonic time of its last introspection
        self.last_introspection: dict[str, float] = {}

    def live_guests_here(self) -> bool:
        """Whether a running guest on this host has shared memory (a live introspection may come)."""
        from atomwatch.introspection.live import shared_memory_guests

        try:
            return bool(shared_memory_guests(self.conn()))
        except Exception:
            return False

    def sweep_dumps(self) -> list[tuple[Path, int]]:
        """Delete the dumps an agent killed mid-introspection left in the dump directory (at start)."""
        from atomwatch.introspection.acquire import sweep

        return sweep(self.cfg.dump_dir)

    def conn(self) -> Any:
        from atomwatch.introspection.acquire import AcquireError, import_libvirt

        libvirt = import_libvirt()
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise AcquireError(f"cannot connect to libvirt at {self.uri}: {e.get_error_message()}") from None
        return self._conn

    async def _threaded(
        self, fn: Callable[..., Any], progress: Callable[[dict[str, Any]], Awaitable[None]], *args: Any, **kw: Any
    ) -> Any:
        """Run blocking ``fn`` in a thread, relaying its progress callbacks to the event loop."""
        loop = asyncio.get_running_loop()

        def relay(info: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(progress(dict(info)), loop)

        return await asyncio.to_thread(fn, *args, progress=relay, **kw)

    async def introspect(
        self, params: dict[str, Any], progress: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> dict[str, Any]:
        from dataclasses import replace

        from atomwatch.introspection import pipeline
        from atomwatch.introspection.acquire import AcquireError, DomainGone, NoSpace
        from atomwatch.introspection.volatility import (
            Cancel,
            NoSymbols,
            VolatilityError,
            VolatilityTimeout,
        )

        vm = _vm_param(params, "introspect")
        metrics = params.get("metrics") or []
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            raise CommandError(f"introspect: 'metrics' must be a list of metric names, got {metrics!r}")
        plugins = params.get("plugins")
        if plugins is not None and (not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins)):
            raise CommandError(f"introspect: 'plugins' must be a list of Volatility plugin names, got {plugins!r}")
        cfg = self.cfg
        if not cfg.volatility.symbol_dirs:  # refused before the guest is paused for a dump
            raise CommandError(
                f"introspect: no symbol directory on this agent ({', '.join(DEFAULT_SYMBOL_DIRS)} does not exist): "
                "give one with --set introspection.symbols=DIR or ATOMWATCH_SYMBOLS"
            )
        guests = {g for g in (vm, params.get("vm_uuid"), params.get("vm_name")) if isinstance(g, str) and g}
        now = time.monotonic()
        last = max((self.last_introspection.get(g, -float("inf")) for g in guests), default=-float("inf"))
        if now - last < self.min_interval:
            wait = self.min_interval - (now - last)
            why = (
                f"refused: introspect: {vm} was introspected {now - last:.0f} s ago; this agent allows one every "
                f"{self.min_interval:g} s (--set introspection.introspect_min_interval): next allowed in {wait:.0f} s"
            )
            _audit("introspect", False, params, why)
            raise CommandError(why)
        for g in guests:
            self.last_introspection[g] = now
        _audit("introspect", True, params, "Volatility analysis of its memory (read live or dumped)")
        if params.get("timeout") is not None:
            try:
                t = float(params["timeout"])
            except (TypeError, ValueError):
                raise CommandError(f"introspect: 'timeout' must be seconds, got {params['timeout']!r}") from None
            cfg = replace(cfg, volatility=replace(cfg.volatility, timeout=min(cfg.volatility.timeout, max(1.0, t))))
        if self.slots.locked():
            await progress({"stage": "queued", "why": "another introspection runs on this agent"})
        async with self.slots:
            cancel = Cancel()
            try:
                conn = await asyncio.to_thread(self.conn)
                result = await self._threaded(
                    pipeline.introspect,
                    progress,
                    conn,
                    vm,
                    metrics,
                    cfg,
                    plugins,
                    baseline=bool(params.get("baseline")),
                    cancel=cancel,
                    pool=self.warm,
                )
                for g in (result.get("vm_uuid"), result.get("vm_name")) if isinstance(result, dict) else ():
                    if isinstance(g, str) and g:
                        self.last_introspection[g] = now
                return result
            except asyncio.CancelledError:
                # the agent stops or the command timed out: the thread goes on, so stop its worker
                # (the thread then deletes the dump and ends)
                cancel.cancel("the introspect command was cancelled (agent stopping or command timeout)")
                raise
            except DomainGone as e:
                raise CommandError(f"introspect: VM gone: {e}") from None
            except NoSpace as e:
                raise CommandError(f"introspect: no space for the dump: {e}") from None
            except AcquireError as e:
                raise CommandError(f"introspect: dump failed: {e}") from None
            except NoSymbols as e:
                raise CommandError(f"introspect: {e}") from None
            except VolatilityTimeout as e:
                raise CommandError(f"introspect: timeout: {e}") from None
            except VolatilityError as e:
                raise CommandError(f"introspect: Volatility failed: {e}") from None
            except ValueError as e:
                raise CommandError(f"introspect: {e}") from None

    async def terminate(
        self, params: dict[str, Any], progress: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> dict[str, Any]:
        from atomwatch.introspection import guest_agent
        from atomwatch.introspection.acquire import AcquireError, DomainGone, lookup

        vm = _vm_param(params, "terminate")
        pid, name, start = params.get("pid"), params.get("name"), params.get("start_time")
        signal = params.get("signal", 9)
        if not isinstance(signal, int) or signal not in (9, 15):
            raise CommandError(f"terminate: 'signal' must be 9 or 15, got {signal!r}")
        group = params.get("group", False)
        if not isinstance(group, bool):
            raise CommandError(f"terminate: 'group' must be true or false, got {group!r}")
        try:
            allowed_by = _authorization(params)
        except CommandError as e:
            _audit("terminate", False, params, str(e))
            raise
        if self.terminate_mode == "off":
            why = (
                "refused: terminate is off on this agent (the hypervisor owner's consent); "
                "enable it with --set introspection.terminate=on (or dry-run)"
            )
            _audit("terminate", False, params, why)
            raise CommandError(why)
        if name in self.never_kill:
            why = f"refused: terminate: {name!r} is in this agent's never_kill list (--set introspection.never_kill)"
            _audit("terminate", False, params, why)
            raise CommandError(why)
        target = {"vm": vm, "pid": pid, "name": name, "start_time": start, "signal": signal, "group": group}
        if self.terminate_mode == "dry-run":
            _audit(
                "terminate", True, params, f"dry run (introspection.terminate=dry-run): nothing killed; {allowed_by}"
            )
            return {"dry_run": True, "target": target, "verified": "dry run: nothing killed"}
        _audit("terminate", True, params, f"allowed by {allowed_by}")

        def work() -> dict[str, Any]:
            dom = lookup(self.conn(), vm)
            return dict(
                guest_agent.terminate(dom, pid, name, start, signal=signal, group=group),
                vm_name=dom.name(),
                vm_uuid=dom.UUIDString(),
            )

        try:
            await progress({"stage": "terminating", "vm": vm, "pid": pid, "name": name})
            return await asyncio.to_thread(work)
        except guest_agent.Refused as e:
            raise CommandError(f"refused: {e}") from None
        except DomainGone as e:
            raise CommandError(f"terminate: VM gone: {e}") from None
        except (guest_agent.GuestAgentError, AcquireError) as e:
            raise CommandError(f"terminate: {e}") from None


@atomwatch.hookimpl
def register_agent_commands(config: Any) -> dict[str, Any] | None:
    # a bad option is the operator's mistake (ConfigError: the agent does not start); a symbol
    # directory that is not one is this host's (the commands refuse, saying why)
    options = atomwatch.parse_options(
        OPTIONS_NAME, IntrospectionOptions, config.plugin_options(OPTIONS_NAME) if config is not None else {}
    )
    if not options.enabled:
        return None
    try:
        cmds = IntrospectionCommands(options)
    except (ValueError, TypeError) as e:
        log.error("introspection commands misconfigured: %s", e)
        why = f"introspection is misconfigured on this agent: {e}"

        async def refuse(params: dict[str, Any], progress: Any) -> dict[str, Any]:
            raise CommandError(why)

        return {"introspect": refuse, "terminate": refuse}
    import atexit

    atexit.register(cmds.warm.close)  # the warm workers die with the agent anyway (PR_SET_PDEATHSIG)
    if cmds.cfg.volatility.symbol_dirs:
        # the spare worker (Volatility imported, tables parsed), when a guest here can be read live
        cmds.warm.prepare(cmds.cfg.volatility, worth=cmds.live_guests_here)
    cmds.sweep_dumps()  # the agent starts: whatever dump a killed agent left is no one's now
    if not cmds.cfg.volatility.symbol_dirs:
        log.info(
            "introspection: no symbol directory (%s does not exist): 'introspect' will refuse until one is given "
            "(--set introspection.symbols=DIR or ATOMWATCH_SYMBOLS); 'terminate' does not need one (terminate=%s)",
            ", ".join(DEFAULT_SYMBOL_DIRS),
            options.terminate,
        )
    return {"introspect": cmds.introspect, "terminate": cmds.terminate}

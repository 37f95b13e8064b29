"""Agent commands ``introspect`` and ``terminate``: Volatility 3 on one VM, and killing one process.

``introspect`` params: ``vm`` (UUID or libvirt name; ``vm_uuid``/``vm_name`` accepted too),
``metrics`` (the blamed metric names; they choose the plugins), optional ``plugins`` (explicit
list, each one of ``atomwatch.introspection.plugins_choice.KNOWN``), optional ``baseline`` (true: store the
analysis as the VM's healthy baseline), optional ``timeout`` (s, caps Volatility's own limit).
Progress replies: dump started/done, image loaded (with the kernel banner), each plugin done.
The result holds the suspects with their evidence, the Volatility rows per plugin, the banner,
the dump summary (with whether the guest had to be resumed) and timings.

``terminate`` params: ``vm``, ``pid``, ``name``, ``start_time`` (s since guest boot, as the
finding saw it), optional ``signal`` (default 9). Refused — an error reply starting with
``refused:`` — unless PID, name and start time still match; ``ok`` only once the process is gone.

Every failure is an error reply naming it: VM gone, dump failed, no symbol table for the
kernel's banner, Volatility failed or timed out, guest agent failed.

Options (``--set introspection.KEY=VALUE``, the fields of :class:`IntrospectionOptions`): ``enabled``
(default true), ``uri`` (libvirt, default ``qemu:///system``),
``symbols`` (symbol directory, ``;`` for several; default ``$ATOMWATCH_SYMBOLS`` or ``/var/lib/atomwatch/symbols``;
a given path that is not a directory is a misconfiguration, an absent built-in default only
makes ``introspect`` refuse, before any dump, until one exists), ``cache``
(Volatility cache dir), ``timeout`` (s, default 120), ``memory_mib`` (worker address-space
limit, default 3072), ``dump_dir``, ``keep_dumps`` (retention, default false), ``baseline_dir``,
``concurrency`` (introspections at once, default 1: each holds ~0.5 GB).

Entry point (pyproject.toml, group ``atomwatch``):
``introspection-commands = "atomwatch.plugins.introspection_commands"``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

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
    keep_dumps: bool | None = None
    baseline_dir: str | None = None
    concurrency: Annotated[int, Range(ge=1)] = 1


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
        if options.baseline_dir:
            kw["baseline_dir"] = Path(options.baseline_dir)
        self.cfg = IntrospectionConfig(**kw)
        self.slots = asyncio.Semaphore(options.concurrency)
        self._conn: Any = None

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
        from atomwatch.introspection.acquire import AcquireError, DomainGone
        from atomwatch.introspection.volatility import (
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
        if params.get("timeout") is not None:
            try:
                t = float(params["timeout"])
            except (TypeError, ValueError):
                raise CommandError(f"introspect: 'timeout' must be seconds, got {params['timeout']!r}") from None
            cfg = replace(cfg, volatility=replace(cfg.volatility, timeout=min(cfg.volatility.timeout, max(1.0, t))))
        if self.slots.locked():
            await progress({"stage": "queued", "why": "another introspection runs on this agent"})
        async with self.slots:
            try:
                conn = await asyncio.to_thread(self.conn)
                return await self._threaded(
                    pipeline.introspect,
                    progress,
                    conn,
                    vm,
                    metrics,
                    cfg,
                    plugins,
                    baseline=bool(params.get("baseline")),
                )
            except DomainGone as e:
                raise CommandError(f"introspect: VM gone: {e}") from None
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
    if not cmds.cfg.volatility.symbol_dirs:
        log.info(
            "introspection: no symbol directory (%s does not exist): 'introspect' will refuse until one is given "
            "(--set introspection.symbols=DIR or ATOMWATCH_SYMBOLS); 'terminate' works",
            ", ".join(DEFAULT_SYMBOL_DIRS),
        )
    return {"introspect": cmds.introspect, "terminate": cmds.terminate}

"""The Volatility 3 worker, run by its file path (``python -P worker.py``) — one memory image, several plugins.

Reads one JSON request on stdin::

    {"image": PATH, "plugins": ["linux.pslist", …], "symbol_dirs": [DIR, …], "cache_dir": DIR,
     "memory_limit": BYTES, "validate_isf": false}

and writes JSON lines on stdout: ``{"event": "progress", …}`` while it works, then exactly one
``{"event": "result", …}`` or ``{"event": "error", "kind": …, "message": …}``. The context and the
layer stack (ELF core → kernel address space, symbol table) are built once, for the first plugin;
every other plugin is constructed on the same context with the kernel module's configuration
spliced in, so the automagic finds it satisfied and does not stack again. Results are the
TreeGrid's rows as plain dicts (column name → JSON value), never text.

Also reported, per task, the boot-relative start time and the CPU time (``tasks``), read from
``task_struct``: the start time identifies a process across PID reuse, the CPU time ranks suspects.

``worker.py PARENT_PID --serve`` keeps one :class:`Session` (context loaded once) and answers
requests one JSON line each (:func:`serve`): the warm worker of one guest read live
(:mod:`atomwatch.introspection.warm`), or a spare that has imported Volatility and parsed symbol
tables before any guest. On a live image it re-reads what changed (:meth:`Session.refresh`), reads
the task list as raw bytes while the guest is paused (:func:`fast_task_facts`) and checks that a
kept context still fits the guest's kernel (:meth:`Session.check`).

What does not live here: starting this process, its time limit, reading its output
(:mod:`atomwatch.introspection.volatility`). Runs only as a child process, ``worker.py PARENT_PID``: it
first asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``) and exits if its parent
is already not ``PARENT_PID``; it sets its own memory limit (``RLIMIT_DATA``) and blocks ``jsonschema``
(with it the first load of an ISF takes ~80 s instead of ~8 s).
"""

from __future__ import annotations

import codecs
import datetime
import json
import mmap
import os
import re
import resource
import sys
import time
import traceback
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

_BANNER_RE = re.compile(rb"Linux version [0-9]+\.[0-9]+\.[0-9]+[^\x00\n]{0,400}")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def find_banner(image: str) -> str | None:
    """The kernel banner most often found in the image (what Volatility matches symbols by)."""
    try:
        with open(image, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found = Counter(x.group(0) for x in _BANNER_RE.finditer(m))
    except (OSError, ValueError):
        return None
    full = [b for b in found if b" #" in b] or list(found)
    if not full:
        return None
    # copies in freed pages run on into other bytes: the banner is the candidate that most
    # copies start with (the shortest of those)
    coverage = {b: sum(n for c, n in found.items() if c.startswith(b)) for b in full}
    best = max(full, key=lambda b: (coverage[b], -len(b)))
    return best.decode("utf-8", "replace").strip()


def to_json(value: Any) -> Any:
    from volatility3.framework import interfaces

    if isinstance(value, interfaces.renderers.BaseAbsentValue):
        return None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return str(value)


def grid_rows(grid: Any) -> list[dict[str, Any]]:
    names = [c.name for c in grid.columns]

    def visit(node: Any, acc: list[dict[str, Any]]) -> list[dict[str, Any]]:
        row = {name: to_json(v) for name, v in zip(names, node.values)}
        if node.path_depth > 1:
            row["_depth"] = node.path_depth - 1
        acc.append(row)
        return acc

    rows: list[dict[str, Any]] = []
    grid.populate(visit, rows)
    return rows


#: modules whose memoised functions depend on the image's bytes (see :meth:`Session.refresh`)
MEMOISING_MODULES = ("volatility3.framework.layers", "volatility3.framework.symbols.linux.extensions")


def resolve_plugins(names: list[str]) -> dict[str, Any]:
    from volatility3 import framework

    available = framework.list_plugins()
    out: dict[str, Any] = {}
    for name in names:
        if name in available:
            out[name] = available[name]
            continue
        matches = [k for k in available if k.lower().startswith(name.lower() + ".")]
        if len(matches) != 1:
            raise LookupError(
                f"Volatility plugin {name!r}: "
                + ("no such plugin" if not matches else f"ambiguous ({', '.join(sorted(matches))})")
            )
        out[name] = available[matches[0]]
    return out


def task_facts(ctx: Any, kernel_name: str) -> list[dict[str, Any]]:
    """PID, name, boot-relative start (s) and CPU time (s) of every task (threads included)."""
    from volatility3.plugins.linux import pslist

    out = []
    for task in pslist.PsList.list_tasks(ctx, kernel_name, include_threads=True):
        try:
            start = None
            for member in ("start_boottime", "real_start_time"):
                if task.has_member(member):
                    start = int(task.member(member)) / 1e9
                    break
            cpu = (int(task.utime) + int(task.stime)) / 1e9
            out.append(
                {
                    "pid": int(task.tgid),
                    "tid": int(task.pid),
                    "ppid": int(task.get_parent_pid()),
                    "comm": task.comm.cast("string", max_length=16, errors="replace"),
                    "start_s": round(start, 6) if start is not None else None,
                    "cpu_s": round(cpu, 6),
                    "kernel_thread": bool(task.is_kernel_thread),
                }
            )
        except Exception:  # one smeared task_struct must not lose the others
            continue
    return out


#: ``task_struct.flags`` bit of a kernel thread (include/linux/sched.h)
PF_KTHREAD = 0x00200000


def fast_task_facts(ctx: Any, kernel_name: str) -> list[dict[str, Any]]:
    """What :func:`task_facts` returns, read as raw bytes: the symbol table gives the offsets of
    ``task_struct``'s members, the kernel layer the translation, and each task is one read unpacked
    here instead of a Volatility object per member (about 100× faster: what a live introspection
    does while the guest is paused). The same walk as ``linux.pslist``: the ``tasks`` list from
    ``init_task`` forwards then backwards, each process's ``thread_group`` after it. Raises
    ``LookupError`` for a kernel without ``thread_group`` (≥ 6.7), and the layer's errors when a
    task does not read; the caller then uses :func:`task_facts`."""
    import struct

    kernel = ctx.modules[kernel_name]
    layer = ctx.layers[kernel.layer_name]
    members = kernel.get_type("task_struct").vol.members
    start_member = next((m for m in ("start_boottime", "real_start_time") if m in members), None)
    if "thread_group" not in members:
        raise LookupError("task_struct has no thread_group")
    off = {m: members[m][0] for m in ("tasks", "thread_group", "pid", "tgid", "comm", "utime", "stime", "flags")}
    off["real_parent"] = members["real_parent"][0]
    if start_member:
        off["start"] = members[start_member][0]
    span = max(off.values()) + 16
    # Volatility's addresses are the layer's width (48 bits): pointers read from memory are masked to it
    mask = int(getattr(layer, "address_mask", (1 << 64) - 1))
    init = kernel.object_from_symbol("init_task").vol.offset & mask
    u64q = struct.Struct("<Q").unpack_from

    def u64(data: bytes, at: int) -> tuple[int]:
        return (u64q(data, at)[0] & mask,)

    u32 = struct.Struct("<I").unpack_from
    i32 = struct.Struct("<i").unpack_from
    parents: dict[int, int] = {}

    def fact(addr: int, data: bytes) -> dict[str, Any]:
        parent = u64(data, off["real_parent"])[0]
        if parent not in parents:
            parents[parent] = i32(layer.read(parent + off["tgid"], 4), 0)[0] if parent else 0
        start = u64q(data, off["start"])[0] / 1e9 if start_member else None
        comm = data[off["comm"] : off["comm"] + 16].split(b"\0", 1)[0].decode("utf-8", "replace")
        return {
            "pid": i32(data, off["tgid"])[0],
            "tid": i32(data, off["pid"])[0],
            "ppid": parents[parent],
            "comm": comm,
            "start_s": round(start, 6) if start is not None else None,
            "cpu_s": round((u64q(data, off["utime"])[0] + u64q(data, off["stime"])[0]) / 1e9, 6),
            "kernel_thread": bool(u32(data, off["flags"])[0] & PF_KTHREAD),
        }

    out: list[dict[str, Any]] = []
    seen = {init}
    for link in (0, 8):  # list_head.next, then .prev
        addr = init
        for _ in range(1 << 17):
            addr = u64(layer.read(addr + off["tasks"] + link, 8), 0)[0] - off["tasks"]
            if addr == init:
                break
            if addr in seen:
                continue
            seen.add(addr)
            data = layer.read(addr, span)
            out.append(fact(addr, data))
            head = addr + off["thread_group"]
            thread = u64(data, off["thread_group"])[0]
            for _ in range(1 << 16):
                if thread == head:
                    break
                t = thread - off["thread_group"]
                tdata = layer.read(t, span)
                if t not in seen:
                    seen.add(t)
                    out.append(fact(t, tdata))
                thread = u64(tdata, off["thread_group"])[0]
    return out


def walk_page_tables(physical: Any, cr3: int, va: int) -> int | None:
    """The physical address of virtual ``va`` through the x86-64 4-level page tables at ``cr3``
    (1 GiB and 2 MiB pages included), read from ``physical``; None when it is not mapped."""
    table = cr3
    for shift in (39, 30, 21, 12):
        try:
            entry = int.from_bytes(physical.read(table + ((va >> shift) & 0x1FF) * 8, 8), "little")
        except Exception:
            return None
        if not entry & 1:
            return None
        base = entry & 0x000FFFFFFFFFF000
        if shift in (30, 21) and entry & 0x80:  # a large page
            return (base & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
        table = base
    return table | (va & 0xFFF)


def forget_resolved_types(ctx: Any) -> None:
    """Drop the templates resolved so far on a shared context. Plugins attach classes to kernel
    types when they run (``linux.ip.Addr`` gives ``net_device`` its class); a template an earlier
    plugin resolved keeps the plain struct, and the plugin fails with "has no attribute"."""
    space = ctx.symbol_space
    space.clear_symbol_cache()
    for attr in ("_resolved", "_resolved_symbols"):
        cache = getattr(space, attr, None)
        if isinstance(cache, dict):
            cache.clear()


def memo_key(url: str | None) -> str | None:
    """What identifies the content at ``url``: for a file, its path, modification time and size."""
    if not url:
        return None
    if url.startswith("file:"):
        try:
            st = os.stat(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        except OSError:
            return None
        return f"{url}|{st.st_mtime_ns}|{st.st_size}"
    return url


class MemoFile:
    """An ISF URL as Volatility's ``intermed`` opens it in this worker: the URL (which
    :class:`SharedJson` looks up first), and the file itself opened only when read — decompressing
    a 35 MB table takes ~0.25 s each time, twice per load."""

    def __init__(self, url: str, opener: Any):
        self.url, self._opener, self._fp = url, opener, None

    def _file(self) -> Any:
        if self._fp is None:
            self._fp = self._opener(self.url)
        return self._fp

    def read(self, *args: Any) -> Any:
        return self._file().read(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file(), name)

    def __enter__(self) -> MemoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fp is not None:
            self._fp.close()


class MemoResources:
    """Stands in for Volatility's ``resources`` module inside ``intermed``: its accessor opens
    an ISF as a :class:`MemoFile`; everything else is the real module's."""

    def __init__(self, real: Any):
        self._real = real
        base = real.ResourceAccessor

        class Accessor(base):  # type: ignore[misc, valid-type]
            def open(self, url: str, mode: str = "rb") -> Any:
                return MemoFile(url, lambda u: base.open(self, u, mode))

        self.ResourceAccessor = Accessor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class SharedJson:
    """Stands in for ``json`` inside Volatility's ``intermed`` module, in this worker only: an ISF
    read a second time (the Linux stacker and the symbol finder each load the kernel's table)
    is parsed once. Keyed by the SHA-1 of the text, and by URL for a file opened through
    :class:`MemoResources` (then not even read again); the tables only read the parsed object."""

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}
        #: the same, by URL (and, for a file, its modification time and size)
        self.by_url: dict[str, Any] = {}
        self.hits = 0
        #: MemoryErrors met loading a table: Volatility's stacker swallows them and reports only
        #: that the kernel's requirements are unsatisfied, which would read as "no symbols"
        self.memory_errors = 0

    def load(self, fp: Any, **kw: Any) -> Any:
        import hashlib

        # a file opened through MemoResources names its URL: a table parsed before is not even read
        url_key = memo_key(getattr(getattr(fp, "stream", None), "url", None))
        if url_key is not None and url_key in self.by_url:
            self.hits += 1
            return self.by_url[url_key]
        try:
            text = fp.read()
            key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
            if key in self.cache:
                self.hits += 1
                obj = self.cache[key]
            else:
                obj = self.cache[key] = json.loads(text, **kw)
        except MemoryError:
            self.memory_errors += 1
            raise
        if url_key is not None:
            self.by_url[url_key] = obj
        return obj

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)


class Session:
    """One loaded Volatility context over one image: the symbol table loaded and the layers
    stacked once (:meth:`load`), then any number of plugin runs (:meth:`plugins`) and task
    listings (:meth:`tasks`) on it. A live image (the guest's own memory file, read while it runs)
    is re-read on every run: :meth:`refresh` drops what Volatility memoised about its bytes."""

    def __init__(self, req: dict[str, Any]):
        self.req = req
        self.image = req.get("image", "")
        self.live = bool(req.get("live"))
        self.ctx: Any = None
        self.kernel_cfg: Any = None
        self.kernel_name: str | None = None
        self.banner: str | None = None
        self.base_layers: set[str] = set()
        self.timings: dict[str, float] = {}
        self.runs = 0

    def setup(self) -> None:
        """Import and configure Volatility (once per process)."""
        t_start = time.monotonic()
        req = self.req
        sys.modules["jsonschema"] = None  # type: ignore[assignment]  (see the module docstring)
        import volatility3
        import volatility3.plugins
        import volatility3.symbols
        from volatility3 import framework, schemas
        from volatility3.framework import automagic, constants, contexts

        cache_dir = req["cache_dir"]
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        default_cache = constants.CACHE_PATH
        constants.CACHE_PATH = cache_dir
        constants.OFFLINE = True
        constants.REMOTE_ISF_URL = None
        # the configured symbol directories, then Volatility's own generic tables (the ELF layer
        # needs them) — never the user cache of downloaded symbols
        base = [p for p in constants.SYMBOL_BASEPATHS if not p.startswith(default_cache)]
        volatility3.symbols.__path__ = [os.path.abspath(d) for d in req["symbol_dirs"]] + base
        if not req.get("validate_isf", False):
            schemas.validate = lambda *_a, **_k: True  # trusted, operator-supplied ISF files
        from volatility3.framework.symbols import intermed

        self.shared_json = intermed.json = SharedJson()  # type: ignore[assignment]
        if not isinstance(intermed.resources, MemoResources):
            intermed.resources = MemoResources(intermed.resources)  # type: ignore[assignment]
        framework.require_interface_version(2, 0, 0)
        framework.import_files(volatility3.plugins, True)
        self.ctx = contexts.Context()
        self.available = automagic.available(self.ctx)  # before choose_os_stackers, or the Linux stacker is left out
        self.timings["import"] = round(time.monotonic() - t_start, 3)

    def prepare(self, isf: list[str]) -> dict[str, float]:
        """Import Volatility and parse the symbol tables ``isf`` (URLs) now, before any image: a
        spare worker does this while the agent waits, and its first load then skips it."""
        if self.ctx is None:
            self.setup()
        from volatility3.framework.symbols import intermed

        t0 = time.monotonic()
        for url in isf:
            try:
                with intermed.resources.ResourceAccessor().open(url) as fp:
                    self.shared_json.load(codecs.getreader("utf-8")(fp))
            except Exception as e:  # a table gone or unreadable: the load will say, if it matters
                emit({"event": "progress", "stage": "prepare", "isf": url, "error": f"{type(e).__name__}: {e}"})
        return {"import": self.timings["import"], "parse": round(time.monotonic() - t0, 3)}

    def isf_url(self) -> str | None:
        """The URL of the kernel's symbol table (for the agent's next spare worker)."""
        try:
            table = self.ctx.modules[self.kernel_name].symbol_table_name
            return str(self.ctx.config.get(f"{self.ctx.symbol_space[table].config_path}.isf_url") or "") or None
        except Exception:
            return None

    def load(self, first: str | None = None) -> dict[str, Any] | None:
        """Stack the layers and load the symbol table by constructing plugin ``first`` (default
        ``linux.pslist``); an error result when the image has no usable kernel, else None."""
        if self.ctx is None:
            self.setup()
        if self.kernel_cfg is not None:
            return None
        from volatility3.framework.configuration import requirements

        self.ctx.config["automagic.LayerStacker.single_location"] = requirements.URIRequirement.location_from_file(
            self.image
        )
        name = first or "linux.pslist"
        cls = resolve_plugins([name])[name]
        t0 = time.monotonic()
        plugin, error = self._construct(name, cls)
        if error is not None:
            return error
        self.timings["load"] = round(time.monotonic() - t0, 3)
        emit({"event": "progress", "stage": "loaded", "banner": self.banner, "seconds": self.timings["load"]})
        if self.live:
            self._unbuffered()
        self.base_layers = set(self.ctx.layers)
        self.pending = (name, plugin)
        return None

    def _construct(self, name: str, cls: Any) -> tuple[Any, dict[str, Any] | None]:
        from volatility3.framework import automagic, exceptions, plugins
        from volatility3.framework.automagic import stacker

        ctx = self.ctx
        path = "plugins." + cls.__name__
        if ctx.config.get("automagic.LayerStacker.stackers", None) is None:
            ctx.config["automagic.LayerStacker.stackers"] = stacker.choose_os_stackers(cls)
        if self.kernel_cfg is not None:
            ctx.config.splice(path + ".kernel", self.kernel_cfg)
            ctx.config[path + ".kernel"] = self.kernel_name
        try:
            plugin = plugins.construct_plugin(
                ctx, automagic.choose_automagic(self.available, cls), cls, "plugins", None, None
            )
        except exceptions.UnsatisfiedException as e:
            unsatisfied = ", ".join(sorted(e.unsatisfied))
            if self.kernel_cfg is not None:
                return None, {"error": f"requirements not met: {unsatisfied}", "rows": []}
            if self.shared_json.memory_errors:
                raise MemoryError(f"loading the symbol table ({unsatisfied})") from None
            banner = find_banner(self.image)
            if banner is None:
                return None, {
                    "event": "error",
                    "kind": "no-kernel",
                    "message": f"no Linux kernel banner in {self.image}: not a Linux memory image? ({unsatisfied})",
                }
            return None, {
                "event": "error",
                "kind": "no-symbols",
                "banner": banner,
                "message": f"no symbol table for banner {banner!r} in {', '.join(self.req['symbol_dirs'])} "
                "(a kernel with BTF needs no debug package: atomwatch symbols build --domain VM)",
            }
        if self.kernel_cfg is None:
            self.kernel_cfg = ctx.config.branch(path + ".kernel")
            self.kernel_name = plugin.config.get("kernel", None)
            self.banner = str(self.kernel_cfg.get("layer_name.kernel_banner", "")).strip("\x00\n ") or None
        return plugin, None

    def _unbuffered(self) -> None:
        """Give the file layers of a live image an unbuffered file: a buffered reader may answer a
        read from bytes it fetched earlier, which the running guest has since changed."""
        from volatility3.framework.layers import physical

        for layer in self.ctx.layers.values():
            if isinstance(layer, physical.FileLayer) and layer.location.startswith("file:"):
                path = urllib.request.url2pathname(urllib.parse.urlparse(layer.location).path)
                old = getattr(layer, "_file_", None)
                layer._file_ = open(path, "rb", buffering=0)  # noqa: SIM115 (the layer owns it)
                if old is not None:
                    old.close()

    def refresh(self) -> None:
        """Before a run on a live image: forget the layers the last run added (process address
        spaces) and every read, page-table walk and translation Volatility memoised (``lru_cache``
        on its layer classes, shared by all instances, and the process layers its Linux objects
        memoise) — the guest has run since. Symbol and type caches stay: the kernel is the same."""
        for name in list(self.ctx.layers):
            if name not in self.base_layers:
                self.ctx.layers.del_layer(name)
        for mod_name, mod in list(sys.modules.items()):
            if not mod_name.startswith(MEMOISING_MODULES) or mod is None:
                continue
            for obj in list(vars(mod).values()):
                if isinstance(obj, type) and obj.__module__ == mod_name:
                    for attr in vars(obj).values():
                        clear = getattr(attr, "cache_clear", None)
                        if clear is not None:
                            clear()
                elif callable(getattr(obj, "cache_clear", None)):
                    obj.cache_clear()

    def check(self, cr3: int | None) -> str | None:
        """Why the loaded context no longer fits the image, or None. The guest may have rebooted
        in the same QEMU process, and its RAM is not cleared: the old kernel's page tables and
        banner may still read. So the kernel's ``linux_banner`` must read through the kept page
        tables *and* translate to the same physical address through ``cr3``, the page tables the
        guest's CPU uses now (the kernel half is the same in every process's tables). Without
        ``cr3`` the context cannot be trusted: a reload."""
        self.refresh()
        if cr3 is None:
            return "the guest's page-table base (CR3) is not known"
        try:
            kernel = self.ctx.modules[self.kernel_name]
            banner = kernel.object_from_symbol("linux_banner")
            text = banner.cast("string", max_length=400, errors="replace")
            layer = self.ctx.layers[kernel.layer_name]
            kept, _ = layer.translate(banner.vol.offset)
            physical = self.ctx.layers[layer.config["memory_layer"]]
        except Exception as e:  # the page tables moved: nothing reads
            return f"the kernel banner no longer reads ({type(e).__name__})"
        if self.banner and text.strip("\x00\n ") != self.banner:
            return "the kernel banner changed"
        now = walk_page_tables(physical, cr3, banner.vol.offset)
        if now != kept:
            return f"the kernel is no longer where it was loaded (banner at {kept:#x}, now {now if now is None else hex(now)})"
        return None

    def plugins(self, names: list[str]) -> tuple[dict[str, Any], dict[str, float]]:
        """Run ``names`` on the loaded context: (results, timings)."""
        classes = resolve_plugins(list(names))
        results: dict[str, Any] = {}
        timings: dict[str, float] = {}
        if self.live and self.runs:
            self.refresh()
        self.runs += 1
        for i, (name, cls) in enumerate(classes.items()):
            emit({"event": "progress", "stage": "plugin", "plugin": name, "index": i, "of": len(classes)})
            pending = getattr(self, "pending", None)
            if pending is not None and pending[0] == name:
                plugin, self.pending = pending[1], None
            else:
                plugin, error = self._construct(name, cls)
                if error is not None:
                    results[name] = error
                    continue
            t1 = time.monotonic()
            try:
                try:
                    rows = grid_rows(plugin.run())
                except AttributeError as e:
                    if "has no attribute" not in str(e):
                        raise
                    # a template an earlier plugin resolved lacks the class this plugin attaches:
                    # forget the resolved templates (costly, so only when needed) and run it again
                    forget_resolved_types(self.ctx)
                    rows = grid_rows(plugin.run())
                results[name] = {"rows": rows}
            except MemoryError:  # its objects are freed now: the next plugin may fit
                limit = int(self.req.get("memory_limit") or 0) >> 20
                results[name] = {
                    "error": f"ran out of the memory limit ({limit} MiB, introspection.memory_mib)",
                    "rows": [],
                }
            except Exception as e:  # one plugin failing must not lose the others
                results[name] = {"error": f"{type(e).__name__}: {e}", "rows": []}
            timings[name] = round(time.monotonic() - t1, 3)
            emit(
                {
                    "event": "progress",
                    "stage": "done",
                    "plugin": name,
                    "rows": len(results[name]["rows"]),
                    "seconds": timings[name],
                }
            )
        self.pending = None
        return results, timings

    def tasks(self, fresh: bool = False, fast: bool = False) -> tuple[list[dict[str, Any]], float]:
        """The task facts (:func:`task_facts`, or with ``fast`` :func:`fast_task_facts` when it
        reads) and the seconds they took; ``fresh``: re-read a live image from scratch first (the
        guest ran since the plugins read it)."""
        if fresh and self.live:
            self.refresh()
        t2 = time.monotonic()
        tasks: list[dict[str, Any]] = []
        if self.kernel_name and fast:
            try:
                tasks = fast_task_facts(self.ctx, self.kernel_name)
            except Exception as e:  # an unusual kernel or a torn list: Volatility's own walk
                emit({"event": "progress", "stage": "tasks-slow", "why": f"{type(e).__name__}: {e}"})
                tasks = []
        if self.kernel_name and not tasks:
            tasks = task_facts(self.ctx, self.kernel_name)
        return tasks, round(time.monotonic() - t2, 3)


def run(req: dict[str, Any]) -> dict[str, Any]:
    """One request, one image, every plugin: the one-shot worker."""
    t_start = time.monotonic()
    session = Session(req)
    session.setup()
    classes = resolve_plugins(list(req["plugins"]))
    error = session.load(next(iter(classes)))
    if error is not None:
        return error
    results, timings = session.plugins(list(classes))
    tasks, timings["tasks"] = session.tasks()
    return {
        "event": "result",
        "banner": session.banner,
        "plugins": results,
        "tasks": tasks,
        "timings": {**session.timings, **timings, "tasks": timings["tasks"]},
        "seconds": round(time.monotonic() - t_start, 3),
    }


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it dies; exit now if that already happened
    (the request is made after the fork: a parent dead in between would not be noticed)."""
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):  # no prctl: the agent's process group kill is all there is
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:
        os._exit(3)


class Lines:
    """JSON requests, one a line, read from fd 0 unbuffered (a buffered reader would hold back
    what it read ahead from the next ``select``)."""

    def __init__(self) -> None:
        self.buf = b""

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next request; None when stdin closed or nothing came within ``timeout`` s."""
        import select

        while b"\n" not in self.buf:
            ready, _, _ = select.select([0], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def serve(first: dict[str, Any], lines: Lines) -> int:
    """Serve requests, one JSON line each, on one loaded context until stdin closes or nothing
    comes for ``idle`` seconds (the warm worker of one guest, :mod:`atomwatch.introspection.warm`).

    ``{"op": "load", …}`` (the first request: the one-shot request's fields without ``plugins``,
    plus ``live``, ``idle`` and ``first``, the plugin to stack the layers for) loads the context, or
    checks that the loaded one still fits the image (an ``error`` of kind ``stale`` when the guest
    rebooted into another kernel or layout: the agent then starts a new worker);
    ``{"op": "plugins", "plugins": […]}`` runs plugins; ``{"op": "tasks", "fresh": bool}`` lists the
    tasks; ``{"op": "refresh"}`` forgets what was read of a live image;
    ``{"op": "prepare", "isf": [URL, …]}`` (a spare worker's first request, no image yet)
    imports Volatility and parses those symbol tables ahead of the guest that will need them. Each
    is answered by progress lines and one ``result`` (carrying the request's ``id``) or ``error``
    line. ``idle``: seconds without a request before the worker exits (none: never)."""
    session = Session(first)
    idle = first.get("idle")
    req: dict[str, Any] | None = first
    while True:
        if req is None:
            try:
                req = lines.next(float(idle) if idle else None)
            except ValueError as e:
                emit({"event": "error", "kind": "bad-request", "message": f"worker request: {e}"})
                return 2
            if req is None:
                return 0  # the agent closed the pipe, or idle: the context is not worth its memory any longer
        op = req.get("op")
        t0 = time.monotonic()
        if op == "prepare":
            answer = {"event": "result", "timings": session.prepare(list(req.get("isf") or []))}
        elif op == "load":
            if "idle" in req:
                idle = req["idle"]
            if session.kernel_cfg is None:  # a spare (prepared) worker gets its guest now
                session.req = dict(session.req, **req)
                session.image, session.live = req["image"], bool(req.get("live"))
            warm = session.kernel_cfg is not None
            if warm:
                why = session.check(req.get("cr3"))
                if why is not None:
                    emit({"event": "error", "kind": "stale", "message": why})
                    return 0
                answer: dict[str, Any] = {"event": "result", "banner": session.banner, "warm": True, "timings": {}}
            else:
                error = session.load(req.get("first"))
                if error is not None:
                    emit(error)
                    return 1
                answer = {
                    "event": "result",
                    "banner": session.banner,
                    "warm": False,
                    "timings": dict(session.timings),
                    "isf": session.isf_url(),
                }
        elif op == "plugins":
            results, timings = session.plugins(list(req["plugins"]))
            answer = {"event": "result", "plugins": results, "timings": timings}
        elif op == "refresh":  # before the agent pauses the guest: the pause is then only the reads
            session.refresh()
            answer = {"event": "result"}
        elif op == "tasks":
            tasks, seconds = session.tasks(bool(req.get("fresh")), bool(req.get("fast")))
            answer = {"event": "result", "tasks": tasks, "timings": {"tasks": seconds}}
        else:
            emit({"event": "error", "kind": "bad-request", "message": f"worker request: unknown op {op!r}"})
            return 2
        answer["seconds"] = round(time.monotonic() - t0, 3)
        if "id" in req:
            answer["id"] = req["id"]
        emit(answer)
        req = None


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        try:
            die_with_parent(int(argv[1]))
        except (ValueError, OSError) as e:
            emit({"event": "error", "kind": "bad-request", "message": f"worker parent {argv[1]!r}: {e}"})
            return 2
    serving = len(argv) > 2 and argv[2] == "--serve"
    lines = Lines()
    try:
        req = lines.next(None) if serving else json.loads(sys.stdin.read())
        if req is None:
            return 0
        limit = int(req.get("memory_limit") or 0)
        if limit > 0:
            # heap and private writable mappings; not address space: a read-only mapping of a
            # large image (find_banner) and glibc's reserved arenas would count there
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except Exception as e:
        emit({"event": "error", "kind": "bad-request", "message": f"worker request: {type(e).__name__}: {e}"})
        return 2
    try:
        if serving:
            return serve(req, lines)
        emit(run(req))
    except MemoryError as e:
        emit(
            {
                "event": "error",
                "kind": "memory",
                "message": f"Volatility ran out of its memory limit ({req.get('memory_limit', 0) >> 20} MiB, "
                f"introspection.memory_mib){': ' + str(e) if str(e) else ''}",
            }
        )
        return 1
    except LookupError as e:
        emit({"event": "error", "kind": "bad-plugin", "message": str(e)})
        return 1
    except Exception as e:
        emit(
            {
                "event": "error",
                "kind": "volatility",
                "message": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=8),
            }
        )
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    # skip the interpreter's teardown: freeing the symbol table's millions of objects takes seconds
    os._exit(code)

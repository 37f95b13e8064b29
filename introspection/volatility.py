"""Volatility 3 runs: a worker subprocess per memory image, with a wall-clock and memory limit.

:func:`analyse` starts the worker (:mod:`atomwatch.introspection.worker`, run by its file path), hands
it the image, the plugins and the symbol and cache directories, relays its progress, and kills it
when it overruns ``timeout``. The worker builds the context and layer stack once and runs every
plugin on it; ``one_image=False`` runs one worker per plugin instead (the baseline the benchmark
compares with). Errors come back as :class:`VolatilityError` subclasses whose text an operator can
act on — :class:`NoSymbols` names the kernel banner that has no symbol table.

A worker never outlives its agent: it runs in its own session and process group (killed whole on
timeout or :class:`Cancel`), and asks the kernel for SIGKILL when the thread that started it dies
(``PR_SET_PDEATHSIG``, set in the worker; that thread waits for the worker to end, so it only dies
with the agent). Its memory limit is ``RLIMIT_DATA``, set in the worker (docs/introspection.md).

What does not live here: acquiring the image (:mod:`atomwatch.introspection.acquire`), the choice of
plugins (:mod:`atomwatch.introspection.plugins_choice`), the interpretation of rows
(:mod:`atomwatch.introspection.suspects`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomwatch.options import parse_bool

log = logging.getLogger(__name__)

#: where symbol tables (ISF) are looked for unless configured: ``$ATOMWATCH_SYMBOLS`` (a path list)
#: or /var/lib/atomwatch/symbols
DEFAULT_SYMBOL_DIRS = tuple(
    p for p in (os.environ.get("ATOMWATCH_SYMBOLS") or "/var/lib/atomwatch/symbols").split(os.pathsep) if p
)
DEFAULT_TIMEOUT = 120.0
#: the worker's RLIMIT_DATA (heap and other private writable memory; a read-only mapping of the
#: image does not count). Measured on the lab's 256 MiB guest: peak data 423 MiB, peak RSS 435 MiB
#: (pslist, sockstat, lsof, ip.Addr; the CPU set 336/319 MiB); about 4.8× that, for guests with
#: many more processes and sockets (docs/introspection.md)
DEFAULT_MEMORY_LIMIT = 2 << 30

Progress = Callable[[dict[str, Any]], None]


class VolatilityError(RuntimeError):
    """Volatility could not analyse the image; the text says why."""


class NoSymbols(VolatilityError):
    """The image's kernel has no symbol table in the configured directories."""

    def __init__(self, message: str, banner: str | None):
        super().__init__(message)
        self.banner = banner


class VolatilityTimeout(VolatilityError):
    """The worker overran its wall-clock limit and was killed."""


class Cancelled(VolatilityError):
    """The run was cancelled (the agent stops, or the command timed out); its worker was killed."""


class Cancel:
    """Cancels one introspection from another thread: kills the process group of every worker it
    started, and any worker started after :meth:`cancel` is killed at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.cancelled = False
        self.why = "cancelled"

    def cancel(self, why: str = "cancelled") -> None:
        with self._lock:
            self.cancelled, self.why = True, why
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                log.warning("stopping Volatility worker %d: %s", p.pid, why)
            _kill_group(p)

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
            late = self.cancelled
        if late:
            _kill_group(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def check(self) -> None:
        """:class:`Cancelled` if cancelled."""
        if self.cancelled:
            raise Cancelled(self.why)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class VolatilityConfig:
    symbol_dirs: list[str] = field(default_factory=lambda: list(DEFAULT_SYMBOL_DIRS))
    #: Volatility's cache (identifier and banner caches); by default one per symbol-dir set, so a
    #: cache built with one symbol set never answers for another
    cache_dir: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    #: check the ISF against Volatility's JSON schema (slow: ~6 s per load on this kernel's ISF)
    validate_isf: bool = False
    python: str = sys.executable

    def __post_init__(self) -> None:
        if isinstance(self.symbol_dirs, str):
            self.symbol_dirs = [self.symbol_dirs]
        for d in self.symbol_dirs:
            if not Path(d).exists():
                raise ValueError(f"symbol directory {d!r} does not exist")
            if not Path(d).is_dir():
                raise ValueError(f"symbol directory {d!r} is a file (give the directory that holds the ISF files)")
        if not self.timeout > 0:
            raise ValueError(f"Volatility timeout must be > 0 s, got {self.timeout!r}")
        if self.memory_limit < 0:
            raise ValueError(f"Volatility memory limit must be ≥ 0 bytes, got {self.memory_limit!r}")

    def cache(self) -> str:
        if self.cache_dir:
            return self.cache_dir
        import hashlib

        key = hashlib.sha1("\0".join(os.path.abspath(d) for d in self.symbol_dirs).encode()).hexdigest()[:12]
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "atomwatch" / "volatility"
        return str(root / key)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> VolatilityConfig:
        """From plugin options: ``symbols`` (dir, or ``;``-separated dirs), ``cache``, ``timeout``,
        ``memory_mib``, ``validate_isf``."""
        kw: dict[str, Any] = {}
        if options.get("symbols"):
            s = options["symbols"]
            kw["symbol_dirs"] = s.split(";") if isinstance(s, str) else list(s)
        elif not os.environ.get("ATOMWATCH_SYMBOLS"):
            # the built-in default is a place to look, not a promise: absent, there are no symbols
            # yet (``introspect`` says so when asked), which is not a configuration error
            kw["symbol_dirs"] = [d for d in DEFAULT_SYMBOL_DIRS if Path(d).is_dir()]
        if options.get("cache"):
            kw["cache_dir"] = str(options["cache"])
        if options.get("timeout") is not None:
            kw["timeout"] = float(options["timeout"])
        if options.get("memory_mib") is not None:
            kw["memory_limit"] = int(float(options["memory_mib"]) * (1 << 20))
        if options.get("validate_isf") is not None:
            kw["validate_isf"] = parse_bool(options["validate_isf"], "introspection.validate_isf")
        return cls(**kw)


@dataclass
class Analysis:
    """What the worker(s) found in one image."""

    banner: str | None
    plugins: dict[str, dict[str, Any]]  # name → {"rows": [...]} or {"error": …, "rows": []}
    tasks: list[dict[str, Any]]
    timings: dict[str, float]
    seconds: float
    workers: int

    def rows(self, plugin: str) -> list[dict[str, Any]]:
        return list(self.plugins.get(plugin, {}).get("rows", []))

    def to_dict(self) -> dict[str, Any]:
        return {
            "banner": self.banner,
            "plugins": self.plugins,
            "tasks": self.tasks,
            "timings": self.timings,
            "seconds": self.seconds,
            "workers": self.workers,
        }


#: the worker's file, run by path (see :func:`_run_worker`)
WORKER = str(Path(__file__).resolve().with_name("worker.py"))


def _run_worker(
    image: Path,
    plugins: list[str],
    cfg: VolatilityConfig,
    progress: Progress | None,
    deadline: float,
    cancel: Cancel | None = None,
) -> dict[str, Any]:
    cache = cfg.cache()
    os.makedirs(cache, mode=0o700, exist_ok=True)
    request = {
        "image": str(image),
        "plugins": plugins,
        "symbol_dirs": cfg.symbol_dirs,
        "cache_dir": cache,
        "memory_limit": cfg.memory_limit,
        "validate_isf": cfg.validate_isf,
    }
    if cancel is not None:
        cancel.check()
    proc = subprocess.Popen(
        # The worker needs only the standard library and Volatility: run its file, not the module,
        # so the atomwatch package (numpy, pluggy …) is not imported into a process whose memory
        # is capped (``-P``: the script's own folder is not put on sys.path either). Its argument
        # is this process's PID: the worker asks for SIGKILL when its parent dies, then checks
        # that the parent is still this one (it may have died before the request was made).
        # Its own session: a timeout or a cancel kills its group; a signal meant for the agent's
        # terminal group does not reach it (the agent stops it itself).
        [cfg.python, "-P", WORKER, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    if cancel is not None:
        cancel.add(proc)
    try:
        return _talk_to_worker(proc, request, plugins, cfg, progress, deadline, cancel)
    finally:
        if proc.poll() is None:  # whatever went wrong here, the worker does not stay behind
            _kill_group(proc)
            proc.wait()
        if cancel is not None:
            cancel.discard(proc)


def worker_message(line: str, progress: Progress | None) -> dict[str, Any] | None:
    """One line of a worker's output: a progress report goes to ``progress`` (whose failure is
    ignored) and gives None, as a line that is not JSON does; anything else is returned."""
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    if msg.get("event") == "progress":
        if progress is not None:
            try:
                progress(msg)
            except Exception:
                pass
        return None
    return msg


def _talk_to_worker(
    proc: subprocess.Popen,
    request: dict[str, Any],
    plugins: list[str],
    cfg: VolatilityConfig,
    progress: Progress | None,
    deadline: float,
    cancel: Cancel | None,
) -> dict[str, Any]:
    if progress is not None:
        try:
            progress({"event": "progress", "stage": "started", "pid": proc.pid, "plugins": list(plugins)})
        except Exception:
            pass
    final: dict[str, Any] | None = None
    stderr_tail: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_tail.append(line)
            del stderr_tail[:-20]

    def read_stdout() -> None:
        nonlocal final
        assert proc.stdout is not None
        for line in proc.stdout:
            msg = worker_message(line, progress)
            if msg is not None:
                final = msg

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in readers:
        t.start()
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(request))
        proc.stdin.close()
    except BrokenPipeError:  # the worker died at once (cancelled, or its parent check): said below
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        raise VolatilityTimeout(
            f"Volatility ({', '.join(plugins)}) overran its {cfg.timeout:g} s limit and was killed "
            "(the limit is introspection.timeout)"
        ) from None
    for t in readers:
        t.join(5)
    if cancel is not None and cancel.cancelled:
        raise Cancelled(f"Volatility ({', '.join(plugins)}) was stopped: {cancel.why}")
    if final is None:
        why = "".join(stderr_tail).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        if proc.returncode and proc.returncode < 0:
            why = [f"killed by signal {-proc.returncode}"]
        raise VolatilityError(f"Volatility worker died without a result: {why[0]}")
    if final.get("event") == "error":
        if final.get("kind") == "no-symbols":
            raise NoSymbols(final["message"], final.get("banner"))
        raise VolatilityError(f"Volatility failed ({final.get('kind')}): {final.get('message')}")
    return final


def analyse(
    image: Path,
    plugins: list[str],
    cfg: VolatilityConfig | None = None,
    progress: Progress | None = None,
    one_image: bool = True,
    cancel: Cancel | None = None,
) -> Analysis:
    """Run ``plugins`` over the memory image; one worker for all (``one_image``) or one each.
    ``cancel``: a :class:`Cancel` another thread may use to stop the run (its workers are killed).

    Raises :class:`NoSymbols`, :class:`VolatilityTimeout`, :class:`Cancelled` or :class:`VolatilityError`."""
    cfg = cfg or VolatilityConfig()
    if not plugins:
        raise ValueError("no Volatility plugin to run")
    image = Path(image)
    if not image.is_file():
        raise VolatilityError(f"memory image {image}: no such file")
    t0 = time.monotonic()
    deadline = t0 + cfg.timeout
    batches = [list(plugins)] if one_image else [[p] for p in plugins]
    merged: dict[str, Any] = {"banner": None, "plugins": {}, "tasks": [], "timings": {}}
    for batch in batches:
        res = _run_worker(image, batch, cfg, progress, deadline, cancel)
        merged["banner"] = merged["banner"] or res.get("banner")
        merged["plugins"].update(res.get("plugins", {}))
        merged["tasks"] = merged["tasks"] or res.get("tasks", [])
        for k, v in res.get("timings", {}).items():
            merged["timings"][k] = round(merged["timings"].get(k, 0.0) + v, 3)
    return Analysis(
        merged["banner"],
        merged["plugins"],
        merged["tasks"],
        merged["timings"],
        round(time.monotonic() - t0, 3),
        len(batches),
    )

"""Warm Volatility workers: one long-lived worker per guest, its context loaded once, for live reads.

A live introspection (:mod:`atomwatch.introspection.live`) reads the guest's own memory file, which
stays where it is between introspections; so the worker that loaded the symbol table and stacked
the layers for it is kept (``worker.py PARENT --serve``) and answers the next introspection of the
same guest at once. :class:`WarmPool` holds at most ``size`` of them (the least recently used is
stopped first), keyed by the guest's UUID and its QEMU process (a guest libvirt restarted gets a
new worker); a worker that finds its context no longer fits says so and is replaced — a guest
rebooted inside the same QEMU process keeps its RAM, old kernel included, so the check compares
where the kept context finds the kernel banner with where the guest's CPU page tables (CR3, from
QEMU's monitor) map it now; one idle for ``idle`` seconds exits by itself. The same limits as
a one-shot worker apply: ``RLIMIT_DATA``, the wall-clock limit of the introspection (overrun: the
worker is killed, not kept), :class:`~atomwatch.introspection.volatility.Cancel`, death with the
agent (``PR_SET_PDEATHSIG``, own process group).

:func:`analyse_live` is the live counterpart of :func:`atomwatch.introspection.volatility.analyse`:
the plugins run while the guest runs, then the guest is paused only while the task list (PID, name,
start time, CPU time: what suspects are ranked by and a termination checks) is read again, as raw
``task_struct`` bytes (``worker.fast_task_facts``: a few ms for the lab's guest).

What does not live here: finding the memory file and pausing (:mod:`atomwatch.introspection.live`),
the one-shot worker (:mod:`atomwatch.introspection.volatility`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .live import LiveMemory, cr3, paused, process_key
from .volatility import (
    WORKER,
    Analysis,
    Cancel,
    Cancelled,
    NoSymbols,
    Progress,
    VolatilityConfig,
    VolatilityError,
    VolatilityTimeout,
    _kill_group,
    worker_message,
)

log = logging.getLogger(__name__)

#: seconds a warm worker with nothing to do keeps its context (then it exits)
DEFAULT_IDLE = 600.0
#: warm workers kept at most (each holds a loaded context, about 0.3–0.5 GB on the lab's guest)
DEFAULT_SIZE = 2
#: when the guest is paused during a live introspection: only for the task list (default), for
#: every read, or never (reads while it runs; a termination re-checks PID, name and start time)
PAUSE_MODES = ("tasks", "all", "none")


#: the key of the pool's spare worker (Volatility imported, symbol tables parsed, no guest yet)
SPARE = "spare"
#: the symbol tables the pool's warm workers loaded last, kept in the Volatility cache directory
#: (the next spare worker parses them ahead; it survives the agent's restarts)
ISF_MEMO = "warm-isf.json"


#: how often the pool's thread stops workers idle too long or whose guest is gone
SWEEP_EVERY = 30.0
#: seconds after a spare was taken before the next one starts
SPARE_DELAY = 30.0


def _same_setup(a: VolatilityConfig, b: VolatilityConfig) -> bool:
    """Whether a worker started for ``a`` serves ``b`` (the time limit is per request)."""
    keys = ("symbol_dirs", "cache_dir", "memory_limit", "validate_isf", "python")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


class Stale(VolatilityError):
    """The worker's loaded context no longer fits the guest's memory (it rebooted)."""


class WarmWorker:
    """One serving worker process and the guest it is warm for."""

    def __init__(self, key: str, cfg: VolatilityConfig, idle: float):
        self.key = key
        self.cfg = cfg
        self.idle = idle
        self.used = time.monotonic()
        self.requests = 0
        self.sent = 0
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            # as the one-shot worker (volatility._run_worker): its file, -P, its own session
            [cfg.python, "-P", WORKER, str(os.getpid()), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            del self.stderr[:-20]

    def alive(self) -> bool:
        """Running, not idle too long, and its guest's QEMU process still there: a worker holds the
        guest's memory file open, which would keep a destroyed guest's RAM allocated."""
        if self.proc.poll() is not None:
            return False
        if self.key == SPARE:
            return True
        qemu = self.key.rsplit("/", 1)[-1]
        return time.monotonic() - self.used < self.idle and process_key(int(qemu.split("@", 1)[0])) == qemu

    def stop(self) -> None:
        if self.proc.poll() is None:
            _kill_group(self.proc)
        self.proc.wait()

    def send(self, request: dict[str, Any]) -> int:
        """Write one request (its ``id`` added); the id its answer will carry."""
        self.sent += 1
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(dict(request, id=self.sent)) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: the reader sees its end
        return self.sent

    def ask(
        self, request: dict[str, Any], deadline: float, progress: Progress | None, cancel: Cancel | None, what: str
    ) -> dict[str, Any]:
        """Send one request and wait for its final line (earlier requests' answers, a spare's
        ``prepare``, are skipped); progress lines go to ``progress``."""
        if cancel is not None:
            cancel.check()
            cancel.add(self.proc)
        try:
            wanted = self.send(request)
            while True:
                try:
                    line = self.lines.get(timeout=max(0.05, deadline - time.monotonic()))
                except queue.Empty:
                    self.stop()
                    raise VolatilityTimeout(
                        f"Volatility ({what}) overran its {self.cfg.timeout:g} s limit and was killed "
                        "(the limit is introspection.timeout)"
                    ) from None
                if line is None:
                    self.proc.wait()
                    if cancel is not None and cancel.cancelled:
                        raise Cancelled(f"Volatility ({what}) was stopped: {cancel.why}")
                    why = "".join(self.stderr).strip().splitlines()[-1:] or [f"exit code {self.proc.returncode}"]
                    if self.proc.returncode and self.proc.returncode < 0:
                        why = [f"killed by signal {-self.proc.returncode}"]
                    raise VolatilityError(f"Volatility worker died without a result: {why[0]}")
                msg = worker_message(line, progress)
                if msg is None:
                    continue
                if msg.get("event") == "result" and msg.get("id") != wanted:
                    continue  # the answer to an earlier request nobody waits for
                break
        finally:
            if cancel is not None:
                cancel.discard(self.proc)
        self.used = time.monotonic()
        self.requests += 1
        if msg.get("event") == "error":
            kind = msg.get("kind")
            if kind == "no-symbols":
                raise NoSymbols(msg["message"], msg.get("banner"))
            if kind == "stale":
                raise Stale(msg.get("message", "stale context"))
            raise VolatilityError(f"Volatility failed ({kind}): {msg.get('message')}")
        return msg


class WarmPool:
    """The agent's warm workers, by guest. Thread-safe; :meth:`close` stops them all."""

    def __init__(self, size: int = DEFAULT_SIZE, idle: float = DEFAULT_IDLE, spare: bool = False):
        if size < 0:
            raise ValueError(f"warm worker count must be ≥ 0, got {size!r}")
        if not idle > 0:
            raise ValueError(f"warm worker idle time must be > 0 s, got {idle!r}")
        self.size, self.idle, self.spare = size, idle, spare and size > 0
        self._lock = threading.Lock()
        self._workers: dict[str, WarmWorker] = {}
        self._spawn: queue.Queue[tuple[float, VolatilityConfig, Callable[[], bool] | None]] = queue.Queue()
        self._spawner: threading.Thread | None = None
        self.closed = False

    def prepare(self, cfg: VolatilityConfig, delay: float = 0.0, worth: Callable[[], bool] | None = None) -> None:
        """Have the spare worker started in ``delay`` seconds (when the pool keeps one and has none
        by then): it imports Volatility and parses the symbol tables the pool's workers loaded
        last, then waits — with no idle limit — for the first guest that has no warm worker.
        Returns at once. The spare is started by the pool's own thread, which lives as long as the
        agent: a worker dies with the thread that started it (``PR_SET_PDEATHSIG``). ``worth``,
        asked in that thread first: whether a spare is worth its memory (e.g. a live guest runs here)."""
        if not self.spare or self.closed:
            return
        self._ensure_thread()
        self._spawn.put((time.monotonic() + delay, cfg, worth))

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._spawner is None:
                self._spawner = threading.Thread(target=self._spawn_loop, name="warm-workers", daemon=True)
                self._spawner.start()

    def _spawn_loop(self) -> None:
        while True:
            try:
                when, cfg, worth = self._spawn.get(timeout=SWEEP_EVERY)
            except queue.Empty:
                self.sweep()
                continue
            time.sleep(max(0.0, when - time.monotonic()))
            try:
                if worth is None or worth():
                    self._start_spare(cfg)
            except Exception as e:  # no spare: the next guest's worker starts cold, nothing worse
                log.warning("cannot start a spare Volatility worker: %s", e)

    def _start_spare(self, cfg: VolatilityConfig) -> None:
        if self.closed:
            return
        with self._lock:
            spare = self._workers.get(SPARE)
            if spare is not None and spare.proc.poll() is None:
                return
            cache = cfg.cache()
            os.makedirs(cache, mode=0o700, exist_ok=True)
            try:
                isf = json.loads((Path(cache) / ISF_MEMO).read_text())["isf"]
            except (OSError, ValueError, KeyError, TypeError):
                isf = []
            worker = self._workers[SPARE] = WarmWorker(SPARE, cfg, self.idle)
        worker.send(
            {
                "op": "prepare",
                "isf": [u for u in isf if isinstance(u, str)][:2],
                "symbol_dirs": cfg.symbol_dirs,
                "cache_dir": cache,
                "memory_limit": cfg.memory_limit,
                "validate_isf": cfg.validate_isf,
                "idle": None,
            }
        )

    def remember(self, cfg: VolatilityConfig, isf: str | None) -> None:
        """Note the symbol table a worker loaded, for the next spare."""
        if not isf:
            return
        path = Path(cfg.cache()) / ISF_MEMO
        try:
            old = json.loads(path.read_text())["isf"]
        except (OSError, ValueError, KeyError, TypeError):
            old = []
        if old[:1] == [isf]:
            return
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"isf": [isf] + [u for u in old if u != isf][:3]}))
            os.replace(tmp, path)
        except OSError as e:
            log.info("cannot note the symbol table for the next spare worker in %s: %s", path, e)

    def take(self, vm_uuid: str, key: str, cfg: VolatilityConfig) -> tuple[WarmWorker, bool]:
        """The worker for guest ``vm_uuid`` in state ``key`` — (worker, warm): an existing live one,
        or a new one (any other worker of that guest is stopped, the least used beyond ``size`` too).
        The caller :meth:`give` s it back when done, or :meth:`drop` s it on failure."""
        stop: list[WarmWorker] = []
        with self._lock:
            for k, w in list(self._workers.items()):
                if not w.alive() or (k.split("/", 1)[0] == vm_uuid and k != key):
                    stop.append(self._workers.pop(k))
            worker = self._workers.pop(key, None)
            spare = self._workers.pop(SPARE, None) if worker is None else None
        for w in stop:
            w.stop()
        if worker is not None:
            return worker, True
        if spare is not None and _same_setup(spare.cfg, cfg) and spare.proc.poll() is None:
            spare.key, spare.cfg, spare.used = key, cfg, time.monotonic()
            return spare, False
        if spare is not None:
            spare.stop()
        return WarmWorker(key, cfg, self.idle), False

    def give(self, worker: WarmWorker) -> None:
        stop: list[WarmWorker] = []
        with self._lock:
            if self.size == 0 or not worker.alive():
                stop.append(worker)
            else:
                old = self._workers.pop(worker.key, None)
                if old is not None and old is not worker:
                    stop.append(old)
                self._workers[worker.key] = worker
                while len([k for k in self._workers if k != SPARE]) > self.size:
                    oldest = min((k for k in self._workers if k != SPARE), key=lambda k: self._workers[k].used)
                    stop.append(self._workers.pop(oldest))
        for w in stop:
            w.stop()
        if worker not in stop and not self.closed:
            self._ensure_thread()  # its sweeps stop the workers of guests that went away
        # the spare this worker may have been is replaced, later: not competing with this guest's next reads
        self.prepare(worker.cfg, SPARE_DELAY)

    def drop(self, worker: WarmWorker) -> None:
        worker.stop()

    def sweep(self) -> None:
        """Stop the workers that are idle too long or whose guest is gone."""
        with self._lock:
            dead = [self._workers.pop(k) for k, w in list(self._workers.items()) if not w.alive()]
        for w in dead:
            w.stop()

    def workers(self) -> dict[str, int]:
        """Guest key (or ``spare``) → worker PID of the live workers."""
        with self._lock:
            return {k: w.proc.pid for k, w in self._workers.items() if w.proc.poll() is None}

    def close(self) -> None:
        self.closed = True
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for w in workers:
            w.stop()


def analyse_live(
    dom: Any,
    live: LiveMemory,
    plugins: list[str],
    cfg: VolatilityConfig,
    pool: WarmPool,
    pause: str = "tasks",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> tuple[Analysis, dict[str, Any]]:
    """Run ``plugins`` over the live memory of ``dom`` on its warm worker (loaded first if need be);
    (analysis, facts: whether the context was warm, the pauses). ``pause``: one of :data:`PAUSE_MODES`.

    Raises what :func:`atomwatch.introspection.volatility.analyse` raises."""
    if pause not in PAUSE_MODES:
        raise ValueError(f"live pause {pause!r}: one of {', '.join(PAUSE_MODES)}")
    if not plugins:
        raise ValueError("no Volatility plugin to run")
    t0 = time.monotonic()
    deadline = t0 + cfg.timeout
    cache = cfg.cache()
    os.makedirs(cache, mode=0o700, exist_ok=True)
    load = {
        "op": "load",
        "image": live.path,
        "first": plugins[0],
        "symbol_dirs": cfg.symbol_dirs,
        "cache_dir": cache,
        "memory_limit": cfg.memory_limit,
        "validate_isf": cfg.validate_isf,
        "live": True,
        "idle": pool.idle + 30,  # the pool stops using it at `idle`: it never exits under a request
    }
    what = ", ".join(plugins)
    for attempt in (1, 2):
        worker, warm = pool.take(live.vm_uuid, live.boot_key, cfg)
        if progress is not None and not warm:
            try:
                progress({"event": "progress", "stage": "started", "pid": worker.proc.pid, "plugins": list(plugins)})
            except Exception:
                pass
        if warm:  # the worker checks its context against the page tables the guest uses now
            load["cr3"] = cr3(dom)
        try:
            loaded = worker.ask(load, deadline, progress, cancel, what)
            break
        except Stale as e:
            pool.drop(worker)
            live.notes.append(f"the warm context was dropped: {e} (guest rebooted?)")
            if attempt == 2:
                raise VolatilityError(f"Volatility context does not fit {live.vm_name}'s memory: {e}") from None
        except BaseException:
            pool.drop(worker)
            raise
    try:
        timings: dict[str, float] = dict(loaded.get("timings") or {})
        if pause == "all":
            with paused(dom, live):
                ran = worker.ask({"op": "plugins", "plugins": list(plugins)}, deadline, progress, cancel, what)
                tasks = worker.ask({"op": "tasks", "fresh": False, "fast": True}, deadline, None, cancel, what)
        else:
            ran = worker.ask({"op": "plugins", "plugins": list(plugins)}, deadline, progress, cancel, what)
            if pause == "tasks":
                # forget what the plugins read first, then pause for the reads alone
                worker.ask({"op": "refresh"}, deadline, None, cancel, what)
                with paused(dom, live):
                    tasks = worker.ask({"op": "tasks", "fresh": False, "fast": True}, deadline, None, cancel, what)
            else:
                tasks = worker.ask({"op": "tasks", "fresh": True, "fast": True}, deadline, None, cancel, what)
    except BaseException:
        pool.drop(worker)
        raise
    pool.give(worker)
    if not warm:
        pool.remember(cfg, loaded.get("isf"))
    timings.update(ran.get("timings") or {})
    timings.update(tasks.get("timings") or {})
    analysis = Analysis(
        loaded.get("banner"),
        ran.get("plugins", {}),
        tasks.get("tasks", []),
        timings,
        round(time.monotonic() - t0, 3),
        1,
    )
    return analysis, {"warm": warm, "worker_pid": worker.proc.pid, "pause": pause}

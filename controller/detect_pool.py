"""Detection in worker processes, so one controller uses more than one core (``detect_workers``).

What lives here: :class:`DetectionPool` — K processes, each owning the scopes whose BLAKE2 hash
mod K is its number and running its own :class:`.detection.DetectorSet` on them, with the same
two calls the in-process set offers (``run`` a batch of rows, ``call`` a method of one scope's
detector: a verdict's refit, μ's Δ). Each worker loads the plugins the controller loaded (the same
entry points, the same plugin files) and refuses to start without every detector asked for. A
row crosses as its values and Δ; its columns only when the worker has not seen that scope's
table. A worker that dies is said once and started again: its scopes warm up afresh, nobody
stops. What does not: which rows exist (:mod:`.app`), what a detector does (the plugins).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from atomwatch.config import ConfigError
from atomwatch.types import Anomaly, Row

from .detection import DetectorSet, NoSuchMethod

log = logging.getLogger(__name__)


def plugin_sources(pm: Any) -> tuple[str, list[str]]:
    """(the entry points' names as an allow-list, the folders of plugin files) a worker loads."""
    names, folders = [], []
    for name, source in getattr(pm, "sources", {}).items():
        if source.startswith("entry point"):
            names.append(name)
        elif source.endswith(".py"):
            folders.append(str(Path(source).parent))
    return ",".join(sorted(names)), sorted(set(folders))


def _serve(
    conn: Connection, index: int, names: list[str], options: dict, allow: str, folders: list[str], blas: int
) -> None:
    """A worker's life: build the detector set, then answer ("run", rows) and ("call", …) in turn."""
    from atomwatch.detectors import detector_factories
    from atomwatch.pluginmanager import PluginManager

    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s detect-worker-{index} %(levelname)s %(name)s: %(message)s"
    )
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=blas, user_api="blas")
    except ImportError:
        pass
    pm = PluginManager()
    pm.load_entry_points(allow=allow)
    for folder in folders:
        pm.load_directory(folder)
    factories = detector_factories(pm)
    missing = [n for n in names if n not in factories]
    conn.send(("ready", missing))
    detectors = DetectorSet({n: factories[n] for n in names if n in factories}, options)
    columns: dict[str, tuple] = {}
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):  # the controller is gone
            return
        if kind == "stop":
            return
        if kind == "run":
            rows = []
            for scope, index, ts, cols, values, deltas, late in payload:
                if cols is not None:
                    columns[scope] = cols
                rows.append(Row(scope, index, ts, columns[scope], values, deltas, late))
            conn.send(detectors.run(rows))
        elif kind == "call":
            scope, name, method, args = payload
            try:
                conn.send(("ok", detectors.call(scope, name, method, *args)))
            except NoSuchMethod as e:
                conn.send(("none", str(e)))
            except Exception as e:  # the caller says it; the worker goes on
                conn.send(("error", f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, index: int, pool: DetectionPool) -> None:
        self.index = index
        ctx = multiprocessing.get_context("spawn")  # the controller has threads: never fork it
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve,
            args=(child, index, pool.names, pool.options, pool.allow, pool.folders, pool.blas_threads),
            name=f"atomwatch-detect-{index}",
            daemon=True,
        )
        self.proc.start()
        child.close()
        #: scope → the columns tuple this worker holds for it (sent again when it changes)
        self.columns: dict[str, tuple] = {}
        try:
            kind, missing = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise ConfigError(
                f"detection worker {index} could not start (exit code {self.proc.exitcode}; its error is above)"
            ) from None
        if missing:
            self.stop()
            raise ConfigError(
                f"detect_workers: detector(s) {', '.join(missing)} come from plugins a worker process cannot "
                "load (registered in this process only); run them with detect_workers = 0"
            )

    def stop(self) -> None:
        try:
            self.conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()


class DetectionPool:
    """K detection processes; ``run`` and ``call`` block (the controller calls them from its
    detection thread, one at a time)."""

    def __init__(
        self, k: int, names: Sequence[str], options: Mapping[str, Mapping[str, Any]], pm: Any, blas_threads: int = 1
    ) -> None:
        self.names = list(names)
        self.options = {n: dict(options.get(n, {})) for n in self.names}
        self.allow, self.folders = plugin_sources(pm)
        self.blas_threads = blas_threads
        self.restarts = 0
        self.closed = False
        self._owners: dict[str, int] = {}
        self.workers: list[_Worker] = []
        try:
            for i in range(k):
                self.workers.append(_Worker(i, self))
        except BaseException:
            self.close()
            raise

    def _owner(self, scope: str) -> int:
        i = self._owners.get(scope)
        if i is None:  # the same in every process and run (Python's hash() of a str is salted)
            digest = hashlib.blake2b(scope.encode(), digest_size=8).digest()
            i = self._owners[scope] = int.from_bytes(digest, "big") % len(self.workers)
        return i

    def run(self, rows: Sequence[Row]) -> tuple[list[Anomaly], dict[str, dict[str, Any]]]:
        """Every row through its scope's worker; (anomalies, each scope's last status)."""
        if self.closed:
            return [], {}
        batches: dict[int, list] = {}
        for row in rows:
            i = self._owner(row.scope)
            w = self.workers[i]
            cols = None if w.columns.get(row.scope) is row.columns else row.columns
            w.columns[row.scope] = row.columns
            batches.setdefault(i, []).append((row.scope, row.index, row.ts, cols, row.values, row.deltas, row.late))
        sent = []
        for i, batch in batches.items():
            try:
                self.workers[i].conn.send(("run", batch))
                sent.append(i)
            except (OSError, ValueError) as e:
                self._restart(i, e)
        anomalies: list[Anomaly] = []
        status: dict[str, dict[str, Any]] = {}
        for i in sent:
            try:
                found, st = self.workers[i].conn.recv()
            except (EOFError, OSError) as e:
                self._restart(i, e)
                continue
            anomalies.extend(found)
            status.update(st)
        return anomalies, status

    def call(self, scope: str, name: str, method: str, *args: Any) -> Any:
        """``method(*args)`` of ``scope``'s ``name`` detector in its worker; :class:`NoSuchMethod`
        when there is no such instance or method; the detector's own exception re-raised."""
        if self.closed:
            raise NoSuchMethod("the detection workers are stopped")
        i = self._owner(scope)
        try:
            self.workers[i].conn.send(("call", (scope, name, method, args)))
            kind, value = self.workers[i].conn.recv()
        except (EOFError, OSError, ValueError) as e:
            self._restart(i, e)
            raise NoSuchMethod(f"the detection worker of {scope} died; its model starts again") from None
        if kind == "ok":
            return value
        if kind == "none":
            raise NoSuchMethod(value)
        raise RuntimeError(f"{name}.{method} on {scope}, in detection worker {i}: {value}")

    def _restart(self, i: int, error: BaseException) -> None:
        if self.closed:  # stopping: a worker told to stop is not dead
            return
        old = self.workers[i]
        log.error(
            "detection worker %d (pid %s) is gone (%s: exit code %s); starting it again: its scopes' models "
            "warm up afresh",
            i,
            old.proc.pid,
            type(error).__name__,
            old.proc.exitcode,
        )
        old.stop()
        self.restarts += 1
        self.workers[i] = _Worker(i, self)

    def close(self) -> None:
        self.closed = True
        for w in self.workers:
            w.stop()
        self.workers = []

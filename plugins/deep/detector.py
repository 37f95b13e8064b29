"""The deep detector plugins ``ae``, ``cnn`` and ``siamese``: live scoring of a trained model.

What lives here: the three factories :func:`register_detectors` returns, and
:class:`DeepDetector`, one per scope. Each needs the option ``model=PATH`` (a model folder written
by ``atomwatch train``; its kind must match the detector's name). Optional: ``top=3`` (how many
columns to blame).

How a detector works, row by row (``update`` runs in the controller's worker thread, never on the
event loop):

* **Columns.** The row's columns are mapped to the model's columns by name ``<vm>/<metric>``
  (:attr:`SeriesKey.column`). A model column the row lacks, or a NaN (stale) cell, takes the
  column's training mean (0 after scaling); row columns the model does not know are ignored. The
  mapping is cached per column tuple, so columns may change between rows.
* **Window.** A per-scope FIFO of the last W mapped rows; nothing is scored until it holds W rows.
* **Scoring** at a fixed batch shape of one window (``predict_on_batch``), so JAX compiles once.
* **Anomaly** when ``score >= threshold``: score, threshold, and the ``top`` columns that
  contribute most — the autoencoder by each column's reconstruction error over the window, the
  classifier and the Siamese model by occlusion (the column replaced by its training mean, the
  score drop is its contribution; see :mod:`atomwatch.plugins.deep.models`).
* **Loading.** The Keras import and the model load happen on the first ``create``; the loaded
  model is shared by every scope using the same folder (scoring calls take turns on one lock per
  model) and reloaded when the folder's ``model.json`` changes (e.g. after ``atomwatch retrain``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import atomwatch
from atomwatch import Anomaly, Blame, Range, Row, SeriesKey
from atomwatch.lazy import lazy_import
from atomwatch.series import columns_seen

# numpy loads on first use, not when the plugin loads (every command that lists plugins imports this)
np = lazy_import("numpy", globals(), "np")

log = logging.getLogger(__name__)

DETECTORS = {
    "ae": "convolutional autoencoder: L2 distance of the window's latent vector from the normal mean (option model=PATH)",
    "cnn": "convolutional binary classifier over FIFO windows of metrics (option model=PATH)",
    "siamese": "Siamese network: nearer of the normal and anomalous class means in latent space (option model=PATH)",
}


@atomwatch.declare_options(*DETECTORS)
@dataclass(frozen=True)
class DeepOptions:
    """``--set ae.KEY=VALUE`` (``cnn``, ``siamese``), read by :func:`atomwatch.parse_options`."""

    model: str | None = None  # the model folder (needed: without it the detector is not configured)
    top: Annotated[int, Range(ge=1)] = 3  # columns blamed


_cache: dict[tuple[str, float], Any] = {}
_cache_lock = threading.Lock()


def _load(path: str) -> Any:
    try:
        from .models import load_model  # Keras is imported here, lazily
    except ImportError as e:
        raise ValueError(f"the deep detectors need Keras and JAX (pip install 'atomwatch[ml]'): {e}") from None

    folder = Path(path)
    meta_file = folder / "model.json" if folder.is_dir() else folder
    mtime = meta_file.stat().st_mtime if meta_file.exists() else 0.0
    key = (str(folder.resolve()), mtime)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = load_model(folder)
            for stale in [k for k in _cache if k[0] == key[0]]:  # an older version of this folder
                del _cache[stale]
            model.score_lock = threading.Lock()  # one scoring call at a time per loaded model
            _cache[key] = model
        return model


class DeepDetector:
    """One scope's detector over a trained model."""

    def __init__(self, name: str, scope: str, model: Any, model_path: str, top: int) -> None:
        self.name = name
        self.scope = scope
        self.model = model
        self.model_path = model_path
        self.top = top
        self._lock: threading.Lock = getattr(model, "score_lock", None) or threading.Lock()
        self.window: deque[np.ndarray] = deque(maxlen=model.window)
        self._map_for: tuple[SeriesKey, ...] | None = None
        self._map: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._model_keys: list[SeriesKey] = [SeriesKey.from_column(c) for c in model.columns]
        self._row_keys: dict[int, SeriesKey] = {}
        self._said_unmatched = False
        self.last_score: float | None = None
        self.scored = 0
        self.flagged = 0

    def _mapping(self, columns: tuple[SeriesKey, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(model column positions, row column positions) of the columns both have, by name."""
        if columns is not self._map_for and columns != self._map_for:
            position = {c: k for k, c in enumerate(self.model.columns)}
            pairs = [(position[key.column], j) for j, key in enumerate(columns) if key.column in position]
            self._map = (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))
            self._row_keys = {p[0]: columns[p[1]] for p in pairs}
            self._map_for = columns
            if not pairs and columns and not self._said_unmatched:
                self._said_unmatched = True  # once per scope: every row would say the same
                log.warning(
                    "%s scope %r: none of the row's columns is one of the model's (%s), so it scores only "
                    "training means; the columns it saw: %s",
                    self.name,
                    self.scope,
                    ", ".join(self.model.columns[:5]) + (", …" if len(self.model.columns) > 5 else ""),
                    columns_seen(columns, {k.metric for k in self._model_keys}),
                )
        return self._map

    def update(self, row: Row) -> Anomaly | None:
        model_pos, row_pos = self._mapping(row.columns)
        x = np.full(len(self.model.columns), np.nan)
        if len(row_pos):
            x[model_pos] = np.asarray(row.values, dtype=np.float64)[row_pos]
        self.window.append(x)
        if len(self.window) < self.model.window:
            return None
        win = np.stack(self.window)[None]
        with self._lock:
            details = self.model.score_details(win)
        score = float(details["score"][0])
        self.last_score = score
        self.scored += 1
        threshold = float(self.model.threshold)
        if score < threshold:
            return None
        self.flagged += 1
        blame = []
        with self._lock:
            explained = self.model.explain(win)[: self.top]
        for j, contribution, direction in explained:
            key = self._row_keys.get(j) or self._model_keys[j]
            blame.append(
                Blame(
                    column=key,
                    direction=direction,
                    score=contribution,
                    details={"attribution": "reconstruction-error" if self.model.KIND == "ae" else "occlusion"},
                )
            )
        extra = {k: float(v[0]) for k, v in details.items() if k != "score" and np.ndim(v) == 1}
        return Anomaly(
            detector=self.name,
            scope=row.scope,
            index=row.index,
            ts=row.ts,
            score=score,
            threshold=threshold,
            blame=blame,
            details={"model": self.model_path, "window": self.model.window, **extra},
        )

    def status(self) -> dict[str, Any]:
        return {
            "model": self.model_path,
            "kind": self.model.KIND,
            "window": self.model.window,
            "filled": len(self.window),
            "score": self.last_score,
            "threshold": self.model.threshold,
            "scored": self.scored,
            "flagged": self.flagged,
        }


class DeepFactory:
    def __init__(self, name: str) -> None:
        self.name = name
        self.description = DETECTORS[name]

    def create(self, scope: str, options: Mapping[str, Any]) -> DeepDetector:
        opts = atomwatch.parse_options(self.name, DeepOptions, options)
        path, top = opts.model, opts.top
        if not path:
            raise atomwatch.NotConfigured(
                f"{self.name}: needs the option model=PATH (a model folder written by 'atomwatch train --model {self.name}')"
            )
        model = _load(str(path))
        if model.KIND != self.name:
            raise atomwatch.ConfigError(
                f"{self.name}.model={path!r} is a {model.KIND!r} model; use detector {model.KIND!r} or a {self.name!r} model"
            )
        if model.threshold is None:
            raise atomwatch.ConfigError(f"{self.name}.model={path!r} has no threshold (not trained)")
        return DeepDetector(self.name, scope, model, str(path), top)

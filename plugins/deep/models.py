"""The three deep models of the CoreDNS anomaly-detection proposal, behind one small class.

What lives here: :class:`DeepModel` (``initialize_new_weights``, ``import_weights``, ``train``,
``predict``, ``score``, ``explain``, ``save``) and its kinds :class:`AutoencoderModel` (``ae``),
:class:`ClassifierModel` (``cnn``), :class:`SiameseModel` (``siamese``), with :func:`load_model`
and :func:`new_model`. Keras 3 runs on JAX (``KERAS_BACKEND`` is set before Keras is imported).
What does not: cutting recordings into windows (:mod:`.windows`), the live detector
(:mod:`.detector`). Inputs, scores, thresholds, attribution and the file format:
``docs/deep-models.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from .windows import Dataset, Scaler, WindowSet  # noqa: E402

if keras.backend.backend() != "jax":  # pragma: no cover - depends on the caller's environment
    raise ImportError(
        f"atomwatch.plugins.deep.models needs Keras on the JAX backend, but Keras was already imported with "
        f"backend {keras.backend.backend()!r}; set KERAS_BACKEND=jax before anything imports keras"
    )

FORMAT_VERSION = 1
KINDS = ("ae", "cnn", "siamese")
SCORE_BATCH = 256
WEIGHTS_FILE = "model.weights.h5"
META_FILE = "model.json"
THRESHOLD_RULES = {"ae": ("lowest", "val-f1"), "cnn": ("fixed", "val-f1"), "siamese": ("fixed", "val-f1")}


class ModelError(ValueError):
    """A model file or training input that cannot be used; the text names it and what is wrong."""


def _conv_stack(x: Any, filters: int) -> Any:
    x = keras.layers.Conv1D(filters, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv1D(filters, 3, padding="same", activation="relu", name="conv2")(x)
    return keras.layers.Flatten(name="flatten")(x)


def best_f1_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold t (flag = score ≥ t) among the given scores that maximises F1 on (scores, y);
    ties go to the highest t (fewest flags)."""
    if not len(scores) or not y.any():
        raise ModelError("a validation-F1 threshold needs anomalous validation windows")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y[order]
    tp = np.cumsum(t)
    fp = np.cumsum(1 - t)
    positives = t.sum()
    f1 = 2 * tp / (tp + fp + positives)
    # only cut where the score changes, so equal scores are flagged together
    last_of_run = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last_of_run, f1, -1.0)
    best = int(np.flatnonzero(f1 == f1.max())[0])
    return float(s[best])


class DeepModel:
    """One deep detector model. Subclasses define the network, the score and the threshold."""

    KIND = ""
    DEFAULT_RULE = "fixed"
    NEEDS_BOTH_CLASSES = True

    def __init__(
        self,
        window: int = 16,
        columns: Sequence[str] = (),
        filters: int = 16,
        latent: int = 8,
        seed: int = 0,
        threshold_rule: str | None = None,
        score_kind: str = "latent",
    ) -> None:
        if window < 3:
            raise ModelError(f"window size must be ≥ 3, got {window}")
        if filters < 1 or latent < 1:
            raise ModelError(f"filters and latent size must be ≥ 1, got {filters}, {latent}")
        rule = threshold_rule or self.DEFAULT_RULE
        if rule not in THRESHOLD_RULES[self.KIND]:
            raise ModelError(f"{self.KIND}: threshold rule {rule!r} unknown; choose from {THRESHOLD_RULES[self.KIND]}")
        if score_kind not in ("latent", "reconstruction") or (score_kind != "latent" and self.KIND != "ae"):
            raise ModelError(
                f"{self.KIND}: score {score_kind!r} unknown (the autoencoder scores 'latent' or 'reconstruction')"
            )
        self.score_kind = score_kind
        self.window = int(window)
        self.columns = list(columns)
        self.filters = int(filters)
        self.latent = int(latent)
        self.seed = int(seed)
        self.threshold_rule = rule
        self.scaler: Scaler | None = None
        self.threshold: float | None = None
        self.latent_means: dict[str, list[float]] = {}
        self.info: dict[str, Any] = {}
        self.net: keras.Model | None = None  # what is trained
        self.scorer: keras.Model | None = None  # what scores windows

    # -- the proposal's interface ---------------------------------------------------------------

    def initialize_new_weights(self) -> None:
        """Build the network with fresh random weights (seeded by ``seed``)."""
        if not self.columns:
            raise ModelError("the model has no columns yet: give columns or train on data first")
        keras.utils.set_random_seed(self.seed)
        self._build()

    def import_weights(self, path: str | Path) -> None:
        """Load a saved model (folder or its ``model.json``): sidecar and weights."""
        folder = _model_folder(path)
        meta = read_meta(folder)
        if meta["kind"] != self.KIND:
            raise ModelError(f"{folder}: holds a {meta['kind']!r} model, not {self.KIND!r}")
        self._set_meta(meta)
        self._build()
        try:
            with warnings.catch_warnings():  # the optimizer state is not restored: retraining starts a fresh one
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                self.net.load_weights(str(folder / WEIGHTS_FILE))  # type: ignore[union-attr]
        except Exception as e:
            raise ModelError(f"{folder / WEIGHTS_FILE}: cannot load weights ({type(e).__name__}: {e})") from None

    def train(
        self,
        number_of_iterations: int,
        batch_size: int,
        data: WindowSet | Dataset,
        validation: WindowSet | None = None,
        verbose: int = 1,
        callbacks: Sequence[Any] = (),
    ) -> dict[str, Any]:
        """Train for ``number_of_iterations`` epochs on ``data`` (a :class:`Dataset` — its train
        and validation parts — or training :class:`WindowSet`), then set the latent means and the
        threshold from the training and validation windows. Returns the training record."""
        if isinstance(data, Dataset):
            validation = data.val if validation is None else validation
            data = data.train
        if number_of_iterations < 1 or batch_size < 1:
            raise ModelError(f"epochs and batch size must be ≥ 1, got {number_of_iterations}, {batch_size}")
        if not len(data):
            raise ModelError("no training windows")
        if data.x.shape[1] != self.window:
            raise ModelError(f"training windows have {data.x.shape[1]} rows, the model expects {self.window}")
        if not self.columns:
            self.columns = list(data.columns)
        if data.x.shape[2] != len(self.columns):
            raise ModelError(f"training windows have {data.x.shape[2]} columns, the model has {len(self.columns)}")
        if self.NEEDS_BOTH_CLASSES and (data.y.all() or not data.y.any()):
            raise ModelError(f"{self.KIND}: training needs both normal and anomalous windows")
        if not (data.y == 0).any():
            raise ModelError(f"{self.KIND}: no normal training windows")
        if self.scaler is None:
            self.scaler = Scaler.fit(data.x[data.y == 0, -1, :])
        if self.net is None:
            self.initialize_new_weights()
        start = time.perf_counter()
        history = self._fit(number_of_iterations, batch_size, data, validation, verbose, list(callbacks))
        seconds = time.perf_counter() - start
        self._calibrate(data, validation)
        record = {
            "epochs": number_of_iterations,
            "batch_size": batch_size,
            "seconds": round(seconds, 3),
            "seconds_per_epoch": round(seconds / number_of_iterations, 4),
            "train_windows": len(data),
            "val_windows": len(validation) if validation is not None else 0,
            "loss": [float(v) for v in history.get("loss", [])],
            "val_loss": [float(v) for v in history.get("val_loss", [])],
        }
        self.info.setdefault("trainings", []).append(record)
        return record

    def predict(self, data: WindowSet | np.ndarray) -> np.ndarray:
        """0/1 per window: 1 where the window is classified anomalous (score ≥ threshold)."""
        if self.threshold is None:
            raise ModelError("the model has no threshold: train it first")
        return (self.score(data) >= self.threshold).astype(np.int64)

    # -- scoring -------------------------------------------------------------------------------

    def score(self, data: WindowSet | np.ndarray) -> np.ndarray:
        """The anomaly score of every window (float64)."""
        return self.score_details(data)["score"]

    def score_details(self, data: WindowSet | np.ndarray) -> dict[str, np.ndarray]:
        z = self.scale(data.x if isinstance(data, WindowSet) else data)
        return self._details(self._run(z), z)

    def scale(self, x: np.ndarray) -> np.ndarray:
        if self.scaler is None:
            raise ModelError("the model has no scaler: train it or import weights first")
        x = np.asarray(x)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.window, len(self.columns)):
            raise ModelError(f"windows must be n × {self.window} × {len(self.columns)}, got shape {x.shape}")
        return self.scaler.transform(x)

    def _run(self, z: np.ndarray) -> list[np.ndarray]:
        """Scorer outputs for scaled windows, at batch shape 1 or SCORE_BATCH only."""
        if self.scorer is None:
            raise ModelError("the model has no network: initialize_new_weights() or import_weights() first")
        n = z.shape[0]
        if n == 1:
            return [np.asarray(o) for o in _as_list(self.scorer.predict_on_batch(z))]
        chunks: list[list[np.ndarray]] = []
        for lo in range(0, n, SCORE_BATCH):
            part = z[lo : lo + SCORE_BATCH]
            m = part.shape[0]
            if m < SCORE_BATCH:
                part = np.concatenate([part, np.zeros((SCORE_BATCH - m,) + part.shape[1:], part.dtype)])
            chunks.append([np.asarray(o)[:m] for o in _as_list(self.scorer.predict_on_batch(part))])
        if not chunks:
            return [np.zeros((0,) + tuple(o.shape[1:])) for o in self.scorer.outputs]
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]

    def explain(self, window: np.ndarray) -> list[tuple[int, float, str]]:
        """(column index, contribution, direction) for one raw window, largest contribution
        first; direction is ``up``/``down`` from the newest row against the training mean."""
        z = self.scale(window)
        contrib = self._contributions(z)
        newest = z[0, -1, :]
        order = np.argsort(-contrib, kind="stable")
        return [(int(j), float(contrib[j]), "up" if newest[j] >= 0 else "down") for j in order]

    def _contributions(self, z: np.ndarray) -> np.ndarray:
        """Occlusion: score drop when one column is replaced by its mean (0 after scaling)."""
        base = float(self._details(self._run(z), z)["score"][0])
        c = z.shape[2]
        occluded = np.repeat(z, c, axis=0)
        occluded[np.arange(c), :, np.arange(c)] = 0.0
        scores = self._details(self._run(occluded), occluded)["score"]
        return base - scores

    # -- persistence -----------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        if self.scaler is None or self.threshold is None:
            raise ModelError("only a trained model can be saved (no scaler or threshold yet)")
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.KIND,
            "window": self.window,
            "columns": self.columns,
            "filters": self.filters,
            "latent": self.latent,
            "seed": self.seed,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "score": self.score_kind,
            "scaler": self.scaler.to_json(),
            "latent_means": self.latent_means,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the model folder (weights + sidecar) atomically: a folder already at ``path`` is
        replaced only once the new one is complete."""
        folder = Path(path)
        meta = self.meta()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            self.net.save_weights(str(tmp / WEIGHTS_FILE))  # type: ignore[union-attr]
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
                folder.rename(old)
                tmp.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def _set_meta(self, meta: dict[str, Any]) -> None:
        self.window = int(meta["window"])
        self.columns = list(meta["columns"])
        self.filters = int(meta["filters"])
        self.latent = int(meta["latent"])
        self.seed = int(meta.get("seed", 0))
        self.threshold = None if meta.get("threshold") is None else float(meta["threshold"])
        self.threshold_rule = str(meta.get("threshold_rule", self.DEFAULT_RULE))
        self.score_kind = str(meta.get("score", "latent"))
        self.scaler = Scaler.from_json(meta["scaler"])
        self.latent_means = {k: list(map(float, v)) for k, v in (meta.get("latent_means") or {}).items()}
        self.info = dict(meta.get("info") or {})

    # -- for subclasses --------------------------------------------------------------------------

    def _build(self) -> None:
        raise NotImplementedError

    def _fit(
        self,
        epochs: int,
        batch_size: int,
        data: WindowSet,
        validation: WindowSet | None,
        verbose: int,
        callbacks: list[Any],
    ) -> dict[str, list[float]]:
        raise NotImplementedError

    def _calibrate(self, data: WindowSet, validation: WindowSet | None) -> None:
        raise NotImplementedError

    def _details(self, outputs: list[np.ndarray], z: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _val_f1_threshold(self, validation: WindowSet | None) -> float:
        if validation is None or not len(validation) or not validation.y.any():
            raise ModelError(
                f"{self.KIND}: threshold rule 'val-f1' needs anomalous validation windows, the validation part has none"
            )
        return best_f1_threshold(self.score(validation), validation.y)


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


class AutoencoderModel(DeepModel):
    KIND = "ae"
    DEFAULT_RULE = "lowest"
    NEEDS_BOTH_CLASSES = False

    def _build(self) -> None:
        w, c = self.window, len(self.columns)
        inp = keras.Input((w, c), name="window")
        h = _conv_stack(inp, self.filters)
        z = keras.layers.Dense(self.latent, name="latent")(h)
        d = keras.layers.Dense(w * self.filters, activation="relu", name="dec_dense")(z)
        d = keras.layers.Reshape((w, self.filters), name="dec_reshape")(d)
        d = keras.layers.Conv1D(self.filters, 3, padding="same", activation="relu", name="dec_conv1")(d)
        out = keras.layers.Conv1D(c, 3, padding="same", name="reconstruction")(d)
        self.net = keras.Model(inp, out, name="conv_autoencoder")
        self.net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        self.scorer = keras.Model(inp, [z, out], name="ae_scorer")

    def _fit(self, epochs, batch_size, data, validation, verbose, callbacks):
        normal = data.y == 0
        if not normal.any():
            raise ModelError("ae: no normal training windows (the autoencoder trains on normal windows only)")
        z = self.scale(data.x[normal])
        val = None
        if validation is not None and (validation.y == 0).any():
            zv = self.scale(validation.x[validation.y == 0])
            val = (zv, zv)
        h = self.net.fit(
            z,
            z,
            epochs=epochs,
            batch_size=batch_size,
            validation_data=val,
            verbose=verbose,  # type: ignore[union-attr]
            callbacks=callbacks,
            shuffle=True,
        )
        return h.history

    def _calibrate(self, data, validation):
        z = self.scale(data.x[data.y == 0])
        latent = self._run(z)[0].astype(np.float64)
        self.latent_means = {"normal": latent.mean(axis=0).tolist()}
        if self.threshold_rule == "val-f1":
            self.threshold = self._val_f1_threshold(validation)
            self.info["threshold_from"] = "validation F1"
            return
        for name, part in (("validation", validation), ("training", data)):
            if part is not None and part.y.any():
                self.threshold = float(self.score(part.subset(part.y == 1)).min())
                self.info["threshold_from"] = f"lowest {self.score_kind} score of the {name} anomalous windows"
                return
        raise ModelError(
            "ae: threshold rule 'lowest' needs anomalous windows in validation or training, there are none"
        )

    def _details(self, outputs, z):
        latent, recon = outputs[0].astype(np.float64), outputs[1].astype(np.float64)
        mean = np.array(self.latent_means.get("normal", np.zeros(latent.shape[1])), dtype=np.float64)
        dist = np.linalg.norm(latent - mean, axis=1) if len(latent) else np.zeros(0)
        err = (recon - z.astype(np.float64)) ** 2
        recon_err = err.mean(axis=(1, 2)) if len(err) else np.zeros(0)
        return {
            "score": dist if self.score_kind == "latent" else recon_err,
            "latent_distance": dist,
            "reconstruction_error": recon_err,
            "column_error": err.mean(axis=1) if len(err) else np.zeros((0, z.shape[2])),
        }

    def _contributions(self, z):
        """Per-column reconstruction error of the window (mean over its rows)."""
        return self._details(self._run(z), z)["column_error"][0]


class ClassifierModel(DeepModel):
    KIND = "cnn"

    def _build(self) -> None:
        w, c = self.window, len(self.columns)
        inp = keras.Input((w, c), name="window")
        h = _conv_stack(inp, self.filters)
        h = keras.layers.Dense(self.latent, activation="relu", name="latent")(h)
        out = keras.layers.Dense(1, activation="sigmoid", name="probability")(h)
        self.net = keras.Model(inp, out, name="conv_classifier")
        self.net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        self.scorer = self.net

    def _fit(self, epochs, batch_size, data, validation, verbose, callbacks):
        if data.y.all() or not data.y.any():
            raise ModelError("cnn: training needs both normal and anomalous windows")
        z = self.scale(data.x)
        y = data.y.astype(np.float32)
        pos = float(y.mean())
        weights = {0: 0.5 / (1 - pos), 1: 0.5 / pos}
        val = (
            (self.scale(validation.x), validation.y.astype(np.float32))
            if validation is not None and len(validation)
            else None
        )
        h = self.net.fit(
            z,
            y,
            epochs=epochs,
            batch_size=batch_size,
            validation_data=val,
            verbose=verbose,  # type: ignore[union-attr]
            callbacks=callbacks,
            class_weight=weights,
            shuffle=True,
        )
        return h.history

    def _calibrate(self, data, validation):
        if self.threshold_rule == "val-f1":
            self.threshold = self._val_f1_threshold(validation)
            self.info["threshold_from"] = "validation F1"
        else:
            self.threshold = 0.5
            self.info["threshold_from"] = "fixed 0.5"

    def _details(self, outputs, z):
        return {"score": outputs[0].astype(np.float64).reshape(-1)}


class SiameseModel(DeepModel):
    KIND = "siamese"
    MARGIN = 1.0

    def _build(self) -> None:
        w, c = self.window, len(self.columns)
        inp = keras.Input((w, c), name="window")
        h = _conv_stack(inp, self.filters)
        e = keras.layers.Dense(self.latent, name="latent")(h)
        encoder = keras.Model(inp, e, name="encoder")
        a = keras.Input((w, c), name="left")
        b = keras.Input((w, c), name="right")
        pair = keras.layers.Concatenate(name="pair")([encoder(a), encoder(b)])
        self.net = keras.Model([a, b], pair, name="siamese")
        latent = self.latent
        margin = self.MARGIN

        def contrastive(y_true: Any, y_pred: Any) -> Any:
            ops = keras.ops
            d2 = ops.sum(ops.square(y_pred[:, :latent] - y_pred[:, latent:]), axis=1)
            d = ops.sqrt(ops.maximum(d2, 1e-12))
            same = ops.reshape(ops.cast(y_true, "float32"), (-1,))
            return ops.mean(same * d2 + (1.0 - same) * ops.square(ops.maximum(margin - d, 0.0)))

        self.net.compile(optimizer=keras.optimizers.Adam(1e-3), loss=contrastive)
        self.scorer = encoder

    def _pairs(
        self, y: np.ndarray, rng: np.random.Generator, per_window: int = 2
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Index pairs, half same-class and half different-class, ``per_window`` per window."""
        idx = {0: np.flatnonzero(y == 0), 1: np.flatnonzero(y == 1)}
        left = np.repeat(np.arange(len(y)), per_window)
        same = rng.random(len(left)) < 0.5
        right = np.empty_like(left)
        for cls in (0, 1):
            for want_same in (True, False):
                sel = (y[left] == cls) & (same == want_same)
                pool = idx[cls] if want_same else idx[1 - cls]
                right[sel] = rng.choice(pool, size=int(sel.sum()))
        return left, right, same.astype(np.float32)

    def _fit(self, epochs, batch_size, data, validation, verbose, callbacks):
        if data.y.all() or not data.y.any():
            raise ModelError("siamese: training needs both normal and anomalous windows")
        rng = np.random.default_rng(self.seed)
        z = self.scale(data.x)
        li, ri, same = self._pairs(data.y, rng)
        val = None
        if validation is not None and len(validation) and validation.y.any() and not validation.y.all():
            zv = self.scale(validation.x)
            vl, vr, vs = self._pairs(validation.y, rng, 1)
            val = ([zv[vl], zv[vr]], vs)
        h = self.net.fit(
            [z[li], z[ri]],
            same,
            epochs=epochs,
            batch_size=batch_size,
            validation_data=val,  # type: ignore[union-attr]
            verbose=verbose,
            callbacks=callbacks,
            shuffle=True,
        )
        return h.history

    def _calibrate(self, data, validation):
        emb = self._run(self.scale(data.x))[0].astype(np.float64)
        self.latent_means = {
            "normal": emb[data.y == 0].mean(axis=0).tolist(),
            "anomalous": emb[data.y == 1].mean(axis=0).tolist(),
        }
        if self.threshold_rule == "val-f1":
            self.threshold = self._val_f1_threshold(validation)
            self.info["threshold_from"] = "validation F1"
        else:
            self.threshold = 0.5
            self.info["threshold_from"] = "nearer class mean (0.5)"

    def _details(self, outputs, z):
        emb = outputs[0].astype(np.float64)
        if not self.latent_means:
            raise ModelError("siamese: no class means yet, train first")
        dn = np.linalg.norm(emb - np.array(self.latent_means["normal"]), axis=1)
        da = np.linalg.norm(emb - np.array(self.latent_means["anomalous"]), axis=1)
        return {"score": dn / np.maximum(dn + da, 1e-12), "distance_normal": dn, "distance_anomalous": da}


MODELS: dict[str, type[DeepModel]] = {"ae": AutoencoderModel, "cnn": ClassifierModel, "siamese": SiameseModel}


def new_model(kind: str, **kwargs: Any) -> DeepModel:
    if kind not in MODELS:
        raise ModelError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS)}")
    return MODELS[kind](**kwargs)


def _model_folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name == META_FILE:
        p = p.parent
    if not p.is_dir() or not (p / META_FILE).exists():
        raise ModelError(
            f"{path}: not a model folder (expected {META_FILE} and {WEIGHTS_FILE} inside; write one with 'atomwatch train')"
        )
    return p


def read_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar of a model folder, checked."""
    folder = _model_folder(path)
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{folder / META_FILE}: cannot read ({e})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{folder / META_FILE}: not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{folder / META_FILE}: format version {version!r}, this atomwatch reads version {FORMAT_VERSION}"
        )
    missing = [k for k in ("kind", "window", "columns", "filters", "latent", "scaler") if k not in meta]
    if missing:
        raise ModelError(f"{folder / META_FILE}: missing {missing}")
    if meta["kind"] not in MODELS:
        raise ModelError(f"{folder / META_FILE}: unknown kind {meta['kind']!r}")
    return meta


def load_model(path: str | Path) -> DeepModel:
    """A saved model of any kind, ready to score."""
    meta = read_meta(path)
    model = MODELS[meta["kind"]]()
    model.import_weights(path)
    return model

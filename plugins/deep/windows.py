"""FIFO windows for the deep detectors: recordings → labelled windows, split 70/15/15 by time.

What lives here (no Keras, numpy only, so the CLI can check its input before paying for the
Keras import):

* :func:`fifo_windows` — the proposal's FIFO "image": window ``i`` holds rows ``i-W+1 … i`` (the
  last ``W`` ticks, oldest first) and every column (metric) of the trace.
* **Window label = the label of its last row** (and its class = the class of its last row): a
  window is anomalous from the tick the anomaly is on, exactly when a live detector scoring the
  newest window should flag it.
* :func:`split_bounds` — each recording is split **by time** into the first 70 % of its rows
  (train), the next 15 % (validation) and the last 15 % (test). Windows are cut *inside* each part,
  so no window straddles two parts and nothing is shuffled across time.
* **Held-out classes**: a window that contains any row of a held-out anomaly class is removed from
  train and validation; all such windows (whatever part they fall in) go to the test set, as extra
  contiguous pieces. So the model never sees a held-out class, and the test measures how it meets
  it.
* :func:`align_columns` — a trace's columns mapped to the model's columns by name
  (``<vm>/<metric>``); a model column missing from the trace is all NaN. NaN cells are replaced by
  the column's training mean when the model scales the windows (:class:`Scaler`).
* :class:`Scaler` — per-column mean and standard deviation, fitted on the *normal rows of the
  training part* only, and a signed log squash of the standardised values.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atomwatch.traces import Labels, Trace, TraceError, labels_beside, read_labels, read_trace

log = logging.getLogger(__name__)

#: fractions of each recording's rows: train, validation, test (by time, in this order)
SPLIT = (0.70, 0.15, 0.15)
PARTS = ("train", "val", "test")


class WindowError(ValueError):
    """Input that cannot be made into windows; the text names the input and what is wrong."""


@dataclass
class Recording:
    """One labelled trace, its values aligned to a column list."""

    path: str
    columns: list[str]
    values: np.ndarray  # rows × columns, float64, NaN = unknown
    label: np.ndarray  # 0/1 per row
    klass: np.ndarray  # class name per row (object array)
    timestamps: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])


@dataclass
class WindowSet:
    """Windows with their labels. ``piece`` numbers contiguous runs (a piece never crosses a
    recording, a split boundary or a gap), so point-adjusted scoring stays inside each run."""

    x: np.ndarray  # n × W × C float64 (raw, unscaled, NaN = unknown)
    y: np.ndarray  # n, 0/1
    klass: np.ndarray  # n, class name of the last row
    piece: np.ndarray  # n, int id of the contiguous run
    row: np.ndarray  # n, index of the last row in its recording
    source: np.ndarray  # n, recording path
    columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @classmethod
    def empty(cls, window: int, columns: Sequence[str]) -> WindowSet:
        c = len(columns)
        return cls(
            np.zeros((0, window, c)),
            np.zeros(0, np.int64),
            np.array([], dtype=object),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.array([], dtype=object),
            list(columns),
        )

    def subset(self, mask: np.ndarray) -> WindowSet:
        return WindowSet(
            self.x[mask],
            self.y[mask],
            self.klass[mask],
            self.piece[mask],
            self.row[mask],
            self.source[mask],
            self.columns,
        )

    @staticmethod
    def concat(sets: Sequence[WindowSet], window: int, columns: Sequence[str]) -> WindowSet:
        sets = [s for s in sets if len(s)]
        if not sets:
            return WindowSet.empty(window, columns)
        # renumber pieces so that they stay distinct across the sets
        pieces, offset = [], 0
        for s in sets:
            pieces.append(s.piece + offset)
            offset += int(s.piece.max()) + 1 if len(s) else 0
        return WindowSet(
            np.concatenate([s.x for s in sets]),
            np.concatenate([s.y for s in sets]),
            np.concatenate([s.klass for s in sets]),
            np.concatenate(pieces),
            np.concatenate([s.row for s in sets]),
            np.concatenate([s.source for s in sets]),
            list(columns),
        )

    def classes(self) -> list[str]:
        return sorted({str(k) for k in self.klass[self.y == 1]})


def load_recording(
    path: str | Path, columns: Sequence[str] | None = None, deltas: Mapping[str, float] | None = None
) -> Recording:
    """A recording folder (values.csv + labels.csv) or a trace with a ``<name>.labels.csv`` beside
    it, aligned to ``columns`` (default: the trace's own columns). With ``deltas`` (metric → Δ,
    ``"*"`` for the others) the values are the controller's copies under ATOM's tracking, what a
    live detector sees when its agents track at those Δ."""
    p = Path(path)
    trace = read_trace(p)
    if deltas is not None:
        from atomwatch.series import SeriesKey
        from atomwatch.trace_rows import tracked_values

        copies, _ = tracked_values([SeriesKey.from_column(c) for c in trace.columns], trace.values, deltas)
        trace = dataclasses.replace(trace, values=copies)
    labels_path = _labels_path(p)
    labels = read_labels(labels_path, rows=trace.rows)
    return recording_of(trace, labels, columns)


def _labels_path(p: Path) -> Path:
    lp = labels_beside(p)
    if lp is None:
        expected = p / "labels.csv" if p.is_dir() else "NAME.labels.csv beside it"
        raise WindowError(
            f"{p}: no labels found (expected {expected}); training and evaluation need labelled recordings"
        )
    return lp


def recording_of(trace: Trace, labels: Labels, columns: Sequence[str] | None = None) -> Recording:
    cols = list(trace.columns) if columns is None else list(columns)
    missing = [c for c in cols if c not in set(trace.columns)]
    if len(missing) == len(cols):
        raise WindowError(
            f"{trace.path}: none of the model's {len(cols)} columns is in this trace (model: {cols[:3]}…, "
            f"trace: {list(trace.columns)[:3]}…); columns are matched by name <vm>/<metric>"
        )
    if missing:
        log.warning(
            "%s: %d of the model's %d columns are missing (%s…); they take the training mean",
            trace.path,
            len(missing),
            len(cols),
            ", ".join(missing[:3]),
        )
    values = align_columns(trace.columns, trace.values, cols)
    return Recording(
        trace.path, cols, values, labels.label.astype(np.int64), np.array(labels.klass, dtype=object), trace.timestamps
    )


def align_columns(have: Sequence[str], values: np.ndarray, want: Sequence[str]) -> np.ndarray:
    """``values`` (rows × ``have``) re-ordered to ``want``; a wanted column not in ``have`` is NaN."""
    index = {c: j for j, c in enumerate(have)}
    out = np.full((values.shape[0], len(want)), np.nan)
    for k, c in enumerate(want):
        j = index.get(c)
        if j is not None:
            out[:, k] = values[:, j]
    return out


def fifo_windows(values: np.ndarray, window: int) -> np.ndarray:
    """All FIFO windows of a rows × columns array: n−W+1 windows of W rows (oldest first)."""
    if window < 1:
        raise WindowError(f"window size must be ≥ 1, got {window}")
    n = values.shape[0]
    if n < window:
        return np.zeros((0, window, values.shape[1]))
    v = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # (n-W+1, C, W)
    return np.ascontiguousarray(np.swapaxes(v, 1, 2))


def split_bounds(rows: int, fractions: Sequence[float] = SPLIT) -> list[tuple[int, int]]:
    """Half-open row ranges of train, validation, test: consecutive, by time."""
    a = int(round(rows * fractions[0]))
    b = int(round(rows * (fractions[0] + fractions[1])))
    return [(0, a), (a, b), (b, rows)]


def _windows_of_range(rec: Recording, lo: int, hi: int, window: int, piece: int) -> WindowSet:
    x = fifo_windows(rec.values[lo:hi], window)
    n = x.shape[0]
    last = np.arange(lo + window - 1, lo + window - 1 + n)
    return WindowSet(
        x, rec.label[last], rec.klass[last], np.full(n, piece), last, np.full(n, rec.path, dtype=object), rec.columns
    )


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], mask.astype(np.int64), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


@dataclass
class Dataset:
    """Train, validation and test windows of one or more recordings."""

    window: int
    columns: list[str]
    holdout: list[str]
    train: WindowSet
    val: WindowSet
    test: WindowSet
    #: per test window: True when its class (or a row inside it) is held out
    test_heldout: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def normal_train_rows(self) -> np.ndarray:
        """The rows the scaler is fitted on: the newest row of every *normal* training window
        (every training row once, except the first W−1 rows of each contiguous piece)."""
        return self.train.x[self.train.y == 0, -1, :]


def build_dataset(
    paths: Iterable[str | Path],
    window: int,
    columns: Sequence[str] | None = None,
    holdout: Sequence[str] = (),
    deltas: Mapping[str, float] | None = None,
) -> Dataset:
    """Windows of every recording, split 70/15/15 by time within each recording; held-out classes
    only in the test set. ``columns`` defaults to the first recording's columns; ``deltas`` as in
    :func:`load_recording`."""
    paths = list(paths)
    if not paths:
        raise WindowError("no recordings given")
    recs: list[Recording] = []
    cols = list(columns) if columns is not None else None
    for p in paths:
        try:
            rec = load_recording(p, cols, deltas)
        except TraceError as e:
            raise WindowError(str(e)) from None
        if cols is None:
            cols = rec.columns
        recs.append(rec)
    assert cols is not None
    held = set(holdout)
    known = {str(k) for r in recs for k in r.klass}
    unknown = sorted(held - known)
    if unknown:
        raise WindowError(
            f"--holdout-class {unknown}: no such class in the recordings (classes: {sorted(known - {'normal'})})"
        )
    parts: dict[str, list[WindowSet]] = {k: [] for k in PARTS}
    held_sets: list[WindowSet] = []
    piece = 0
    for rec in recs:
        if rec.rows < window * 3:
            raise WindowError(f"{rec.path}: {rec.rows} rows, too few for windows of {window} rows in three parts")
        is_held = np.array([str(k) in held for k in rec.klass], dtype=bool)
        for name, (lo, hi) in zip(PARTS, split_bounds(rec.rows)):
            ws = _windows_of_range(rec, lo, hi, window, piece)
            piece += 1
            if not len(ws):
                continue
            # a window touches a held-out row if any of its W rows is held out
            touched = (
                np.array([is_held[r - window + 1 : r + 1].any() for r in ws.row]) if held else np.zeros(len(ws), bool)
            )
            if name == "test":
                parts["test"].append(ws)
                continue
            if touched.any():
                for s, e in _runs(touched):
                    sub = ws.subset(np.arange(s, e))
                    sub.piece = np.full(len(sub), piece)
                    piece += 1
                    held_sets.append(sub)
            keep = ws.subset(~touched)
            # removing windows may split the part: renumber the pieces at the gaps
            if len(keep) and touched.any():
                gaps = np.concatenate(([0], (np.diff(keep.row) != 1).astype(np.int64)))
                keep.piece = piece + np.cumsum(gaps)
                piece = int(keep.piece.max()) + 1
            parts[name].append(keep)
    test = WindowSet.concat(parts["test"] + held_sets, window, cols)
    rows_held = np.array([str(k) in held for k in test.klass], dtype=bool) if len(test) else np.zeros(0, bool)
    n_test_main = sum(len(s) for s in parts["test"])
    heldout_mask = np.zeros(len(test), bool)
    heldout_mask[n_test_main:] = True
    heldout_mask |= rows_held
    return Dataset(
        window,
        cols,
        sorted(held),
        WindowSet.concat(parts["train"], window, cols),
        WindowSet.concat(parts["val"], window, cols),
        test,
        heldout_mask,
    )


def whole_windows(
    paths: Iterable[str | Path], window: int, columns: Sequence[str], deltas: Mapping[str, float] | None = None
) -> WindowSet:
    """Every window of every recording, one piece per recording — to test a model on recordings
    it never trained on (no split); ``deltas`` as in :func:`load_recording`."""
    sets = []
    for piece, p in enumerate(paths):
        try:
            rec = load_recording(p, columns, deltas)
        except TraceError as e:
            raise WindowError(str(e)) from None
        sets.append(_windows_of_range(rec, 0, rec.rows, window, piece))
    return WindowSet.concat(sets, window, columns)


@dataclass
class Scaler:
    """Per-column standardisation, then a signed log squash ``sign(z)·log1p(|z|)`` so that a
    metric jumping by thousands of standard deviations (a flood) stays in a range the networks
    train on; NaN (unknown) cells become the column mean (0 after scaling)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray, min_std: float = 1e-6) -> Scaler:
        if rows.shape[0] == 0:
            raise WindowError("no normal training rows to fit the scaler on")
        with np.errstate(all="ignore"):
            mean = np.nanmean(rows, axis=0)
            std = np.nanstd(rows, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > min_std), std, 1.0)
        return cls(mean.astype(np.float64), std.astype(np.float64))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scaled float32 windows (… × C); NaN → 0 (the training mean)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        z = np.where(np.isfinite(z), z, 0.0)
        return (np.sign(z) * np.log1p(np.abs(z))).astype(np.float32)

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_json(cls, d: dict[str, list[float]]) -> Scaler:
        return cls(np.array(d["mean"], dtype=np.float64), np.array(d["std"], dtype=np.float64))

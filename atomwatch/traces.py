"""Reading CSV traces and recordings, the offline input of ``track``, ``detect``, ``train`` and
the replay collector.

A *trace* is a CSV file (optionally gzip-compressed): the first row holds the column names, one
row per tick after it. A first column named ``timestamp`` is taken as time (seconds since the
epoch or any increasing number, or an ISO 8601 date-time, UTC when it names no zone); a first column named ``index`` is a row number and is dropped.
Every other column is a series, named ``<vm>/<metric>`` (or just ``<metric>``).

A *recording* is a folder written by ``atomwatch lab record`` or ``atomwatch coredns-sim record``::

    values.csv     the trace (timestamp + one column per VM×metric)
    labels.csv     row,timestamp,label,class,vm — label 1 while an anomaly is on, its class
                   (``normal`` when label is 0) and the VM it runs in
    scenario.json  what was run, with which parameters
    README.md      a short description
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .lazy import lazy_import

# numpy loads on first use: plugins import this module when they load, and `atomwatch --help` loads them
np = lazy_import("numpy", globals(), "np")


class TraceError(ValueError):
    """A trace or label file that cannot be read; the text names the file, row and column."""


@dataclass
class Trace:
    path: str
    columns: list[str]
    values: np.ndarray  # rows × columns, float64, NaN for empty cells
    timestamps: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])


@dataclass
class Labels:
    path: str
    label: np.ndarray  # int 0/1 per row
    klass: list[str]  # class name per row ("normal" where label is 0)
    vm: list[str]


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def resolve(path: str | Path) -> tuple[Path, Path | None]:
    """(values file, labels file or None) for a trace file or a recording folder."""
    p = Path(path)
    if p.is_dir():
        values = p / "values.csv"
        if not values.exists():
            raise TraceError(f"{p}: a recording folder must hold values.csv")
        labels = p / "labels.csv"
        return values, labels if labels.exists() else None
    if not p.exists():
        raise TraceError(f"{p}: no such file")
    return p, None


def labels_beside(path: str | Path) -> Path | None:
    """The labels file that goes with a trace or recording, or None: a folder's ``labels.csv``,
    or ``<name>.labels.csv`` beside ``<name>.csv`` / ``<name>.csv.gz`` (as ``atomwatch evaluate`` finds them)."""
    p = Path(path)
    if p.is_dir():
        lp = p / "labels.csv"
    else:
        name = p.name
        for suffix in (".csv.gz", ".csv"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        lp = p.with_name(name + ".labels.csv")
    return lp if lp.is_file() else None


def read_trace(path: str | Path) -> Trace:
    values_path, _ = resolve(path)
    try:
        with _open_text(values_path) as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise TraceError(f"{values_path}: empty file, expected a header row") from None
            header = [h.strip() for h in header]
            first = header[0].lower() if header else ""
            skip = 1 if first in ("timestamp", "index", "") and len(header) > 1 else 0
            has_ts = first == "timestamp"
            columns = header[skip:]
            if not columns:
                raise TraceError(f"{values_path}: the header names no series column")
            if len(set(columns)) != len(columns):
                dup = sorted({c for c in columns if columns.count(c) > 1})
                raise TraceError(f"{values_path}: duplicate column names {dup}")
            rows: list[list[float]] = []
            ts: list[float] = []
            for lineno, rec in enumerate(reader, start=2):
                if not rec or all(not c.strip() for c in rec):
                    continue
                if len(rec) != len(header):
                    raise TraceError(f"{values_path} line {lineno}: {len(rec)} cells, the header has {len(header)}")
                if has_ts:
                    ts.append(_timestamp(values_path, lineno, rec[0]))
                rows.append([_cell(values_path, lineno, c, v) for c, v in zip(columns, rec[skip:])])
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise TraceError(f"{values_path}: cannot read ({e})") from None
    arr = np.array(rows, dtype=np.float64).reshape(len(rows), len(columns))
    return Trace(str(values_path), columns, arr, np.array(ts) if has_ts else None)


def _timestamp(path: Path, lineno: int, text: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 date-time (UTC when no zone)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise TraceError(
            f"{path} line {lineno} column 'timestamp': {text!r} is neither a number nor an ISO 8601 date-time"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _cell(path: Path, lineno: int, column: str, text: str) -> float:
    text = text.strip()
    if text == "" or text.lower() in ("nan", "na", "null"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise TraceError(f"{path} line {lineno} column {column!r}: {text!r} is not a number") from None


def read_labels(path: str | Path, rows: int | None = None) -> Labels:
    """Read ``labels.csv`` (or any CSV with a ``label`` column, 0/1 or true/false)."""
    p = Path(path)
    if p.is_dir():
        p = p / "labels.csv"
    try:
        with _open_text(p) as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "label" not in [f.strip() for f in reader.fieldnames]:
                raise TraceError(f"{p}: needs a 'label' column (0/1), has {reader.fieldnames}")
            label, klass, vm = [], [], []
            for lineno, rec in enumerate(reader, start=2):
                raw = (rec.get("label") or "").strip().lower()
                if raw in ("1", "true", "yes", "1.0"):
                    v = 1
                elif raw in ("0", "false", "no", "0.0"):
                    v = 0
                else:
                    raise TraceError(f"{p} line {lineno} column 'label': {raw!r} is not 0/1")
                label.append(v)
                klass.append((rec.get("class") or ("anomaly" if v else "normal")).strip())
                vm.append((rec.get("vm") or "").strip())
    except FileNotFoundError:
        raise TraceError(f"{p}: no such file") from None
    if rows is not None and len(label) != rows:
        raise TraceError(f"{p}: {len(label)} label rows, but the trace has {rows} rows")
    return Labels(str(p), np.array(label, dtype=np.int64), klass, vm)


def write_trace(path: str | Path, columns: list[str], values: np.ndarray, timestamps: np.ndarray | None = None) -> None:
    """Write a trace in the format :func:`read_trace` reads (NaN as an empty cell)."""
    p = Path(path)
    with p.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow((["timestamp"] if timestamps is not None else []) + list(columns))
        for i, row in enumerate(np.asarray(values, dtype=np.float64)):
            cells = ["" if math.isnan(v) else repr(float(v)) for v in row]
            if timestamps is not None:
                cells.insert(0, repr(float(timestamps[i])))
            w.writerow(cells)

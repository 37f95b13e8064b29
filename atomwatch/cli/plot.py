"""``atomwatch plot DATA --detector NAME --out FILE.png``: a detector's score against its threshold
over time (ATOM's Figure 4: SPE against Q_α), abnormal rows marked, the detector's warm-up and
the labelled anomaly segments shaded, the blamed columns named, the legend below the axes.
Needs matplotlib (the ``plot`` extra); draws headless (Agg).

What lives here: :func:`run_detector_for_plot` (score, threshold and readiness per row, and the
anomalies, from the detector's ``status()`` after every row — exactly what the live controller's
/metrics would have shown), :func:`figure` (the matplotlib figure of one run) and the command.
What does not: reading traces and labels (:mod:`atomwatch.traces`), the detectors themselves.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atomwatch.config import ConfigError
from atomwatch.detectors import DetectorError, UnknownDetector, anomalies_of, find_factory
from atomwatch.trace_rows import trace_rows
from atomwatch.traces import Labels, Trace, TraceError, labels_beside, read_labels, read_trace
from atomwatch.types import Anomaly

from ._common import add_plugin_arguments, options, plugin_manager, role_keys

#: timestamps at or above this (2001-09-09 as seconds since the epoch) are drawn as UTC dates
EPOCH_DATES_FROM = 1e9
#: blamed columns named in the title, and abnormal episodes named on the plot
TITLE_BLAMED = 3
EPISODE_NOTES = 6
#: abnormal rows at most this many rows apart belong to one episode
EPISODE_GAP = 5
_CLASS_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="CSV trace or recording folder")
    p.add_argument("--detector", default="pca-spe", help="detector name (default pca-spe)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--labels",
        help="labels CSV (default: the recording's labels.csv, or NAME.labels.csv beside NAME.csv, if any)",
    )
    p.add_argument("--title", help="figure title (the blamed columns are added below it)")
    add_plugin_arguments(p)


@dataclass
class PlotRun:
    """One detector over one trace: per row its score, threshold and readiness, and its anomalies."""

    scores: np.ndarray
    thresholds: np.ndarray
    ready: np.ndarray | None  # bool per row; None when the detector's status says nothing of it
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def abnormal(self) -> list[int]:
        return sorted({a.index for a in self.anomalies})

    def blamed(self) -> list[tuple[str, int]]:
        """(column, rows it was blamed at), most blamed first."""
        count: Counter[str] = Counter()
        for a in self.anomalies:
            for col in {b.column.column for b in a.blame}:
                count[col] += 1
        return sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))


def _number(status: dict, *keys: str) -> float:
    for k in keys:
        v = status.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return math.nan


def _ready(status: dict, score: float) -> bool | None:
    """The detector's own ``ready`` flag; else, for a detector that reports a score, whether it has
    one yet; else None (nothing known)."""
    if isinstance(status.get("ready"), bool):
        return status["ready"]
    if "score" in status or "spe" in status:
        return not math.isnan(score)
    return None


def run_detector_for_plot(detector, rows) -> PlotRun:
    scores, thresholds, ready, anomalies = [], [], [], []
    known = False
    name = getattr(detector, "name", "?")
    for row in rows:
        try:
            result = detector.update(row)
        except Exception as e:
            raise DetectorError(f"detector {name!r} failed at row {row.index}: {type(e).__name__}: {e}") from e
        found = anomalies_of(result, name, row.index)
        status = detector.status() if hasattr(detector, "status") else {}
        score = _number(status, "score", "spe")
        threshold = _number(status, "threshold", "q_alpha")
        r = _ready(status, score)
        known = known or r is not None
        if found:
            anomalies.extend(found)
            score = found[0].score if math.isnan(score) else score
            threshold = found[0].threshold if math.isnan(threshold) else threshold
            r = True if r is None else r
        scores.append(score)
        thresholds.append(threshold)
        ready.append(bool(r))
    return PlotRun(np.array(scores), np.array(thresholds), np.array(ready, dtype=bool) if known else None, anomalies)


def series(detector, rows) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(score per row, threshold per row, indices of abnormal rows)."""
    run = run_detector_for_plot(detector, rows)
    return run.scores, run.thresholds, run.abnormal


def spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, stop) row ranges where ``mask`` is true."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def time_axis(trace: Trace) -> tuple[np.ndarray, str, bool]:
    """(x per row, x axis label, whether x is matplotlib dates). Timestamps when the trace has
    finite, non-decreasing ones; row numbers otherwise, labelled as such."""
    ts = trace.timestamps
    n = trace.rows
    if ts is None or len(ts) != n or n == 0:
        return np.arange(n, dtype=float), "row (tick number; the trace has no timestamps)", False
    if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) < 0):
        return np.arange(n, dtype=float), "row (tick number; the trace's timestamps are not increasing)", False
    if ts[0] >= EPOCH_DATES_FROM:
        import matplotlib.dates as mdates

        return mdates.date2num((ts * 1e6).astype("datetime64[us]")), "time (UTC)", True
    return ts - ts[0], "time since the first row (s)", False


def _edges(x: np.ndarray) -> np.ndarray:
    """x of every row's start, and one step past the last row (so a span covers whole rows)."""
    step = float(np.median(np.diff(x))) if len(x) > 1 else 1.0
    return np.append(x, x[-1] + (step if step > 0 else 1.0))


def _episodes(abnormal: list[int]) -> list[tuple[int, int]]:
    """Abnormal rows grouped into [first, last] episodes (gaps of at most EPISODE_GAP rows)."""
    out: list[tuple[int, int]] = []
    for i in abnormal:
        if out and i - out[-1][1] <= EPISODE_GAP:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _label_segments(labels: Labels) -> list[tuple[int, int, str, int]]:
    """(start, stop, class, label) of every stretch of one class that is labelled 1 or names a
    class other than ``normal`` (a benign class kept at label 0, like the simulator's flash crowd)."""
    n = len(labels.label)
    key = [(labels.klass[i] if i < len(labels.klass) else "", int(labels.label[i])) for i in range(n)]
    out, start = [], 0
    for i in range(1, n + 1):
        if i == n or key[i] != key[start]:
            klass, lab = key[start]
            if lab == 1 or (klass and klass != "normal"):
                out.append((start, i, klass or "anomaly", lab))
            start = i
    return out


def figure(
    trace: Trace,
    run: PlotRun,
    labels: Labels | None = None,
    detector: str = "pca-spe",
    title: str | None = None,
) -> Any:
    """The matplotlib Figure of one run (not saved; the caller saves or inspects it). Artists a
    reader may look for carry a gid: ``warm-up``, ``label:<class>``, ``episode``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    x, xlabel, dates = time_axis(trace)
    edges = _edges(x) if len(x) else x
    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=110, layout="constrained")
    pca = detector == "pca-spe"

    if labels is not None:
        colours: dict[str, str] = {}
        for start, stop, klass, lab in _label_segments(labels):
            first = klass not in colours
            colour = colours.setdefault(klass, _CLASS_COLOURS[len(colours) % len(_CLASS_COLOURS)])
            name = f"labelled: {klass}" if lab else f"{klass} (label 0)"
            span = ax.axvspan(
                edges[start],
                edges[stop],
                color=colour,
                alpha=0.18 if lab else 0.10,
                hatch=None if lab else "//",
                lw=0,
                label=name if first else "_nolegend_",
            )
            span.set_gid(f"label:{klass}")
    if run.ready is not None:
        for i, (start, stop) in enumerate(spans(~run.ready)):
            span = ax.axvspan(
                edges[start],
                edges[stop],
                facecolor="0.6",
                alpha=0.25,
                lw=0,
                label="warm-up (detector not ready)" if i == 0 else "_nolegend_",
            )
            span.set_gid("warm-up")

    ax.plot(x, run.scores, color="tab:blue", lw=0.9, label="score (SPE)" if pca else "score")
    ax.plot(x, run.thresholds, color="black", lw=1.0, ls="--", label="threshold (Q_α)" if pca else "threshold")
    abnormal = run.abnormal
    if abnormal:
        ax.scatter(
            x[abnormal],
            run.scores[abnormal],
            color="tab:red",
            s=12,
            zorder=3,
            label=f"abnormal ({len(abnormal)} rows)",
        )
    both = np.concatenate([run.scores, run.thresholds])
    if np.any(np.isfinite(both)) and np.nanmin(both) > 0:
        ax.set_yscale("log")

    # name the most blamed column of the longest abnormal episodes on the plot itself
    by_row: dict[int, Counter[str]] = {}
    for a in run.anomalies:
        by_row.setdefault(a.index, Counter()).update({b.column.column for b in a.blame})
    episodes = sorted(_episodes(abnormal), key=lambda e: e[0] - e[1])[:EPISODE_NOTES]
    notes: list[tuple[int, str]] = []
    for first, last in sorted(episodes):
        count: Counter[str] = Counter()
        for i in range(first, last + 1):
            count.update(by_row.get(i, Counter()))
        if count:
            column = sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            if not notes or notes[-1][1] != column:  # the same column again says nothing new
                notes.append((first, column))
    if notes:  # headroom above the data, so the notes sit clear of it
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.2 if ax.get_yscale() == "log" else hi + 0.2 * (hi - lo))
    for k, (first, column) in enumerate(notes):
        note = ax.text(
            x[first],
            0.97 - 0.07 * (k % 2),
            f" {column}",
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            color="tab:red",
            va="top",
            ha="left",
            bbox={"boxstyle": "square,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
            zorder=4,
        )
        note.set_gid("episode")

    if dates:
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    if len(x):
        ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score (log)" if ax.get_yscale() == "log" else "score")
    blamed = run.blamed()
    if blamed:
        names = ", ".join(f"{c} ({n} rows)" for c, n in blamed[:TITLE_BLAMED])
        more = f" and {len(blamed) - TITLE_BLAMED} more" if len(blamed) > TITLE_BLAMED else ""
        second = f"blamed: {names}{more}"
    elif abnormal:
        second = f"{len(abnormal)} abnormal rows, no column blamed"
    else:
        second = "no row above the threshold"
    ax.set_title(f"{title or f'{detector} on {trace.path}'}\n{second}", fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(handles), 4) or 1, fontsize=8, frameon=False)
    return fig


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("atomwatch plot: matplotlib is not installed (pip install 'atomwatch[plot]')", file=sys.stderr)
        return 2
    try:
        trace = read_trace(args.data)
        if trace.rows == 0:
            raise TraceError(f"{trace.path}: no rows to plot")
        labels_path = args.labels or labels_beside(args.data)
        labels = read_labels(labels_path, rows=trace.rows) if labels_path else None
        file_config, plugin_opts = options(args, role_keys(), "plot", default_plugin=args.detector)
        factory = find_factory(plugin_manager(args, plugin_opts, file_config), args.detector)
        detector_options = plugin_opts.get(args.detector, {})
        detector = factory.create("offline", detector_options)
        result = run_detector_for_plot(detector, trace_rows(trace))
    except (TraceError, UnknownDetector, ConfigError, DetectorError, ValueError) as e:
        for line in str(e).splitlines():
            print(f"atomwatch plot: {line}", file=sys.stderr)
        return 2
    fig = figure(trace, result, labels, args.detector, args.title)
    try:
        fig.savefig(args.out)
    except (OSError, ValueError) as e:
        print(f"atomwatch plot: --out {args.out}: cannot write it ({e})", file=sys.stderr)
        return 2
    finally:
        plt.close(fig)
    blamed = result.blamed()
    print(f"wrote {args.out}: {trace.rows} rows, {len(result.abnormal)} abnormal")
    if labels is not None:
        print(f"labels: {labels.path} ({int(labels.label.sum())} rows labelled anomalous)")
    if blamed:
        # no commas past the first line: scripts read "N rows, M abnormal" by splitting on them
        print("blamed: " + "; ".join(f"{c} ({n} rows)" for c, n in blamed[:TITLE_BLAMED]))
    return 0

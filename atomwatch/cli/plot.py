"""``atomwatch plot DATA --detector NAME --out FILE.png``: a detector's score against its threshold
over time, abnormal instants marked (ATOM's Figure 4: SPE against Q_α), labelled anomaly periods
shaded when the data has labels. Needs matplotlib (the ``plot`` extra).

The score and threshold of every row come from the detector's ``status()`` after that row
(``score``/``threshold``, or PCA-SPE's ``spe``/``q_alpha``), so the plot shows exactly what the
live controller's /metrics would have shown.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from atomwatch.config import ConfigError
from atomwatch.detectors import UnknownDetector, anomalies_of, find_factory
from atomwatch.trace_rows import trace_rows
from atomwatch.traces import TraceError, read_labels, read_trace, resolve

from ._common import add_plugin_arguments, options, plugin_manager, role_keys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="CSV trace or recording folder")
    p.add_argument("--detector", default="pca-spe", help="detector name (default pca-spe)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--labels", help="labels CSV (default: the recording's labels.csv, if any)")
    p.add_argument("--title", help="figure title")
    add_plugin_arguments(p)


def _number(status: dict, *keys: str) -> float:
    for k in keys:
        v = status.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return math.nan


def series(detector, rows) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(score per row, threshold per row, indices of abnormal rows)."""
    scores, thresholds, abnormal = [], [], []
    for row in rows:
        found = anomalies_of(detector.update(row), getattr(detector, "name", "?"), row.index)
        status = detector.status() if hasattr(detector, "status") else {}
        score = _number(status, "score", "spe")
        threshold = _number(status, "threshold", "q_alpha")
        if found:
            abnormal.append(row.index)
            score = found[0].score if math.isnan(score) else score
            threshold = found[0].threshold if math.isnan(threshold) else threshold
        scores.append(score)
        thresholds.append(threshold)
    return np.array(scores), np.array(thresholds), abnormal


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
        _, labels_path = resolve(args.data)
        labels = read_labels(args.labels or labels_path, rows=trace.rows) if (args.labels or labels_path) else None
        file_config, plugin_opts = options(args, role_keys(), "plot", default_plugin=args.detector)
        factory = find_factory(plugin_manager(args, plugin_opts, file_config), args.detector)
        detector_options = plugin_opts.get(args.detector, {})
        detector = factory.create("offline", detector_options)
    except (TraceError, UnknownDetector, ConfigError, ValueError) as e:
        for line in str(e).splitlines():
            print(f"atomwatch plot: {line}", file=sys.stderr)
        return 2
    scores, thresholds, abnormal = series(detector, trace_rows(trace))
    x = np.arange(trace.rows)
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=110)
    if labels is not None:
        on = labels.label.astype(bool)
        ax.fill_between(
            x,
            0,
            1,
            where=on,
            transform=ax.get_xaxis_transform(),
            color="tab:orange",
            alpha=0.15,
            step="mid",
            label="labelled anomaly",
        )
    ax.plot(x, scores, color="tab:blue", lw=0.9, label="score (SPE)" if args.detector == "pca-spe" else "score")
    ax.plot(
        x,
        thresholds,
        color="black",
        lw=1.0,
        ls="--",
        label="threshold (Q_α)" if args.detector == "pca-spe" else "threshold",
    )
    if abnormal:
        ax.scatter(
            abnormal, scores[abnormal], color="tab:red", s=12, zorder=3, label=f"abnormal ({len(abnormal)} rows)"
        )
    if np.nanmin(np.concatenate([scores, thresholds]), initial=np.inf) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("row (tick)")
    ax.set_ylabel("score")
    ax.set_title(args.title or f"{args.detector} on {args.data}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}: {trace.rows} rows, {len(abnormal)} abnormal")
    return 0

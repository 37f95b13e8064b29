"""``atomwatch detect``: run any detector plugin over a CSV trace or a recording folder.

The detector is looked up by name among the detectors every loaded plugin registers (hook
``register_detectors``), created for one scope with the options given by ``--set KEY=VALUE``
(the ``--set PLUGIN.KEY=VALUE`` of every command, where a bare ``KEY=VALUE`` is the detector's, or
a ``[plugins.DETECTOR]`` table of ``--config``, checked as the roles check theirs), and fed the
trace row by row exactly as the controller feeds it (:mod:`atomwatch.detectors`). Rows are counted
from 0 after the header. With ``--labels FILE`` (or the recording's ``labels.csv``) it also
prints point-wise and point-adjusted precision, recall, F1 and the confusion matrix
(:mod:`atomwatch.evaluation`). Bad input (no such file, unknown detector, bad option) goes to
stderr with exit status 2; a detector that fails on a row exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomwatch.config import ConfigError, add_replay_delta_argument, parse_deltas

if TYPE_CHECKING:  # the rest (numpy with it) is imported by run(): ``detect --help`` stays quick
    from atomwatch.detectors import DetectionRun


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", metavar="DATA", help="a CSV trace (.csv or .csv.gz) or a recording folder (values.csv, labels.csv)"
    )
    parser.add_argument(
        "--detector", default="pca-spe", metavar="NAME", help="detector plugin to run (default pca-spe)"
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="[PLUGIN.]KEY=VALUE",
        help="a plugin option (repeatable), PLUGIN.KEY=VALUE as in every command; a bare KEY=VALUE is the "
        "detector's: --set t=360 is --set pca-spe.t=360",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file whose [plugins.DETECTOR] table gives options (a role's file will do)",
    )
    parser.add_argument("--plugins-dir", metavar="DIR", help="also load every *.py plugin file of DIR")
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="labels CSV (a 'label' column, 0/1 per row); default: the recording's labels.csv",
    )
    parser.add_argument(
        "--scope", default=None, help="scope name given to the detector (default: the data file's name)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_replay_delta_argument(parser, "the detector sees the controller's copies and their Δ, as live")


def _options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the --config file, every plugin's options: its [plugins.NAME] tables and --set, where a
    bare KEY=VALUE is the detector's)."""
    from ._common import options, role_keys

    return options(args, role_keys(), "detect", default_plugin=args.detector)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def result_object(run: DetectionRun, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "detector": run.detector,
        "rows": run.rows,
        "anomalies": [
            {"row": a.index, "score": a.score, "threshold": a.threshold, "blame": [b.to_dict() for b in a.blame]}
            for a in run.anomalies
        ],
    }
    if evaluation is not None:
        out["evaluation"] = evaluation
    return _finite(out)


def _print_table(run: DetectionRun, evaluation: dict[str, Any] | None, data: str) -> None:
    print(f"{run.detector} over {data}: {run.rows} rows, {len(run.anomalies)} flagged")
    if run.anomalies:
        print(f"{'row':>7}  {'score':>12}  {'threshold':>12}  blame")
        for a in run.anomalies:
            blame = (
                ", ".join(f"{b.column.column} {'↑' if b.direction == 'up' else '↓'}{b.score:.1f}σ" for b in a.blame)
                or "-"
            )
            print(f"{a.index:>7}  {a.score:>12.6g}  {a.threshold:>12.6g}  {blame}")
    if evaluation is not None:
        print(
            f"\nlabels: {evaluation['positives']} anomalous of {evaluation['points']} rows, "
            f"{evaluation['segments_detected']}/{evaluation['segments']} segments detected"
        )
        print(f"{'':16}{'precision':>10}{'recall':>10}{'F1':>10}   confusion [[tn fp] [fn tp]]")
        for key, label in (("point_wise", "point-wise"), ("point_adjusted", "point-adjusted")):
            s = evaluation[key]
            print(f"{label:16}{s['precision']:>10.3f}{s['recall']:>10.3f}{s['f1']:>10.3f}   {s['confusion_matrix']}")


def run(args: argparse.Namespace) -> int:
    from atomwatch.detectors import DetectorError, UnknownDetector, find_factory
    from atomwatch.evaluation import evaluate
    from atomwatch.pluginmanager import get_plugin_manager
    from atomwatch.trace_rows import detect_trace
    from atomwatch.traces import TraceError, read_labels, read_trace, resolve

    def fail(msg: str, code: int = 2) -> int:
        print(f"atomwatch detect: {msg}", file=sys.stderr)
        return code

    try:
        values_path, labels_path = resolve(args.data)
        trace = read_trace(args.data)
        labels = None
        if args.labels:
            labels = read_labels(args.labels, rows=trace.rows)
        elif labels_path is not None:
            labels = read_labels(labels_path, rows=trace.rows)
    except TraceError as e:
        return fail(str(e))
    try:
        file_config, plugin_opts = _options(args)
        deltas = parse_deltas(args.delta) if args.delta else None
    except ConfigError as e:
        return fail(str(e))
    plugins_dir = args.plugins_dir or os.environ.get("ATOMWATCH_PLUGINS_DIR")
    try:
        pm = get_plugin_manager(plugins_dir=plugins_dir)
    except FileNotFoundError as e:
        return fail(str(e))
    from ._common import plugin_problems

    problems = plugin_problems(pm, plugin_opts, file_config, args.config)
    if problems:
        for line in problems:
            fail(line)
        return 2
    opts = plugin_opts.get(args.detector, {})
    try:
        factory = find_factory(pm, args.detector)
    except UnknownDetector as e:
        return fail(str(e))
    scope = args.scope or Path(values_path).name.split(".")[0]
    if scope == "values":
        scope = Path(values_path).parent.name
    try:
        result = detect_trace(factory, trace, opts, scope=scope, deltas=deltas)
    except DetectorError as e:
        return fail(str(e), 1)
    except (ValueError, TypeError) as e:  # the factory refused the options
        return fail(f"detector {args.detector!r}: {e}")
    evaluation = evaluate(labels.label, result.flagged(trace.rows)) if labels is not None else None
    if args.json:
        print(json.dumps(result_object(result, evaluation), allow_nan=False))
    else:
        _print_table(result, evaluation, str(args.data))
    return 0

"""``atomwatch evaluate``: score trained deep models on the test part of recordings, or compare
every detector on the same rows.

``atomwatch evaluate MODEL... DATA...`` — a path holding ``model.json`` is a model, any other path
is a labelled recording. For each model: windows of the model's size over its columns, split
70/15/15 by time (:mod:`atomwatch.plugins.deep.windows`), and the *test* windows scored (held-out classes —
``--holdout-class``, by default those the model was trained without — are test-only). Reported
always both point-wise and point-adjusted (:mod:`atomwatch.evaluation`; point adjustment runs
within each contiguous run of windows): precision, recall, F1 and the confusion matrix ``[[tn fp]
[fn tp]]`` for all test windows, for the seen classes, for the held-out classes, and for each class
(its windows plus the normal windows; a class labelled 0, such as the simulator's benign
``flash-crowd``, is reported by how many of its windows were flagged).

``--compare`` runs the models *through their detector plugins* (:mod:`atomwatch.plugins.deep`) and the
online detectors ``pca-spe`` and ``precog`` (``--detector`` to change the list) with
:func:`atomwatch.detectors.run_detector`, row by row exactly as live, and scores them on the same
rows of each recording: the test part (last 15 % of rows) plus every row whose window touches a
held-out class. Online detectors see the whole recording (they learn as they go); deep detectors
are fed only the rows their windows need. One table (``--out FILE`` writes it as Markdown).

``--whole`` scores every window (with ``--compare``: every row) of the recordings, with no split —
for recordings the models never trained on, e.g. other runs of the same lab scenario.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomwatch.config import ConfigError, add_replay_delta_argument, parse_deltas, parse_settings, plain_deltas
from atomwatch.evaluation import point_adjust, scores

ONLINE_DETECTORS = ("pca-spe", "precog")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="MODEL|DATA", help="model folders (with model.json) and labelled recordings"
    )
    parser.add_argument(
        "--holdout-class",
        action="append",
        default=None,
        metavar="C",
        help="class used only for testing (repeatable; default: the model's own held-out classes)",
    )
    parser.add_argument(
        "--no-holdout",
        action="store_true",
        help="ignore the model's held-out classes: test windows = the last 15 %% of each recording only",
    )
    parser.add_argument(
        "--whole",
        action="store_true",
        help="test on every window (every row with --compare) of the recordings, no split: for recordings the models never trained on",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--compare", action="store_true", help="compare the models and the online detectors on the same rows"
    )
    parser.add_argument(
        "--detector",
        action="append",
        default=None,
        metavar="NAME",
        help="online detector to include in --compare (repeatable; default pca-spe and precog)",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="an option of an online detector in --compare, e.g. --set pca-spe.t=360",
    )
    parser.add_argument("--out", metavar="FILE", help="with --compare: also write the table to FILE (Markdown)")
    add_replay_delta_argument(
        parser, "every model and detector sees the controller's copies (and, with --compare, their Δ), as live"
    )


def _fail(msg: str) -> int:
    print(f"atomwatch evaluate: {msg}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- scoring helpers


def contiguous_pieces(piece: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Piece ids split further wherever the row index jumps (after a subset is taken)."""
    if not len(piece):
        return piece
    brk = np.r_[True, (np.diff(piece) != 0) | (np.diff(row) != 1)]
    return np.cumsum(brk)


def evaluate_pieces(y: np.ndarray, flags: np.ndarray, pieces: np.ndarray) -> dict[str, Any]:
    """Point-wise and point-adjusted scores; point adjustment within each contiguous piece."""
    y = np.asarray(y, dtype=np.int64)
    flags = np.asarray(flags, dtype=np.int64)
    adjusted = flags.copy()
    segs = detected = 0
    for p in np.unique(pieces):
        m = pieces == p
        adjusted[m] = point_adjust(y[m], flags[m])
        edges = np.diff(np.concatenate(([0], y[m], [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        segs += len(starts)
        detected += sum(1 for s, e in zip(starts, ends) if flags[m][s:e].any())
    return {
        "points": int(len(y)),
        "positives": int(y.sum()),
        "flagged": int(flags.sum()),
        "segments": segs,
        "segments_detected": detected,
        "point_wise": scores(y, flags),
        "point_adjusted": scores(y, adjusted),
    }


def breakdown(
    y: np.ndarray, flags: np.ndarray, klass: np.ndarray, piece: np.ndarray, row: np.ndarray, held: Sequence[str]
) -> dict[str, Any]:
    """Scores for all points, the seen classes, the held-out classes and every class."""
    klass = np.array([str(k) for k in klass], dtype=object)
    held_set = set(held)
    is_held = np.array([k in held_set for k in klass], dtype=bool)
    base_normal = (y == 0) & ~is_held

    def sub(mask: np.ndarray) -> dict[str, Any]:
        return evaluate_pieces(y[mask], flags[mask], contiguous_pieces(piece[mask], row[mask]))

    out: dict[str, Any] = {"all": sub(np.ones(len(y), bool)), "classes": {}}
    if held_set:
        out["seen"] = sub(~is_held)
        out["held_out"] = sub(base_normal | is_held)
    for c in sorted(set(klass) - {"normal"}):
        m = klass == c
        entry = {"held_out": c in held_set, "windows": int(m.sum()), "flagged": int(flags[m].sum())}
        if y[m].any():
            entry.update(sub(((y == 0) & (klass == "normal")) | m))
        else:
            entry["label"] = 0
        out["classes"][c] = entry
    return out


def _line(label: str, e: dict[str, Any]) -> str:
    pw, pa = e["point_wise"], e["point_adjusted"]
    return (
        f"{label:<28}{pw['precision']:>7.3f}{pw['recall']:>7.3f}{pw['f1']:>7.3f}   {pa['precision']:>7.3f}{pa['recall']:>7.3f}"
        f"{pa['f1']:>7.3f}   {str(pw['confusion_matrix']):<22}{e['segments_detected']:>4}/{e['segments']}"
    )


def print_breakdown(title: str, b: dict[str, Any]) -> None:
    print(title)
    print(f"{'':28}{'point-wise':^21}   {'point-adjusted':^21}   {'confusion (pw)':<22}{'segments':>9}")
    print(f"{'':28}{'P':>7}{'R':>7}{'F1':>7}   {'P':>7}{'R':>7}{'F1':>7}   {'[[tn fp] [fn tp]]':<22}")
    print(_line("all test windows", b["all"]))
    if "seen" in b:
        print(_line("seen classes", b["seen"]))
        print(_line("held-out classes", b["held_out"]))
    for c, e in b["classes"].items():
        tag = f"{c}{' (held out)' if e['held_out'] else ''}"
        if "point_wise" in e:
            print(_line(f"  {tag}", e))
        else:
            print(f"  {tag:<26}label 0 (benign): {e['flagged']}/{e['windows']} windows flagged")
    print()


# --------------------------------------------------------------------------- model evaluation


def evaluate_model(
    model_path: str,
    data: Sequence[str],
    holdout: Sequence[str] | None,
    whole: bool = False,
    deltas: dict[str, float] | None = None,
) -> dict[str, Any]:
    from atomwatch.plugins.deep.models import load_model, read_meta
    from atomwatch.plugins.deep.windows import build_dataset, whole_windows

    meta = read_meta(model_path)
    held = list(holdout) if holdout is not None else list((meta.get("info") or {}).get("holdout") or [])
    if whole:
        test = whole_windows(data, int(meta["window"]), meta["columns"], deltas)
    else:
        test = build_dataset(data, int(meta["window"]), columns=meta["columns"], holdout=held, deltas=deltas).test
    model = load_model(model_path)
    flags = model.predict(test)
    result = breakdown(test.y, flags, test.klass, test.piece, test.row, held)
    return {
        "model": str(model_path),
        "kind": meta["kind"],
        "window": meta["window"],
        "threshold": model.threshold,
        "threshold_rule": model.threshold_rule,
        "holdout": held,
        "test_windows": len(test),
        "whole": whole,
        "deltas": plain_deltas(deltas),
        "trained_deltas": (meta.get("info") or {}).get("deltas"),
        **result,
    }


# --------------------------------------------------------------------------- comparison


def _eval_rows(rows: int, klass: np.ndarray, held: set[str], reach: int) -> np.ndarray:
    from atomwatch.plugins.deep.windows import split_bounds

    mask = np.zeros(rows, bool)
    mask[split_bounds(rows)[2][0] :] = True
    if held:
        h = np.array([str(k) in held for k in klass], dtype=bool)
        touched = np.convolve(h.astype(np.int64), np.ones(reach, np.int64))[:rows] > 0
        mask |= touched
    return mask


def _needed_rows(mask: np.ndarray, window: int) -> np.ndarray:
    need = np.convolve(mask.astype(np.int64), np.ones(window, np.int64))[window - 1 :] > 0
    return need


def _options(settings: list[str], name: str) -> dict[str, Any]:
    """Detector ``name``'s options among ``--set PLUGIN.KEY=VALUE`` (the grammar of every command)."""
    return parse_settings(settings).get(name, {})


def compare(
    models: Sequence[str],
    data: Sequence[str],
    holdout: Sequence[str] | None,
    online: Sequence[str],
    settings: list[str],
    whole: bool = False,
    deltas: dict[str, float] | None = None,
) -> dict[str, Any]:
    from atomwatch.detectors import DetectorError, UnknownDetector, find_factory, run_detector
    from atomwatch.pluginmanager import get_plugin_manager
    from atomwatch.plugins.deep.models import read_meta
    from atomwatch.plugins.deep.windows import _labels_path
    from atomwatch.trace_rows import trace_rows
    from atomwatch.traces import read_labels, read_trace

    metas = {m: read_meta(m) for m in models}
    held = (
        list(holdout)
        if holdout is not None
        else sorted({c for m in metas.values() for c in (m.get("info") or {}).get("holdout") or []})
    )
    reach = max([int(m["window"]) for m in metas.values()] + [1])
    pm = get_plugin_manager()
    try:
        find_factory(pm, "cnn")
    except UnknownDetector:  # atomwatch.plugins.deep is not declared as an entry point in this install
        import atomwatch.plugins.deep as deep_plugin

        pm.register_plugin(deep_plugin, "deep", "atomwatch.plugins.deep")
    entries: list[tuple[str, str, dict[str, Any], int]] = [
        (f"{metas[m]['kind']} ({Path(m).name})", metas[m]["kind"], {"model": str(m)}, int(metas[m]["window"]))
        for m in models
    ] + [(name, name, _options(settings, name), 0) for name in online]
    recs = []
    for path in data:
        trace = read_trace(path)
        labels = read_labels(_labels_path(Path(path)), rows=trace.rows)
        klass = np.array(labels.klass, dtype=object)
        mask = np.ones(trace.rows, bool) if whole else _eval_rows(trace.rows, klass, set(held), reach)
        recs.append((path, trace, labels, klass, mask))
    out: dict[str, Any] = {
        "data": [str(p) for p in data],
        "holdout": held,
        "deltas": plain_deltas(deltas),
        "detectors": {},
    }
    for label, name, options, window in entries:
        ys, fs, ks, ps, rs = [], [], [], [], []
        try:
            factory = find_factory(pm, name)
            for i, (path, trace, labels, klass, mask) in enumerate(recs):
                detector = factory.create(f"compare:{Path(path).name}", options)
                rows = trace_rows(trace, f"compare:{Path(path).name}", deltas)
                if window:
                    need = _needed_rows(mask, window)
                    rows = (r for r in rows if need[r.index])
                run = run_detector(detector, rows)
                flagged = np.zeros(trace.rows, np.int64)
                for a in run.anomalies:
                    flagged[a.index] = 1
                idx = np.flatnonzero(mask)
                ys.append(labels.label[idx])
                fs.append(flagged[idx])
                ks.append(klass[idx])
                ps.append(np.full(len(idx), i))
                rs.append(idx)
        except (UnknownDetector, DetectorError, ValueError, OSError) as e:
            out["detectors"][label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out["detectors"][label] = breakdown(
            np.concatenate(ys), np.concatenate(fs), np.concatenate(ks), np.concatenate(ps), np.concatenate(rs), held
        )
    return out


def compare_table(result: dict[str, Any]) -> str:
    """One Markdown table: a row per detector and class group."""
    lines = [
        "| detector | rows | point-wise P | R | F1 | point-adjusted P | R | F1 | confusion [[tn fp] [fn tp]] (pw) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for det, b in result["detectors"].items():
        if "error" in b:
            lines.append(f"| {det} | — | not run: {b['error']} | | | | | | |")
            continue
        groups = [("all evaluated rows", b["all"])]
        if "seen" in b:
            groups += [("seen classes", b["seen"]), ("held-out classes", b["held_out"])]
        groups += [(f"{c}{' (held out)' if e['held_out'] else ''}", e) for c, e in b["classes"].items()]
        for g, e in groups:
            if "point_wise" not in e:
                lines.append(
                    f"| {det} | {g} (benign, label 0) | {e['flagged']}/{e['windows']} rows flagged | | | | | | |"
                )
                continue
            pw, pa = e["point_wise"], e["point_adjusted"]
            lines.append(
                f"| {det} | {g} | {pw['precision']:.3f} | {pw['recall']:.3f} | {pw['f1']:.3f} | {pa['precision']:.3f} | "
                f"{pa['recall']:.3f} | {pa['f1']:.3f} | {pw['confusion_matrix']} |"
            )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, context: Any = None) -> int:
    from atomwatch.plugins.deep.windows import WindowError

    models = [p for p in args.paths if (Path(p) / "model.json").exists() or Path(p).name == "model.json"]
    data = [p for p in args.paths if p not in models]
    if not data:
        return _fail("no recordings given (every path was a model folder)")
    missing = [p for p in data if not Path(p).exists()]
    if missing:
        return _fail(f"{missing[0]}: no such file or folder")
    if not models and not args.compare:
        return _fail("no model given (a model folder holds model.json; write one with 'atomwatch train')")
    if args.no_holdout:
        if args.holdout_class:
            return _fail("--no-holdout and --holdout-class exclude each other")
        args.holdout_class = []
    try:
        deltas = parse_deltas(args.delta) if args.delta else None
        parse_settings(args.settings)  # the grammar checked before any work
    except ConfigError as e:
        return _fail(str(e))
    try:
        if args.compare:
            online = args.detector if args.detector is not None else list(ONLINE_DETECTORS)
            result = compare(models, data, args.holdout_class, online, args.settings, args.whole, deltas)
            table = compare_table(result)
            if args.out:
                Path(args.out).write_text(table, encoding="utf-8")
            print(json.dumps(result) if args.json else table)
            return 0
        results = [evaluate_model(m, data, args.holdout_class, args.whole, deltas) for m in models]
    except (WindowError, ValueError, OSError) as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
        return 0
    for r in results:
        held = f", held out: {', '.join(r['holdout'])}" if r["holdout"] else ""
        what = "windows (whole recordings)" if r["whole"] else "test windows"
        if r["deltas"]:
            what += " tracked at Δ " + ", ".join(f"{k}={v:g}" for k, v in r["deltas"].items())
        print_breakdown(
            f"{r['kind']} model {r['model']} (window {r['window']}, threshold {r['threshold']:.6g} by rule "
            f"{r['threshold_rule']}) on {r['test_windows']} {what}{held}",
            r,
        )
    return 0

"""``atomwatch retrain MODEL [--db ALARMS.sqlite] [DATA...]``: refit a deep model from the
operator's verdicts, keeping the old model unless the new one evaluates at least as well.

Labelled windows from alarms: every alarm that received a verdict (``normal`` → label 0,
``malicious`` → label 1) gives the rows it kept (columns and values, mapped to the model's columns
by ``<vm>/<metric>``; unknown → the column's training mean). The rows are sorted by row index and
cut into FIFO windows of the model's size; an alarm with fewer rows than the window is padded at
the front by repeating its first row (an alarm keeps only its abnormal rows, so a full window of
history is not available). The operator windows are ordered by the alarm's opening time and split
70/15/15 like the recordings.

Retraining refits the network from fresh weights (same architecture, seed, columns and scaler;
``--fine-tune`` starts from the current weights instead — measured to fail when the classifier is
saturated: its sigmoid outputs exactly 0 on the new windows and the loss does not move): the
classifier and the Siamese model on all labelled windows, the autoencoder on the normal ones only
(the malicious verdicts only move its threshold). Training data = the recordings' training part (when DATA is
given; the model's held-out classes stay out) + the operator windows' training part; the
threshold comes from the validation parts. Old and new model are then scored on the same test
windows — the recordings' last 15 % of rows (held-out classes included as they occur there) and
the operator windows' test part: the new model replaces ``MODEL`` only if its point-wise F1 is at
least the old one's (with no anomalous test windows: its rate of correctly passed normal windows);
the old model is then kept beside it as ``MODEL.previous``. Otherwise ``MODEL`` is left untouched.
The command says what happened; exit 0 in both cases, 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from atomwatch import SubcommandContext
from atomwatch.config import ConfigError
from atomwatch.plugins.deep.train import progress_verbosity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder written by 'atomwatch train'")
    parser.add_argument(
        "data", nargs="*", metavar="DATA", help="labelled recordings to train and test on beside the verdicts"
    )
    parser.add_argument(
        "--db",
        metavar="ALARMS.sqlite",
        help="alarms file (default: $ATOMWATCH_DB or ~/.local/state/atomwatch/alarms.sqlite)",
    )
    parser.add_argument("--detector", metavar="NAME", help="use only alarms raised by this detector")
    parser.add_argument(
        "--epochs", type=int, default=None, metavar="N", help="epochs (default: as many as the model's first training)"
    )
    parser.add_argument(
        "--fine-tune",
        action="store_true",
        help="start from the current weights instead of fresh ones (fast, but a saturated classifier may not move)",
    )
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="batch size (default 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _fail(msg: str) -> int:
    print(f"atomwatch retrain: {msg}", file=sys.stderr)
    return 2


def operator_windows(alarms: list[Any], columns: list[str], window: int) -> tuple[Any, dict[str, int]]:
    """The verdict alarms as a WindowSet (pieces = alarms, in opening order) and counts."""
    from atomwatch.plugins.deep.windows import WindowSet, fifo_windows
    from atomwatch.series import SeriesKey

    position = {c: k for k, c in enumerate(columns)}
    sets, counts = [], {"normal": 0, "malicious": 0, "skipped": 0}
    for piece, alarm in enumerate(sorted(alarms, key=lambda a: (a.opened_at, a.id))):
        if alarm.verdict not in ("normal", "malicious"):
            continue
        rows = sorted(
            (r for r in alarm.rows if r.get("columns") and r.get("values") is not None), key=lambda r: r.get("index", 0)
        )
        matrix = []
        for r in rows:
            x = np.full(len(columns), np.nan)
            hit = False
            for key, value in zip(r["columns"], r["values"]):
                name = SeriesKey(*key).column if isinstance(key, (list, tuple)) and len(key) == 4 else str(key)
                k = position.get(name)
                if k is not None:
                    x[k] = np.nan if value is None else float(value)
                    hit = True
            if hit:
                matrix.append(x)
        if not matrix:
            counts["skipped"] += 1
            continue
        m = np.array(matrix)
        if len(m) < window:
            m = np.concatenate([np.repeat(m[:1], window - len(m), axis=0), m])
        x = fifo_windows(m, window)
        label = 1 if alarm.verdict == "malicious" else 0
        n = len(x)
        sets.append(
            WindowSet(
                x,
                np.full(n, label, np.int64),
                np.full(n, f"operator-{alarm.verdict}", dtype=object),
                np.full(n, piece),
                np.arange(n) + window - 1,
                np.full(n, f"alarm:{alarm.id}", dtype=object),
                columns,
            )
        )
        counts[alarm.verdict] += 1
    return WindowSet.concat(sets, window, columns), counts


def _split(ws: Any, window: int, columns: list[str]) -> tuple[Any, Any, Any]:
    """70/15/15 of windows in their (time) order."""
    from atomwatch.plugins.deep.windows import WindowSet, split_bounds

    if not len(ws):
        e = WindowSet.empty(window, columns)
        return e, e, e
    return tuple(ws.subset(np.arange(lo, hi)) for lo, hi in split_bounds(len(ws)))  # type: ignore[return-value]


def quality(e: dict[str, Any]) -> float:
    pw = e["point_wise"]
    if e["positives"]:
        return float(pw["f1"])
    return float(pw["tn"] / max(pw["tn"] + pw["fp"], 1))


def run(args: argparse.Namespace, context: SubcommandContext) -> int:
    if (args.epochs is not None and args.epochs < 1) or args.batch_size < 1:
        return _fail("--epochs and --batch-size must be ≥ 1")
    from atomwatch.plugins.deep.windows import WindowError, WindowSet, build_dataset

    try:
        from atomwatch.plugins.deep.models import read_meta

        meta = read_meta(args.model)
    except ValueError as e:
        return _fail(str(e))
    db = args.db or "the controller's alarms file"
    try:
        alarms = [
            a
            for a in context.read_alarms(args.db)
            if a.verdict in ("normal", "malicious") and (not args.detector or a.detector == args.detector)
        ]
    except ConfigError as e:
        return _fail(str(e))
    window, columns = int(meta["window"]), list(meta["columns"])
    holdout = list((meta.get("info") or {}).get("holdout") or [])
    ops, counts = operator_windows(alarms, columns, window)
    if not len(ops):
        return _fail(
            f"{db}: no alarm with a verdict holds rows of the model's columns "
            f"({counts['skipped']} verdict alarms had none); nothing to retrain from"
        )
    o_train, o_val, o_test = _split(ops, window, columns)
    try:
        if args.data:
            d = build_dataset(args.data, window, columns=columns, holdout=holdout)
            # test: the recordings' last 15 % only (held-out classes as they occur there), so no
            # window of the comparison can also be a training window of the operator's alarms
            last = build_dataset(args.data, window, columns=columns).test
            train = WindowSet.concat([d.train, o_train], window, columns)
            val = WindowSet.concat([d.val, o_val], window, columns)
            test = WindowSet.concat([last, o_test], window, columns)
        else:
            train, val, test = o_train, o_val, o_test
    except (WindowError, ValueError) as e:
        return _fail(str(e))
    from atomwatch.plugins.deep.evaluate import evaluate_pieces
    from atomwatch.plugins.deep.models import ModelError, load_model

    old = load_model(args.model)
    new = load_model(args.model)
    if not args.fine_tune:
        new.initialize_new_weights()  # same architecture, scaler, columns and seed; fresh weights
    epochs = args.epochs or int(((old.info.get("trainings") or [{}])[0]).get("epochs", 10))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # progress bars on stderr, the result on stdout
            record = new.train(
                epochs,
                args.batch_size,
                train,
                validation=val if len(val) else None,
                verbose=progress_verbosity(args.quiet),
            )
    except ModelError as e:
        return _fail(f"cannot retrain {meta['kind']} from these windows: {e}")
    result: dict[str, Any] = {
        "model": args.model,
        "kind": meta["kind"],
        "verdict_alarms": counts,
        "operator_windows": len(ops),
        "train_windows": len(train),
        "val_windows": len(val),
        "test_windows": len(test),
        "epochs": epochs,
        "fine_tune": args.fine_tune,
        "seconds_per_epoch": record["seconds_per_epoch"],
    }
    if not len(test):
        result.update(replaced=False, reason="no held-out test windows to compare on; the old model is kept")
    else:
        e_old = evaluate_pieces(test.y, old.predict(test), test.piece)
        e_new = evaluate_pieces(test.y, new.predict(test), test.piece)
        q_old, q_new = quality(e_old), quality(e_new)
        result.update(
            old=e_old,
            new=e_new,
            measure="point-wise F1" if e_old["positives"] else "normal windows passed",
            old_quality=q_old,
            new_quality=q_new,
        )
        if q_new >= q_old:
            new.info.setdefault("retrained_from", []).append({"alarms": counts, "data": list(args.data)})
            previous = Path(str(args.model).rstrip("/") + ".previous")
            if previous.exists():
                shutil.rmtree(previous)
            shutil.copytree(args.model, previous)
            new.save(args.model)
            result.update(
                replaced=True,
                previous=str(previous),
                reason=f"new model scores {q_new:.3f} ≥ old {q_old:.3f} ({result['measure']}) on {len(test)} test windows",
            )
        else:
            result.update(
                replaced=False,
                reason=f"new model scores {q_new:.3f} < old {q_old:.3f} ({result['measure']}) on {len(test)} test windows; "
                f"{args.model} left unchanged",
            )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"retrain {meta['kind']} {args.model}: {counts['normal']} normal and {counts['malicious']} malicious verdict alarms "
            f"→ {len(ops)} operator windows; {len(train)} training / {len(val)} validation / {len(test)} test windows"
        )
        print(("replaced: " if result["replaced"] else "kept the old model: ") + result["reason"])
    return 0

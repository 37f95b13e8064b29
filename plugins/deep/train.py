"""``atomwatch train``: train a deep detector model (``ae``, ``cnn``, ``siamese``) on recordings.

Each DATA is a labelled recording (a folder with values.csv and labels.csv, or a trace with
``<name>.labels.csv`` beside it). Windows are cut and split 70/15/15 by time within each recording
(:mod:`atomwatch.plugins.deep.windows`); ``--holdout-class`` keeps a class out of training and validation.
The model trains on the training part for ``--epochs`` epochs (Keras progress bars on stderr
unless ``--quiet``), its threshold is set from the validation part, and the model folder is
written to ``--out``. ``--tensorboard DIR`` adds a Keras TensorBoard log (which needs the
``tensorflow`` package; without it the command stops with a clear error before training).
``--search`` runs a keras-tuner random search over window size, filters and latent size
(objective: validation F1, point-wise) and prints its results table, then trains the best
configuration for ``--epochs``. Bad input → stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from atomwatch.config import add_replay_delta_argument


def progress_verbosity(quiet: bool) -> int:
    """Keras' ``verbose``: none with ``--quiet``, a progress bar on a terminal, else one plain
    line per epoch (a bar's escape codes would fill a log file)."""
    if quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


KINDS = ("ae", "cnn", "siamese")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", nargs="+", metavar="DATA", help="labelled recordings (folders with values.csv + labels.csv)"
    )
    parser.add_argument("--model", required=True, choices=KINDS, help="which model to train")
    parser.add_argument("--out", required=True, metavar="MODEL", help="model folder to write")
    parser.add_argument("--window", type=int, default=16, metavar="W", help="rows per window (default 16)")
    parser.add_argument("--epochs", type=int, default=10, metavar="N", help="training epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="training batch size (default 64)")
    parser.add_argument("--filters", type=int, default=16, help="convolution filters (default 16)")
    parser.add_argument("--latent", type=int, default=8, help="latent size (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--holdout-class",
        action="append",
        default=[],
        metavar="C",
        help="anomaly class kept out of training and validation (repeatable)",
    )
    parser.add_argument(
        "--threshold-rule",
        default=None,
        metavar="RULE",
        help="ae: lowest (default, the proposal's) or val-f1; cnn/siamese: fixed (default) or val-f1",
    )
    parser.add_argument(
        "--ae-score",
        choices=("latent", "reconstruction"),
        default="latent",
        help="ae: score by latent distance from the normal mean (default, the proposal's) or by reconstruction error",
    )
    parser.add_argument("--tensorboard", metavar="DIR", help="write a Keras TensorBoard log to DIR (needs tensorflow)")
    parser.add_argument(
        "--search", action="store_true", help="keras-tuner search over window, filters and latent size first"
    )
    parser.add_argument("--max-trials", type=int, default=6, help="trials of --search (default 6)")
    parser.add_argument("--search-epochs", type=int, default=None, help="epochs per search trial (default: --epochs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_replay_delta_argument(
        parser, "the model learns what the controller sees from agents tracking at that Δ, and keeps the Δ in its file"
    )


def _fail(msg: str) -> int:
    print(f"atomwatch train: {msg}", file=sys.stderr)
    return 2


def _score_kw(args: argparse.Namespace) -> dict[str, str]:
    return {"score_kind": args.ae_score} if args.model == "ae" else {}


def _check(args: argparse.Namespace) -> str | None:
    for name in ("window", "epochs", "batch_size", "filters", "latent", "max_trials"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}"
    if args.ae_score != "latent" and args.model != "ae":
        return "--ae-score is for --model ae only"
    if args.window < 3:
        return f"--window must be ≥ 3, got {args.window}"
    if args.tensorboard and importlib.util.find_spec("tensorflow") is None:
        return (
            "--tensorboard needs the 'tensorflow' package (Keras writes TensorBoard logs through tf.summary), "
            "which is not installed; install it (pip install tensorflow-cpu) or drop --tensorboard"
        )
    return None


def search(args: argparse.Namespace, verbose: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """keras-tuner random search; returns the best hyperparameters and the results table."""
    import keras_tuner as kt

    from atomwatch.evaluation import scores
    from atomwatch.plugins.deep.models import ModelError, new_model
    from atomwatch.plugins.deep.windows import build_dataset

    datasets: dict[int, Any] = {}

    def dataset(window: int) -> Any:
        if window not in datasets:
            datasets[window] = build_dataset(args.data, window, holdout=args.holdout_class, deltas=args.deltas)
        return datasets[window]

    class Hyper(kt.HyperModel):
        def build(self, hp: Any) -> Any:
            window = hp.Choice("window", [8, 16, 32])
            filters = hp.Choice("filters", [8, 16, 32])
            latent = hp.Choice("latent", [4, 8, 16])
            d = dataset(window)
            model = new_model(
                args.model,
                window=window,
                columns=d.columns,
                filters=filters,
                latent=latent,
                seed=args.seed,
                threshold_rule=args.threshold_rule,
                **_score_kw(args),
            )
            self.current = model
            from atomwatch.plugins.deep.windows import Scaler

            model.scaler = Scaler.fit(d.normal_train_rows())
            model.initialize_new_weights()
            return model.net

        def fit(self, hp: Any, net: Any, *a: Any, **kw: Any) -> dict[str, float]:
            model = self.current
            d = dataset(hp.get("window"))
            model.train(args.search_epochs or args.epochs, args.batch_size, d, verbose=0)
            try:
                f1 = scores(d.val.y, model.predict(d.val))["f1"] if len(d.val) else 0.0
            except ModelError:
                f1 = 0.0
            if verbose:
                print(
                    f"  trial window={hp.get('window')} filters={hp.get('filters')} latent={hp.get('latent')}: val F1 {f1:.3f}",
                    file=sys.stderr,
                )
            return {"val_f1": float(f1)}

    with tempfile.TemporaryDirectory(prefix="atomwatch-search-") as tmp:
        tuner = kt.RandomSearch(
            Hyper(),
            objective=kt.Objective("val_f1", "max"),
            max_trials=args.max_trials,
            seed=args.seed,
            directory=tmp,
            project_name="search",
            overwrite=True,
        )
        tuner.search(verbose=0)  # keras-tuner's own per-trial display off: we print one table
        table = []
        for trial in tuner.oracle.get_best_trials(num_trials=args.max_trials):
            table.append({**{k: int(v) for k, v in trial.hyperparameters.values.items()}, "val_f1": trial.score})
    best = {k: table[0][k] for k in ("window", "filters", "latent")}
    return best, table


def print_search_table(table: list[dict[str, Any]]) -> None:
    print(f"{'rank':>4} {'window':>7} {'filters':>8} {'latent':>7} {'val F1':>8}")
    for i, r in enumerate(table, 1):
        score = "n/a" if r["val_f1"] is None else f"{r['val_f1']:.3f}"
        print(f"{i:>4} {r['window']:>7} {r['filters']:>8} {r['latent']:>7} {score:>8}")


def run(args: argparse.Namespace, context: Any = None) -> int:
    problem = _check(args)
    if problem:
        return _fail(problem)
    from atomwatch.config import ConfigError, parse_deltas, plain_deltas
    from atomwatch.plugins.deep.windows import WindowError, build_dataset

    try:  # check the data before the (slow) Keras import
        args.deltas = parse_deltas(args.delta) if args.delta else None
        d = build_dataset(args.data, args.window, holdout=args.holdout_class, deltas=args.deltas)
    except (WindowError, ValueError, ConfigError) as e:
        return _fail(str(e))
    from atomwatch.plugins.deep.models import THRESHOLD_RULES, ModelError, new_model

    if args.threshold_rule and args.threshold_rule not in THRESHOLD_RULES[args.model]:
        return _fail(
            f"--threshold-rule {args.threshold_rule!r} is not one of {THRESHOLD_RULES[args.model]} for --model {args.model}"
        )
    verbose = progress_verbosity(args.quiet)
    table: list[dict[str, Any]] = []
    hp = {"window": args.window, "filters": args.filters, "latent": args.latent}
    try:
        if args.search:
            with contextlib.redirect_stdout(sys.stderr):
                hp, table = search(args, verbose)
            print("hyperparameter search (keras-tuner random search, objective: validation F1)")
            print_search_table(table)
            if hp["window"] != args.window:
                d = build_dataset(args.data, hp["window"], holdout=args.holdout_class, deltas=args.deltas)
        model = new_model(
            args.model,
            window=hp["window"],
            columns=d.columns,
            filters=hp["filters"],
            latent=hp["latent"],
            seed=args.seed,
            threshold_rule=args.threshold_rule,
            **_score_kw(args),
        )
        callbacks = []
        if args.tensorboard:
            import keras

            callbacks.append(keras.callbacks.TensorBoard(args.tensorboard))
        with contextlib.redirect_stdout(sys.stderr):  # progress bars on stderr, results on stdout
            record = model.train(args.epochs, args.batch_size, d, verbose=verbose, callbacks=callbacks)
        model.info.update(
            {
                "data": [str(Path(p)) for p in args.data],
                "holdout": d.holdout,
                "deltas": plain_deltas(args.deltas),
                "split": "70/15/15 by time per recording",
                "search": table or None,
            }
        )
        out = model.save(args.out)
    except ModelError as e:
        return _fail(str(e))
    result = {
        "model": str(out),
        "kind": args.model,
        **hp,
        "threshold": model.threshold,
        "threshold_rule": model.threshold_rule,
        "threshold_from": model.info.get("threshold_from"),
        "train_windows": len(d.train),
        "val_windows": len(d.val),
        "test_windows": len(d.test),
        "holdout": d.holdout,
        "seconds_per_epoch": record["seconds_per_epoch"],
        "final_loss": record["loss"][-1] if record["loss"] else None,
    }
    if args.json:
        print(json.dumps({**result, "search": table}))
    else:
        print(
            f"{args.model} model written to {out}: window {hp['window']}, filters {hp['filters']}, latent {hp['latent']}, "
            f"{len(d.train)} training / {len(d.val)} validation windows, {record['seconds_per_epoch']:.2f} s per epoch"
        )
        print(f"threshold {model.threshold:.6g} ({model.info.get('threshold_from')})")
    return 0

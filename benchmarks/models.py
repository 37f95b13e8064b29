"""Training and scoring speed of the three deep models (Keras 3 on JAX, CPU).

Prints one JSON object. For each model kind (``ae``, ``cnn``, ``siamese``) on a generated
recording shaped like the CoreDNS simulator's (25 metrics, windows of 16 rows; normal rows with a
daily rhythm and noise, 10 % anomalous rows):

* training seconds per epoch — the first epoch (includes JAX compilation) and the median of the
  later ones;
* scoring latency for **one window** and for a **batch of 1,000 windows**, through
  ``DeepModel.score`` (scaling, ``predict_on_batch`` at the fixed batch shapes 1 and 256, numpy
  post-processing), and the live detector's ``update`` per row (FIFO + column mapping + score);
* the baseline measured in the same run: calling the Keras model directly (``model(x)``, eager)
  and ``predict_on_batch`` on the raw network at the same fixed shape; ``ratio`` = baseline time
  / ``predict_on_batch`` time.

Target: ≤ 1 ms per window (``meets_1ms_target``). Usage: ``python -m benchmarks.models [--epochs N]
[--rows N] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from benchmarks._common import emit, machine, seconds_per_call  # noqa: E402


def generated(rows: int, columns: int, window: int, seed: int = 0):
    from atomwatch.plugins.deep.windows import Recording, WindowSet, fifo_windows

    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    base = rng.uniform(10, 1000, columns)
    values = base * (1 + 0.3 * np.sin(2 * np.pi * t / 720)[:, None]) + rng.normal(0, 0.05, (rows, columns)) * base
    label = np.zeros(rows, np.int64)
    for start in range(200, rows - 40, 400):
        values[start : start + 40, rng.integers(columns)] *= 4
        label[start : start + 40] = 1
    rec = Recording(
        "generated",
        [f"gen/m{j}" for j in range(columns)],
        values,
        label,
        np.where(label, "spike", "normal").astype(object),
    )
    x = fifo_windows(rec.values, window)
    n = len(x)
    last = np.arange(window - 1, rows)
    ws = WindowSet(
        x, label[last], rec.klass[last], np.zeros(n, np.int64), last, np.full(n, "generated", dtype=object), rec.columns
    )
    cut = int(n * 0.85)
    return rec, ws.subset(np.arange(cut)), ws.subset(np.arange(cut, n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--columns", type=int, default=25)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="fewer rows, epochs and repeats")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.rows = 2, 1500
    repeat = 3 if args.quick else 5

    import keras

    from atomwatch.plugins.deep.detector import DeepDetector
    from atomwatch.plugins.deep.models import SCORE_BATCH, new_model
    from atomwatch.trace_rows import trace_rows
    from atomwatch.traces import Trace

    rec, train, val = generated(args.rows, args.columns, args.window)
    results: dict[str, dict] = {}
    for kind in ("ae", "cnn", "siamese"):
        model = new_model(kind, window=args.window, columns=rec.columns, filters=16, latent=8)
        epoch_times: list[float] = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001
                epoch_times.append(time.perf_counter() - self.t)

        model.train(args.epochs, 64, train, validation=val, verbose=0, callbacks=[Timer()])
        one = val.x[:1]
        batch = np.concatenate([val.x] * (1000 // len(val.x) + 1))[:1000]
        z1 = model.scale(one)
        z1000 = model.scale(batch)
        net = model.scorer
        zfixed = model.scale(batch[:SCORE_BATCH])
        # warm up every shape once (compilation is not latency)
        (
            model.score(one),
            model.score(batch),
            net.predict_on_batch(z1),
            net(z1),
            net(z1000),
            net.predict_on_batch(zfixed),
        )
        calls1 = 50 if args.quick else 200
        ours_1 = seconds_per_call(lambda: model.score(one), calls1, repeat)
        pob_1 = seconds_per_call(lambda: net.predict_on_batch(z1), calls1, repeat)
        call_1 = seconds_per_call(lambda: net(z1), max(calls1 // 4, 5), repeat)
        ours_1000 = seconds_per_call(lambda: model.score(batch), 3, repeat)
        pob_fixed = seconds_per_call(lambda: net.predict_on_batch(zfixed), 10, repeat)
        call_1000 = seconds_per_call(lambda: net(z1000), 3, repeat)
        # the live detector, row by row
        trace = Trace("generated", rec.columns, rec.values[: args.window + 300])
        det = DeepDetector(kind, "bench", model, "generated", 3)
        rows = list(trace_rows(trace, "bench"))
        for r in rows[: args.window]:
            det.update(r)
        model.threshold = float("inf")  # time scoring, not attribution of flagged rows
        start = time.perf_counter()
        for r in rows[args.window :]:
            det.update(r)
        update_s = (time.perf_counter() - start) / (len(rows) - args.window)
        results[kind] = {
            "train_seconds_first_epoch": round(epoch_times[0], 3),
            "train_seconds_per_epoch": round(
                statistics.median(epoch_times[1:]) if len(epoch_times) > 1 else epoch_times[0], 3
            ),
            "train_windows": len(train),
            "one_window_ms": {
                "score": round(ours_1["median"] * 1e3, 4),
                "predict_on_batch": round(pob_1["median"] * 1e3, 4),
                "baseline_model_call": round(call_1["median"] * 1e3, 4),
                "ratio_model_call_over_predict_on_batch": round(call_1["median"] / pob_1["median"], 2),
                "detector_update_per_row": round(update_s * 1e3, 4),
            },
            "batch_1000_ms": {
                "score": round(ours_1000["median"] * 1e3, 3),
                "score_per_window": round(ours_1000["median"] * 1e3 / 1000, 5),
                "predict_on_batch_256_x4": round(pob_fixed["median"] * 1e3 * 1000 / SCORE_BATCH, 3),
                "baseline_model_call": round(call_1000["median"] * 1e3, 3),
                "ratio_model_call_over_predict_on_batch": round(
                    call_1000["median"] / (pob_fixed["median"] * 1000 / SCORE_BATCH), 2
                ),
            },
            "meets_1ms_target": ours_1["median"] <= 1e-3,
        }
    emit(
        {
            "benchmark": "deep models: training and scoring",
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "window": args.window,
            "columns": args.columns,
            "epochs": args.epochs,
            "machine": machine(),
            "models": results,
        }
    )


if __name__ == "__main__":
    main()

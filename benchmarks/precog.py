"""Precog speed (and, with ``--quality``, detection quality): prints one JSON object.

Speed, on real memory utilisation (Alibaba machines from ``/work/shared/data/precog``, joined end to
end to 100,000 points):

* ``predict_100k_s`` — one full prediction on the whole series (the vectorised recomputation,
  :func:`atomwatch.plugins.precog.core.predict`), at 10-second steps (3,334 five-minute bins) and with the
  same values at 5-minute steps (100,000 bins); target ≤ 0.1 s;
* ``online_tick_last2000_s`` — the online path's cost per new point (``OnlineSeries.add`` +
  ``evaluate``) over the last 2,000 points, where the state is largest (at 10-second steps every
  earlier point was evaluated too; at 5-minute steps the first 98,000 are only added);
* ``ratio_full_over_tick`` — full recomputation at that length ÷ online tick: what the online state
  saves per tick.

``state_dir`` — what keeping the state across restarts costs for one scope of 20 columns at 1-minute
steps after 7 days: the file's size, one save and one restore, against a row's update.

``--quality`` runs the table of ``docs/precog.md`` instead of the speed part (``--all``: both).
Both modes are fitted on each machine's first two days, then run online over the remaining
~5.7 days on: the real trace (no leak: any alarm is false); the trace moved to a 50 % level with a
3 % daily sine or an 8 % / 8 h sawtooth added (no leak); the moved trace with a leak injected one
day into the online part that takes memory from 50 % to 90 % in 12, 24 or 48 h (lead time = when
it reaches 90 % minus the first report); plus test1..7.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from atomwatch.plugins.precog import core
from atomwatch.traces import read_trace
from benchmarks._common import SHARED, emit, machine

DATA = SHARED / "data" / "precog"
MACHINES = [100] + list(range(1010, 1019))


def alibaba(m: int) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, values) of one Alibaba machine, its train and test parts joined."""
    parts = [read_trace(DATA / f"m_{m}_{part}.csv.gz") for part in ("train", "test")]
    return np.concatenate([t.timestamps for t in parts]), np.concatenate([t.values[:, 0] for t in parts])


def series_100k() -> np.ndarray:
    vals = []
    for m in MACHINES:
        vals.append(alibaba(m)[1])
        if sum(v.size for v in vals) >= 100_000:
            break
    return np.concatenate(vals)[:100_000]


def best_of(fn, repeat: int = 5) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs)


def speed() -> dict:
    p = core.PrecogParams()
    v = series_100k()
    out: dict = {}
    for label, step in (("10s_steps", 10.0), ("5min_steps", 300.0)):
        t = 1.3e9 + np.arange(v.size) * step
        n_fit = int(2 * 86400 / step)
        model = core.fit(t[:n_fit], v[:n_fit], p)
        full = best_of(lambda t=t, model=model: core.predict(t, v, model, p))
        online = core.OnlineSeries(p)
        head = v.size - 2000
        t0 = time.perf_counter()
        if step < p.resample:  # every tick evaluated over the whole stream
            for i in range(head):
                online.add(float(t[i]), float(v[i]))
                online.evaluate(model)
        else:  # 100,000 bins: build the state with adds, evaluate only at the last 2,000 ticks
            for i in range(head):
                online.add(float(t[i]), float(v[i]))
            online.evaluate(model)
        mid = time.perf_counter()
        for i in range(head, v.size):
            online.add(float(t[i]), float(v[i]))
            online.evaluate(model)
        end = time.perf_counter()
        last = online.evaluate(model)
        ref = core.predict(t, v, model, p)
        tick_last = (end - mid) / 2000
        out[label] = {
            "points": int(v.size),
            "bins": int(online.n),
            "predict_100k_s": full,
            "target_s": 0.1,
            "online_tick_last2000_s": tick_last,
            "online_first_98000_s": mid - t0,
            "first_98000_evaluated_every_tick": bool(step < p.resample),
            "ratio_full_over_tick": full / tick_last,
            "same_final_decision": bool(last.alarm == ref.alarm and last.cps == ref.cps),
        }
    return out


def state_cost(columns: int = 20, days: float = 7.0, step: float = 60.0) -> dict:
    """``state_dir``: one scope of ``columns`` memory series at ``step`` seconds, fitted on two days
    and predicting for the rest of ``days``: the file's size (the history as bin medians, against
    its raw points), one save, one restore (a new detector's first row), against a row's update."""
    import tempfile
    from pathlib import Path

    from atomwatch.plugins.precog import detector, state
    from atomwatch.types import Row, SeriesKey

    v = series_100k()
    keys = tuple(SeriesKey(f"vm{j}", f"vm{j}", "MemoryUtilization", "%") for j in range(columns))
    rows = int(days * 86400 / step)
    t0 = 1.3e9
    with tempfile.TemporaryDirectory() as tmp:
        options = {"state_dir": tmp, "save_every": 10**9}  # saved below, by hand
        det = detector.PrecogFactory("precog", True).create("s", options)
        start = time.perf_counter()
        for i in range(rows):
            values = np.array([v[(i + 997 * j) % v.size] for j in range(columns)])
            det.update(Row("s", i, t0 + i * step, keys, values))
        per_row = (time.perf_counter() - start) / rows
        save = best_of(lambda: (setattr(det, "_rows_since_save", 10**9), det._maybe_save()), repeat=3)
        size = Path(det.state_path).stat().st_size
        raw = sum(len(c.hist_t) for c in det.columns.values()) * 16
        kept = sum(state.compress_history(c.hist_t, c.hist_v, 300.0)[0].size for c in det.columns.values()) * 16

        def restore() -> None:
            again = detector.PrecogFactory("precog", True).create("s", options)
            again.update(Row("s", rows, t0 + rows * step, keys, np.full(columns, 50.0)))
            assert again.restored is not None and again.restored["predicting"] == columns

        back = best_of(restore, repeat=3)
    return {
        "columns": columns,
        "step_s": step,
        "days": days,
        "file_bytes": size,
        "history_bytes_raw": raw,
        "history_bytes_kept": kept,
        "save_s": save,
        "restore_s": back,
        "update_per_row_s": per_row,
        "save_over_row": save / per_row,
        "save_every_60_rows_share": save / 60 / per_row,
    }


# ----------------------------------------------------------------------------- quality


def scenario(t: np.ndarray, v: np.ndarray, kind: str, hours: float = 24.0):
    if kind == "real":
        return v, None, None
    v = v - np.median(v) + 50.0
    rel = t - t[0]
    t0 = t90 = None
    if kind == "sine":
        v = v + 3.0 * np.sin(2 * np.pi * rel / 86400)
    elif kind == "saw":
        v = v + 8.0 * ((rel / (8 * 3600)) % 1.0)
    elif kind == "leak":
        t0 = t[0] + 3 * 86400
        t90 = t0 + hours * 3600
        v = v + np.clip((t - t0) * (40.0 / (hours * 3600)), 0, None)
    return np.clip(v, 0, 100), t0, t90


def run_modes(t, v, n_fit, p):
    """Alarm flags per online point for both modes (one online series, two decisions per tick)."""
    model = core.fit(t[:n_fit], v[:n_fit], p, envelope=True)
    online = core.OnlineSeries(p)
    ref = np.zeros(t.size - n_fit, bool)
    imp = np.zeros(t.size - n_fit, bool)
    for i in range(n_fit, t.size):
        online.add(float(t[i]), float(v[i]))
        ref[i - n_fit] = online.evaluate(model).alarm
        imp[i - n_fit] = online.evaluate(model, model.envelope).alarm
    return ref, imp


def episodes(flags: np.ndarray) -> int:
    return int(np.sum(np.diff(np.r_[0, flags.astype(np.int8)]) == 1))


def quality(machines: list[int]) -> dict:
    p = core.PrecogParams()
    table: dict = {}
    kinds = [("real", None), ("sine", None), ("saw", None), ("leak", 12.0), ("leak", 24.0), ("leak", 48.0)]
    for m in machines:
        t, v0 = alibaba(m)
        n_fit = int(np.searchsorted(t, t[0] + 2 * 86400))
        step = np.median(np.diff(t))
        row: dict = {}
        for kind, hours in kinds:
            v, t0, t90 = scenario(t, v0, kind, hours or 24.0)
            flags = run_modes(t, v, n_fit, p)
            tt = t[n_fit:]
            name = kind if hours is None else f"leak{int(hours)}h"
            cell = {}
            for mode, f in zip(("reference", "default"), flags):
                if t0 is None:
                    cell[mode] = {"alarm_hours": round(float(f.sum() * step / 3600), 2), "episodes": episodes(f)}
                else:
                    det = tt[(tt >= t0) & f]
                    cell[mode] = {
                        "false_alarm_hours_before_leak": round(float(f[tt < t0].sum() * step / 3600), 2),
                        "lead_time_h": None if det.size == 0 else round(float((t90 - det[0]) / 3600), 2),
                    }
            row[name] = cell
        table[f"m_{m}"] = row
        print(f"m_{m} done", file=sys.stderr, flush=True)
    samples = {}
    for i in range(1, 8):
        v = np.loadtxt(DATA / f"test{i}.csv", delimiter=",", skiprows=1)[:, 1]
        t = np.arange(v.size) * 600.0
        pp = core.PrecogParams(min_value=30.0)
        ref, imp = run_modes(t, v, v.size // 4, pp)

        def first(f, n0=v.size // 4):
            return None if not f.any() else int(np.argmax(f)) + n0

        samples[f"test{i}"] = {
            "rows": int(v.size),
            "reference": {"alarm_rows": int(ref.sum()), "first_row": first(ref)},
            "default": {"alarm_rows": int(imp.sum()), "first_row": first(imp)},
        }
    return {"alibaba": table, "samples_10min_fit_quarter_min_value_30": samples, "summary": summarise(table)}


def summarise(table: dict) -> dict:
    out: dict = {}
    for kind in ("real", "sine", "saw"):
        for mode in ("reference", "default"):
            cells = [r[kind][mode] for r in table.values()]
            out[f"{kind}/{mode}"] = {
                "machines_alarmed": sum(c["episodes"] > 0 for c in cells),
                "alarm_hours": round(sum(c["alarm_hours"] for c in cells), 2),
                "episodes": sum(c["episodes"] for c in cells),
            }
    for kind in ("leak12h", "leak24h", "leak48h"):
        for mode in ("reference", "default"):
            cells = [r[kind][mode] for r in table.values()]
            leads = [c["lead_time_h"] for c in cells if c["lead_time_h"] is not None]
            out[f"{kind}/{mode}"] = {
                "detected": len(leads),
                "of": len(cells),
                "before_90pct": sum(x > 0 for x in leads),
                "median_lead_h": float(np.median(leads)) if leads else None,
                "min_lead_h": min(leads) if leads else None,
                "false_alarm_hours_before_leak": round(sum(c["false_alarm_hours_before_leak"] for c in cells), 2),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", action="store_true", help="run the detection-quality table (minutes) instead of speed")
    ap.add_argument("--all", action="store_true", help="speed and quality")
    ap.add_argument("--machines", type=int, default=len(MACHINES), help="how many Alibaba machines for --quality")
    args = ap.parse_args()
    result: dict = {"benchmark": "precog", "machine": machine()}
    if args.all or not args.quality:
        result["speed"] = speed()
        result["state_dir"] = state_cost()
    if args.all or args.quality:
        result["quality"] = quality(MACHINES[: args.machines])
    emit(result)


if __name__ == "__main__":
    main()

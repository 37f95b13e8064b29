"""Benchmark of online tracking: messages sent and cost per sample, printed as one JSON object.

1. Messages: every trace of the Precog data (synthetic test1..7, Alibaba m_*_train/test), for
   Δ = 1 %, 5 %, 10 % of each series' mean magnitude: messages of send-all, deadband, ATOM and the
   offline optimum, each policy's ratio to the optimum, totals by family (synthetic / alibaba).
2. Shapes: small synthetic series (noise around a level, slow drift, random walk, steps) that
   show where ATOM beats the deadband and where it loses.
3. Cost: µs per series-sample of ``step`` at 10,000 series (target ≤ 1 µs) for ATOM and the
   deadband, against send-all measured in the same run.

Usage: ``python -m benchmarks.tracking [--gamma G] [--series N] [--ticks T] [--data DIR]``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from atomwatch.traces import read_trace
from atomwatch.tracking import AtomTracker, Deadband, Policy, SendAll, optimal_messages, simulate
from benchmarks._common import SHARED, emit, machine, seconds_per_call

POLICIES = ("all", "deadband", "atom", "optimal")
FRACTIONS = (0.01, 0.05, 0.10)


def run_policies(values: np.ndarray, delta: np.ndarray, gamma: float) -> dict[str, np.ndarray]:
    """Messages per column for every policy over one ticks × columns matrix."""
    return {
        "all": simulate(SendAll(delta), values).messages,
        "deadband": simulate(Deadband(delta), values).messages,
        "atom": simulate(AtomTracker(delta, gamma=gamma), values).messages,
        "optimal": optimal_messages(values, delta),
    }


def summarise(counts: dict[str, int]) -> dict[str, Any]:
    optimum = counts["optimal"]
    return {
        "messages": counts,
        "ratio_to_optimal": {p: (round(counts[p] / optimum, 3) if optimum else None) for p in POLICIES},
        "atom_over_deadband": round(counts["atom"] / counts["deadband"], 3) if counts["deadband"] else None,
    }


def messages_on_traces(data: Path, gamma: float) -> dict[str, Any]:
    paths = sorted(data.glob("test*.csv")) + sorted(data.glob("m_*_t*.csv.gz"))
    if not paths:
        raise SystemExit(f"benchmarks.tracking: no test*.csv or m_*.csv.gz traces in {data}")
    loaded = {p.name: read_trace(p).values for p in paths}
    # One matrix for everything: a column per (trace, series, Δ fraction), shorter traces padded
    # with NaN at the end (unreadable: sends nothing, so it changes no count).
    ticks = max(v.shape[0] for v in loaded.values())
    columns, deltas, owners = [], [], []
    for name, values in loaded.items():
        finite = np.isfinite(values)
        mean = np.abs(np.where(finite, values, 0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1))
        for fraction in FRACTIONS:
            for j in range(values.shape[1]):
                col = np.full(ticks, np.nan)
                col[: values.shape[0]] = values[:, j]
                columns.append(col)
                deltas.append(fraction * mean[j])
                owners.append((name, fraction))
    matrix = np.column_stack(columns)
    counts = run_policies(matrix, np.array(deltas), gamma)

    per_trace: dict[str, dict[str, Any]] = {}
    totals: dict[str, dict[str, dict[str, int]]] = {}
    for k, (name, fraction) in enumerate(owners):
        family = "synthetic" if name.startswith("test") else "alibaba"
        key = f"{fraction:.0%}"
        entry = per_trace.setdefault(name, {"family": family, "samples": int(loaded[name].shape[0])})
        cell = entry.setdefault(key, {p: 0 for p in POLICIES})
        fam = totals.setdefault(family, {}).setdefault(key, {p: 0 for p in POLICIES})
        for p in POLICIES:
            cell[p] += int(counts[p][k])
            fam[p] += int(counts[p][k])
    traces = {
        name: {
            "family": e["family"],
            "samples": e["samples"],
            **{f"{fr:.0%}": summarise(e[f"{fr:.0%}"]) for fr in FRACTIONS},
        }
        for name, e in per_trace.items()
    }
    atom_vs_deadband = {
        f"{fr:.0%}": {
            "atom_fewer": sorted(
                n for n, e in per_trace.items() if e[f"{fr:.0%}"]["atom"] < e[f"{fr:.0%}"]["deadband"]
            ),
            "deadband_fewer": sorted(
                n for n, e in per_trace.items() if e[f"{fr:.0%}"]["atom"] > e[f"{fr:.0%}"]["deadband"]
            ),
        }
        for fr in FRACTIONS
    }
    return {
        "by_family": {fam: {key: summarise(c) for key, c in per_delta.items()} for fam, per_delta in totals.items()},
        "atom_vs_deadband": atom_vs_deadband,
        "traces": traces,
    }


def messages_on_shapes(gamma: float, ticks: int = 5000) -> dict[str, Any]:
    """Δ = 5 % of the level (100): which shapes favour which rule."""
    rng = np.random.default_rng(7)
    level, delta = 100.0, 5.0
    shapes = {
        "noise ±1.2Δ around a level": level + rng.uniform(-1.2, 1.2, ticks) * delta,
        "noise ±Δ/2 around a level": level + rng.uniform(-0.5, 0.5, ticks) * delta,
        "slow drift, Δ/20 a tick": level + np.arange(ticks) * delta / 20,
        "slow drift with noise ±Δ/2": level + np.arange(ticks) * delta / 20 + rng.uniform(-0.5, 0.5, ticks) * delta,
        "random walk, step sd Δ/2": level + np.cumsum(rng.normal(0, delta / 2, ticks)),
        "steps of 3Δ every 200 ticks with noise ±Δ/2": level
        + 3 * delta * (np.arange(ticks) // 200 % 2)
        + rng.uniform(-0.5, 0.5, ticks) * delta,
    }
    matrix = np.column_stack(list(shapes.values()))
    counts = run_policies(matrix, np.full(matrix.shape[1], delta), gamma)
    return {name: summarise({p: int(counts[p][j]) for p in POLICIES}) for j, name in enumerate(shapes)}


def stepper(policy: Policy, values: np.ndarray) -> Callable[[], None]:
    """One call = one tick of ``policy`` on the next row of ``values``, cycling (the state
    carries on across cycles: rounds keep running)."""
    rows = itertools.cycle(values)

    def one_tick() -> None:
        policy.step(next(rows))

    return one_tick


def cost_per_sample(series: int, ticks: int, gamma: float) -> dict[str, Any]:
    """µs per series-sample of ``step`` at ``series`` series, over ``ticks`` ticks of mixed data."""
    rng = np.random.default_rng(11)
    level = rng.uniform(10, 1000, series)
    walk = np.cumsum(rng.normal(0, 0.02, (ticks, series)), axis=0) * level
    values = level + walk + rng.normal(0, 0.03, (ticks, series)) * level
    delta = 0.05 * level
    result: dict[str, Any] = {"series": series, "ticks": ticks}
    policies: dict[str, Policy] = {
        "all": SendAll(delta),
        "deadband": Deadband(delta),
        "atom": AtomTracker(delta, gamma=gamma),
    }
    for name, policy in policies.items():
        t = seconds_per_call(stepper(policy, values), calls=ticks, repeat=5)
        result[name] = {
            "us_per_series_sample": round(t["median"] / series * 1e6, 5),
            "us_per_series_sample_best": round(t["best"] / series * 1e6, 5),
            "ms_per_tick": round(t["median"] * 1e3, 4),
        }
    base = result["all"]["us_per_series_sample"]
    for name in ("deadband", "atom"):
        result[name]["ratio_to_send_all"] = round(result[name]["us_per_series_sample"] / base, 2)
    result["target_us_per_series_sample"] = 1.0
    result["atom_meets_target"] = result["atom"]["us_per_series_sample"] <= 1.0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gamma", type=float, default=0.0, help="ATOM's resolution γ (default 0: float resolution)")
    parser.add_argument("--series", type=int, default=10_000, help="series for the cost measurement")
    parser.add_argument("--ticks", type=int, default=200, help="ticks for the cost measurement")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "precog", help="folder of the traces")
    args = parser.parse_args(argv)
    if args.gamma < 0 or not np.isfinite(args.gamma):
        parser.error(f"--gamma {args.gamma}: must be finite and ≥ 0")
    emit(
        {
            "benchmark": "tracking",
            "gamma": args.gamma,
            "delta_fractions_of_mean": list(FRACTIONS),
            "machine": machine(),
            "cost": cost_per_sample(args.series, args.ticks, args.gamma),
            "shapes_delta_5pct": messages_on_shapes(args.gamma),
            "precog_traces": messages_on_traces(args.data, args.gamma),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

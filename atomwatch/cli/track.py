"""``atomwatch track``: compare tracking policies on a CSV trace.

Runs send-all, deadband, ATOM (:class:`atomwatch.tracking.AtomTracker`) and the offline optimum over
every series of a trace and prints, per policy, the messages sent and the largest error the
controller's copy had. ``--relative`` takes Δ as a fraction of each series' mean magnitude.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

POLICIES = ("all", "deadband", "atom", "optimal")


def _number(text: str) -> tuple[float, bool]:
    """``D`` or ``D%`` → (value, given as a percentage)."""
    t = text.strip()
    percent = t.endswith("%")
    try:
        value = float(t[:-1] if percent else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.5, or 5% with --relative)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be ≥ 0")
    return (value / 100 if percent else value), percent


def _gamma(text: str) -> float:
    value, percent = _number(text)
    if percent:
        raise argparse.ArgumentTypeError(f"{text!r}: γ is a resolution in the series' unit, not a percentage")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="TRACE.csv", help="a CSV trace (.csv or .csv.gz) or a recording folder")
    parser.add_argument(
        "--delta",
        required=True,
        type=_number,
        metavar="D",
        help="error bound Δ in each series' unit; with --relative a fraction of each series' "
        "mean magnitude (0.05 or 5%%; a percentage implies --relative)",
    )
    parser.add_argument("--relative", action="store_true", help="Δ = D × |mean| of each series")
    parser.add_argument(
        "--gamma",
        type=_gamma,
        default=0.0,
        metavar="G",
        help="resolution ending an ATOM round (default 0: the float resolution)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def series_delta(values: np.ndarray, d: float, relative: bool) -> np.ndarray:
    """Δ per series: ``d`` itself, or ``d × |mean|`` (0 for a series with no finite value)."""
    n = values.shape[1]
    if not relative:
        return np.full(n, d)
    finite = np.isfinite(values)
    sums = np.where(finite, values, 0.0).sum(axis=0)
    counts = finite.sum(axis=0)
    mean = np.divide(sums, counts, out=np.zeros(n), where=counts > 0)
    return d * np.abs(mean)


def compare(values: np.ndarray, delta: np.ndarray, gamma: float = 0.0) -> dict[str, dict[str, Any]]:
    """Messages and max error of every policy over ``values`` (ticks × series)."""
    from atomwatch.tracking import AtomTracker, Deadband, SendAll, optimal_max_error, optimal_messages, simulate

    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, policy in (
        ("all", SendAll(delta)),
        ("deadband", Deadband(delta)),
        ("atom", AtomTracker(delta, gamma=gamma)),
    ):
        sim = simulate(policy, values)
        results[name] = (sim.messages, sim.max_error)
    results["optimal"] = (optimal_messages(values, delta), optimal_max_error(values, delta))
    optimum = int(results["optimal"][0].sum())
    out: dict[str, dict[str, Any]] = {}
    for name in POLICIES:
        messages, max_error = results[name]
        total = int(messages.sum())
        out[name] = {
            "messages": total,
            "max_error": float(max_error.max(initial=0.0)),
            "ratio_to_optimal": (total / optimum) if optimum else None,
        }
    return out


def run(args: argparse.Namespace) -> int:
    from atomwatch.traces import TraceError, read_trace

    d, percent = args.delta
    relative = args.relative or percent
    try:
        trace = read_trace(args.trace)
    except TraceError as e:
        print(f"atomwatch track: {e}", file=sys.stderr)
        return 2
    delta = series_delta(trace.values, d, relative)
    policies = compare(trace.values, delta, args.gamma)

    if args.json:
        report = {
            "trace": trace.path,
            "series": trace.columns,
            "samples": trace.rows,
            "delta": delta.tolist(),
            "relative": relative,
            "gamma": args.gamma,
            "policies": policies,
        }
        print(json.dumps(report))
        return 0

    how = f"{d:g} × |mean| of each series" if relative else f"{d:g}"
    print(f"{trace.path}: {len(trace.columns)} series × {trace.rows} samples, Δ = {how}, γ = {args.gamma:g}")
    print(f"{'policy':<10} {'messages':>10} {'× optimal':>10} {'max error':>12}")
    for name in POLICIES:
        p = policies[name]
        ratio = "-" if p["ratio_to_optimal"] is None else f"{p['ratio_to_optimal']:.3f}"
        print(f"{name:<10} {p['messages']:>10} {ratio:>10} {p['max_error']:>12.6g}")
    return 0

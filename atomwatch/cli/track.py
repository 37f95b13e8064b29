"""``atomwatch track``: compare tracking policies on a CSV trace.

Runs send-all, deadband, ATOM (:class:`atomwatch.tracking.AtomTracker`) and the offline optimum over
every series of a trace and prints, per policy, the messages sent and the largest error the
controller's copy had. ``--delta`` has the grammar of every command (``[METRIC=]VALUE[%]``, repeatable;
``P%`` is P percent of each series' mean magnitude); ``--relative`` makes a bare number such a
fraction (0.05 = 5%).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

from atomwatch.config import DELTA_GRAMMAR

POLICIES = ("all", "deadband", "atom", "optimal")


def _gamma(text: str) -> float:
    t = text.strip()
    if t.endswith("%"):
        raise argparse.ArgumentTypeError(f"{text!r}: γ is a resolution in the series' unit, not a percentage")
    try:
        value = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number ≥ 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="TRACE.csv", help="a CSV trace (.csv or .csv.gz) or a recording folder")
    parser.add_argument(
        "--delta",
        required=True,
        action="append",
        metavar=DELTA_GRAMMAR,
        help="error bound Δ in each series' unit, for the series of METRIC or (a bare VALUE) every other one "
        "(repeatable); P%% is P percent of each series' mean magnitude",
    )
    parser.add_argument(
        "--relative",
        action="store_true",
        help="a bare number is a fraction of each series' mean magnitude (0.05 = 5%%)",
    )
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
    from atomwatch.config import Relative
    from atomwatch.series import SeriesKey
    from atomwatch.trace_rows import column_deltas

    columns = [SeriesKey.from_column(f"s{j}") for j in range(values.shape[1])]
    return column_deltas(columns, values, {"*": Relative(d) if relative else d})


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
    from atomwatch.config import Relative, parse_deltas, plain_deltas
    from atomwatch.series import SeriesKey
    from atomwatch.trace_rows import column_deltas
    from atomwatch.traces import TraceError, read_trace

    deltas = parse_deltas(args.delta, relative_default=args.relative)  # ConfigError: exit 2, one line
    relative = any(isinstance(d, Relative) for d in deltas.values())
    try:
        trace = read_trace(args.trace)
    except TraceError as e:
        print(f"atomwatch track: {e}", file=sys.stderr)
        return 2
    delta = column_deltas([SeriesKey.from_column(c) for c in trace.columns], trace.values, deltas)
    policies = compare(trace.values, delta, args.gamma)

    if args.json:
        report = {
            "trace": trace.path,
            "series": trace.columns,
            "samples": trace.rows,
            "delta": delta.tolist(),
            "relative": relative,
            "deltas": plain_deltas(deltas),
            "gamma": args.gamma,
            "policies": policies,
        }
        print(json.dumps(report))
        return 0

    how = ", ".join(
        f"{'' if m == '*' else m + '='}{d:g}{' of |mean| of each series' if isinstance(d, Relative) else ''}"
        for m, d in deltas.items()
    )
    print(f"{trace.path}: {len(trace.columns)} series × {trace.rows} samples, Δ = {how}, γ = {args.gamma:g}")
    print(f"{'policy':<10} {'messages':>10} {'× optimal':>10} {'max error':>12}")
    for name in POLICIES:
        p = policies[name]
        ratio = "-" if p["ratio_to_optimal"] is None else f"{p['ratio_to_optimal']:.3f}"
        print(f"{name:<10} {p['messages']:>10} {ratio:>10} {p['max_error']:>12.6g}")
    return 0

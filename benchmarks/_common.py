"""Small helpers shared by the benchmark scripts: timing a call, printing the one JSON result."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the project's shared folder (data, lab assets), beside the checkout unless $ATOMWATCH_SHARED says
SHARED = Path(os.environ.get("ATOMWATCH_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def seconds_per_call(fn: Callable[[], object], calls: int, repeat: int = 5) -> dict[str, float]:
    """Run ``fn`` ``calls`` times, ``repeat`` times over; seconds per call, best and median."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls)
    return {"best": min(runs), "median": statistics.median(runs)}


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor()}


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object."""
    print(json.dumps(result, indent=2))

"""Small helpers shared by the benchmark scripts: timing a call, printing the one JSON result."""

from __future__ import annotations

import json
import os
import platform
import socket
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Return once something listens on 127.0.0.1:``port``; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")

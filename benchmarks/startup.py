"""How fast the ``atomwatch`` command answers: ``--help``, ``detect --help`` and ``plugins``.

Each command runs as a fresh process (``python -m atomwatch …``, what the console script runs) and
so does the baseline, ``python -c pass``: the interpreter's own start-up on this machine in this
run. The commands are run round-robin, ``--runs`` times each after one warm-up round (which also
writes the bytecode caches an installed package has; ``PYTHONDONTWRITEBYTECODE`` is dropped from
the children's environment, or every run would compile the sources again). Per command: the
median and best wall time, the median CPU time of the child (user + system, which other
processes' load on the machine disturbs less than wall time), the ratio of the median wall time
to the baseline's, and whether the median is under the 0.5 s the project promises for the two
``--help`` commands. ``atomwatch plugins`` imports every installed plugin: it has no promise.

    python -m benchmarks.startup [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from benchmarks._common import emit, machine

#: name → the arguments after ``python``
COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "atomwatch --help": ["-m", "atomwatch", "--help"],
    "atomwatch detect --help": ["-m", "atomwatch", "detect", "--help"],
    "atomwatch plugins": ["-m", "atomwatch", "plugins"],
}
BASELINE = "python -c pass"
#: the promise: these answer in well under this many seconds
PROMISED = {"atomwatch --help": 0.5, "atomwatch detect --help": 0.5}


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, child CPU seconds, exit status) of one ``python ARGS`` run."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (default 15)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name, argv in COMMANDS.items():  # warm-up: bytecode caches, the page cache
        _, _, code = run_once(argv, env)
        if code != 0:
            sys.exit(f"benchmarks.startup: {name} exited with status {code}")
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            wall, cpu, _ = run_once(argv, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
    base = statistics.median(walls[BASELINE])
    results = {}
    for name in COMMANDS:
        median = statistics.median(walls[name])
        entry = {
            "median_s": round(median, 4),
            "best_s": round(min(walls[name]), 4),
            "cpu_median_s": round(statistics.median(cpus[name]), 4),
            "ratio_to_baseline": round(median / base, 2),
        }
        if name in PROMISED:
            entry["under_promise"] = median < PROMISED[name]
        results[name] = entry
    emit(
        {
            "benchmark": "startup",
            "runs": args.runs,
            "baseline": BASELINE,
            "promise_s": PROMISED,
            "commands": results,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()

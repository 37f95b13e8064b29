"""How long the README's quick start takes to show the bundled attack, in one run.

``atomwatch up`` is started ``--runs`` times with nothing configured (state and alarms in a
temporary folder, no ``ATOMWATCH_*`` settings; the libvirt plugin left out, as in the core
install, so that a hypervisor's real guests do not join the replay), each time until it prints
its first alarm, then stopped with SIGINT. Per run: seconds from the start of the process to
the controller's connection to the broker (the baseline: start-up, the same in every mode), to
the alarm printed on stdout, the row it opened at and what it blames. The result gives the
median of each, the alarm's time as a ratio to start-up and as a share of the README's 30 s, and
``python -c pass`` for scale.

    python -m benchmarks.quickstart [--runs 3] [--limit 120]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._common import emit, machine

#: every built-in plugin the core install can run (libvirt needs libvirt-python, an extra)
PLUGINS = "replay,pca-spe,precog,coredns,deep,introspection-commands,orchestrate"
README_SECONDS = 30.0


def one_run(limit: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="atomwatch-quickstart-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMWATCH_")}
        env.update(XDG_STATE_HOME=tmp, ATOMWATCH_LOAD_PLUGINS=PLUGINS)
        exe = str(Path(sys.executable).with_name("atomwatch"))
        start = time.monotonic()
        proc = subprocess.Popen(
            [exe, "up", "--http", "off", "--db", str(Path(tmp) / "alarms.sqlite")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        connected: list[float] = []

        def read_log() -> None:
            for line in proc.stderr:
                if not connected and "atomwatch.controller.app: connected to" in line:
                    connected.append(time.monotonic() - start)

        reader = threading.Thread(target=read_log, daemon=True)
        reader.start()
        timer = threading.Timer(limit, proc.kill)
        timer.start()
        alarm = None
        try:
            for line in proc.stdout:
                m = re.match(r"alarm (\d+): (\S+) on \S+ at row (\d+) .* blames (.*)$", line)
                if m:
                    alarm = (time.monotonic() - start, int(m.group(3)), m.group(4).strip())
                    break
        finally:
            timer.cancel()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(5)
    if alarm is None:
        raise SystemExit(f"no alarm within {limit:g} s")
    return {
        "connected_s": round(connected[0], 3) if connected else None,
        "alarm_s": round(alarm[0], 3),
        "alarm_row": alarm[1],
        "blames": alarm[2],
    }


def python_startup() -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--limit", type=float, default=120.0, help="seconds before a run counts as failed")
    args = p.parse_args()
    runs = [one_run(args.limit) for _ in range(args.runs)]
    alarm = statistics.median(r["alarm_s"] for r in runs)
    connected = statistics.median(r["connected_s"] for r in runs if r["connected_s"] is not None)
    emit(
        {
            "benchmark": "quickstart",
            "machine": machine(),
            "load_average": os.getloadavg()[0],
            "runs": runs,
            "median_connected_s": connected,
            "median_alarm_s": alarm,
            "alarm_vs_startup": round(alarm / connected, 2),
            "share_of_readme_duration": round(alarm / README_SECONDS, 3),
            "python_c_pass_s": round(python_startup(), 3),
        }
    )


if __name__ == "__main__":
    main()

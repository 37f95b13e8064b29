"""The fault scenarios ``python -m benchmarks.faults`` and ``tests/test_faults.py`` share, and their judge.

What lives here: :func:`run_scenario` (a real Mosquitto, ``atomwatch controller`` and two ``atomwatch
agent`` processes, one fault — the broker killed and restarted, the agents or the controller killed -9
and restarted — then a clean stop) and :func:`analyse` (samples lost, rows from stale values, values off
by more than Δ, alarms lost, attacks without an alarm, seconds to live data, from the records the probe
plugin :mod:`benchmarks.fault_probe` wrote outside the processes). What each figure means, why the ticks
and Δ are what they are, and the figures before issue 15's fixes: ``docs/fault-harness.md``.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from benchmarks._common import free_port
from benchmarks._common import wait_port as _wait_port

#: seconds between two agent ticks (the trace plays two rows a second)
AGENT_TICK = 0.5
#: seconds between two controller rows: four per agent tick
CONTROLLER_TICK = 0.125
#: seconds allowed for transport and scheduling on top of one agent tick before a value is stale
MARGIN = 0.5
#: the trace row of the replay agent's first tick: 24 normal rows before the attack (row 90)
START_ROW = 66
#: the trace row at which the broker or the agents are killed (just before the attack)
FAULT_ROW = 86
#: an attack run is judged once this many of its rows were read and GRACE seconds went by
MIN_ATTACK_ROWS = 8
GRACE = 5.0
#: seconds the controller scenario waits for the attack's alarm before it kills the controller anyway
ATTACK_ALARM_WAIT = 30.0
#: seconds the system runs after live data resumed (and until no late row came for LATE_QUIET)
SETTLE = 4.0
LATE_QUIET = 2.0
SITE = "faults"
TRUTH, REPLAY = f"{SITE}/truth", f"{SITE}/replay"
PROBE = Path(__file__).with_name("fault_probe.py")


@dataclass(frozen=True)
class Scenario:
    """One fault: ``none`` (the baseline), ``broker``, ``agent`` or ``controller``; ``outage``: the
    seconds the broker, or the killed processes, stay away."""

    name: str
    fault: str
    outage: float = 0.0


class HarnessError(RuntimeError):
    """The harness could not run the scenario (a process died, a wait timed out); names the logs."""


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def bundled_trace() -> tuple[Path, Path]:
    data = resources.files("atomwatch") / "data"
    return Path(str(data / "lab-cryptominer.csv")), Path(str(data / "lab-cryptominer.labels.csv"))


def wait_port(port: int, timeout: float = 10.0) -> None:
    try:
        _wait_port(port, timeout)
    except TimeoutError as e:
        raise HarnessError(str(e)) from None


# --------------------------------------------------------------------------- processes


class Process:
    """A real process in a process group of its own; every group it ever had is killed at cleanup."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen | None = None
        self.groups: list[int] = []

    def start(self, argv: list[str] | None = None) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv or self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups.append(self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the process itself (not its group): what a crash does."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status (None when it was not running)."""
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self.proc = None
        return status

    def cleanup(self) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
            self.proc = None

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Mosquitto(Process):
    """Mosquitto on 127.0.0.1:<free port>, no persistence: a restart forgets retained messages."""

    def __init__(self, binary: str, workdir: Path):
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
        )
        super().__init__("mosquitto", [binary, "-c", str(conf)], dict(os.environ), workdir / "mosquitto.log")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, argv: list[str] | None = None) -> None:
        super().start(argv)
        wait_port(self.port)


class Tail:
    """The JSON lines appended to a file since the last call (a torn last line waits or is skipped)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.rest = b""

    def new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line torn by a kill -9: the next writer appended after it
        return out


@dataclass
class Records:
    """Everything the probe wrote: controller rows and alarms, each agent's readings."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {TRUTH: [], REPLAY: []})
    alarms: list[dict[str, Any]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)
    replay: list[dict[str, Any]] = field(default_factory=list)


def prepare(workdir: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    """What every harness run needs in ``workdir``: the probe plugin's folder, a command-signing
    key pair, and the processes' environment (no ``ATOMWATCH_*`` of the caller's)."""
    from atomwatch import signing

    plugins = workdir / "plugins"
    plugins.mkdir()
    shutil.copy(PROBE, plugins / PROBE.name)
    key, pub = workdir / "command-signing.key", workdir / "command-signing.pub"
    signing.write_key_pair(key, pub)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMWATCH_")}
    env.update(XDG_STATE_HOME=str(workdir / "state"), ATOMWATCH_NO_JIT="1", PYTHONUNBUFFERED="1")
    return plugins, key, pub, env


class Site:
    """The broker, the controller and the two agents of one run, in ``workdir``."""

    def __init__(self, workdir: Path, backlog: bool):

        binary = mosquitto_binary()
        if binary is None:
            raise HarnessError("mosquitto is not installed (apt-get install mosquitto)")
        self.dir = workdir
        plugins, key, pub, base = prepare(workdir)
        self.trace, labels = bundled_trace()
        self.attack = attack_rows(labels)
        self.files = {n: workdir / f"{n}.jsonl" for n in ("controller", "truth", "replay")}
        self.tails = {n: Tail(p) for n, p in self.files.items()}
        self.records = Records()
        self.db = workdir / "alarms.sqlite"
        self.broker = Mosquitto(binary, workdir)
        common = ["--broker", self.broker.url, "--site", SITE, "--plugins-dir", str(plugins)]
        py = [sys.executable, "-m", "atomwatch", "--log-level", "info"]
        self.controller = Process(
            "controller",
            [
                *py,
                "controller",
                *common,
                "--tick",
                str(CONTROLLER_TICK),
                "--rows",
                "tick",
                "--db",
                str(self.db),
                "--http",
                "off",
                "--signing-key",
                str(key),
                "--set",
                f"faultprobe.out={self.files['controller']}",
                "--set",
                "pca-spe.confirm=12",
            ],
            dict(base, ATOMWATCH_LOAD_PLUGINS="pca-spe"),
            workdir / "controller.log",
        )
        agent = [*py, "agent", *common, "--tick", str(AGENT_TICK), "--controller-key", str(pub)]
        self.backlog = backlog and agent_supports("--backlog-dir")
        self.agent_argv: dict[str, list[str]] = {}
        for host in ("truth", "replay"):
            argv = [*agent, "--host", host, "--set", f"faultprobe.role={host}"]
            argv += ["--set", f"faultprobe.out={self.files[host]}"]
            if host == "replay":
                argv += ["--set", f"faultprobe.trace={self.trace}"]
            if self.backlog:
                (workdir / f"backlog-{host}").mkdir()
                argv += ["--backlog-dir", str(workdir / f"backlog-{host}")]
            self.agent_argv[host] = argv
        agent_env = dict(base, ATOMWATCH_LOAD_PLUGINS="")
        self.agents = {
            h: Process(h, self.agent_argv[h] + self._start_at(START_ROW, h), agent_env, workdir / f"{h}.log")
            for h in ("truth", "replay")
        }
        #: late rows seen so far, and when the last new one was seen (wall clock)
        self.late_rows = 0
        self.late_seen = 0.0
        self.expected_down: set[str] = set()

    @staticmethod
    def _start_at(row: int, host: str) -> list[str]:
        return ["--set", f"faultprobe.start={row}"] if host == "replay" else []

    def processes(self) -> list[Process]:
        return [self.broker, self.controller, *self.agents.values()]

    # -- reading the records

    def poll(self) -> Records:
        r = self.records
        for line in self.tails["controller"].new():
            if "alarm" in line:
                r.alarms.append(line)
            elif line.get("scope") in r.rows:
                r.rows[line["scope"]].append(line)
                if line["late"]:
                    self.late_rows += 1
                    self.late_seen = time.time()
        r.truth += self.tails["truth"].new()
        r.replay += self.tails["replay"].new()
        for p in self.processes():
            if p.name not in self.expected_down and p.proc is not None and p.proc.poll() is not None:
                raise HarnessError(f"{p.name} exited with status {p.proc.returncode}; its log ends:\n{p.tail()}")
        return r

    def wait(self, what: str, ready: Callable[[Records], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = ready(self.poll())
            if found:
                return found
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}:\n{p.tail(10)}" for p in self.processes())
                raise HarnessError(f"timed out after {timeout:g} s waiting for {what}; logs:\n{logs}")
            time.sleep(0.05)

    # -- the run

    def start(self) -> None:
        self.broker.start()
        self.controller.start()
        for agent in self.agents.values():
            agent.start()

    def restart_agents(self) -> None:
        """Start the agents again; the replay goes on at the trace row the world has reached (the
        rows it would have read while it was dead are skipped, as a real guest's would be)."""
        last = self.poll().replay[-1]
        row = int(last["row"]) + round((time.time() - last["t"]) / AGENT_TICK)
        for host, agent in self.agents.items():
            agent.start(self.agent_argv[host] + self._start_at(row, host))

    def stop(self) -> dict[str, int | None]:
        """Agents first (they publish their death), then the controller (it flushes its alarms)."""
        status = {h: a.stop() for h, a in self.agents.items()}
        status["controller"] = self.controller.stop()
        self.broker.stop()
        return status

    def cleanup(self) -> None:
        for p in self.processes():
            p.cleanup()


def agent_supports(option: str) -> bool:
    """Whether ``atomwatch agent`` has ``option`` (the store-and-forward options may not exist yet)."""
    done = subprocess.run(
        [sys.executable, "-m", "atomwatch", "agent", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return option in done.stdout


def _fresh_truth_row(after: float) -> Callable[[Records], dict[str, Any] | None]:
    def ready(r: Records) -> dict[str, Any] | None:
        for row in reversed(r.rows[TRUTH]):
            if row["ts"] < after:
                return None
            if is_fresh(row):
                return row
        return None

    return ready


def _alarm_on_attack(attack: set[int]) -> Callable[[Records], bool]:
    """An alarm of the replay host opened after the agent read the first attack row."""

    def ready(r: Records) -> bool:
        first = next((x["t"] for x in r.replay if x.get("row") in attack), None)
        return first is not None and any(a["scope"] == REPLAY and a["opened_at"] >= first for a in r.alarms)

    return ready


def _replay_row_at_least(row: int) -> Callable[[Records], bool]:
    return lambda r: bool(r.replay) and r.replay[-1]["row"] is not None and r.replay[-1]["row"] >= row


def run_scenario(scenario: Scenario, workdir: Path | None = None, backlog: bool = True) -> dict[str, Any]:
    """Run one scenario with real processes and return its figures (:func:`analyse`). ``backlog``:
    give the agents ``--backlog-dir`` when they have it. Every process is gone when it returns."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="atomwatch-faults-")))
        site = Site(workdir, backlog)
        stack.callback(site.cleanup)
        site.start()
        started = time.time()
        site.wait("live rows of both hosts", lambda r: _fresh_truth_row(started)(r) and r.rows[REPLAY], 60)
        if scenario.fault == "controller":
            # right after the controller opened the attack's alarm: is it in the file after a kill -9?
            site.wait(f"the replay at trace row {min(site.attack)}", _replay_row_at_least(min(site.attack)), 60)
            with contextlib.suppress(HarnessError):  # (none within ATTACK_ALARM_WAIT: kill all the same)
                site.wait("an alarm on the attack", _alarm_on_attack(site.attack), ATTACK_ALARM_WAIT)
        else:
            site.wait(f"the replay at trace row {FAULT_ROW}", _replay_row_at_least(FAULT_ROW), 60)
        fault_start = time.time()
        if scenario.fault == "broker":
            site.expected_down.add("mosquitto")
            site.broker.kill9()
            time.sleep(scenario.outage)
            site.broker.start()
            site.expected_down.discard("mosquitto")
        elif scenario.fault == "agent":
            site.expected_down.update(site.agents)
            for agent in site.agents.values():
                agent.kill9()
            time.sleep(scenario.outage)
            site.restart_agents()
            site.expected_down.difference_update(site.agents)
        elif scenario.fault == "controller":
            site.expected_down.add("controller")
            site.controller.kill9()
            time.sleep(scenario.outage)
            site.controller.start()
            site.expected_down.discard("controller")
        elif scenario.fault != "none":
            raise ValueError(f"unknown fault {scenario.fault!r}: none, broker, agent or controller")
        fault_end = time.time()
        resumed = site.wait("fresh live data after the fault", _fresh_truth_row(fault_end), 60 + scenario.outage)
        # settle: SETTLE s of live data, no late row for LATE_QUIET s, every attack run judged
        settle_until = max(time.time(), resumed["ts"] + SETTLE)
        judge_after = MIN_ATTACK_ROWS * AGENT_TICK + GRACE
        cap = time.time() + 2 * scenario.outage + 60
        while time.time() < cap:
            now = time.time()
            runs = attack_runs(site.poll().replay, site.attack)
            if (
                now >= settle_until
                and now - site.late_seen >= LATE_QUIET
                and all(now - a >= judge_after for a, _, _ in runs)
            ):
                break
            time.sleep(0.1)
        stopped = time.time()
        status = site.stop()
        records = site.poll()
        alarms_in_file = read_alarms(site.db)
        figures = analyse(
            records,
            alarms_in_file,
            trace=site.trace,
            fault_start=fault_start,
            fault_end=fault_end,
            stopped=stopped,
            faulted=scenario.fault != "none",
        )
        figures = {
            "scenario": scenario.name,
            "fault": scenario.fault,
            "outage_s": scenario.outage,
            "agent_backlog_dir": site.backlog,
            **figures,
            "exit_status": status,
        }
        return figures
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- judging the records


def truth_lag(row: dict[str, Any]) -> float | None:
    """Seconds from the truth sample a row holds to the row's ts (None when the clock is unknown)."""
    clock = row["values"].get("probe/clock")
    return None if clock is None else row["ts"] - clock


def is_fresh(row: dict[str, Any]) -> bool:
    """A live truth row holding a sample at most Δ (0) + one agent tick + MARGIN old."""
    lag = truth_lag(row)
    return not row["late"] and lag is not None and abs(lag) <= AGENT_TICK + MARGIN


def read_alarms(db: Path) -> dict[str, Any]:
    """The alarms file's alarms (id → opened_at, scope) and the ts of every abnormal row kept, by scope."""
    out: dict[str, Any] = {"alarms": {}, "row_ts": {}}
    if not db.exists():
        return out
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        for alarm_id, opened_at, scope in c.execute("SELECT id, opened_at, scope FROM alarms"):
            out["alarms"][int(alarm_id)] = (float(opened_at), scope)
        for scope, ts in c.execute("SELECT a.scope, r.ts FROM alarm_rows r JOIN alarms a ON a.id = r.alarm_id"):
            out["row_ts"].setdefault(scope, []).append(float(ts))
    return out


def attack_rows(labels: Path) -> set[int]:
    with labels.open() as f:
        header = f.readline().strip().split(",")
        row_at, label_at = header.index("row"), header.index("label")
        return {int(p[row_at]) for p in (line.strip().split(",") for line in f) if p[label_at] not in ("", "0")}


class Truth:
    """What the replay agent read and when: the trace rows of the ticks in [a, b]."""

    def __init__(self, readings: list[dict[str, Any]], trace: Path):
        from atomwatch.plugins.replay import ReplayCollector

        replay = ReplayCollector(str(trace))
        self.values = replay.trace.values
        self.column_of = {k.column: j for j, k in enumerate(replay.keys)}
        self.delta_of = {k.column: replay.deltas[k] for k in replay.keys}
        readings = sorted((r for r in readings if r.get("row") is not None), key=lambda r: r["t"])
        self.t = [r["t"] for r in readings]
        self.rows = [int(r["row"]) for r in readings]

    def rows_between(self, a: float, b: float) -> list[int]:
        return self.rows[bisect.bisect_left(self.t, a) : bisect.bisect_right(self.t, b)]

    def off(self, row: dict[str, Any]) -> int | None:
        """Cells of a replay row farther than Δ from every trace row read in the row's window;
        None when the agent read nothing then (the row was made from values no longer fresh)."""
        ts = row["ts"]
        candidates = self.rows_between(ts - AGENT_TICK - MARGIN, ts + (MARGIN if row["late"] else 0.0))
        if not candidates:
            return None
        off = 0
        for column, v in row["values"].items():
            j = self.column_of.get(column)
            if v is None or j is None:
                continue  # stale (unknown) is honest; a column the trace lacks is not judged
            delta = row["deltas"].get(column)
            delta = self.delta_of[column] if delta is None else delta
            bound = delta * (1 + 1e-9) + 1e-12
            truths = [self.values[r, j] for r in candidates]
            if not any(math.isfinite(x) and abs(v - x) <= bound for x in truths):
                off += 1
        return off


def attack_runs(readings: list[dict[str, Any]], attack: set[int]) -> list[tuple[float, float, int]]:
    """(first, last reading time, rows read) of each run of consecutive attack rows the agent read."""
    runs: list[list[float]] = []
    inside = False
    for r in sorted(readings, key=lambda r: r["t"]):
        if r.get("row") in attack:
            if inside:
                runs[-1][1] = r["t"]
                runs[-1][2] += 1
            else:
                runs.append([r["t"], r["t"], 1])
            inside = True
        else:
            inside = False
    return [(a, b, int(n)) for a, b, n in runs]


def analyse(
    records: Records,
    alarms_in_file: dict[str, Any],
    *,
    trace: Path,
    fault_start: float,
    fault_end: float,
    stopped: float,
    faulted: bool = True,
    labels: Path | None = None,
) -> dict[str, Any]:
    """The figures of one run (see the module's docstring); times are seconds."""
    truth_rows, replay_rows = records.rows[TRUTH], records.rows[REPLAY]
    bound = AGENT_TICK + MARGIN  # Δ of the clock is 0

    # rows made from values no longer fresh
    stale_ts = []
    lags = []
    for row in truth_rows:
        lag = truth_lag(row)
        if lag is None:
            continue
        if not row["late"]:
            lags.append(lag)
        if abs(lag) > bound:
            stale_ts.append(row["ts"])
    truth = Truth(records.replay, trace)
    off_cells = off_rows = 0
    replay_resumed = None
    for row in replay_rows:
        off = truth.off(row)
        if off is None:
            stale_ts.append(row["ts"])
        elif off:
            off_cells += off
            off_rows += 1
        elif replay_resumed is None and not row["late"] and row["ts"] >= fault_end:
            replay_resumed = row["ts"]

    # samples: every truth tick from the first one a row showed until a tick before the end
    delivered = {row["values"].get("probe/clock") for row in truth_rows}
    delivered.discard(None)
    first = min(delivered, default=None)
    last_row = max((row["ts"] for row in truth_rows), default=stopped)
    cutoff = min(stopped, last_row) - bound
    produced = [s["clock"] for s in records.truth if first is not None and first <= s["clock"] <= cutoff]
    lost = [c for c in produced if c not in delivered]
    during = [c for c in produced if fault_start <= c <= fault_end]

    # alarms
    in_file = alarms_in_file["alarms"]
    lost_alarms = [
        a for a in records.alarms if a["alarm"] not in in_file or abs(in_file[a["alarm"]][0] - a["opened_at"]) > 1e-3
    ]
    alarm_ts = sorted(alarms_in_file["row_ts"].get(REPLAY, []))
    judged = unjudged = without = 0
    attack = attack_rows(labels or bundled_trace()[1])
    for a, b, n in attack_runs(records.replay, attack):
        if n < MIN_ATTACK_ROWS or stopped - a < MIN_ATTACK_ROWS * AGENT_TICK + GRACE:
            unjudged += 1
            continue
        judged += 1
        i = bisect.bisect_left(alarm_ts, a - AGENT_TICK)
        if not (i < len(alarm_ts) and alarm_ts[i] <= b + GRACE):
            without += 1

    # resuming
    resumed = min((row["ts"] for row in truth_rows if row["ts"] >= fault_end and is_fresh(row)), default=None)
    lags.sort()
    return {
        "samples": len(produced),
        "samples_during_fault": len(during),
        "samples_lost": len(lost),
        "samples_lost_during_fault": len([c for c in lost if fault_start <= c <= fault_end]),
        "rows": {"truth": len(truth_rows), "replay": len(replay_rows)},
        "rows_late": sum(1 for rows in records.rows.values() for row in rows if row["late"]),
        "rows_from_stale_values": len(stale_ts),
        "stale_rows_span_s": round(max(stale_ts) - min(stale_ts), 3) if stale_ts else 0.0,
        "values_off_by_more_than_delta": off_cells,
        "rows_with_values_off": off_rows,
        "alarms_opened": len(records.alarms),
        "alarms_opened_late": sum(1 for a in records.alarms if a.get("late")),
        "alarms_lost": len(lost_alarms),
        "attack_runs": judged,
        "attack_runs_without_alarm": without,
        "attack_runs_not_judged": unjudged,
        "resume_s": None if resumed is None or not faulted else round(resumed - fault_end, 3),
        "replay_resume_s": None if replay_resumed is None or not faulted else round(replay_resumed - fault_end, 3),
        "fault_s": round(fault_end - fault_start, 3),
        "live_lag_s": {
            "median": round(lags[len(lags) // 2], 3) if lags else None,
            "p99": round(lags[int(0.99 * (len(lags) - 1))], 3) if lags else None,
            "max": round(lags[-1], 3) if lags else None,
        },
    }

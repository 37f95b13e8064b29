"""How many hypervisors one controller process keeps up with: real broker, real controller, simulated fleet.

Each trial starts a Mosquitto on a free loopback port, one controller process (``python -m atomwatch
controller``, the pca-spe detector only, alarms in a temporary file, /metrics on loopback) and
``--publishers`` fleet processes (:mod:`benchmarks._fleet`: N hosts of 10 VMs × 8 metrics replaying
the lab and Alibaba traces through ATOM's tracking rule, real births and data messages at QoS 1,
spread over the tick). Time is compressed: agents and controller tick every ``--tick`` seconds
(1 s; 0.5 s with ``--quick``), and N hosts at that tick stand for ``N × 10 / tick`` hosts at the
10 s tick a deployment runs (``hosts_at_10s``). pca-spe starts detecting after ``--min-rows`` rows
(100, just over d = 80: its default, 2·d = 160 rows, would make every trial a minute longer; under
d the young model is rank-deficient, and a fixed reference can latch — measured with 30: every row
of the baseline's scope abnormal, its window stuck at 56 rows).

A trial warms up until every scope detects, then measures ``--measure`` ticks. It *keeps up* when
every scope got its row at every tick (rows ≥ 97 % of N × ticks, no tick skipped), the tick loop's
lateness p99 stays under one tick, and the messages the controller has not taken yet (published −
ingested, the median of three scrapes on consecutive ticks at each end of the window) do not grow
by more than a tenth of a tick's messages over the window. Two regimes:
``normal``, and ``incident`` (10 % of the hosts turn abnormal at the window's start and stay so).
The search doubles N while the controller keeps up (guided by the CPU it used), then halves the
bracket until it is within 20 % or the time budget (``--budget`` seconds: about 10 minutes in all;
``--quick`` runs one trial per regime at ``--start`` hosts, about 3 minutes) is spent; the incident is
searched from the normal regime's largest N down.

Per trial: controller CPU (process CPU time, user + system, all its threads, from /proc through
psutil: this 2-CPU machine is shared with other sessions, so wall-clock speed would not be the
controller's own), CPU per host-row, resident memory per host (RSS growth from before the first
birth), messages per second, the tick loop's lateness p50/p99, the delay from a sample's publish
to its row through detection (``atomwatch_row_delay_seconds``; quantiles read from the histogram's
buckets), and in the incident the delay from each abnormal host's first abnormal sample's publish to
the first anomaly recorded for a row holding it (the alarm's audit trail: opened or extended); ``hosts_at_10s_per_core`` (N at a 10 s tick over the cores the controller used:
what one whole core would take at this cost), ``fleet_late_max_s`` and ``fleet_kept_up`` (the
simulated fleet itself published on time: when not, a failure is the machine's, not the
controller's), the load average, and ``event_loop_share``: the part of the controller's CPU spent
in its main thread (MQTT, ingest, rows, alarms), the rest in the detection and alarm-writer
threads. The baseline measured in the same run: pca-spe's own ``update`` on ten scopes of the
same traces (d = 80) in this process, BLAS on one thread as in the controller: the mean CPU of a
row it finds normal and of one it finds abnormal (identification costs more), weighed by each
trial's own share of abnormal rows (``detector_update_us`` per regime):
``cpu_per_row_over_detector`` says how many times that the whole controller pays per row.

    python -m benchmarks.scale [--quick] [--tick 1.0] [--budget 540] [--start 300] [--compare REF] [--profile DIR]
                               [--detect-workers N]

``--detect-workers N``: the controller scores rows in N worker processes; CPU and RSS are then
the controller's and its workers' together.

``--compare REF``: the same run also starts the controller of git ``REF`` (e.g. the commit before
issue 16, extracted with ``git archive``, its folders mapped under ``atomwatch`` as an install
would) at each regime's largest N, and reports its trial and CPU per host-row as a ratio.

``--profile DIR``: the last trial at the largest N runs the controller with ``ATOMWATCH_PROFILE``
set (cProfile of the event loop and of the detection thread, written to DIR at its exit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._common import emit, free_port, machine, wait_port
from benchmarks._fleet import Fleet

SITE = "scale"
#: scrapes at each end of a trial's window whose median backlog is compared
BACKLOG_SCRAPES = 3


class Lines:
    """A process' stdout read as JSON lines in a thread; the latest of each kind kept."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.latest: dict[str, dict[str, Any]] = {}
        #: (tick, seconds late) of every tick the fleet process published
        self.late: list[tuple[int, float]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            for kind in ("ready", "tick", "done"):
                if kind in obj:
                    self.latest[kind] = obj
            if "tick" in obj:
                self.late.append((obj["tick"], obj["late"]))


class Trial:
    """One broker, one controller, the fleet processes; torn down by :meth:`close`."""

    def __init__(
        self,
        args: argparse.Namespace,
        n: int,
        incident: bool,
        profile: Path | None = None,
        source: Path | None = None,
    ) -> None:
        self.args, self.n, self.incident = args, n, incident
        self.tmp = Path(tempfile.mkdtemp(prefix="atomwatch-scale-"))
        self.procs: list[subprocess.Popen] = []
        self.port = free_port()
        conf = self.tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\nmax_inflight_messages 0\n"
        )
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.broker = self._start([mosquitto, "-c", str(conf)], stdout=(self.tmp / "mosquitto.log").open("wb"))
        wait_port(self.port)
        self.http = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMWATCH_")}
        env.update(XDG_STATE_HOME=str(self.tmp), ATOMWATCH_LOAD_PLUGINS="pca-spe")
        if profile is not None:
            env["ATOMWATCH_PROFILE"] = str(profile)
        self.db = self.tmp / "alarms.sqlite"
        if source is None:
            exe = [sys.executable, "-m", "atomwatch"]
        else:  # another checkout's controller: its folders installed under atomwatch as pyproject.toml says
            boot = (
                f"import sys; sys.path.insert(0, {str(source)!r}); import atomwatch; "
                f"atomwatch.__path__.append({str(source)!r}); from atomwatch.cli import main; sys.exit(main())"
            )
            exe = [sys.executable, "-c", boot]
        cmd = [
            *exe,
            "controller",
            "--broker",
            f"mqtt://127.0.0.1:{self.port}",
            "--site",
            SITE,
            "--tick",
            str(args.tick),
            "--db",
            str(self.db),
            "--http",
            f"127.0.0.1:{self.http}",
            "--detector",
            "pca-spe",
            "--set",
            f"pca-spe.min_rows={args.min_rows}",
        ]
        if args.detect_workers and source is None:
            cmd += ["--detect-workers", str(args.detect_workers)]
        self.log = self.tmp / "controller.log"
        self.controller = self._start(cmd, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self.cproc = psutil.Process(self.controller.pid)
        end = time.monotonic() + 60
        while "connected to" not in self.log.read_text(errors="replace"):
            if time.monotonic() > end or self.controller.poll() is not None:
                raise RuntimeError(f"the controller did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        self.rss0 = self.cproc.memory_info().rss
        warm = args.min_rows + 5
        self.ticks = warm + args.measure + BACKLOG_SCRAPES + 2
        self.incident_from = warm if incident else None
        per = math.ceil(n / args.publishers)
        self.fleet: list[Lines] = []
        for first in range(0, n, per):
            fcmd = [
                sys.executable,
                "-m",
                "benchmarks._fleet",
                "--port",
                str(self.port),
                "--site",
                SITE,
                "--first",
                str(first),
                "--count",
                str(min(per, n - first)),
                "--tick",
                str(args.tick),
                "--ticks",
                str(self.ticks),
            ]
            if incident:
                fcmd += ["--incident-from", str(self.incident_from)]
            proc = self._start(fcmd, stdout=subprocess.PIPE, text=True)
            self.fleet.append(Lines(proc))

    def _start(self, cmd: list[str], **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, **kw)
        self.procs.append(proc)
        return proc

    def published(self) -> int:
        return sum(f.latest.get("tick", {}).get("published", 0) for f in self.fleet)

    def ticked(self) -> int:
        return fleet_tick(self.fleet)

    def wait_tick(self, k: int, timeout: float) -> None:
        wait_fleet_tick(self.fleet, k, timeout)

    def scrape(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=30) as r:
            text = r.read().decode()
        tree = [self.cproc]  # with --detect-workers, its worker processes too
        try:
            tree += self.cproc.children(recursive=True)
        except psutil.Error:
            pass
        out: dict[str, Any] = {"cpu": 0.0, "rss": 0, "at": time.monotonic(), "wall": time.time()}
        for proc in tree:
            try:
                out["cpu"] += sum(proc.cpu_times()[:2])
                out["rss"] += proc.memory_info().rss
            except psutil.Error:
                pass
        # the event loop runs in the main thread (its id is the pid); detection and the alarm writer in others
        out["loop_cpu"] = sum(t.user_time + t.system_time for t in self.cproc.threads() if t.id == self.cproc.pid)
        out["published"] = self.published()
        out["tick"] = self.ticked()
        out["load"] = os.getloadavg()[0]
        out.update(read_metrics(text))
        return out

    def scrapes(self, first: int, timeout: float) -> list[dict[str, Any]]:
        """One :meth:`scrape` as each of ``BACKLOG_SCRAPES`` ticks from ``first`` begins."""
        out = []
        for k in range(first, first + BACKLOG_SCRAPES):
            self.wait_tick(k, timeout)
            out.append(self.scrape())
        return out

    def close(self) -> list[tuple[str, str, float, float]]:
        """Stop everything; every anomaly recorded: (host, action, when recorded, its row's time)."""
        for f in self.fleet:
            if f.proc.poll() is None:
                f.proc.send_signal(signal.SIGTERM)
        for f in self.fleet:
            try:
                f.proc.wait(10)
            except subprocess.TimeoutExpired:
                f.proc.kill()
            f.thread.join(5)
        if self.controller.poll() is None:
            self.controller.send_signal(signal.SIGTERM)
            try:
                self.controller.wait(60)
            except subprocess.TimeoutExpired:
                self.controller.kill()
        events: list[tuple[str, str, float, float]] = []
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
                sql = (
                    "SELECT a.scope, au.action, au.ts, r.ts FROM audit au JOIN alarms a ON a.id = au.alarm_id "
                    "JOIN alarm_rows r ON r.alarm_id = au.alarm_id AND r.row = json_extract(au.details, '$.row') "
                    "WHERE au.action IN ('opened', 'extended')"
                )
                events = [(scope.split("/", 1)[1], *rest) for scope, *rest in db.execute(sql)]
        except sqlite3.Error as e:
            print(f"could not read the alarms: {e}", file=sys.stderr)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return events


def fleet_tick(fleet: list[Lines]) -> int:
    """The tick every fleet process has reached."""
    return min((f.latest.get("tick", {}).get("tick", 0) for f in fleet), default=0)


def wait_fleet_tick(fleet: list[Lines], k: int, timeout: float) -> None:
    """Wait until every fleet process published tick ``k``; RuntimeError on timeout or a failure."""
    end = time.monotonic() + timeout
    while fleet_tick(fleet) < k:
        if time.monotonic() > end:
            raise RuntimeError(f"the fleet did not reach tick {k} (at {fleet_tick(fleet)})")
        if any(f.proc.poll() not in (None, 0) for f in fleet):
            raise RuntimeError("a fleet process failed")
        time.sleep(0.05)


def read_metrics(text: str) -> dict[str, Any]:
    """What a trial reads of a controller's /metrics: histograms' buckets, data messages ingested,
    rows, detection ticks run and skipped."""
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type == "histogram":
            out[fam.name] = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
        elif fam.name == "atomwatch_messages_ingested":
            out["ingested"] = sum(s.value for s in fam.samples if s.labels.get("kind") == "data")
        elif fam.name in ("atomwatch_rows", "atomwatch_detection_ticks", "atomwatch_detection_ticks_skipped"):
            out[fam.name] = sum(s.value for s in fam.samples if s.name.endswith("_total"))
    return out


def quantile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """The ``q`` quantile of the values observed between two scrapes of a histogram (linear in its bucket)."""
    les = sorted(after, key=lambda le: math.inf if le == "+Inf" else float(le))
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1]
    if total <= 0:
        return None
    want, low, prev = q * total, 0.0, 0.0
    for le, c in zip(les, counts, strict=True):
        high = math.inf if le == "+Inf" else float(le)
        if c >= want:
            if high == math.inf:
                return low
            return low + (high - low) * ((want - prev) / (c - prev) if c > prev else 1.0)
        low, prev = high, c
    return None


def run_trial(
    args: argparse.Namespace, n: int, incident: bool, profile: Path | None = None, source: Path | None = None
) -> dict[str, Any]:
    t = Trial(args, n, incident, profile, source)
    try:
        ready_end = time.monotonic() + 120
        while sum(1 for f in t.fleet if "ready" in f.latest) < len(t.fleet):
            if time.monotonic() > ready_end:
                raise RuntimeError("the fleet never got ready")
            time.sleep(0.05)
        start_k = args.min_rows + 5
        t.wait_tick(start_k, timeout=(start_k + 30) * args.tick + 60)
        # three scrapes on consecutive ticks at each end: the backlog is their median (one scrape
        # lands anywhere in a tick's publishing, so alone it varies by up to a tick's messages)
        starts = t.scrapes(start_k, timeout=args.tick * 4 + 30)
        ends = t.scrapes(start_k + args.measure, timeout=args.measure * args.tick * 4 + 60)
        a, b = starts[0], ends[-1]
    finally:
        events = t.close()
    firsts: dict[str, float] = {}
    for f in t.fleet:
        firsts.update(f.latest.get("done", {}).get("first_abnormal", {}))
    wall = b["at"] - a["at"]
    rows = b["atomwatch_rows"] - a["atomwatch_rows"]
    timed = "atomwatch_detection_ticks" in b  # (a controller before issue 16 has no tick timing)
    ticks = b["atomwatch_detection_ticks"] - a["atomwatch_detection_ticks"] if timed else wall / args.tick
    skipped = b["atomwatch_detection_ticks_skipped"] - a["atomwatch_detection_ticks_skipped"] if timed else 0
    cpu = b["cpu"] - a["cpu"]
    backlog_a = float(np.median([x["published"] - x["ingested"] for x in starts]))
    backlog_b = float(np.median([x["published"] - x["ingested"] for x in ends]))
    lateness = "atomwatch_detection_tick_lateness_seconds"
    delay = "atomwatch_row_delay_seconds"
    late_p99 = quantile(a[lateness], b[lateness], 0.99) if timed else 0.0
    expected = n * ticks
    keeps_up = (
        ticks >= 0.9 * wall / args.tick
        and rows >= 0.97 * expected
        and skipped == 0
        and late_p99 is not None
        and late_p99 < args.tick
        and backlog_b - backlog_a <= 0.1 * n
    )
    out: dict[str, Any] = {
        "hosts": n,
        "hosts_at_10s": round(n * 10 / args.tick),
        "regime": "incident" if incident else "normal",
        "keeps_up": bool(keeps_up),
        "rows_per_tick_per_scope": round(rows / max(1, expected), 3),
        "ticks_skipped": int(skipped),
        "controller_cores": round(cpu / wall, 3),
        "cpu_per_host_row_us": round(1e6 * cpu / max(rows, 1), 1),
        "event_loop_share": round((b["loop_cpu"] - a["loop_cpu"]) / max(cpu, 1e-9), 3),
        "rss_per_host_kb": round((b["rss"] - t.rss0) / n / 1024, 1),
        "rss_mb": round(b["rss"] / 2**20, 1),
        "messages_per_s": round((b["ingested"] - a["ingested"]) / wall, 1),
        "backlog_growth": int(backlog_b - backlog_a),
        # at one whole core (the machine is shared: the controller got controller_cores of one)
        "hosts_at_10s_per_core": round(n * 10 / args.tick / max(cpu / wall, 1e-9)),
        "fleet_late_max_s": round(
            max((x for f in t.fleet for k, x in f.late if a["tick"] <= k <= b["tick"]), default=0), 3
        ),
        "load_average": round((a["load"] + b["load"]) / 2, 2),
    }
    out["fleet_kept_up"] = out["fleet_late_max_s"] < args.tick / 2
    if timed:
        out["tick_lateness_p50_s"] = _r(quantile(a[lateness], b[lateness], 0.5))
        out["tick_lateness_p99_s"] = _r(late_p99)
        out["row_delay_p50_s"] = _r(quantile(a[delay], b[delay], 0.5))
        out["row_delay_p99_s"] = _r(quantile(a[delay], b[delay], 0.99))
    in_window = [e for e in events if a["wall"] <= e[3] <= b["wall"]]
    out["abnormal_row_share"] = round(len(in_window) / max(rows, 1), 4)
    out["hosts_alarmed_in_window"] = len({h for h, action, *_ in in_window if action == "opened"} - set(firsts))
    if incident:
        # the first anomaly of a row holding an abnormal sample, from that sample's publish
        lat = []
        for h, ts in firsts.items():
            seen = [rec for host, _, rec, row_ts in events if host == h and row_ts >= ts]
            if seen:
                lat.append(min(seen) - ts)
        out["incident_hosts"] = len(firsts)
        out["incident_hosts_detected"] = len(lat)
        if lat:
            out["anomaly_delay_p50_s"] = _r(float(np.percentile(lat, 50)))
            out["anomaly_delay_p99_s"] = _r(float(np.percentile(lat, 99)))
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def detector_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """pca-spe's ``update`` on ten scopes of the fleet's traces (d = 80) in this process, rows
    200–400 (the windows filling, as the trials' are; the fleet's incident from row 300): the mean
    CPU of a row it found normal (refits included) and of one it found abnormal (identification
    included), for :func:`detector_cost`."""
    from threadpoolctl import threadpool_limits

    import atomwatch
    from atomwatch.plugins.pca_spe.detector import PcaSpeFactory

    threadpool_limits(limits=1, user_api="blas")  # as the controller runs (--blas-threads 1)
    fleet = Fleet(0, 10, 10)
    scopes = []
    for i in range(fleet.count):
        keys = tuple(sorted(fleet.keys(i), key=lambda k: (k.vm_name, k.vm_uuid, k.metric, k.unit)))
        order = np.array([fleet.keys(i).index(k) for k in keys]) + i * len(keys)
        scopes.append((PcaSpeFactory().create(f"{SITE}/bench{i}", {"min_rows": args.min_rows}), keys, order))
    deltas = np.zeros(len(scopes[0][1]))
    times: dict[bool, list[float]] = {False: [], True: []}
    for k in range(400):
        fleet.tracker.step(fleet.values(k, k >= 300).ravel())
        for i, (det, keys, order) in enumerate(scopes):
            row = atomwatch.Row(f"{SITE}/bench{i}", k, float(k), keys, fleet.tracker.g[order], deltas)
            t0 = time.process_time()
            found = det.update(row)
            if k >= 200:
                times[found is not None].append(time.process_time() - t0)
    return {
        "detector_normal_row_us": round(1e6 * float(np.mean(times[False])), 1),
        "detector_abnormal_row_us": round(1e6 * float(np.mean(times[True])), 1),
        "detector_rows": {"normal": len(times[False]), "abnormal": len(times[True])},
        "d": len(scopes[0][1]),
    }


def detector_cost(base: dict[str, Any], trial: dict[str, Any]) -> float:
    """What pca-spe's own work costs per row at a trial's share of abnormal rows (µs)."""
    share = trial.get("abnormal_row_share") or 0.0
    return (1 - share) * base["detector_normal_row_us"] + share * base["detector_abnormal_row_us"]


def search(args: argparse.Namespace, incident: bool, start: int, deadline: float, max_trials: int) -> list[dict]:
    trials: list[dict] = []
    lo: int | None = None
    hi: int | None = None
    n = start
    while len(trials) < max_trials and time.monotonic() < deadline:
        r = run_trial(args, n, incident)
        trials.append(r)
        if r["keeps_up"]:
            lo = n
            if hi is None:
                grow = 0.85 / max(r["controller_cores"], 0.05)
                n = int(n * min(4.0, max(1.4, grow)))
            else:
                n = int(math.sqrt(lo * hi))
        else:
            hi = n
            n = int(math.sqrt(lo * hi)) if lo is not None else max(10, n // 2)
        if lo is not None and hi is not None and hi / lo <= 1.2:
            break
    return trials


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="about 3 minutes: one trial per regime")
    p.add_argument("--tick", type=float, default=None, help="seconds between ticks (default 1; 0.5 with --quick)")
    p.add_argument("--start", type=int, default=None, help="hosts in the first trial (default 300; 200 with --quick)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the search (default 540; 60 with --quick)")
    p.add_argument("--measure", type=int, default=None, help="ticks measured per trial (default 20; 10 with --quick)")
    p.add_argument("--min-rows", type=int, default=100, help="pca-spe.min_rows in the controller (default 100)")
    p.add_argument("--publishers", type=int, default=1, help="fleet processes (default 1)")
    p.add_argument(
        "--detect-workers", type=int, default=0, help="the controller's detection processes (default 0: a thread)"
    )
    p.add_argument("--hosts", type=int, default=None, help="run one trial per regime at this N, no search")
    p.add_argument(
        "--compare",
        metavar="REF",
        default=None,
        help="also run the controller of git REF (e.g. the commit before issue 16) at the largest N found, per regime",
    )
    p.add_argument("--profile", type=Path, default=None, metavar="DIR", help="profile the controller at the largest N")
    args = p.parse_args(argv)
    args.tick = args.tick or (0.5 if args.quick else 1.0)
    args.measure = args.measure or (10 if args.quick else 20)
    budget = args.budget or (60.0 if args.quick else 540.0)
    start = args.start or (200 if args.quick else 300)
    began = time.monotonic()
    base = detector_baseline(args)
    if args.hosts or args.quick:
        n = args.hosts or start
        normal = [run_trial(args, n, False)]
        incident = [run_trial(args, n, True)]
    else:
        normal = search(args, False, start, began + budget * 0.65, 6)
        best = max((t["hosts"] for t in normal if t["keeps_up"]), default=start // 2)
        incident = search(args, True, best, began + budget, 3)
    compared: dict[str, Any] = {}
    if args.compare:
        source = Path(tempfile.mkdtemp(prefix="atomwatch-scale-base-"))
        repo = Path(__file__).resolve().parents[1]
        archive = subprocess.run(["git", "-C", str(repo), "archive", args.compare], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
        for name, trials, incident_ in (("normal", normal, False), ("incident", incident, True)):
            ok = [t["hosts"] for t in trials if t["keeps_up"]] or [trials[0]["hosts"]]
            base_trial = run_trial(args, max(ok), incident_, source=source)
            mine = next(t for t in trials if t["hosts"] == max(ok))
            compared[name] = {
                "ref": args.compare,
                "trial": base_trial,
                "cpu_per_host_row_ratio": round(base_trial["cpu_per_host_row_us"] / mine["cpu_per_host_row_us"], 2),
            }
        shutil.rmtree(source, ignore_errors=True)
    profile = None
    if args.profile is not None:
        best = max((t["hosts"] for t in normal if t["keeps_up"]), default=normal[0]["hosts"])
        args.profile.mkdir(parents=True, exist_ok=True)
        profile = run_trial(args, best, False, profile=args.profile)

    def largest(trials: list[dict]) -> dict | None:
        ok = [t for t in trials if t["keeps_up"]]
        return max(ok, key=lambda t: t["hosts"]) if ok else None

    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": machine(),
        "cpus": os.cpu_count(),
        "note": "CPU is process CPU time (user + system, all threads) of the controller, read through psutil; "
        "the machine's CPUs are shared with other sessions, so wall-clock figures are not the controller's own",
        "tick_s": args.tick,
        "detect_workers": args.detect_workers,
        "vms_per_host": 10,
        "metrics_per_vm": 8,
        "pca_min_rows": args.min_rows,
        **base,
        "seconds": round(time.monotonic() - began, 1),
    }
    for name, trials in (("normal", normal), ("incident", incident)):
        top = largest(trials)
        result[name] = {
            "largest_hosts": top["hosts"] if top else None,
            "largest_hosts_at_10s": top["hosts_at_10s"] if top else None,
            "at_largest": top,
            "trials": trials,
        }
        if top:
            detector = detector_cost(base, top)
            result[name]["detector_update_us"] = round(detector, 1)
            result[name]["cpu_per_row_over_detector"] = round(top["cpu_per_host_row_us"] / detector, 2)
    if compared:
        result["compared"] = compared
    if profile is not None:
        result["profile"] = {"dir": str(args.profile), "trial": profile}
    emit(result)


if __name__ == "__main__":
    main()

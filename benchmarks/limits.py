"""The resource limits (docs/limits.md): what each guards against, measured, printed as one JSON object.

1. ``ingest_bytes_per_series``: bytes ingest keeps per series of a birth (tracemalloc, births of
   1,000 and 4,000 libvirt-like series), the cost ``max_series_per_host`` bounds.
2. ``pca_spe_mb_by_columns``: MB pca-spe holds for one scope after three rows of d columns
   (tracemalloc; d = 500, 1,000, 2,400): the d² cost ``max_columns_per_scope`` bounds.
3. ``oversized_birth``: a fresh controller-side process (ingest → scope rows → pca-spe, as the
   controller wires them) handed one birth of ``--series`` series (default 10,000, the issue's
   figure) and three rows: resident memory growth (MB) and seconds, with today's defaults
   (refused by ``max_series_per_host``) against the baseline of no limit, in the same run.
4. ``coredns_hostile_answer``: a loopback server answers ``--coredns-mib`` MiB (default 8: over
   ``max_bytes``), then 3 MiB (under it, over ``max_samples``) of CoreDNS sample lines without a
   Content-Length; a fresh process scrapes it once with the collector's defaults against
   the baseline of the old path (read up to 32 MiB at once, then parse everything), in the same
   run: seconds and resident memory growth (MB). Plus the largest real exposition at hand (the
   1.6.9 text of ``shared/data/coredns``): bytes, sample lines, parse ms, the base of the defaults.

Usage: ``python -m benchmarks.limits [--series N] [--coredns-mib M]``.
"""

from __future__ import annotations

import argparse
import gc
import http.server
import json
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np

from benchmarks._common import SHARED, emit, machine


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> float:
    """Reset the peak resident size (Linux: clear_refs 5); the resident MB now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _growth_mb(before: float) -> float:
    """Peak resident MB since :func:`_reset_peak` above ``before``."""
    return round(_status_mb("VmHWM") - before, 1)


def _keys(n: int):
    from atomwatch.series import METRIC_UNITS, SeriesKey

    metrics = list(METRIC_UNITS.items())
    return [
        SeriesKey(f"{v:08x}-7f2c-4c5e-9b1a-{v:012x}", f"vm-{v:05d}", *metrics[i % 8])
        for i, v in ((i, i // 8) for i in range(n))
    ]


def _birth(n: int) -> bytes:
    from atomwatch import protocol

    table = [protocol.SeriesInfo(i, k, 0.5, float(i)) for i, k in enumerate(_keys(n))]
    return protocol.encode(protocol.Birth(1, "bench", 10.0, time.time(), table))


# --------------------------------------------------------------------------- in-process figures


def ingest_bytes_per_series() -> dict:
    from atomwatch import protocol
    from atomwatch.controller.ingest import Ingest

    out = {}
    for n in (1000, 4000):
        payload = _birth(n)
        gc.collect()
        tracemalloc.start()
        ing = Ingest(max_series=10**9)
        ing.handle(protocol.birth_topic("s", "h"), payload)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[str(n)] = {"bytes_per_series": round(held / n), "peak_bytes_per_series": round(peak / n)}
        out[str(n)]["birth_payload_bytes_per_series"] = round(len(payload) / n)
        del ing
    return out


def pca_spe_mb_by_columns() -> dict:
    from atomwatch.plugins.pca_spe import kernels
    from atomwatch.plugins.pca_spe.detector import PcaSpeFactory
    from atomwatch.types import Row

    kernels.warm_up()
    rng = np.random.default_rng(0)
    out = {}
    for d in (500, 1000, 2400):
        cols = tuple(_keys(d))
        gc.collect()
        tracemalloc.start()
        det = PcaSpeFactory().create("s/h", {})
        for i in range(3):
            det.update(Row("s/h", i, float(i), cols, rng.normal(size=d), np.full(d, 0.01)))
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[str(d)] = {"held_mb": round(held / 1e6, 1), "bytes_per_d2": round(held / d / d, 1)}
        del det
    return out


# --------------------------------------------------------------------------- child processes


def _child_birth(series: int, limit: int) -> dict:
    from atomwatch import protocol
    from atomwatch.controller.detection import DetectorSet
    from atomwatch.controller.ingest import Ingest
    from atomwatch.controller.scopes import ScopeRows
    from atomwatch.plugins.pca_spe import kernels
    from atomwatch.plugins.pca_spe.detector import PcaSpeFactory

    kernels.warm_up()
    payload = _birth(series)
    ing = Ingest(max_series=limit)
    rows = ScopeRows(max_columns=10**9)  # this figure is about the series limit alone
    detectors = DetectorSet({"pca-spe": PcaSpeFactory()}, {})
    gc.collect()
    before = _reset_peak()
    t0 = time.perf_counter()
    ing.handle(protocol.birth_topic("s", "h"), payload)
    state = ing.host("s", "h")
    for i in range(3):
        row = rows.row(state, float(i))
        if row is not None:
            detectors.update(row)
    seconds = time.perf_counter() - t0
    return {
        "rss_growth_mb": _growth_mb(before),
        "seconds": round(seconds, 3),
        "refused": ing.dropped["too-many-series"],
        "detector_instances": len(detectors.instances),
    }


def _serve(body: bytes) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()  # no Content-Length: the reader must stop by itself
            try:
                for at in range(0, len(body), 1 << 16):
                    self.wfile.write(body[at : at + (1 << 16)])
            except OSError:
                pass

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _hostile(mib: float) -> bytes:
    line = 'coredns_dns_requests_total{server="dns://:53",zone="z%d.example.",proto="udp",family="1",type="A"} %d\n'
    out, size, i = [], 0, 0
    while size < mib * (1 << 20):
        s = line % (i, i)
        out.append(s)
        size += len(s)
        i += 1
    return "".join(out).encode()


def _child_coredns(mib: float, path: str) -> dict:
    import urllib.request

    from atomwatch.plugins.coredns.collector import CorednsCollector
    from atomwatch.plugins.coredns.metrics import parse_exposition

    httpd = _serve(_hostile(mib))
    url = f"http://127.0.0.1:{httpd.server_port}/metrics"
    gc.collect()
    before = _reset_peak()
    t0 = time.perf_counter()
    if path == "old":  # what the collector did before: read up to 32 MiB at once, then parse it all
        with urllib.request.urlopen(url, timeout=600) as resp:
            body = resp.read(32 * 1024 * 1024 + 1)
        try:
            parse_exposition(body.decode("utf-8", errors="replace"), url)
            outcome = "parsed"
        except Exception as e:  # noqa: BLE001
            outcome = f"error: {e}"[:120]
    else:
        col = CorednsCollector([f"dns1={url}"], budget=600)
        col.collect()
        outcome = col.status()["dns1"]["down"] or "parsed"
        col.close()
    seconds = time.perf_counter() - t0
    httpd.shutdown()
    return {
        "seconds": round(seconds, 3),
        "rss_growth_mb": _growth_mb(before),
        "outcome": outcome[:160],
    }


def _in_child(*args: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.limits", "--child", *args], capture_output=True, text=True, timeout=3600
    )
    if p.returncode != 0:
        raise RuntimeError(f"child {args} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def real_exposition() -> dict:
    from atomwatch.plugins.coredns.metrics import parse_exposition, relevant_lines

    path = SHARED / "data" / "coredns" / "coredns-169-some_load.txt"
    if not path.exists():
        return {"missing": str(path)}
    text = path.read_text()
    parse_exposition(text, "warm")
    runs = []
    for _ in range(20):
        t0 = time.perf_counter()
        parse_exposition(text, path.name)
        runs.append(time.perf_counter() - t0)
    return {
        "file": path.name,
        "bytes": len(text),
        "sample_lines_read": relevant_lines(text).count("\n"),
        "parse_ms": round(float(np.median(runs)) * 1e3, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=10_000, help="series in the oversized birth (default 10,000)")
    p.add_argument("--coredns-mib", type=float, default=8.0, help="MiB of the hostile CoreDNS answer (default 8)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "birth":
            print(json.dumps(_child_birth(int(rest[0]), int(rest[1]))))
        else:
            print(json.dumps(_child_coredns(float(rest[0]), rest[1])))
        return
    from atomwatch.controller.config import MAX_SERIES_PER_HOST

    refused = _in_child("birth", str(args.series), str(MAX_SERIES_PER_HOST))
    baseline = _in_child("birth", str(args.series), str(10**9))
    hostile = {}
    for mib in (args.coredns_mib, 3.0):  # over max_bytes; under it but over max_samples
        new = _in_child("coredns", str(mib), "new")
        old = _in_child("coredns", str(mib), "old")
        hostile[f"{mib:g}_mib"] = {
            "defaults": new,
            "baseline_old_read_all_then_parse": old,
            "time_ratio_to_baseline": round(new["seconds"] / old["seconds"], 4),
            "memory_ratio_to_baseline": round(max(new["rss_growth_mb"], 0.1) / max(old["rss_growth_mb"], 0.1), 4),
        }
    emit(
        {
            "benchmark": "limits",
            "machine": machine(),
            "ingest_bytes_per_series": ingest_bytes_per_series(),
            "pca_spe_mb_by_columns": pca_spe_mb_by_columns(),
            "oversized_birth": {
                "series": args.series,
                "max_series_per_host": MAX_SERIES_PER_HOST,
                "refused": refused,
                "baseline_no_limit": baseline,
                "memory_ratio_to_baseline": round(
                    max(refused["rss_growth_mb"], 0.1) / max(baseline["rss_growth_mb"], 0.1), 4
                ),
            },
            "coredns_hostile_answer": hostile,
            "coredns_largest_real_exposition": real_exposition(),
        }
    )


if __name__ == "__main__":
    main()

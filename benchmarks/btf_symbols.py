"""Benchmark: a Volatility symbol table built from the lab kernel's BTF against the dwarf2json table.

Builds the table from the lab kernel package (timed; size on disk), boots a private 256 MiB TCG
guest (``awintro-btfbench``), takes one memory dump, then runs ``linux.pslist`` on that dump with
each table in turn, ``--runs`` times each, alternating, every run with a fresh Volatility cache
(so each run loads its table from the ISF file). Reports the load and pslist seconds (median)
of each table, the ratio BTF / dwarf2json of load + pslist (target: ≤ 1.10) and of pslist alone,
and whether the rows are equal.

Prints one JSON object. ``flock /tmp/atomwatch-lab.lock python -m benchmarks.btf_symbols`` (root,
libvirt running).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._common import SHARED, emit, machine

DEB = SHARED / "lab" / "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
DWARF_SYMBOLS = SHARED / "lab" / "symbols"
TARGET_RATIO = 1.10
TAG = "btfbench"


def _pslist(image: Path, symbols: Path, cache: Path) -> tuple[list[dict], dict[str, float]]:
    from atomwatch.introspection.volatility import VolatilityConfig, analyse

    shutil.rmtree(cache, ignore_errors=True)
    cfg = VolatilityConfig(symbol_dirs=[str(symbols)], cache_dir=str(cache), timeout=600)
    res = analyse(image, ["linux.pslist"], cfg)
    if res.plugins["linux.pslist"].get("error"):
        raise RuntimeError(f"pslist with {symbols}: {res.plugins['linux.pslist']['error']}")
    return res.rows("linux.pslist"), {"load": res.timings["load"], "pslist": res.timings["linux.pslist"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from atomwatch.introspection import acquire
    from atomwatch.introspection import symbols as S
    from atomwatch.lab.private_guest import boot_private_guest, destroy_private_guest

    work = Path(tempfile.mkdtemp(prefix="atomwatch-btfbench-"))
    try:
        t0 = time.monotonic()
        built = S.build_from_deb(DEB)
        build_s = time.monotonic() - t0
        btf_dir = work / "btf-symbols"
        path = S.store(built, btf_dir)
        build_total_s = time.monotonic() - t0
        dwarf_file = next((DWARF_SYMBOLS / "linux").glob("*.json.xz"))

        conn, dom = boot_private_guest(work / "guest", tag=TAG)
        try:
            dump = acquire.dump_memory(conn, dom.name(), root=work / "dumps", keep=True)
            image = dump.path
            times: dict[str, list[dict[str, float]]] = {"btf": [], "dwarf2json": []}
            rows: dict[str, list[dict]] = {}
            for i in range(args.runs):
                for name, symbols in (("dwarf2json", DWARF_SYMBOLS), ("btf", btf_dir)):
                    r, t = _pslist(image, symbols, work / f"cache-{name}-{i}")
                    rows[name] = r
                    times[name].append(t)
        finally:
            destroy_private_guest(conn, TAG)

        def med(name: str, key: str) -> float:
            return round(statistics.median(t[key] for t in times[name]), 3)

        both = {n: {"load_s": med(n, "load"), "pslist_s": med(n, "pslist"), "runs": times[n]} for n in times}
        for n in both:
            both[n]["load_and_pslist_s"] = round(both[n]["load_s"] + both[n]["pslist_s"], 3)
        ratio = both["btf"]["load_and_pslist_s"] / both["dwarf2json"]["load_and_pslist_s"]
        emit(
            {
                "benchmark": "btf_symbols",
                "machine": machine(),
                "build": {
                    "seconds_to_isf": round(build_s, 3),
                    "seconds_with_write": round(build_total_s, 3),
                    "stages": built.timings,
                    "table_bytes_xz": path.stat().st_size,
                    "dwarf2json_bytes_xz": dwarf_file.stat().st_size,
                    "user_types": built.report["user_types"],
                    "symbols": built.report["symbols"],
                    "typed_symbols": built.report["typed_symbols"],
                },
                "btf": both["btf"],
                "dwarf2json": both["dwarf2json"],
                "ratio_btf_over_dwarf2json": round(ratio, 3),
                "ratio_pslist_alone": round(both["btf"]["pslist_s"] / both["dwarf2json"]["pslist_s"], 3),
                "target_ratio": TARGET_RATIO,
                "meets_target": ratio <= TARGET_RATIO,
                "same_rows": rows["btf"] == rows["dwarf2json"],
                "processes": len(rows["btf"]),
            }
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

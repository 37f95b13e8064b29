"""``atomwatch alarm ID``: one alarm with its blamed columns, findings and audit trail."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ._api import ApiError, add_controller_argument, call, fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int, help="the alarm's number")
    p.add_argument(
        "--rows",
        nargs="?",
        const="*",
        metavar="PLUGIN",
        help="also print the Volatility rows of the findings (all plugins, or one, e.g. linux.sockstat)",
    )
    add_controller_argument(p)


def _t(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(rows: list[dict[str, Any]], limit: int = 60) -> list[str]:
    if not rows:
        return ["      (no rows)"]
    cols = [c for c in rows[0] if not c.startswith("__")][:9]
    widths = {c: min(28, max(len(c), *(len(str(r.get(c, ""))) for r in rows[:limit]))) for c in cols}
    out = ["      " + "  ".join(c[: widths[c]].ljust(widths[c]) for c in cols)]
    for r in rows[:limit]:
        out.append("      " + "  ".join(str(r.get(c, ""))[: widths[c]].ljust(widths[c]) for c in cols))
    if len(rows) > limit:
        out.append(f"      … {len(rows) - limit} more rows (--json for all)")
    return out


def show(a: dict[str, Any], rows: str | None = None) -> None:
    print(f"alarm #{a['id']}  {a['state']}" + (f" ({a['resolution']})" if a.get("resolution") else ""))
    print(f"  scope     {a['scope']}   detector {a['detector']}")
    print(f"  opened    {_t(a['opened_at'])}   rows {a['first_row']}–{a['last_row']}   level {a['level']}")
    if a.get("rows_dropped"):
        print(f"  kept      the first and the latest rows; {a['rows_dropped']} rows between them dropped")
    print(f"  score     {a['score']:.6g}   threshold {a['threshold']:.6g}")
    if a.get("verdict"):
        print(f"  verdict   {a['verdict']}")
    print("  blamed:")
    for b in a["blame"]:
        nums = "  ".join(f"{k} {b[k]:.3g}" for k in ("rd", "stddev", "meandiff") if isinstance(b.get(k), (int, float)))
        print(f"    {b['column']:<36} {b.get('direction', ''):<5} rows {b.get('rows', 1):<4} {nums}")
    for f in a.get("findings", []):
        print(f"  finding ({f.get('kind', '?')} by {f.get('by', '?')}): {f.get('summary', '')}")
        for s in f.get("suspects", [])[:10]:
            print(
                f"    suspect pid {s.get('pid')} {s.get('name', '')!s:<20} score {s.get('score', '')}  {'; '.join(s.get('evidence', []))}"
            )
        if rows:
            for plugin, plugin_rows in (f.get("rows") or {}).items():
                if rows in ("*", plugin):
                    print(f"    {plugin} ({len(plugin_rows)} rows):")
                    print("\n".join(_table(plugin_rows)))
    print("  audit:")
    for e in a.get("audit", []):
        details = json.dumps(e["details"], default=str)
        print(f"    {_t(e['ts'])}  {e['actor']:<14} {e['action']:<20} {details[:160]}")


def run(args: argparse.Namespace) -> int:
    try:
        a = call(args, "GET", f"/api/alarms/{args.id}")
    except ApiError as e:
        return fail("alarm", e)
    if args.json:
        print(json.dumps(a, indent=2))
    else:
        show(a, rows=args.rows)
    return 0

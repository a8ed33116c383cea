"""Render benchmark JSON files (bench_quant / bench_optim / CPU benches) as Markdown tables for RESULTS.md.

    python benchmarks/results_table.py quant bench_quant.json
    python benchmarks/results_table.py optim bench_optim.json
"""

from __future__ import annotations

import json
import sys


def quant(d: dict) -> str:
    lines = [f"Device: {d['device']}, torch {d.get('torch', '?')}, n = {d.get('n')}, copy {d['copy_gb_per_s']:.0f} GB/s",
             "", "| op | config | ms | GB/s | of copy | target | |", "|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        lines.append(f"| {r['op']} | {r['config']} | {r['ms']:.3f} | {r['gb_per_s']:.0f} | "
                     f"{100 * r['fraction_of_copy']:.1f}% | {100 * r['target']:.0f}% | {'PASS' if r['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def optim(d: dict) -> str:
    lines = [f"Device: {d['device']}, copy {d['copy_gb_per_s']:.0f} GB/s", "",
             "| case | value | target | detail | |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        detail = ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k.endswith("_ms") or k in ("ms", "fraction_of_copy"))
        target = "-" if r["target"] is None else f"{'<=' if r['unit'] == 'B/param' else '>='} {r['target']}"
        lines.append(f"| {r['case']} | {r['value']:.3f} {r['unit']} | {target} | {detail} | "
                     f"{'PASS' if r['pass'] else 'FAIL'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        print({"quant": quant, "optim": optim}[kind](json.load(f)))

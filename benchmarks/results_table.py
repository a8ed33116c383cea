"""Render benchmark JSON files as Markdown tables for RESULTS.md.

    python benchmarks/results_table.py quant bench_quant.json
    python benchmarks/results_table.py optim bench_optim.json
    python benchmarks/results_table.py linear4bit bench_linear4bit.json
    python benchmarks/results_table.py int8 bench_int8.json

or any of them from the benchmarks.json of scripts/device_check.sh (all benchmarks in one file):

    python benchmarks/results_table.py int8 benchmarks.json
"""

from __future__ import annotations

import json
import sys


def quant(d: dict) -> str:
    lines = [f"Device: {d['device']}, torch {d.get('torch', '?')}, n = {d.get('n')}, copy {d['copy_gb_per_s']:.0f} GB/s",
             "", "| op | config | ms | GB/s | of copy | target | |", "|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        target = "-" if r["target"] is None else f"{100 * r['target']:.0f}%"
        verdict = "reference" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        lines.append(f"| {r['op']} | {r['config']} | {r['ms']:.3f} | {r['gb_per_s']:.0f} | "
                     f"{100 * r['fraction_of_copy']:.1f}% | {target} | {verdict} |")
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


def _gpu_only(dense, ours) -> str:
    return "-" if not dense or not ours else f"{dense:.3f} / {ours:.3f} ({dense / ours:.2f}x)"


def linear4bit(d: dict) -> str:
    lines = [f"Device: {d['device']}", "",
             "| K | N | M | dtype | nn.Linear ms | nf4 ms | speed-up | target | nested / plain | "
             "GPU only: dense / nf4 ms | |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['K']} | {r['N']} | {r['M']} | {r['dtype']} | {r['dense_ms']:.3f} | {r['nf4_ms']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['target']}x | {r['nested_vs_plain']:.3f} | "
                     f"{_gpu_only(r.get('gpu_only_dense_ms'), r.get('gpu_only_nf4_ms'))} | "
                     f"{'PASS' if r['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def int8(d: dict) -> str:
    g = d["gemm"]
    lines = [f"Device: {d['device']}", "",
             f"{g['case']}: {g['ms']:.3f} ms = {g['tops']:.0f} TOPS (torch._int_mm {g['torch_int_mm_ms']:.3f} ms); "
             f"target {g['target_tops']:.0f}: {'PASS' if g['pass'] else 'FAIL'}", "",
             "| K | N | M | dtype | threshold | nn.Linear ms | Linear8bitLt ms | speed-up | target | "
             "GPU only: dense / int8 ms | |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['K']} | {r['N']} | {r['M']} | {r['dtype']} | {r['threshold']:g} | {r['dense_ms']:.3f} | "
                     f"{r['int8_ms']:.3f} | {r['speedup']:.2f}x | {r['target']}x | "
                     f"{_gpu_only(r.get('gpu_only_dense_ms'), r.get('gpu_only_int8_ms'))} | "
                     f"{'PASS' if r['pass'] else 'FAIL'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        data = json.load(f)
    data = data.get(f"bench_{kind}", data)  # the merged file keys each benchmark by its script's name
    print({"quant": quant, "optim": optim, "linear4bit": linear4bit, "int8": int8}[kind](data))

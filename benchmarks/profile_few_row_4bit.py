"""GPU time of the few-row 4-bit product (1..16 activation rows) against the dense product, per row count,
nf4 plain and double-quantized, with the error against the product of the dequantized weight.

CUDA-graph replays (gpu_timing.graph_time_ms), so the figures are the kernels' own, not the host's. Meant
for comparing builds of the kernel in one run (the bench_linear4bit.py figures are the layers').

    PYTHONPATH=. python benchmarks/profile_few_row_4bit.py [--rows 1 4 8 16] [--n 8192 28672] [--dtype float16]
        [--out f.json]   (lets scripts/device_check.sh run it: BENCHES=benchmarks/profile_few_row_4bit.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_timing import graph_time_ms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--n", type=int, nargs="+", default=[8192, 28672])
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    print(f"K = {args.k}, {args.dtype}, {torch.cuda.get_device_name()}")
    rows = []
    for n in args.n:
        w = torch.randn(n, args.k, device="cuda", dtype=dtype) * 0.02
        for nested in (False, True):
            packed, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=nested)
            weight = F.dequantize_4bit(packed, state).float()
            for m in args.rows:
                x = torch.randn(m, args.k, device="cuda", dtype=dtype)
                with torch.no_grad():
                    out = bnb.matmul_4bit(x, packed.t(), quant_state=state)
                    ref = x.float() @ weight.t()
                    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                    t4 = graph_time_ms(lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state), args.repeats)
                    td = graph_time_ms(lambda: torch.nn.functional.linear(x, w), args.repeats)
                print(f"N = {n:5d} {'nested' if nested else 'plain ':6s} M = {m:2d}: nf4 {t4 * 1e3:7.2f} us, "
                      f"dense {td * 1e3:7.2f} us ({td / t4:4.2f}x), max error {err:.1e}")
                rows.append({"N": n, "K": args.k, "M": m, "nested": nested, "nf4_us": t4 * 1e3, "dense_us": td * 1e3,
                             "max_error": err})
            del packed, state, weight
        del w
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "dtype": args.dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

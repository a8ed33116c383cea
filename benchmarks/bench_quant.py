"""CUDA speed of the quantization primitives against the card's own copy bandwidth.

Every figure is a ratio to the device-to-device copy bandwidth (bytes read + written) measured in
the same run, over the byte floors of /work/shared/perf/targets.md:
  quantize/dequantize_blockwise: in-bytes + 1 + 4/blocksize per element
  quantize/dequantize_4bit:      in-bytes + 0.5 + 4/blocksize per element
  int8_vectorwise_quant:         in-bytes + 1 per element + 4 B per row (targets.md's 2 + 1 for fp16)
Timing: CUDA events around each call after warm-up (calls queued back to back), median of --repeats
runs, random normal data.
The ops are called through torch.ops.bitsandbytes exactly as users call them, so the times include
output allocation and, for int8_vectorwise_quant with a threshold, the outlier-column extraction.

    PYTHONPATH=. python benchmarks/bench_quant.py --out quant_cuda.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Optional

import torch

import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)
from bitsandbytes._code_maps import create_dynamic_map
from gpu_timing import copy_bandwidth, time_ms

N = 1 << 28
# int8 rows: the targets' n = 2^28 for every input dtype, and upstream's reference shape (targets.md).
INT8_SHAPES = ((32768, 8192), (16384, 8192))
BLOCKWISE_SIZES = (64, 256, 1024, 4096)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Fractions of copy bandwidth (targets.md).
TARGET_QUANT_BLOCKWISE = 0.85
TARGET_QUANT_BLOCKWISE_BS64 = 0.70
TARGET_DEQUANT_BLOCKWISE = 0.90
TARGET_QUANT_4BIT = 0.80
TARGET_DEQUANT_4BIT = 0.90
TARGET_INT8_THRESHOLD_0 = 0.80
TARGET_INT8_THRESHOLD_6 = 0.60

ops = torch.ops.bitsandbytes


class Report:
    def __init__(self, copy_gbs: float):
        self.copy_gbs = copy_gbs
        self.rows = []

    def add(self, op: str, config: str, ms: float, floor_bytes: float, target: Optional[float]) -> None:
        """One measurement; target None marks a reference row (compared with upstream, not judged)."""
        gbs = floor_bytes / ms / 1e6
        frac = gbs / self.copy_gbs
        row = {"op": op, "config": config, "ms": round(ms, 4), "gb_per_s": round(gbs, 1),
               "fraction_of_copy": round(frac, 4), "target": target,
               "pass": None if target is None else frac >= target}
        self.rows.append(row)
        verdict = "(reference)" if target is None else f"(target {100 * target:.0f}%) {'PASS' if row['pass'] else 'FAIL'}"
        print(f"{op:<24} {config:<26} {ms:8.3f} ms {gbs:8.0f} GB/s {100 * frac:6.1f}%  {verdict}", flush=True)


def bench_dtype(name: str, dtype: torch.dtype, report: Report, repeats: int) -> None:
    A = torch.randn(N, device="cuda", dtype=dtype)
    in_bytes = A.element_size()
    code = create_dynamic_map().to("cuda")

    for bs in BLOCKWISE_SIZES:
        ms = time_ms(lambda: ops.quantize_blockwise(A, code, bs), repeats)
        target = TARGET_QUANT_BLOCKWISE_BS64 if bs == 64 else TARGET_QUANT_BLOCKWISE
        report.add("quantize_blockwise", f"{name} bs={bs}", ms, N * (in_bytes + 1 + 4 / bs), target)
        q, absmax = ops.quantize_blockwise(A, code, bs)
        out = torch.empty_like(A)
        ms = time_ms(lambda: ops.dequantize_blockwise.out(q, absmax, code, bs, dtype, out=out), repeats)
        report.add("dequantize_blockwise", f"{name} bs={bs}", ms, N * (in_bytes + 1 + 4 / bs), TARGET_DEQUANT_BLOCKWISE)
        del q, absmax, out

    bs = 64
    for quant_type in ("nf4", "fp4"):
        ms = time_ms(lambda: ops.quantize_4bit(A, bs, quant_type, torch.uint8), repeats)
        report.add("quantize_4bit", f"{name} {quant_type} bs={bs}", ms, N * (in_bytes + 0.5 + 4 / bs), TARGET_QUANT_4BIT)
    packed, absmax = ops.quantize_4bit(A, bs, "nf4", torch.uint8)
    out = torch.empty_like(A)
    ms = time_ms(lambda: ops.dequantize_4bit.out(packed, absmax, bs, "nf4", [N], dtype, out=out), repeats)
    report.add("dequantize_4bit", f"{name} nf4 bs={bs}", ms, N * (in_bytes + 0.5 + 4 / bs), TARGET_DEQUANT_4BIT)
    del packed, absmax, out

    for rows, cols in INT8_SHAPES:
        targeted = rows * cols == N  # the targets hold at n = 2^28; upstream's shape is for comparison
        if dtype == torch.float32 and not targeted:
            continue  # upstream's reference figure is fp16
        M = A[: rows * cols].view(rows, cols)
        for threshold, target in ((0.0, TARGET_INT8_THRESHOLD_0), (6.0, TARGET_INT8_THRESHOLD_6)):
            ms = time_ms(lambda: ops.int8_vectorwise_quant(M, threshold), repeats)
            report.add("int8_vectorwise_quant", f"{name} {rows}x{cols} t={threshold:g}", ms,
                       rows * cols * (in_bytes + 1.0) + rows * 4, target if targeted else None)
    del A
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument("--repeats", type=int, default=25, help="timed runs per measurement (median taken)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_quant.py needs a CUDA device")
    if args.repeats < 20:
        raise SystemExit("--repeats must be >= 20")

    device = torch.cuda.get_device_name()
    copy_gbs = copy_bandwidth(args.repeats)
    print(f"{device}: device-to-device copy {copy_gbs:.0f} GB/s (read + write)")
    report = Report(copy_gbs)
    for name, dtype in DTYPES.items():
        bench_dtype(name, dtype, report, args.repeats)

    judged = [r for r in report.rows if r["target"] is not None]
    passed = sum(r["pass"] for r in judged)
    print(f"{passed}/{len(judged)} measurements meet their target")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "n": N, "repeats": args.repeats,
                       "copy_gb_per_s": round(copy_gbs, 1), "results": report.rows}, f, indent=2)


if __name__ == "__main__":
    main()

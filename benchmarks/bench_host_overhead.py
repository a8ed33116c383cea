"""Host time per call of small layers, where the GPU work is negligible: what each eager call costs
before any kernel runs (Python, dispatch, allocation, launch). At M = 1 a quantized layer's GPU time can
fall below this, and then eager calls are bounded by the host (see RESULTS.md).

    PYTHONPATH=. python benchmarks/bench_host_overhead.py --out host_overhead.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import bitsandbytes as bnb


def host_us(fn, calls: int = 2000) -> float:
    """Mean wall time of one call, the GPU kept busy only with tiny kernels (so the host is the limit)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    k = n = 256
    dtype = torch.float16
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    dense = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=dtype)
    nf4 = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=dtype, quant_type="nf4").cuda()
    int8 = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False).cuda().eval()
    rows = {}
    with torch.no_grad():
        cases = {
            "torch nn.Linear": lambda: dense(x),
            "bnb Linear4bit (nf4)": lambda: nf4(x),
            "bnb Linear8bitLt (threshold 0)": lambda: int8(x),
            "torch.empty (one output allocation)": lambda: torch.empty((1, n), device="cuda", dtype=dtype),
        }
        for name, fn in cases.items():
            rows[name] = host_us(fn)
            print(f"{name:40s} {rows[name]:7.2f} us per call")
        # The benchmark's own M = 1 shape: 200 calls stay within the launch queue, so the wall time is still the
        # host's even though each call's kernel takes about as long (bench_linear4bit reads more per call
        # eager than this benchmark's small layers suggest).
        big = 8192
        x_big = torch.randn(1, big, device="cuda", dtype=dtype)
        for nested in (False, True):
            layer = bnb.nn.Linear4bit(big, big, bias=False, compute_dtype=dtype, quant_type="nf4",
                                      compress_statistics=nested).cuda()
            name = f"bnb Linear4bit K = N = {big} {'nested' if nested else 'plain'}"
            rows[name] = host_us(lambda: layer(x_big), calls=200)
            print(f"{name:40s} {rows[name]:7.2f} us per call")
            del layer
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "host_us": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""Kernel-level breakdown of one quantized layer call (torch.profiler), beside the call's own time.

For each layer the kernels of a call are listed with their mean GPU time per call; "kernels" is their sum
and "call" the time of one call measured with CUDA events (calls back to back, GPU bound at these shapes).
A call much longer than its kernels spends the difference between kernels (launch gaps, waits on the host
or on a side stream): that is time no kernel work can win back.

    PYTHONPATH=. python benchmarks/profile_layers.py [--m 4096] [--n 8192] [--k 8192] [--dtype float16] [--out f.json]

(`--out` lets scripts/device_check.sh run it: BENCHES=benchmarks/profile_layers.py.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import bitsandbytes as bnb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_timing import time_ms  # noqa: E402

CALLS = 10


def kernel_times(fn) -> list:
    """(name, mean GPU microseconds per call, launches per call) of every kernel of `fn`, longest first."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None)
        if total is None:
            total = event.cuda_time_total
        if total > 0 and event.count >= CALLS:  # kernels of every call, not one-off setup
            rows.append((event.key, total / CALLS, event.count / CALLS))
    return sorted(rows, key=lambda r: -r[1])


def report(name: str, fn) -> dict:
    rows = kernel_times(fn)
    call_us = time_ms(fn, 30, calls=CALLS) * 1e3
    kernels_us = sum(r[1] for r in rows)
    print(f"== {name}: call {call_us:.1f} us, kernels {kernels_us:.1f} us, between kernels {call_us - kernels_us:.1f} us")
    for key, us, per_call in rows:
        print(f"   {us:9.1f} us  x{per_call:g}  {key[:110]}")
    return {"layer": name, "call_us": call_us, "kernels_us": kernels_us,
            "kernels": [{"name": key, "us": us, "per_call": per_call} for key, us, per_call in rows]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    dense = torch.nn.Linear(args.k, args.n, bias=False, device="cuda", dtype=dtype)
    x = torch.randn(args.m, args.k, device="cuda", dtype=dtype)
    layers = {"nn.Linear": dense}
    for threshold in (0.0, 6.0):
        layer = bnb.nn.Linear8bitLt(args.k, args.n, bias=False, has_fp16_weights=False, threshold=threshold)
        layer.weight = bnb.nn.Int8Params(dense.weight.detach().to("cpu", torch.float16), requires_grad=False,
                                         has_fp16_weights=False)
        layers[f"Linear8bitLt threshold {threshold:g}"] = layer.to("cuda").eval()
    for nested in (False, True):
        layer = bnb.nn.Linear4bit(args.k, args.n, bias=False, compute_dtype=dtype, compress_statistics=nested,
                                  quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(dense.weight.detach().cpu().float(), requires_grad=False, quant_type="nf4",
                                         compress_statistics=nested, module=layer)
        layers["Linear4bit nf4" + (" nested" if nested else "")] = layer.to("cuda").eval()
    print(f"M = {args.m}, N = {args.n}, K = {args.k}, {args.dtype}, {torch.cuda.get_device_name()}")
    with torch.no_grad():
        results = [report(name, lambda layer=layer: layer(x)) for name, layer in layers.items()]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "M": args.m, "N": args.n, "K": args.k,
                       "dtype": args.dtype, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""Eager time per call of Linear4bit (nf4) and torch's nn.Linear at large M, each in its own steady state: timed
after `--lead-s` seconds of nothing but its own calls, with the SM clock read through NVML while it runs.

At M = 512 and 4096 both layers are bound by the tensor cores at the card's power cap, so the clock follows the
work: a layer timed right after another runs, for a while, on the clock the other one left. This profile tells a
kernel's speed apart from that (bench_linear4bit.py pairs the layers with a shorter lead-in per block), and a clock
well above the dense layer's at equal time says the layer waits for the host.

    PYTHONPATH=. python benchmarks/profile_steady_state_4bit.py [--m 512 4096] [--n 8192 28672] [--out f.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linear4bit import linear4bit  # noqa: E402
from gpu_timing import graph_time_ms  # noqa: E402

NVML_CLOCK_SM = 1


def sm_clock_reader():
    """A function returning the SM clock in MHz (NVML through ctypes), or None where NVML cannot be loaded."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
        handle = ctypes.c_void_p()
        if nvml.nvmlDeviceGetHandleByIndex_v2(torch.cuda.current_device(), ctypes.byref(handle)) != 0:
            return None
    except OSError:
        return None

    def read() -> int:
        mhz = ctypes.c_uint()
        return mhz.value if nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_SM, ctypes.byref(mhz)) == 0 else 0

    return read


def steady_ms(fn, lead_s: float, clock, runs: int = 20, calls: int = 10) -> tuple:
    """(median ms per call, median SM clock) over `runs` runs of `calls` calls, after lead_s seconds of calls."""
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < lead_s:
        fn()
        n += 1
        if n % 8 == 0:
            torch.cuda.synchronize()  # keeps the queue short, so that the lead-in lasts what it says
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
    clocks = []
    for i, (begin, end) in enumerate(events):
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        if clock is not None and i % 4 == 3:  # read while later runs are still queued behind this one
            clocks.append(clock())
    torch.cuda.synchronize()
    ms = statistics.median(b.elapsed_time(e) for b, e in events) / calls
    return ms, (statistics.median(clocks) if clocks else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--n", type=int, nargs="+", default=[8192, 28672])
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--dtype", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16"])
    ap.add_argument("--lead-s", type=float, default=0.5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    clock = sm_clock_reader()
    torch.manual_seed(0)
    rows = []
    for n in args.n:
        for name in args.dtype:
            dtype = getattr(torch, name)
            dense = torch.nn.Linear(args.k, n, bias=False, device="cuda", dtype=dtype)
            nf4 = linear4bit(dense.weight, dtype, False, "cuda")
            for m in args.m:
                x = torch.randn(m, args.k, device="cuda", dtype=dtype)
                with torch.no_grad():
                    (d_ms, d_mhz), (q_ms, q_mhz) = (steady_ms(lambda: layer(x), args.lead_s, clock)
                                                    for layer in (dense, nf4))
                    g_dense, g_nf4 = (graph_time_ms(lambda: layer(x), 20) for layer in (dense, nf4))
                print(f"K = {args.k} N = {n:5d} M = {m:4d} {name:8s}: steady dense {d_ms:.3f} ms at {d_mhz} MHz, "
                      f"nf4 {q_ms:.3f} ms at {q_mhz} MHz ({d_ms / q_ms:.3f}x); graph {g_dense:.3f} / {g_nf4:.3f} ms "
                      f"({g_dense / g_nf4:.3f}x)")
                rows.append({"K": args.k, "N": n, "M": m, "dtype": name, "dense_ms": d_ms, "dense_mhz": d_mhz,
                             "nf4_ms": q_ms, "nf4_mhz": q_mhz, "graph_dense_ms": g_dense, "graph_nf4_ms": g_nf4})
            del dense, nf4
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""Quantized layers on the CPU against torch's nn.Linear in the same dtype (K = N = 4096), one run.

No target applies (the CPU targets cover the quantization ops and the optimizer step); these figures
show what a user of the CPU path gets. The layers are timed in interleaved rounds, as they run in a model:
each call follows a torch op and finds other weights in cache.

    PYTHONPATH=. python benchmarks/bench_cpu_layers.py
"""

from __future__ import annotations

import statistics
import time

import torch

import bitsandbytes as bnb


def medians_ms(fns, repeats: int = 30) -> list:
    """Median ms per call of each function, timed in interleaved rounds (one call of each per round), so
    that a slow spell of a shared machine lands on all of them alike and the ratios stay same-run."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    torch.manual_seed(0)
    k = n = 4096
    print(f"CPU layers, K = N = {k}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        for dtype in (torch.bfloat16, torch.float32):
            dense = torch.nn.Linear(k, n, bias=False, dtype=dtype)
            nf4 = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=dtype, quant_type="nf4")
            nf4.weight = bnb.nn.Params4bit(dense.weight.detach().float(), requires_grad=False, quant_type="nf4",
                                           module=nf4)
            nf4 = nf4.to("cpu")
            int8 = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False)
            int8.weight = bnb.nn.Int8Params(dense.weight.detach().half(), requires_grad=False, has_fp16_weights=False)
            int8 = int8.to("cpu").eval()
            for m in (1, 16, 128):
                x = torch.randn(m, k, dtype=dtype)
                t_dense, t_nf4, t_int8 = medians_ms([lambda: dense(x), lambda: nf4(x), lambda: int8(x)])
                print(f"| {str(dtype).replace('torch.', '')} | {m} | {t_dense:.2f} | {t_nf4:.2f} ({t_dense / t_nf4:.2f}x) | "
                      f"{t_int8:.2f} ({t_dense / t_int8:.2f}x) |")


if __name__ == "__main__":
    main()

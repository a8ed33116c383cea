"""Quantized layers on the CPU against torch's nn.Linear in the same dtype (K = N = 4096), one run.

No target applies (the CPU targets cover the quantization ops and the optimizer step); these figures
show what a user of the CPU path gets.

    PYTHONPATH=. python benchmarks/bench_cpu_layers.py
"""

from __future__ import annotations

import statistics
import time

import torch

import bitsandbytes as bnb


def median_ms(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
                t_dense, t_nf4, t_int8 = (median_ms(lambda: dense(x)), median_ms(lambda: nf4(x)),
                                          median_ms(lambda: int8(x)))
                print(f"| {str(dtype).replace('torch.', '')} | {m} | {t_dense:.2f} | {t_nf4:.2f} ({t_dense / t_nf4:.2f}x) | "
                      f"{t_int8:.2f} ({t_dense / t_int8:.2f}x) |")


if __name__ == "__main__":
    main()

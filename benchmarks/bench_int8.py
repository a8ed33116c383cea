"""LLM.int8(): the int8 GEMM and Linear8bitLt inference against torch's nn.Linear, measured in one run.

Targets (K = 8192, N in {8192, 28672}, M in {1, 16, 512, 4096}; fp16 and bf16 activations):
int8_linear_matmul 4096x8192x8192 >= 1200 TOPS; Linear8bitLt threshold 0 >= 1.5x nn.Linear at M = 1, 16
and 4096 (>= 1.0x at every M); threshold 6.0 >= 1.3x at M = 1 and 4096 (>= 1.0x at every M).

Eager layer times: LAYER_CALLS back-to-back calls per run, the runs of the layers compared interleaved in
blocks of LAYER_BLOCK (gpu_timing.time_ms_paired) so that they see the same host, each block after about
LEAD_MS of untimed calls so that it runs at its own clock; "GPU only" replays a CUDA graph.

    PYTHONPATH=. python benchmarks/bench_int8.py --out int8.json
"""

from __future__ import annotations

import argparse
import json

import torch

import bitsandbytes as bnb
from gpu_timing import LAYER_BLOCK, LAYER_CALLS, graph_time_ms, time_ms, time_ms_paired

ops = torch.ops.bitsandbytes
TOPS_TARGET = 1200.0
TARGETS = {0.0: {1: 1.5, 16: 1.5, 4096: 1.5}, 6.0: {1: 1.3, 4096: 1.3}}


def int8_gemm(repeats: int) -> dict:
    M, K, N = 4096, 8192, 8192
    A = torch.randint(-127, 128, (M, K), dtype=torch.int8, device="cuda")
    B = torch.randint(-127, 128, (N, K), dtype=torch.int8, device="cuda")
    ours = time_ms(lambda: ops.int8_linear_matmul(A, B), repeats)
    torch_ms = time_ms(lambda: torch._int_mm(A, B.t()), repeats)
    tops = 2 * M * K * N / ours / 1e9
    row = {"case": f"int8_linear_matmul {M}x{K}x{N}", "ms": ours, "tops": tops, "torch_int_mm_ms": torch_ms,
           "target_tops": TOPS_TARGET, "pass": tops >= TOPS_TARGET}
    print(f"int8_linear_matmul {M}x{K}x{N}: {ours:.3f} ms = {tops:.0f} TOPS (torch._int_mm {torch_ms:.3f} ms, "
          f"{2 * M * K * N / torch_ms / 1e9:.0f} TOPS)  target {TOPS_TARGET:.0f}  {'PASS' if row['pass'] else 'FAIL'}")
    return row


def linear8bit(dense: torch.nn.Linear, threshold: float) -> torch.nn.Module:
    layer = bnb.nn.Linear8bitLt(dense.in_features, dense.out_features, bias=False, has_fp16_weights=False,
                                threshold=threshold)
    layer.weight = bnb.nn.Int8Params(dense.weight.detach().to("cpu", torch.float16), requires_grad=False,
                                     has_fp16_weights=False)
    return layer.cuda().eval()


def layers(repeats: int, shapes, ms, dtypes, thresholds) -> list:
    rows = []
    for k, n in shapes:
        for dtype in dtypes:
            dense = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=dtype)
            for threshold in thresholds:
                layer = linear8bit(dense, threshold)
                for m in ms:
                    x = torch.randn(m, k, device="cuda", dtype=dtype)
                    if threshold:
                        x[:, :: k // 8] *= 10  # a few outlier features, as in LLM activations
                    with torch.no_grad():
                        t_dense, t_int8 = time_ms_paired([lambda: dense(x), lambda: layer(x)], repeats,
                                                         calls=LAYER_CALLS, block=LAYER_BLOCK)
                        g_dense = graph_time_ms(lambda: dense(x), repeats)
                        g_int8 = graph_time_ms(lambda: layer(x), repeats)
                    speedup = t_dense / t_int8
                    target = TARGETS[threshold].get(m, 1.0)
                    row = {"K": k, "N": n, "M": m, "dtype": str(dtype).replace("torch.", ""), "threshold": threshold,
                           "dense_ms": t_dense, "int8_ms": t_int8, "speedup": speedup, "target": target,
                           "gpu_only_dense_ms": g_dense, "gpu_only_int8_ms": g_int8, "pass": speedup >= target}
                    rows.append(row)
                    gpu = f"   GPU only {g_dense / g_int8:.2f}x" if g_int8 else ""
                    print(f"K={k} N={n:5d} M={m:4d} {row['dtype']:8s} t={threshold:.0f}  dense {t_dense:7.3f} ms  "
                          f"int8 {t_int8:7.3f} ms ({speedup:5.2f}x, target {target}x)  "
                          f"{'PASS' if row['pass'] else 'FAIL'}{gpu}")
                del layer
            del dense
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--small", action="store_true", help="one shape, for a quick run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    gemm = int8_gemm(args.repeats)
    if args.small:
        shapes, ms, dtypes = [(8192, 8192)], [1, 16, 4096], [torch.float16]
    else:
        shapes, ms, dtypes = [(8192, 8192), (8192, 28672)], [1, 16, 512, 4096], [torch.float16, torch.bfloat16]
    rows = layers(args.repeats, shapes, ms, dtypes, (0.0, 6.0))
    passed = sum(r["pass"] for r in rows) + gemm["pass"]
    print(f"{passed}/{len(rows) + 1} measurements meet their target")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "gemm": gemm, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""Linear4bit (nf4) inference against torch's nn.Linear in the same dtype, measured in one run.

Targets (fp16 and bf16; K = 8192, N in {8192, 28672}): M = 1 >= 3.0x, M = 16 >= 2.5x, M = 512 and
4096 >= 1.0x; double-quantized statistics within 5% of plain ones.

Eager layer times: LAYER_CALLS back-to-back calls per run, the runs of the layers compared interleaved in
blocks of LAYER_BLOCK (gpu_timing.time_ms_paired) so that they see the same host, each block after about
LEAD_MS of untimed calls so that it runs at its own clock; "GPU only" replays a CUDA graph.

    PYTHONPATH=. python benchmarks/bench_linear4bit.py --out linear4bit.json
    PYTHONPATH=. python benchmarks/bench_linear4bit.py --device cpu --small   (a quick functional run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import bitsandbytes as bnb

TARGETS = {1: 3.0, 16: 2.5, 512: 1.0, 4096: 1.0}
NESTED_TOLERANCE = 0.05


def timer(device: str, repeats: int):
    """Times a list of functions, their runs interleaved on CUDA (gpu_timing.time_ms_paired)."""
    if device == "cuda":
        from gpu_timing import LAYER_BLOCK, LAYER_CALLS, time_ms_paired

        return lambda fns: time_ms_paired(fns, repeats, calls=LAYER_CALLS, block=LAYER_BLOCK)

    def cpu_ms(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return lambda fns: [cpu_ms(fn) for fn in fns]


def linear4bit(weight: torch.Tensor, dtype: torch.dtype, nested: bool, device: str) -> torch.nn.Module:
    n, k = weight.shape
    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=dtype, compress_statistics=nested, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight.detach().cpu().float(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=nested, module=layer)
    return layer.to(device)


def run(device: str, shapes, ms, dtypes, repeats: int) -> list:
    time_of = timer(device, repeats)
    rows = []
    for k, n in shapes:
        for dtype in dtypes:
            dense = torch.nn.Linear(k, n, bias=False, device=device, dtype=dtype)
            plain = linear4bit(dense.weight, dtype, False, device)
            nested = linear4bit(dense.weight, dtype, True, device)
            for m in ms:
                x = torch.randn(m, k, device=device, dtype=dtype)
                with torch.no_grad():
                    t_dense, t_plain, t_nested = time_of([lambda: dense(x), lambda: plain(x), lambda: nested(x)])
                    gpu = {}
                    if device == "cuda":  # GPU time alone (CUDA graph), to tell kernel from host overhead
                        from gpu_timing import graph_time_ms

                        gpu = {name: graph_time_ms(lambda: layer(x), repeats)
                               for name, layer in (("dense", dense), ("nf4", plain))}
                speedup = t_dense / t_plain
                target = TARGETS.get(m)
                row = {"K": k, "N": n, "M": m, "dtype": str(dtype).replace("torch.", ""), "dense_ms": t_dense,
                       "nf4_ms": t_plain, "nf4_nested_ms": t_nested, "speedup": speedup, "target": target,
                       "nested_vs_plain": t_nested / t_plain,
                       "gpu_only_dense_ms": gpu.get("dense"), "gpu_only_nf4_ms": gpu.get("nf4"),
                       "pass": (target is None or speedup >= target) and t_nested <= t_plain * (1 + NESTED_TOLERANCE)}
                rows.append(row)
                print(f"K={k:5d} N={n:5d} M={m:4d} {row['dtype']:8s} dense {t_dense:8.3f} ms  nf4 {t_plain:8.3f} ms "
                      f"({speedup:5.2f}x, target {target}x)  nested/plain {row['nested_vs_plain']:.3f}  "
                      f"{'PASS' if row['pass'] else 'FAIL'}"
                      + (f"   GPU only: dense {gpu['dense']:.3f} nf4 {gpu['nf4']:.3f} ms ({gpu['dense'] / gpu['nf4']:.2f}x)"
                         if gpu else ""))
            del dense, plain, nested
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="small shapes for a quick functional run")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.small:
        shapes, ms, dtypes = [(256, 384)], [1, 16], [torch.bfloat16]
    else:
        shapes, ms, dtypes = [(8192, 8192), (8192, 28672)], [1, 16, 512, 4096], [torch.float16, torch.bfloat16]
    rows = run(args.device, shapes, ms, dtypes, args.repeats)
    passed = sum(r["pass"] for r in rows)
    print(f"{passed}/{len(rows)} cases meet their target")
    if args.out:
        name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        with open(args.out, "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

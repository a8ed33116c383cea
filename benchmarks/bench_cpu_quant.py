"""CPU speed of the quantization ops against the same ops written in plain PyTorch.

The plain-PyTorch versions are the executable spec (the same algorithms, in torch ops, on all
cores torch uses). Target: every native op >= 5x faster. Run on the development machine:

    PYTHONPATH=. python benchmarks/bench_cpu_quant.py --out cpu_quant.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import bitsandbytes  # noqa: F401  (registers the ops)
import bitsandbytes.functional as F

TARGET_SPEEDUP = 5.0


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- plain-PyTorch references ---------------------------------------------------------------------


def torch_blocks(A, blocksize):
    x = A.float().reshape(-1)
    pad = (-x.numel()) % blocksize
    blocks = torch.nn.functional.pad(x, (0, pad)).view(-1, blocksize)
    absmax = blocks.abs().amax(1)
    return blocks, absmax


def torch_quantize_blockwise(A, code, blocksize):
    blocks, absmax = torch_blocks(A, blocksize)
    v = blocks * torch.where(absmax > 0, 1.0 / absmax, 0.0)[:, None]
    mids = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(v.reshape(-1)[: A.numel()], mids).to(torch.uint8)
    return q, absmax


def torch_dequantize_blockwise(q, absmax, code, blocksize, dtype):
    x = code[q.long()].view(-1)
    pad = (-x.numel()) % blocksize
    x = torch.nn.functional.pad(x, (0, pad)).view(-1, blocksize) * absmax[:, None]
    return x.reshape(-1)[: q.numel()].to(dtype)


NF4_THRESHOLDS = torch.tensor([
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
    -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
    0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
    0.5016634166240692, 0.6427869200706482, 0.8614784181118011])


def torch_quantize_nf4(A, blocksize):
    blocks, absmax = torch_blocks(A, blocksize)
    v = (blocks * torch.where(absmax > 0, 1.0 / absmax, 0.0)[:, None]).reshape(-1)[: A.numel()]
    codes = torch.bucketize(v, NF4_THRESHOLDS).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    pairs = codes.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1], absmax


def torch_dequantize_nf4(packed, absmax, table, blocksize, n, dtype):
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).view(-1)[:n]
    return torch_dequantize_blockwise(codes, absmax, table, blocksize, dtype)


def torch_int8_vectorwise_quant(A):
    x = A.float()
    absmax = x.abs().amax(1)
    return torch.round(x * (127.0 / absmax)[:, None]).to(torch.int8), absmax


# ---- cases --------------------------------------------------------------------------------------------


def cases(n: int):
    code = F.create_dynamic_map()
    nf4 = F.get_4bit_type("nf4", device="cpu")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        A = torch.randn(n, dtype=dtype)
        name = str(dtype).replace("torch.", "")
        q, absmax = torch.ops.bitsandbytes.quantize_blockwise(A, code, 4096)
        yield (f"quantize_blockwise {name} bs4096",
               lambda A=A: torch.ops.bitsandbytes.quantize_blockwise(A, code, 4096),
               lambda A=A: torch_quantize_blockwise(A, code, 4096))
        yield (f"dequantize_blockwise {name} bs4096",
               lambda q=q, a=absmax, d=dtype: torch.ops.bitsandbytes.dequantize_blockwise(q, a, code, 4096, d),
               lambda q=q, a=absmax, d=dtype: torch_dequantize_blockwise(q, a, code, 4096, d))
        p, absmax4 = torch.ops.bitsandbytes.quantize_4bit(A, 64, "nf4", torch.uint8)
        yield (f"quantize_4bit nf4 {name} bs64",
               lambda A=A: torch.ops.bitsandbytes.quantize_4bit(A, 64, "nf4", torch.uint8),
               lambda A=A: torch_quantize_nf4(A, 64))
        yield (f"dequantize_4bit nf4 {name} bs64",
               lambda p=p, a=absmax4, d=dtype: torch.ops.bitsandbytes.dequantize_4bit(p, a, 64, "nf4", [n], d),
               lambda p=p, a=absmax4, d=dtype: torch_dequantize_nf4(p.view(-1), a, nf4, 64, n, d))
        M = A.view(-1, 4096)
        yield (f"int8_vectorwise_quant {name} [{M.shape[0]}x4096]",
               lambda M=M: torch.ops.bitsandbytes.int8_vectorwise_quant(M, 0.0),
               lambda M=M: torch_int8_vectorwise_quant(M))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    info = bitsandbytes._native.cpu_library().info()
    print(f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"native {info['isa']} x {info['threads']} threads, n = {args.n}")
    results = []
    print(f"{'op':44s} {'native ms':>10s} {'torch ms':>10s} {'speed-up':>9s}  target >= {TARGET_SPEEDUP}x")
    for name, native, reference in cases(args.n):
        t_native = median_time(native, args.repeats)
        t_ref = median_time(reference, args.repeats)
        speedup = t_ref / t_native
        ok = speedup >= TARGET_SPEEDUP
        results.append({"op": name, "native_ms": t_native * 1e3, "torch_ms": t_ref * 1e3, "speedup": speedup,
                        "pass": ok})
        print(f"{name:44s} {t_native * 1e3:10.2f} {t_ref * 1e3:10.2f} {speedup:8.1f}x  {'PASS' if ok else 'FAIL'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"n": args.n, "cpu_info": info, "torch_threads": torch.get_num_threads(), "results": results},
                      f, indent=1)


if __name__ == "__main__":
    main()

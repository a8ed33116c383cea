"""CPU speed of the 8-bit AdamW step against the same step written in plain PyTorch.

The plain-PyTorch step is the executable spec of an 8-bit blockwise Adam update: dequantize both
states (code[q] * absmax per block of 256), update in float32, take the new block absmax and
re-quantize to the nearest code (bucketize on the midpoints). Target (targets.md): >= 5x.

    PYTHONPATH=. python benchmarks/bench_cpu_optim.py --out cpu_optim.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

TARGET_SPEEDUP = 5.0
BLOCK = 256


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


class TorchAdamW8bit:
    """8-bit blockwise AdamW in plain PyTorch ops (the reference the native step is timed against)."""

    def __init__(self, p, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        self.p, self.lr, self.b1, self.b2, self.eps, self.wd = p, lr, *betas, eps, weight_decay
        self.q1 = F.create_dynamic_map(signed=True)
        self.q2 = F.create_dynamic_map(signed=False)
        self.mid1 = (self.q1[:-1] + self.q1[1:]) / 2
        self.mid2 = (self.q2[:-1] + self.q2[1:]) / 2
        n = p.numel()
        self.blocks = -(n // -BLOCK)
        self.s1 = torch.full((n,), 127, dtype=torch.uint8)  # code of 0.0 in the signed map
        self.s2 = torch.zeros(n, dtype=torch.uint8)
        self.a1 = torch.zeros(self.blocks)
        self.a2 = torch.zeros(self.blocks)
        self.t = 0

    def _blocks(self, x):
        pad = self.blocks * BLOCK - x.numel()
        return torch.nn.functional.pad(x, (0, pad)).view(self.blocks, BLOCK)

    def step(self, g):
        self.t += 1
        n = self.p.numel()
        m = (self._blocks(self.q1[self.s1.long()]) * self.a1[:, None]).view(-1)[:n]
        v = (self._blocks(self.q2[self.s2.long()]) * self.a2[:, None]).view(-1)[:n]
        m = self.b1 * m + (1 - self.b1) * g
        v = self.b2 * v + (1 - self.b2) * g * g
        bc1 = 1 - self.b1**self.t
        bc2 = (1 - self.b2**self.t) ** 0.5
        self.p.mul_(1 - self.lr * self.wd)
        self.p.sub_(self.lr * (m / bc1) / (v.sqrt() / bc2 + self.eps))
        mb, vb = self._blocks(m), self._blocks(v)
        self.a1 = mb.abs().amax(1)
        self.a2 = vb.abs().amax(1)
        inv1 = torch.where(self.a1 > 0, 1 / self.a1, 0.0)
        inv2 = torch.where(self.a2 > 0, 1 / self.a2, 0.0)
        self.s1 = torch.bucketize((mb * inv1[:, None]).view(-1)[:n], self.mid1).to(torch.uint8)
        self.s2 = torch.bucketize((vb * inv2[:, None]).view(-1)[:n], self.mid2).to(torch.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(args.n))
    p.grad = torch.randn_like(p) * 1e-2
    ours = bnb.optim.AdamW8bit([p], lr=1e-3)
    t_ours = median_ms(ours.step, args.repeats)
    ref = TorchAdamW8bit(p.detach().clone())
    t_ref = median_ms(lambda: ref.step(p.grad), args.repeats)
    speedup = t_ref / t_ours
    info = bnb._native.cpu_library().info()
    print(f"CPU AdamW8bit step, n = {args.n}: native {t_ours:.1f} ms ({info['isa']} x {info['threads']} threads), "
          f"plain PyTorch {t_ref:.1f} ms ({torch.get_num_threads()} threads): {speedup:.1f}x "
          f"(target >= {TARGET_SPEEDUP}x) {'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"n": args.n, "native_ms": t_ours, "torch_ms": t_ref, "speedup": speedup, "cpu": info}, f)


if __name__ == "__main__":
    main()

"""Kernel-level breakdown of one optimizer step (torch.profiler), to see where a step's time goes.

    PYTHONPATH=. python benchmarks/profile_optim_step.py [--n 268435456]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import bitsandbytes as bnb


def profile_step(name, make_opt, n, dtype):
    p = torch.nn.Parameter(torch.randn(n, device="cuda", dtype=dtype))
    p.grad = torch.randn_like(p)
    opt = make_opt([p])
    for _ in range(3):
        opt.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            opt.step()
        torch.cuda.synchronize()
    print(f"== {name}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=70))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 28)
    args = ap.parse_args()
    profile_step("torch AdamW fused fp32", lambda ps: torch.optim.AdamW(ps, fused=True), args.n, torch.float32)
    profile_step("AdamW8bit fp32", lambda ps: bnb.optim.AdamW8bit(ps), args.n, torch.float32)
    profile_step("AdamW 32-bit state fp32", lambda ps: bnb.optim.AdamW(ps), args.n, torch.float32)
    profile_step("Adam8bit bf16", lambda ps: bnb.optim.Adam8bit(ps), args.n, torch.bfloat16)


if __name__ == "__main__":
    main()

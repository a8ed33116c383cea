"""CUDA speed and memory of the 8-bit optimizers against torch.optim.AdamW(fused=True) and the copy
bandwidth, all measured in this run (targets.md):

  - AdamW8bit step, one 268M-element fp32 parameter: >= 1.5x torch fused AdamW
  - 1000 fp32 parameters of 64K elements: >= 4x torch fused AdamW
  - Adam8bit / Lion8bit with bf16 parameters and grads: >= 80% of copy bandwidth over their byte floors
    (Adam 10.06 B/param: p r+w 4, g 2, two 1-byte states r+w 4, absmax; Lion 8.03 B/param)
  - state memory <= 2.04 B/param (two 8-bit states), <= 1.02 (one state)

Timing: CUDA events around optimizer.step() after warm-up, median of --repeats; gradients are random
normal and stay in place (step() reads them; nothing else runs between steps). Ours and torch's steps
over the same parameters are timed with their runs interleaved (gpu_timing.time_ms_paired), so both
see the same host: at 1000 small tensors a step is paced by the host, whose speed drifts.

    PYTHONPATH=. python benchmarks/bench_optim.py --out optim_cuda.json
"""

from __future__ import annotations

import argparse
import json

import torch

import bitsandbytes as bnb
from gpu_timing import copy_bandwidth, gpu_clock_state, time_ms, time_ms_paired

BIG = 1 << 28          # one 268M-element parameter
MANY, SMALL = 1000, 1 << 16
TARGET_BIG = 1.5
TARGET_MANY = 4.0
TARGET_BW = 0.80
FLOOR_ADAM8_BF16 = 10.06  # bytes per parameter (targets.md)
FLOOR_LION8_BF16 = 8.03


def make_params(shapes, dtype):
    params = [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def step_ms(opt, repeats):
    return time_ms(opt.step, repeats, warmup=3)


def paired_step_ms(opts, repeats):
    """Step times of optimizers over the same parameters, their runs interleaved (time_ms_paired)."""
    return time_ms_paired([o.step for o in opts], repeats, warmup=3)


def state_bytes_per_param(opt, params):
    total = 0
    for p in params:
        for v in opt.state[p].values():
            if isinstance(v, torch.Tensor) and v.data_ptr() not in (p.data_ptr(),):
                if v.numel() == 256 and v.dtype == torch.float32:  # shared code books
                    continue
                total += v.numel() * v.element_size()
    return total / sum(p.numel() for p in params)


def run(repeats: int) -> dict:
    rows = []
    copy_gbs = copy_bandwidth(repeats)

    def add(name, value, target, unit, extra=None):
        row = {"case": name, "value": round(value, 4), "target": target, "unit": unit,
               "pass": value >= target if unit != "B/param" else value <= target}
        row.update(extra or {})
        rows.append(row)

    # -- one large fp32 parameter
    params = make_params([(BIG,)], torch.float32)
    torch_opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    opt = bnb.optim.AdamW8bit(params, lr=1e-3)
    opt32 = bnb.optim.AdamW(params, lr=1e-3)  # our 32-bit kernel, for reference
    t_torch, t_ours, t32 = paired_step_ms([torch_opt, opt, opt32], repeats)
    add("AdamW8bit 268M fp32 vs torch fused AdamW", t_torch / t_ours, TARGET_BIG, "x",
        {"ours_ms": t_ours, "torch_ms": t_torch, "fraction_of_copy": BIG * 16.06 / t_ours / 1e6 / copy_gbs})
    add("AdamW8bit state memory", state_bytes_per_param(opt, params), 2.04, "B/param")
    rows.append({"case": "AdamW (32-bit state) 268M fp32 vs torch fused AdamW", "value": round(t_torch / t32, 4),
                 "ours_ms": t32, "torch_ms": t_torch, "target": None, "unit": "x", "pass": True})
    del torch_opt, opt, opt32, params
    torch.cuda.empty_cache()

    # -- many small fp32 parameters
    params = make_params([(SMALL,)] * MANY, torch.float32)
    torch_opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    opt = bnb.optim.AdamW8bit(params, lr=1e-3)
    t_torch, t_ours = paired_step_ms([torch_opt, opt], repeats)
    add(f"AdamW8bit {MANY}x64K fp32 vs torch fused AdamW", t_torch / t_ours, TARGET_MANY, "x",
        {"ours_ms": t_ours, "torch_ms": t_torch})
    del torch_opt, opt, params
    torch.cuda.empty_cache()

    # -- bf16 bandwidth cases
    for name, cls, floor in (("Adam8bit", bnb.optim.Adam8bit, FLOOR_ADAM8_BF16),
                             ("Lion8bit", bnb.optim.Lion8bit, FLOOR_LION8_BF16)):
        params = make_params([(BIG,)], torch.bfloat16)
        opt = cls(params, lr=1e-4)
        ms = step_ms(opt, repeats)
        frac = BIG * floor / ms / 1e6 / copy_gbs
        add(f"{name} 268M bf16, fraction of copy bandwidth", frac, TARGET_BW, "fraction",
            {"ms": ms, "gpu_after": gpu_clock_state()})
        if name == "Lion8bit":
            add("Lion8bit state memory", state_bytes_per_param(opt, params), 1.02, "B/param")
        del opt, params
        torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(), "copy_gb_per_s": copy_gbs, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = run(args.repeats)
    print(f"{result['device']}: copy {result['copy_gb_per_s']:.0f} GB/s")
    for r in result["rows"]:
        target = "" if r["target"] is None else f"target {'<=' if r['unit'] == 'B/param' else '>='} {r['target']}"
        print(f"  {r['case']:58s} {r['value']:9.3f} {r['unit']:9s} {target:16s} {'PASS' if r['pass'] else 'FAIL'}"
              + (f"  ({r['ms']:.3f} ms; GPU after: {r['gpu_after']})" if r.get("gpu_after") else ""))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

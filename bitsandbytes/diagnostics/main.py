"""Entry point of `python -m bitsandbytes`."""

from __future__ import annotations

import sys

import torch

from .demo import run_demo, run_optimizer_demo
from .environment import print_environment
from .selfcheck import run_selfcheck


def main() -> None:
    facts = print_environment()
    devices = ["cpu"] + [f"cuda:{i}" for i in facts["cuda_devices"]]
    print("\nSelf-check (every kernel family on every device, against float64 oracles and the CPU bytes):")
    failures = run_selfcheck(devices)
    if torch.cuda.is_available() and facts["cuda_lib"] is None:
        failures.append("cuda library not loaded")
        print("  [FAIL] a GPU is visible but the CUDA library did not load (see 'Native libraries' above)")

    if not failures:
        run_demo(devices[-1])
        run_optimizer_demo(devices[-1])
        print(f"\nSUCCESS! bitsandbytes works on: {', '.join(devices)}")
        return
    print(f"\nFAILED: {len(failures)} check(s) failed: {'; '.join(failures)}")
    sys.exit(1)

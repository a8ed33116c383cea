"""Devices, dtypes and marks shared by the test modules, and a runner for code in a fresh interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# Parametrize over these to run a test on CPU and (when present) on CUDA.
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8"}

# Blocksizes CUDA accepts for 8-bit blockwise (powers of two 64..4096); CPU accepts any positive one.
BLOCKSIZES_8BIT_POW2 = [64, 128, 256, 512, 1024, 2048, 4096]
BLOCKSIZES_8BIT_CPU_ONLY = [100, 16384]
BLOCKSIZES_4BIT = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def dtype_id(d):
    return DTYPE_IDS.get(d, str(d).replace("torch.", ""))


def randn(shape, dtype, device="cpu", seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).to(device)


def train_on_batch(model, opt, ids, steps: int) -> list:
    """`steps` optimizer steps of a causal LM on one batch (labels = inputs); the losses, in order."""
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter that imports this checkout, with extra environment variables:
    for choices the library makes once per process (loader, instruction sets)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def assert_quantized_as_on_cpu(quantize, x, out, state, **kwargs) -> None:
    """`out, state` (a quantizer's result for x on another device) hold the bytes the CPU kernels give for
    the same call: the same codes and bit-identical block scales (NaN patterns included)."""
    out_cpu, state_cpu = quantize(x.cpu(), **kwargs)
    assert torch.equal(out.cpu(), out_cpu), "the codes differ from the CPU's"
    assert torch.equal(state.absmax.cpu().view(torch.int32), state_cpu.absmax.view(torch.int32)), \
        "the block scales differ from the CPU's"

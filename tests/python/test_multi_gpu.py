"""Ops on a GPU other than torch's current one (models split over GPUs by device_map="auto"): each op runs on
its tensors' device and gives the caller's current device back, as torch's own ops do."""

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

from helpers import randn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs two CUDA GPUs")


def _ops_on(device: str) -> list:
    """Results of a set of native ops whose inputs live on `device` (the same seeds on every device)."""
    w = randn((256, 512), torch.float16, device, seed=1)
    results = list(F.quantize_blockwise(w.flatten())[0:1])
    packed, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    results.append(packed)
    for rows in (1, 12, 64):  # the streaming kernels and, on Hopper, the tensor-core one
        x = randn((rows, 512), torch.float16, device, seed=2 + rows)
        results.append(bnb.matmul_4bit(x, packed.t(), quant_state=state))
    layer = bnb.nn.Linear8bitLt(512, 256, bias=False, has_fp16_weights=False).to(device)
    with torch.no_grad():
        results.append(layer(randn((4, 512), torch.float16, device, seed=9)))
    return [r.cpu() for r in results]


@pytest.mark.parametrize("current,other", [(0, 1), (1, 0)])
def test_ops_run_on_their_tensors_device_and_leave_the_current_device(current, other):
    torch.manual_seed(0)
    torch.cuda.set_device(other)
    expected = _ops_on(f"cuda:{other}")  # with their device current
    torch.cuda.set_device(current)
    torch.manual_seed(0)
    got = _ops_on(f"cuda:{other}")
    assert torch.cuda.current_device() == current
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    torch.cuda.set_device(0)

"""8-bit blockwise quantization with code books in any order (compat.md §1.4.3 covers sorted ones).

Oracles: a code out of ascending order is checked against the float64 nearest-value oracle
(O.nearest_code_excess): every chosen entry must be a nearest one, up to the float32 rounding of the
midpoints. An ascending code must still give exactly the midpoint rule (O.quantize_blockwise_ref),
duplicates included. CUDA must give the CPU's bytes for every code, ties between equal entries too.

Sizes: n covers whole CUDA tiles (4096 float32 / 8192 16-bit elements) and a tail for the warp-per-block
kernel, with a partial last block.
"""

import pytest
import torch

import bitsandbytes.functional as F
import oracles as O
from helpers import DEVICES, FLOAT_DTYPES, HAS_CUDA, assert_quantized_as_on_cpu, dtype_id, randn

N = 3 * 8192 + 123
BLOCKSIZES = [64, 4096]


def _is_ascending(code: torch.Tensor) -> bool:
    return bool((code[1:] >= code[:-1]).all())


def _unsorted_codes() -> dict:
    g = torch.Generator().manual_seed(7)
    dynamic = F.create_dynamic_map(signed=True)
    return {
        # Zero padding after the positive half (the signed 4-bit one only by a -4.5e-8 rounding).
        "linear_unsigned_2bit": F.create_linear_map(signed=False, total_bits=2),
        "linear_unsigned_4bit": F.create_linear_map(signed=False, total_bits=4),
        "linear_unsigned_7bit": F.create_linear_map(signed=False, total_bits=7),
        "linear_signed_4bit": F.create_linear_map(signed=True, total_bits=4),
        "linear_signed_7bit": F.create_linear_map(signed=True, total_bits=7),
        "dynamic_permuted": dynamic[torch.randperm(256, generator=g)],
        # 17 distinct values, each about 15 times, in random order: ties between equal entries everywhere.
        "duplicates": (torch.randint(-8, 9, (256,), generator=g) / 8.0).float(),
    }


UNSORTED = _unsorted_codes()


def _sorted_codes() -> dict:
    g = torch.Generator().manual_seed(8)
    return {
        "dynamic": F.create_dynamic_map(signed=True),
        "dynamic_6bit_zero_padded": F.create_dynamic_map(signed=True, max_exponent_bits=4, total_bits=6),
        "linear_signed_2bit_zero_padded": F.create_linear_map(signed=True, total_bits=2),
        "fp8_e4m3": F.create_fp8_map(True, 4, 3, 8),
        "duplicates_sorted": (torch.randint(-8, 9, (256,), generator=g) / 8.0).float().sort().values,
    }


SORTED = _sorted_codes()


def test_the_codes_are_what_they_are_meant_to_be():
    # Otherwise the tests below would not exercise the path they are named after.
    assert not any(_is_ascending(c) for c in UNSORTED.values())
    assert all(_is_ascending(c) for c in SORTED.values())
    assert all(c.shape == (256,) and c.dtype == torch.float32 for c in [*UNSORTED.values(), *SORTED.values()])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", sorted(UNSORTED))
def test_unsorted_code_picks_a_nearest_entry(device, blocksize, dtype, name):
    code = UNSORTED[name]
    x = randn((N,), dtype, device, seed=blocksize + len(name))
    if code.min() >= 0:
        x = x.abs()
    q, state = F.quantize_blockwise(x, code=code.to(device), blocksize=blocksize)
    assert torch.equal(state.absmax.cpu(), O.blockwise_absmax(x, blocksize))
    excess, bound = O.nearest_code_excess(x, q, code, blocksize)
    worst = (excess - bound).argmax()
    assert (excess <= bound).all(), (
        f"element {worst.item()}: code[{q.reshape(-1)[worst].item()}] is {excess[worst].item():.3g} farther "
        f"than the nearest entry (bound {bound[worst].item():.3g})"
    )
    # Dequantization reads the caller's code at the chosen indices.
    y = F.dequantize_blockwise(q, state)
    assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q.cpu(), state.absmax.cpu(), code, blocksize, dtype))
    if device == "cuda":
        assert_quantized_as_on_cpu(F.quantize_blockwise, x, q, state, code=code, blocksize=blocksize)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", sorted(SORTED))
def test_sorted_code_keeps_the_midpoint_rule(device, blocksize, dtype, name):
    code = SORTED[name]
    x = randn((N,), dtype, device, seed=blocksize + 3 * len(name))
    q, state = F.quantize_blockwise(x, code=code.to(device), blocksize=blocksize)
    q_ref, absmax_ref = O.quantize_blockwise_ref(x, code, blocksize)
    assert torch.equal(state.absmax.cpu(), absmax_ref)
    mismatch = (q.cpu() != q_ref).sum().item()
    assert mismatch == 0, f"{mismatch} of {N} indices differ from the midpoint rule"


@pytest.mark.parametrize("device", DEVICES)
def test_unsorted_code_with_midpoint_ties_and_the_codes_themselves(device):
    # Every entry of the code and every midpoint between neighbours in value order, in one block of
    # absmax 1: an entry must come back as itself, a midpoint as one of its two neighbours.
    code = UNSORTED["dynamic_permuted"]
    ordered = code.sort().values
    x = torch.cat([code, (ordered[:-1] + ordered[1:]) / 2, torch.tensor([1.0, -1.0])]).to(device)
    q, state = F.quantize_blockwise(x, code=code.to(device), blocksize=4096)
    assert state.absmax.tolist() == [1.0]
    assert torch.equal(code[q[: code.numel()].cpu().long()], code), "an entry did not come back as itself"
    excess, bound = O.nearest_code_excess(x, q, code, 4096)
    assert (excess <= bound).all()
    if device == "cuda":
        q_cpu, _ = F.quantize_blockwise(x.cpu(), code=code, blocksize=4096)
        assert torch.equal(q.cpu(), q_cpu)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_matches_cpu_on_duplicates_in_any_order(dtype):
    # Equal entries may be chosen either way by the rule; both backends must choose the same one.
    for name in ("duplicates", "linear_unsigned_4bit", "linear_signed_4bit"):
        code = UNSORTED[name]
        x = randn((N,), dtype, seed=5)
        q_cpu, s_cpu = F.quantize_blockwise(x, code=code, blocksize=256)
        q_gpu, s_gpu = F.quantize_blockwise(x.cuda(), code=code.cuda(), blocksize=256)
        assert torch.equal(q_gpu.cpu(), q_cpu), name
        assert torch.equal(s_gpu.absmax.cpu(), s_cpu.absmax), name

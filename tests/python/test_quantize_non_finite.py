"""Blocks holding inf or NaN, 8-bit blockwise and 4-bit (the rule is stated in csrc/core/formats.h and in
the docstrings of quantize_blockwise / quantize_4bit):

- a NaN in a block: absmax = NaN, and the whole block dequantizes to NaN;
- else +-inf: absmax = +inf; +inf gets the largest code and -inf the smallest (an infinity of its own
  sign after dequantization, for codes with entries of both signs); finite values get the code nearest 0
  and come back as 0 * inf = NaN;
- every other block is quantized as if the non-finite ones were not there (exactly the oracle).

Special blocks sit both in the whole CUDA tiles and in the tail that the warp-per-block kernel handles.
CUDA must give the CPU's bytes.
"""

import math

import pytest
import torch

import bitsandbytes.functional as F
import oracles as O
from helpers import DEVICES, FLOAT_DTYPES, assert_quantized_as_on_cpu, dtype_id, randn

INF, NAN = math.inf, math.nan

NAN_BLOCK = 1  # see _layout


def _layout(blocksize: int, whole_blocks: int):
    """n (whole_blocks blocks and half of one), and the blocks holding a NaN, infinities or both: blocks 1-3
    lie in the first CUDA tile, the others in the tail (the last one is the partial block)."""
    n = whole_blocks * blocksize + blocksize // 2
    last = whole_blocks  # the partial block
    return n, {"nan": [1, whole_blocks - 5], "inf": [2, whole_blocks - 4], "both": [3, last]}


def _input(dtype, device, blocksize, whole_blocks, seed):
    n, special = _layout(blocksize, whole_blocks)
    x = randn((n,), torch.float32, seed=seed) * 3
    positions = {}
    for kind, blocks in special.items():
        for b in blocks:
            start = b * blocksize
            if kind in ("nan", "both"):
                x[start + 5] = NAN
            if kind in ("inf", "both"):
                x[start + 7] = INF
                x[start + 11] = -INF
            positions[b] = kind
    return x.to(dtype).to(device), positions


def _block_slice(b, blocksize, n):
    return slice(b * blocksize, min((b + 1) * blocksize, n))


def _check_blocks(x, absmax, y, positions, blocksize, check_finite_block):
    """absmax and the dequantized y of every block against the rule; check_finite_block(b, sl) for the others."""
    n = x.numel()
    x, absmax, y = x.cpu().float(), absmax.cpu(), y.cpu().float()
    for b in range(O.num_blocks(n, blocksize)):
        sl = _block_slice(b, blocksize, n)
        kind = positions.get(b)
        if kind in ("nan", "both"):
            assert math.isnan(absmax[b].item()), f"block {b} holds a NaN: absmax must be NaN"
            assert torch.isnan(y[sl]).all(), f"block {b} holds a NaN: it must dequantize to NaN"
        elif kind == "inf":
            assert absmax[b].item() == INF, f"block {b} holds inf: absmax must be +inf"
            xs, ys = x[sl], y[sl]
            assert (ys[xs == INF] == INF).all(), "+inf must come back as +inf"
            assert (ys[xs == -INF] == -INF).all(), "-inf must come back as -inf"
            assert torch.isnan(ys[torch.isfinite(xs)]).all(), "finite values of an inf block come back as NaN"
        else:
            assert math.isfinite(absmax[b].item())
            check_finite_block(b, sl)


# ---- 8-bit blockwise ---------------------------------------------------------------------------------------


def _codes_8bit():
    g = torch.Generator().manual_seed(3)
    dynamic = F.create_dynamic_map(signed=True)
    return {"dynamic": dynamic, "dynamic_permuted": dynamic[torch.randperm(256, generator=g)]}


CODES_8BIT = _codes_8bit()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("code_name", sorted(CODES_8BIT))
def test_blockwise_non_finite_blocks(device, dtype, code_name):
    code = CODES_8BIT[code_name]
    blocksize = 256
    x, positions = _input(dtype, device, blocksize, whole_blocks=40, seed=1)
    q, state = F.quantize_blockwise(x, code=code.to(device), blocksize=blocksize)
    y = F.dequantize_blockwise(q, state)
    xf, qc = x.cpu().float(), q.cpu().long()

    def check_finite_block(b, sl):
        q_ref, absmax_ref = O.quantize_blockwise_ref(xf[sl], code, blocksize)
        assert state.absmax[b].item() == absmax_ref.item()
        if code_name == "dynamic":  # sorted: exactly the midpoint rule
            assert torch.equal(qc[sl], q_ref.long()), f"block {b} differs from the midpoint rule"
        else:
            excess, bound = O.nearest_code_excess(xf[sl], qc[sl], code, blocksize)
            assert (excess <= bound).all()

    _check_blocks(x, state.absmax, y, positions, blocksize, check_finite_block)
    # The indices of the rule: +inf -> the largest entry, -inf -> the smallest, finite -> the entry 0.
    for b, kind in positions.items():
        sl = _block_slice(b, blocksize, x.numel())
        xs, codes = xf[sl], code[qc[sl]]
        if kind == "inf":
            assert (codes[xs == INF] == code.max()).all() and (codes[xs == -INF] == code.min()).all()
            assert (codes[torch.isfinite(xs)] == 0).all()
    # The absmax of a NaN block is one NaN pattern on every backend (the bytes are compared below).
    assert state.absmax.cpu()[NAN_BLOCK].view(torch.int32).item() == 0x7FC00000
    if device == "cuda":
        assert_quantized_as_on_cpu(F.quantize_blockwise, x, q, state, code=code, blocksize=blocksize)


@pytest.mark.parametrize("device", DEVICES)
def test_blockwise_unsigned_code_keeps_infinities_non_finite(device):
    # The unsigned map has no negative entry: -inf takes the smallest (0) and comes back as NaN.
    code = F.create_dynamic_map(signed=False)
    x = torch.tensor([0.5, INF, -INF, 2.0] + [0.25] * 60, device=device)
    q, state = F.quantize_blockwise(x, code=code.to(device), blocksize=64)
    y = F.dequantize_blockwise(q, state).cpu()
    assert state.absmax.item() == INF
    assert y[1].item() == INF and math.isnan(y[2].item())
    assert not torch.isfinite(y).any()


NESTED_BLOCKSIZE = 256  # absmax values per second-level block (4-bit; quantize_blockwise uses its blocksize)


def _assert_nested_spread_stays_in_its_block(roundtrip, value, device, seed, nested_blocksize):
    """A NaN or inf in first-level block NAN_BLOCK (blocks of 64), quantized with double-quantized scales by
    roundtrip(x, nested=True) -> (dequantized y on the CPU, state): that block comes back non-finite, the
    blocks sharing its second-level block may (a NaN or inf absmax there turns them into NaN), and every
    other block is finite and as close to x as the plain quantization (nested=False) is, give or take the
    nested scales' own rounding. The offset stays finite (the mean of the finite block scales)."""
    blocksize = 64
    x = randn((3 * NESTED_BLOCKSIZE * blocksize,), torch.float32, seed=seed)
    x[NAN_BLOCK * blocksize + 5] = value
    x = x.to(device)
    y, state = roundtrip(x, nested=True)
    assert torch.isfinite(state.offset).all()
    y_plain, _ = roundtrip(x, nested=False)
    n = x.numel()
    bad = _block_slice(NAN_BLOCK, blocksize, n)
    if value != value:
        assert torch.isnan(y[bad]).all()
    else:
        assert y[bad][x.cpu()[bad] == value].eq(value).all()
    rest = slice(nested_blocksize * blocksize, n)  # the blocks of the other second-level blocks
    xr, yr, pr = x.cpu()[rest].float(), y[rest].float(), y_plain[rest].float()
    assert torch.isfinite(yr).all(), "a non-finite block spread beyond its second-level block"
    assert (yr - xr).abs().max() <= 1.05 * (pr - xr).abs().max() + 1e-2 * xr.abs().max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "inf"])
def test_blockwise_nested_absmax_keeps_non_finite_in_its_block(device, value):
    # With nested=True the absmax values are quantized in turn (in blocks of the same size, 64 here).
    def roundtrip(x, nested):
        q, state = F.quantize_blockwise(x, blocksize=64, nested=nested)
        return F.dequantize_blockwise(q, state).cpu(), state

    _assert_nested_spread_stays_in_its_block(roundtrip, value, device, seed=2, nested_blocksize=64)


# ---- 4-bit ------------------------------------------------------------------------------------------------

# Code of the largest / smallest / zero entry per 4-bit type.
CODES_4BIT = {"nf4": (15, 0, 7), "fp4": (0b0011, 0b1011, 0)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_non_finite_blocks(device, dtype, quant_type):
    blocksize = 64
    # 200 blocks of 64: 3 whole float32 tiles (64 blocks each) or 1 16-bit tile (128), then the tail.
    x, positions = _input(dtype, device, blocksize, whole_blocks=200, seed=4)
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
    y = F.dequantize_4bit(packed, state)
    n = x.numel()
    xf = x.cpu().float()
    codes = O.unpack_nibbles(packed.cpu().view(torch.uint8), n)

    def check_finite_block(b, sl):
        _, codes_ref, absmax_ref = O.quantize_4bit_ref(xf[sl], blocksize, quant_type)
        assert state.absmax[b].item() == absmax_ref.item()
        assert torch.equal(codes[sl], codes_ref), f"block {b} differs from the oracle"

    _check_blocks(x, state.absmax, y, positions, blocksize, check_finite_block)
    largest, smallest, zero = CODES_4BIT[quant_type]
    for b, kind in positions.items():
        sl = _block_slice(b, blocksize, n)
        xs, cs = xf[sl], codes[sl]
        if kind == "inf":
            assert (cs[xs == INF] == largest).all() and (cs[xs == -INF] == smallest).all()
            assert (cs[torch.isfinite(xs)] == zero).all()
    if device == "cuda":
        assert_quantized_as_on_cpu(F.quantize_4bit, x, packed, state, blocksize=blocksize, quant_type=quant_type)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "inf"])
def test_4bit_compressed_statistics_keep_non_finite_in_its_block(device, value):
    def roundtrip(x, nested):
        packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=nested)
        return F.dequantize_4bit(packed, state).cpu(), state

    _assert_nested_spread_stays_in_its_block(roundtrip, value, device, seed=6, nested_blocksize=NESTED_BLOCKSIZE)


@pytest.mark.parametrize("device", DEVICES)
def test_nested_offset_of_finite_scales_is_their_mean(device):
    # Finite scales keep the offset every checkpoint has (their plain mean, bit for bit).
    x = randn((NESTED_BLOCKSIZE * 64 + 100,), torch.float32, seed=7).to(device)
    _, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    _, plain = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert torch.equal(state.offset.cpu(), plain.absmax.mean().cpu())


# ---- blocks and rows so small that the inverse of their maximum overflows ---------------------------------


def _tiny_block_input(dtype, device):
    """Ordinary blocks of 64, and three (in a whole CUDA tile of every dtype and in the tail) whose absmax is a
    bf16 / float32 subnormal: 1 / absmax is inf in float32, so x * (1 / absmax) would be +-inf, and NaN for
    the zeros. Their scale is 0 instead, as for a block of zeros (csrc/core/formats.h)."""
    blocksize = 64
    x = randn((300 * blocksize,), torch.float32, seed=9)
    tiny_blocks = (2, 150, 299)
    for b in tiny_blocks:
        tiny = torch.tensor([1e-39, 5e-40, 0.0, -3e-40, -0.0, 2e-40] * 10 + [1e-40, 0.0, -1e-39, 7e-40])
        x[b * blocksize:(b + 1) * blocksize] = tiny
    return x.to(dtype).to(device), blocksize, tiny_blocks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_block_whose_inverse_absmax_overflows_comes_back_as_zeros(device, dtype, quant_type):
    x, blocksize, tiny_blocks = _tiny_block_input(dtype, device)
    assert torch.isinf(1.0 / x[2 * blocksize:3 * blocksize].float().abs().amax().cpu())
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
    packed_ref, _, absmax_ref = O.quantize_4bit_ref(x.cpu().float(), blocksize, quant_type)
    assert torch.equal(state.absmax.cpu(), absmax_ref)
    assert torch.equal(packed.cpu().view(torch.uint8).reshape(-1), packed_ref)
    y = F.dequantize_4bit(packed, state).cpu()
    for b in tiny_blocks:
        assert (y[_block_slice(b, blocksize, x.numel())] == 0).all(), f"tiny block {b} must come back as zeros"
    if device == "cuda":
        assert_quantized_as_on_cpu(F.quantize_4bit, x, packed, state, blocksize=blocksize, quant_type=quant_type)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_blockwise_block_whose_inverse_absmax_overflows_comes_back_as_zeros(device, dtype):
    x, blocksize, tiny_blocks = _tiny_block_input(dtype, device)
    q, state = F.quantize_blockwise(x, blocksize=blocksize)
    code = F.create_dynamic_map(signed=True)
    q_ref, absmax_ref = O.quantize_blockwise_ref(x.cpu().float(), code, blocksize)
    assert torch.equal(state.absmax.cpu(), absmax_ref)
    assert torch.equal(q.cpu(), q_ref)
    y = F.dequantize_blockwise(q, state).cpu()
    for b in tiny_blocks:
        assert (y[_block_slice(b, blocksize, x.numel())] == 0).all(), f"tiny block {b} must come back as zeros"
    if device == "cuda":
        assert_quantized_as_on_cpu(F.quantize_blockwise, x, q, state, blocksize=blocksize)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_int8_row_whose_scale_overflows_quantizes_to_zeros(device, dtype):
    # 127 / absmax is inf for a row maximum of 1e-37 (float32): such rows quantize to zero codes, and the
    # column statistics of int8_double_quant follow the same rule.
    x = randn((64, 96), torch.float32, seed=10)
    x[5] = torch.linspace(-1e-37, 1e-37, 96)
    x[:, 7] = 3e-38
    x = x.to(dtype).to(device)
    assert torch.isinf(127.0 / x[5].float().abs().amax().cpu())
    q, stats, _ = F.int8_vectorwise_quant(x)
    q_ref, stats_ref, _ = O.int8_vectorwise_ref(x.cpu())
    assert torch.equal(stats.cpu(), stats_ref)
    assert torch.equal(q.cpu(), q_ref)
    assert (q[5] == 0).all()
    _, col_q, _, col_stats, _ = F.int8_double_quant(x)
    col_q_ref, col_stats_ref = O.int8_colwise_ref(x.cpu())
    assert torch.equal(col_stats.cpu(), col_stats_ref)
    assert (col_q[:, 7] == 0).all()
    # (the column oracle computes x * 127 / absmax, which may round a .5 tie the other way)
    assert (col_q.cpu().int() - col_q_ref.int()).abs().max() <= 1

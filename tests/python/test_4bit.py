"""4-bit (NF4 / FP4) quantization against the threshold/packing oracle (compat.md §1.3 "4-bit", §1.4.1-1.4.2).

Tolerances: packed bytes and absmax exact; dequantization exact (table[code] * absmax in float32,
then cast); accuracy on N(0, 1) within 1% of the reference figures.
"""

import pytest
import torch

import bitsandbytes.functional as F
import oracles as O
from helpers import BLOCKSIZES_4BIT, DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda, randn

QUANT_TYPES = ["nf4", "fp4"]
STORAGES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32]
DYNAMIC = O.dynamic_map_reference(signed=True)


def _table(quant_type):
    return torch.tensor(O.NF4_TABLE if quant_type == "nf4" else O.FP4_TABLE, dtype=torch.float32)


def _bytes(packed):
    return packed.contiguous().view(torch.uint8).reshape(-1).cpu()


def _check_against_oracle(x, packed, state, blocksize, quant_type):
    n = x.numel()
    packed_ref, codes_ref, absmax_ref = O.quantize_4bit_ref(x, blocksize, quant_type)
    assert packed.dtype == torch.uint8 and packed.shape == ((n + 1) // 2, 1) and packed.device == x.device
    assert state.absmax.dtype == torch.float32 and state.absmax.shape == (O.num_blocks(n, blocksize),)
    assert torch.equal(state.absmax.cpu(), absmax_ref)
    got = _bytes(packed)
    bad = (got != packed_ref).nonzero().reshape(-1)
    assert bad.numel() == 0, (
        f"{bad.numel()} of {got.numel()} packed bytes differ; first at byte {bad[0].item()}: "
        f"got {got[bad[0]].item():#04x}, want {packed_ref[bad[0]].item():#04x}"
    )
    return codes_ref, absmax_ref


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("blocksize", BLOCKSIZES_4BIT)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_quantize_dequantize_matches_oracle(device, blocksize, dtype, quant_type):
    n = 3 * blocksize + 7  # odd, last block partial
    x = randn((n,), dtype, device, seed=blocksize) * 2
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
    codes_ref, absmax_ref = _check_against_oracle(x, packed, state, blocksize, quant_type)

    assert state.shape == x.shape and state.dtype == dtype and state.blocksize == blocksize
    assert state.quant_type == quant_type
    assert torch.equal(state.code.cpu(), _table(quant_type)) and state.code.device == x.device
    assert state.offset is None and state.state2 is None and state.nested is False

    y = F.dequantize_4bit(packed, state)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    want = O.dequantize_4bit_ref(codes_ref, absmax_ref, blocksize, quant_type, x.shape, dtype)
    assert torch.equal(y.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_every_code_is_reachable_and_thresholds_are_strict(device, quant_type):
    # Scaled values exactly on each threshold (ties go to the lower code) and just above it.
    if quant_type == "nf4":
        thresholds = torch.tensor(O.NF4_THRESHOLDS, dtype=torch.float32)
    else:
        t = torch.tensor([r[0] for r in O.FP4_RULES], dtype=torch.float32)
        thresholds = torch.cat([t, -t])
    above = torch.nextafter(thresholds, torch.tensor(2.0))
    below = torch.nextafter(thresholds, torch.tensor(-2.0))
    x = torch.cat([torch.tensor([1.0]), thresholds, above, below, torch.linspace(-1, 1, 57)]).to(device)
    packed, state = F.quantize_4bit(x, blocksize=4096, quant_type=quant_type)
    assert state.absmax.item() == 1.0
    codes_ref, _ = _check_against_oracle(x, packed, state, 4096, quant_type)
    assert set(codes_ref.tolist()) >= set(range(16)) - ({8} if quant_type == "fp4" else set())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_quant_storage_bytes_identical(device, quant_type, dtype):
    x = randn((40, 64), dtype, device, seed=3)  # n = 2560, a multiple of 2 * 4
    ref_packed, ref_state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
    for storage in STORAGES:
        packed, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type, quant_storage=storage)
        assert packed.dtype == storage
        assert packed.shape == (x.numel() // (2 * storage.itemsize), 1)
        assert torch.equal(_bytes(packed), _bytes(ref_packed))
        assert torch.equal(state.absmax, ref_state.absmax)
        assert torch.equal(F.dequantize_4bit(packed, state), F.dequantize_4bit(ref_packed, ref_state))


@pytest.mark.parametrize("storage", STORAGES, ids=dtype_id)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 17, 130])
def test_packed_shape_formula(storage, n):
    x = randn((n,), torch.float32, seed=n)
    rows = (n + 1) // (2 * storage.itemsize)
    if rows * storage.itemsize < (n + 1) // 2:
        # The shape the format fixes cannot hold the last codes in this storage: refused, never truncated.
        with pytest.raises(ValueError, match="do not fit the packed shape"):
            F.quantize_4bit(x, blocksize=64, quant_type="nf4", quant_storage=storage)
        return
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", quant_storage=storage)
    assert packed.shape == (rows, 1) and packed.dtype == storage
    # every byte of the storage is the oracle's, and every value comes back
    packed_ref, codes_ref, absmax_ref = O.quantize_4bit_ref(x, 64, "nf4")
    assert torch.equal(_bytes(packed), packed_ref)
    y = F.dequantize_4bit(packed, state)
    assert torch.equal(y, O.dequantize_4bit_ref(codes_ref, absmax_ref, 64, "nf4", (n,), torch.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 63, 65, 129])
def test_small_and_odd_n(device, quant_type, n):
    x = randn((n,), torch.float16, device, seed=n) * 4
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
    codes_ref, absmax_ref = _check_against_oracle(x, packed, state, 64, quant_type)
    if n % 2:
        assert _bytes(packed)[-1].item() & 0xF == 0, "odd n pads a zero low nibble"
    y = F.dequantize_4bit(packed, state)
    assert torch.equal(y.cpu(), O.dequantize_4bit_ref(codes_ref, absmax_ref, 64, quant_type, (n,), torch.float16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_empty_input(device, quant_type):
    x = torch.empty(0, 64, device=device)
    packed, state = F.quantize_4bit(x, quant_type=quant_type)
    assert packed.shape == (0, 1) and state.absmax.shape == (0,)
    y = F.dequantize_4bit(packed, state)
    assert y.shape == (0, 64) and y.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_all_zero_block_dequantizes_to_exact_zeros(device, quant_type, dtype):
    x = randn((5, 64), dtype, device, seed=8)
    x[2] = 0
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
    assert state.absmax[2].item() == 0.0
    torch.testing.assert_close(state.absmax.cpu(), O.blockwise_absmax(x, 64), rtol=0, atol=0)
    y = F.dequantize_4bit(packed, state)
    assert not torch.isnan(y).any()
    assert torch.equal(y[2].cpu(), torch.zeros(64, dtype=dtype))
    # the other blocks are unaffected
    rows = [0, 1, 3, 4]
    p_ref, c_ref, a_ref = O.quantize_4bit_ref(x[rows], 64, quant_type)
    want = O.dequantize_4bit_ref(c_ref, a_ref, 64, quant_type, (4, 64), dtype)
    assert torch.equal(y[rows].cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_non_contiguous_input(device, dtype):
    base = randn((64, 96), dtype, device, seed=6)
    for x in (base.t(), base[:, ::2], base[1::3]):
        assert not x.is_contiguous()
        before = base.clone()
        packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
        assert torch.equal(base, before)
        codes_ref, absmax_ref = _check_against_oracle(x, packed, state, 64, "nf4")
        assert state.shape == x.shape
        y = F.dequantize_4bit(packed, state)
        assert torch.equal(y.cpu(), O.dequantize_4bit_ref(codes_ref, absmax_ref, 64, "nf4", x.shape, dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_multidim_shape_kept(device):
    x = randn((2, 3, 50), torch.bfloat16, device)
    packed, state = F.quantize_4bit(x, blocksize=32, quant_type="fp4")
    assert state.shape == (2, 3, 50)
    _check_against_oracle(x, packed, state, 32, "fp4")
    assert F.dequantize_4bit(packed, state).shape == (2, 3, 50)


def test_defaults_blocksize_64_fp4():
    x = randn((300,), torch.float32)
    packed, state = F.quantize_4bit(x)
    assert state.blocksize == 64 and state.quant_type == "fp4"
    _check_against_oracle(x, packed, state, 64, "fp4")


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_named_wrappers(quant_type):
    x = randn((33, 64), torch.float16)
    q = F.quantize_nf4 if quant_type == "nf4" else F.quantize_fp4
    dq = F.dequantize_nf4 if quant_type == "nf4" else F.dequantize_fp4
    packed, state = q(x, blocksize=128)
    assert state.quant_type == quant_type and state.blocksize == 128
    codes_ref, absmax_ref = _check_against_oracle(x, packed, state, 128, quant_type)
    want = O.dequantize_4bit_ref(codes_ref, absmax_ref, 128, quant_type, x.shape, torch.float16)
    assert torch.equal(dq(packed, state), want)
    out = torch.empty(33, 64, dtype=torch.float16)
    assert torch.equal(dq(packed, absmax=state.absmax, out=out, blocksize=128), want)


# ---- compress_statistics (double quantization) -------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 256])
def test_compress_statistics(device, quant_type, blocksize):
    x = randn((600, blocksize), torch.float16, device, seed=blocksize) * 3  # 600 blocks -> 3 nested blocks
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=True)
    packed_ref, codes_ref, absmax_ref = O.quantize_4bit_ref(x, blocksize, quant_type)
    assert torch.equal(_bytes(packed), packed_ref)

    assert state.nested is True
    assert state.absmax.dtype == torch.uint8 and state.absmax.shape == (600,)
    assert state.offset.dim() == 0 and state.offset.dtype == torch.float32
    assert state.offset.item() == pytest.approx(absmax_ref.double().mean().item(), rel=1e-5)
    s2 = state.state2
    assert s2.blocksize == 256 and s2.dtype == torch.float32
    assert s2.absmax.dtype == torch.float32 and s2.absmax.shape == (3,)
    assert torch.equal(s2.code.cpu(), DYNAMIC)

    qa_ref, absmax2_ref = O.quantize_blockwise_ref(absmax_ref - state.offset.cpu(), DYNAMIC, 256)
    assert torch.equal(state.absmax.cpu(), qa_ref)
    assert torch.equal(s2.absmax.cpu(), absmax2_ref)

    absmax_rec = O.dequantize_blockwise_ref(qa_ref, absmax2_ref, DYNAMIC, 256, torch.float32) + state.offset.cpu()
    y = F.dequantize_4bit(packed, state)
    assert y.dtype == torch.float16
    want = O.dequantize_4bit_ref(codes_ref, absmax_rec, blocksize, quant_type, x.shape, torch.float16)
    assert torch.equal(y.cpu(), want)


# ---- dequantize paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_dequantize_without_quant_state(device, quant_type, dtype):
    x = randn((17, 128), torch.float32, device, seed=1)
    packed, state = F.quantize_4bit(x, blocksize=128, quant_type=quant_type)
    out = torch.empty(17, 128, dtype=dtype, device=device)
    y = F.dequantize_4bit(packed, absmax=state.absmax, out=out, blocksize=128, quant_type=quant_type)
    assert y.data_ptr() == out.data_ptr()
    _, codes_ref, absmax_ref = O.quantize_4bit_ref(x, 128, quant_type)
    assert torch.equal(out.cpu(), O.dequantize_4bit_ref(codes_ref, absmax_ref, 128, quant_type, (17, 128), dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_dequantize_with_quant_state_into_out(device):
    x = randn((9, 64), torch.bfloat16, device, seed=2)
    packed, state = F.quantize_4bit(x, quant_type="nf4")
    out = torch.full((9, 64), float("nan"), dtype=torch.bfloat16, device=device)
    y = F.dequantize_4bit(packed, state, out=out)
    assert y.data_ptr() == out.data_ptr()
    _, codes_ref, absmax_ref = O.quantize_4bit_ref(x, 64, "nf4")
    assert torch.equal(out.cpu(), O.dequantize_4bit_ref(codes_ref, absmax_ref, 64, "nf4", (9, 64), torch.bfloat16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_transposed_packed_view_returns_transposed_result(device, quant_type):
    x = randn((24, 64), torch.float16, device, seed=12)
    packed, state = F.quantize_4bit(x, quant_type=quant_type)
    assert packed.shape == (768, 1)
    y_t = F.dequantize_4bit(packed.t(), state)
    _, codes_ref, absmax_ref = O.quantize_4bit_ref(x, 64, quant_type)
    want = O.dequantize_4bit_ref(codes_ref, absmax_ref, 64, quant_type, x.shape, torch.float16)
    assert y_t.shape == (64, 24)
    assert torch.equal(y_t.cpu(), want.t())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_dequantize_op_out_overload(device, dtype):
    x = randn((5, 96), torch.float32, device)
    packed, absmax = torch.ops.bitsandbytes.quantize_4bit(x, 32, "fp4", torch.uint8)
    out = torch.empty(5, 96, dtype=dtype, device=device)
    assert torch.ops.bitsandbytes.dequantize_4bit.out(packed, absmax, 32, "fp4", [5, 96], dtype, out=out) is None
    _, codes_ref, absmax_ref = O.quantize_4bit_ref(x, 32, "fp4")
    assert torch.equal(out.cpu(), O.dequantize_4bit_ref(codes_ref, absmax_ref, 32, "fp4", (5, 96), dtype))


# ---- accuracy on N(0, 1) ----------------------------------------------------------------------------------

# mean |x - dequant(quant(x))| for x ~ N(0, 1), float32, n = 2^22, blocksize 64
EXPECTED_MEAN_ABS_ERROR = {"nf4": 0.0728, "fp4": 0.0965}


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_mean_abs_error_normal_bs64(quant_type):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2**22, generator=g)
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
    err = (x - F.dequantize_4bit(packed, state)).abs().mean().item()
    assert err == pytest.approx(EXPECTED_MEAN_ABS_ERROR[quant_type], rel=0.01)


def test_error_grows_with_blocksize():
    x = randn((1 << 18,), torch.float32, seed=4)
    errs = []
    for bs in BLOCKSIZES_4BIT:
        packed, state = F.quantize_4bit(x, blocksize=bs, quant_type="nf4")
        errs.append((x - F.dequantize_4bit(packed, state)).abs().mean().item())
    assert errs == sorted(errs)


# ---- CUDA -----------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("blocksize", BLOCKSIZES_4BIT)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_cuda_matches_cpu_bytes(blocksize, dtype, quant_type):
    x = randn((7 * blocksize + 16,), dtype, seed=blocksize) * 3  # n multiple of 8: every storage holds all bytes
    x[blocksize : 2 * blocksize] = 0  # a zero block too
    for storage in STORAGES:
        p_cpu, s_cpu = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, quant_storage=storage)
        p_gpu, s_gpu = F.quantize_4bit(x.cuda(), blocksize=blocksize, quant_type=quant_type, quant_storage=storage)
        assert p_gpu.dtype == storage and p_gpu.shape == p_cpu.shape
        assert torch.equal(_bytes(p_gpu), _bytes(p_cpu))
        assert torch.equal(s_gpu.absmax.cpu(), s_cpu.absmax)
        assert torch.equal(F.dequantize_4bit(p_gpu, s_gpu).cpu(), F.dequantize_4bit(p_cpu, s_cpu))


@needs_cuda
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_cuda_compress_statistics_matches_cpu(quant_type):
    x = randn((700, 64), torch.bfloat16, seed=5)
    p_cpu, s_cpu = F.quantize_4bit(x, quant_type=quant_type, compress_statistics=True)
    p_gpu, s_gpu = F.quantize_4bit(x.cuda(), quant_type=quant_type, compress_statistics=True)
    assert torch.equal(p_gpu.cpu(), p_cpu)
    assert torch.equal(s_gpu.absmax.cpu(), s_cpu.absmax)
    assert torch.equal(s_gpu.state2.absmax.cpu(), s_cpu.state2.absmax)
    assert torch.equal(F.dequantize_4bit(p_gpu, s_gpu).cpu(), F.dequantize_4bit(p_cpu, s_cpu))


@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_cuda_large_n_over_2_31(quant_type):
    blocksize = 64
    n = 2**31 + 5 * blocksize + 3
    x = torch.empty(n, dtype=torch.float16, device="cuda")
    x.normal_(generator=torch.Generator(device="cuda").manual_seed(1))
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
    nb = O.num_blocks(n, blocksize)
    assert packed.shape == ((n + 1) // 2, 1) and state.absmax.shape == (nb,)
    start = (nb - 8) * blocksize  # block-aligned and even, beyond 2^31 elements
    seg = x[start:]
    p_ref, c_ref, a_ref = O.quantize_4bit_ref(seg, blocksize, quant_type)
    assert torch.equal(packed[start // 2 :].reshape(-1).cpu(), p_ref)
    assert torch.equal(state.absmax[nb - 8 :].cpu(), a_ref)
    y = F.dequantize_4bit(packed, state)
    want = O.dequantize_4bit_ref(c_ref, a_ref, blocksize, quant_type, seg.shape, torch.float16)
    assert torch.equal(y[start:].cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_single_packed_element_is_not_treated_as_transposed(device):
    # (2, 4) in float32 storage packs into one [1, 1] element: no transposition happened, none is undone.
    x = randn((2, 4), torch.float16, device, seed=3)
    packed, state = F.quantize_4bit(x, quant_type="nf4", blocksize=32, quant_storage=torch.float32)
    assert packed.shape == (1, 1)
    y = F.dequantize_4bit(packed, state)
    _, codes_ref, absmax_ref = O.quantize_4bit_ref(x, 32, "nf4")
    assert y.shape == (2, 4)
    assert torch.equal(y.cpu(), O.dequantize_4bit_ref(codes_ref, absmax_ref, 32, "nf4", (2, 4), torch.float16))

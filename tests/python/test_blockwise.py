"""8-bit blockwise quantization against the code-book oracle (compat.md §1.3 "8-bit blockwise", §1.4.3).

Tolerances: indices and absmax are exact (the midpoint rule is fully specified); dequantization is
exact (code[q] * absmax computed in float32, then cast). Accuracy on N(0, 1) within 1% of the
reference figures.
"""

import pytest
import torch

import bitsandbytes.functional as F
import oracles as O
from helpers import (
    BLOCKSIZES_8BIT_CPU_ONLY,
    BLOCKSIZES_8BIT_POW2,
    DEVICES,
    FLOAT_DTYPES,
    dtype_id,
    needs_cuda,
    randn,
)

DYNAMIC = O.dynamic_map_reference(signed=True)

BLOCKSIZE_CASES = [(d, bs) for d in ("cpu", "cuda") for bs in BLOCKSIZES_8BIT_POW2] + [
    ("cpu", bs) for bs in BLOCKSIZES_8BIT_CPU_ONLY
]


def _device_cases():
    for device, bs in BLOCKSIZE_CASES:
        marks = [] if device == "cpu" else [needs_cuda]
        yield pytest.param(device, bs, marks=marks, id=f"{device}-bs{bs}")


def _check_against_oracle(x, q, state, code, blocksize):
    q_ref, absmax_ref = O.quantize_blockwise_ref(x, code, blocksize)
    assert q.dtype == torch.uint8 and q.shape == x.shape and q.device == x.device
    assert state.absmax.dtype == torch.float32 and state.absmax.shape == (O.num_blocks(x.numel(), blocksize),)
    assert torch.equal(state.absmax.cpu(), absmax_ref), "absmax differs from per-block max |x|"
    mismatch = (q.cpu() != q_ref).sum().item()
    assert mismatch == 0, f"{mismatch} of {x.numel()} indices differ from the midpoint rule"
    return q_ref, absmax_ref


@pytest.mark.parametrize("device,blocksize", list(_device_cases()))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_quantize_dequantize_matches_oracle(device, blocksize, dtype):
    n = 3 * blocksize + 17  # last block partial
    x = randn((n,), dtype, device, seed=blocksize) * 3
    q, state = F.quantize_blockwise(x, blocksize=blocksize)
    q_ref, absmax_ref = _check_against_oracle(x, q, state, DYNAMIC, blocksize)

    assert state.blocksize == blocksize and state.dtype == dtype and state.shape is None
    assert state.code.device == x.device and torch.equal(state.code.cpu(), DYNAMIC)
    assert state.nested is False and state.state2 is None

    y = F.dequantize_blockwise(q, state)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, blocksize, dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_exact_multiple_of_blocksize_and_multidim(device, dtype):
    x = randn((4, 3, 256), dtype, device, seed=11)
    q, state = F.quantize_blockwise(x, blocksize=256)
    q_ref, absmax_ref = _check_against_oracle(x, q, state, DYNAMIC, 256)
    assert state.absmax.shape == (12,)
    y = F.dequantize_blockwise(q, state)
    assert y.shape == (4, 3, 256)
    assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, 256, dtype))


def test_default_blocksize_is_4096():
    x = randn((4096 * 2 + 1,), torch.float32)
    _, state = F.quantize_blockwise(x)
    assert state.blocksize == 4096 and state.absmax.shape == (3,)
    torch.testing.assert_close(state.absmax, O.blockwise_absmax(x, 4096), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_empty_input(device, dtype):
    x = torch.empty(0, dtype=dtype, device=device)
    q, state = F.quantize_blockwise(x, blocksize=64)
    assert q.shape == (0,) and q.dtype == torch.uint8
    assert state.absmax.shape == (0,)
    y = F.dequantize_blockwise(q, state)
    assert y.shape == (0,) and y.dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", [-3.0, 0.0, 0.25, 7.0])
def test_single_element(device, value):
    x = torch.tensor([value], device=device)
    q, state = F.quantize_blockwise(x, blocksize=64)
    q_ref, absmax_ref = _check_against_oracle(x, q, state, DYNAMIC, 64)
    y = F.dequantize_blockwise(q, state)
    assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, 64, torch.float32))
    if value != 0:
        # x / absmax = +-1: +1 is a code; -1 is not, its nearest code is the smallest one (-0.99296875)
        assert q.item() == (255 if value > 0 else 0)
    else:
        assert state.absmax.item() == 0.0 and y.item() == 0.0 and q.item() == 127


@pytest.mark.parametrize("device", DEVICES)
def test_all_zero_block_gives_zero_code_and_exact_zeros(device):
    x = randn((256,), torch.float32, device)
    x[64:128] = 0
    q, state = F.quantize_blockwise(x, blocksize=64)
    _check_against_oracle(x, q, state, DYNAMIC, 64)
    assert state.absmax[1].item() == 0.0
    assert torch.all(q[64:128] == 127)  # code[127] == 0
    y = F.dequantize_blockwise(q, state)
    assert not torch.isnan(y).any()
    assert torch.equal(y[64:128].cpu(), torch.zeros(64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_non_contiguous_input(device, dtype):
    base = randn((96, 130), dtype, device, seed=4)
    for x in (base.t(), base[:, ::3], base[::2, 1:]):
        assert not x.is_contiguous()
        before = base.clone()
        q, state = F.quantize_blockwise(x, blocksize=256)
        assert torch.equal(base, before), "input must not be modified"
        q_ref, absmax_ref = _check_against_oracle(x, q, state, DYNAMIC, 256)
        q_c, state_c = F.quantize_blockwise(x.contiguous(), blocksize=256)
        assert torch.equal(q, q_c) and torch.equal(state.absmax, state_c.absmax)
        y = F.dequantize_blockwise(q, state)
        assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, 256, dtype))


def _custom_codes():
    return {
        "linear": F.create_linear_map(signed=True, total_bits=8, add_zero=False),
        "fp8_e4m3": F.create_fp8_map(True, 4, 3, 8),
        "fp8_e5m2": F.create_fp8_map(True, 5, 2, 8),
        "unsigned_dynamic": F.create_dynamic_map(signed=False),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["linear", "fp8_e4m3", "fp8_e5m2", "unsigned_dynamic"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_custom_code(device, name, dtype):
    code = _custom_codes()[name]
    x = randn((1000,), dtype, device, seed=9)
    if name == "unsigned_dynamic":
        x = x.abs()
    q, state = F.quantize_blockwise(x, code=code.to(device), blocksize=128)
    q_ref, absmax_ref = _check_against_oracle(x, q, state, code, 128)
    assert torch.equal(state.code.cpu(), code)
    y = F.dequantize_blockwise(q, state)
    assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, code, 128, dtype))


def test_state_code_is_a_copy():
    code = F.create_linear_map(signed=True, add_zero=False)
    _, state = F.quantize_blockwise(torch.randn(100), code=code, blocksize=64)
    assert state.code.data_ptr() != code.data_ptr()
    code.zero_()
    assert state.code.abs().max().item() == 1.0


def test_midpoint_ties_round_down():
    # With the linear map code[k] = -1 + 2k/255 the midpoint between codes k and k+1 is a value
    # that float32 can hold; place values exactly on midpoints and just above them.
    code = F.create_linear_map(signed=True, add_zero=False)
    mids = (code[:-1] + code[1:]) / 2
    k = torch.arange(10, 245, 7)
    above = torch.nextafter(mids[k], torch.tensor(2.0))
    x = torch.cat([torch.tensor([1.0]), mids[k], above])  # the 1.0 pins absmax to 1
    q, state = F.quantize_blockwise(x, code=code, blocksize=4096)
    assert state.absmax.item() == 1.0
    assert torch.equal(q[1 : 1 + k.numel()].long(), k), "a value on a midpoint goes to the lower code"
    assert torch.equal(q[1 + k.numel() :].long(), k + 1), "a value above a midpoint goes up"


# ---- nested (double-quantized) absmax ------------------------------------------------------------------------


@pytest.mark.parametrize("device,blocksize", [p for p in _device_cases() if p.values[1] in (64, 256, 100)])
def test_nested(device, blocksize):
    x = randn((blocksize * 300 + 5,), torch.float32, device, seed=21) * 2
    q, state = F.quantize_blockwise(x, blocksize=blocksize, nested=True)
    q_ref, absmax_ref = O.quantize_blockwise_ref(x, DYNAMIC, blocksize)
    assert torch.equal(q.cpu(), q_ref)

    assert state.nested is True and state.state2 is not None
    assert state.absmax.dtype == torch.uint8 and state.absmax.shape == absmax_ref.shape
    assert state.offset.dim() == 0 and state.offset.dtype == torch.float32
    assert state.offset.item() == pytest.approx(absmax_ref.double().mean().item(), rel=1e-5)
    # absmax - offset re-quantized with the same blocksize and the signed dynamic map
    s2 = state.state2
    assert s2.blocksize == blocksize
    assert torch.equal(s2.code.cpu(), DYNAMIC)
    qa_ref, absmax2_ref = O.quantize_blockwise_ref(absmax_ref - state.offset.cpu(), DYNAMIC, blocksize)
    assert torch.equal(state.absmax.cpu(), qa_ref)
    assert torch.equal(s2.absmax.cpu(), absmax2_ref)

    # reconstruction: code[qa] * absmax2[i // bs] + offset, then code[q] * absmax[block]
    absmax_rec = O.dequantize_blockwise_ref(qa_ref, absmax2_ref, DYNAMIC, blocksize, torch.float32) + state.offset.cpu()
    y = F.dequantize_blockwise(q, state)
    assert y.dtype == torch.float32
    assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_rec, DYNAMIC, blocksize, torch.float32))
    # and the reconstruction is close to the plain one
    torch.testing.assert_close(absmax_rec, absmax_ref, rtol=0.02, atol=0.01 * absmax_ref.max().item())


# ---- out= / absmax= and the no-quant_state dequantize path ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_out_and_absmax_arguments(device):
    x = randn((10, 100), torch.float16, device, seed=2)
    out = torch.full((10, 100), 7, dtype=torch.uint8, device=device)
    absmax = torch.full((4,), -1.0, device=device)
    q, state = F.quantize_blockwise(x, absmax=absmax, out=out, blocksize=256)
    assert q.data_ptr() == out.data_ptr()
    assert state.absmax.data_ptr() == absmax.data_ptr()
    _check_against_oracle(x, out, state, DYNAMIC, 256)

    y_out = torch.empty(10, 100, dtype=torch.float16, device=device)
    y = F.dequantize_blockwise(q, state, out=y_out)
    assert y.data_ptr() == y_out.data_ptr()
    q_ref, absmax_ref = O.quantize_blockwise_ref(x, DYNAMIC, 256)
    assert torch.equal(y_out.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, 256, torch.float16))


@pytest.mark.parametrize("device", DEVICES)
def test_dequantize_with_absmax_and_code_is_float32(device):
    code = F.create_fp8_map(True, 4, 3, 8)
    x = randn((700,), torch.bfloat16, device, seed=5)
    q, state = F.quantize_blockwise(x, code=code.to(device), blocksize=128)
    y = F.dequantize_blockwise(q, absmax=state.absmax, code=code.to(device), blocksize=128)
    assert y.dtype == torch.float32
    q_ref, absmax_ref = O.quantize_blockwise_ref(x, code, 128)
    assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, code, 128, torch.float32))
    # code omitted: the signed dynamic map
    q2, state2 = F.quantize_blockwise(x, blocksize=128)
    y2 = F.dequantize_blockwise(q2, absmax=state2.absmax, blocksize=128)
    q_ref, absmax_ref = O.quantize_blockwise_ref(x, DYNAMIC, 128)
    assert torch.equal(y2.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, 128, torch.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_dequantize_op_out_overload(device, dtype):
    x = randn((3, 333), torch.float32, device)
    q, state = F.quantize_blockwise(x, blocksize=64)
    out = torch.empty(3, 333, dtype=dtype, device=device)
    ret = torch.ops.bitsandbytes.dequantize_blockwise.out(q, state.absmax, state.code, 64, dtype, out=out)
    assert ret is None
    q_ref, absmax_ref = O.quantize_blockwise_ref(x, DYNAMIC, 64)
    assert torch.equal(out.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, 64, dtype))


# ---- accuracy on N(0, 1) ---------------------------------------------------------------------------------------

# mean |x - dequant(quant(x))| for x ~ N(0, 1), n = 2^22, signed dynamic map (float32 input).
EXPECTED_MEAN_ABS_ERROR = {4096: 0.0100, 2048: 0.00971, 1024: 0.00936, 512: 0.00897, 256: 0.00853,
                           128: 0.00806, 64: 0.00753}


@pytest.fixture(scope="module")
def normal_2_22():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2**22, generator=g)


@pytest.mark.parametrize("blocksize", sorted(EXPECTED_MEAN_ABS_ERROR))
def test_mean_abs_error_normal(normal_2_22, blocksize):
    x = normal_2_22
    q, state = F.quantize_blockwise(x, blocksize=blocksize)
    err = (x - F.dequantize_blockwise(q, state)).abs().mean().item()
    assert err == pytest.approx(EXPECTED_MEAN_ABS_ERROR[blocksize], rel=0.01)


# ---- CUDA -----------------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("blocksize", BLOCKSIZES_8BIT_POW2)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("code_name", ["dynamic", "fp8_e4m3", "unsigned_dynamic"])
def test_cuda_matches_cpu_bytes(blocksize, dtype, code_name):
    code = F.create_dynamic_map() if code_name == "dynamic" else _custom_codes()[code_name]
    x = randn((5 * blocksize + 33,), dtype, seed=blocksize) * 5
    if code_name == "unsigned_dynamic":
        x = x.abs()
    q_cpu, s_cpu = F.quantize_blockwise(x, code=code, blocksize=blocksize)
    q_gpu, s_gpu = F.quantize_blockwise(x.cuda(), code=code.cuda(), blocksize=blocksize)
    assert torch.equal(q_gpu.cpu(), q_cpu)
    assert torch.equal(s_gpu.absmax.cpu(), s_cpu.absmax)
    assert torch.equal(F.dequantize_blockwise(q_gpu, s_gpu).cpu(), F.dequantize_blockwise(q_cpu, s_cpu))


@needs_cuda
@pytest.mark.parametrize("blocksize", [1, 16, 32, 48, 96, 100, 8192, 16384])
def test_cuda_rejects_unsupported_blocksizes(blocksize):
    x = torch.randn(20000, device="cuda")
    with pytest.raises(ValueError, match="blocksize"):
        F.quantize_blockwise(x, blocksize=blocksize)
    q = torch.zeros(20000, dtype=torch.uint8, device="cuda")
    absmax = torch.ones(-(20000 // -blocksize), device="cuda")
    with pytest.raises(ValueError, match="blocksize"):
        F.dequantize_blockwise(q, absmax=absmax, blocksize=blocksize)


@needs_cuda
def test_cuda_uses_current_stream():
    x = randn((1 << 20,), torch.float16, "cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())  # x was written on the default stream
    with torch.cuda.stream(s):
        q, state = F.quantize_blockwise(x, blocksize=256)
        y = F.dequantize_blockwise(q, state)
    s.synchronize()
    q_ref, absmax_ref = O.quantize_blockwise_ref(x, DYNAMIC, 256)
    assert torch.equal(q.cpu(), q_ref)
    assert torch.equal(y.cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, 256, torch.float16))


@pytest.mark.slow
@needs_cuda
def test_cuda_large_n_over_2_31():
    blocksize = 4096
    n = 2**31 + 3 * blocksize + 123
    x = torch.empty(n, dtype=torch.float16, device="cuda")
    x.normal_(generator=torch.Generator(device="cuda").manual_seed(0))
    q, state = F.quantize_blockwise(x, blocksize=blocksize)
    nb = O.num_blocks(n, blocksize)
    assert q.shape == (n,) and state.absmax.shape == (nb,)
    # Check the first block and the last four (past the 2^31 boundary, including the partial one).
    for start in (0, (nb - 4) * blocksize):
        seg = x[start : min(start + 4 * blocksize, n)]
        q_ref, absmax_ref = O.quantize_blockwise_ref(seg, DYNAMIC, blocksize)
        assert torch.equal(q[start : start + seg.numel()].cpu(), q_ref)
        b0 = start // blocksize
        assert torch.equal(state.absmax[b0 : b0 + absmax_ref.numel()].cpu(), absmax_ref)
    y = F.dequantize_blockwise(q, state)
    tail = slice((nb - 4) * blocksize, n)
    q_ref, absmax_ref = O.quantize_blockwise_ref(x[tail], DYNAMIC, blocksize)
    assert torch.equal(y[tail].cpu(), O.dequantize_blockwise_ref(q_ref, absmax_ref, DYNAMIC, blocksize, torch.float16))

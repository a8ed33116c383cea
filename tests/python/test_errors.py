"""Argument validation: wrong dtype / blocksize / quant_type / device give clear errors and change nothing."""

import pytest
import torch

import bitsandbytes.functional as F
from helpers import needs_cuda, randn

ops = torch.ops.bitsandbytes


# ---- wrong dtypes -----------------------------------------------------------------------------------------

BAD_FLOAT_INPUTS = [torch.float64, torch.int8, torch.uint8, torch.int32]


def _tensor(dtype, shape=(4, 64)):
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("dtype", BAD_FLOAT_INPUTS, ids=str)
def test_quantize_blockwise_wrong_dtype(dtype):
    # compat.md §1.3: "A ∈ fp16/bf16/fp32 else ValueError"
    with pytest.raises(ValueError, match=r"\bA\b") as e:
        F.quantize_blockwise(_tensor(dtype), blocksize=64)
    assert str(dtype).replace("torch.", "") in str(e.value)


@pytest.mark.parametrize("dtype", BAD_FLOAT_INPUTS, ids=str)
def test_quantize_4bit_wrong_dtype(dtype):
    with pytest.raises((TypeError, ValueError), match=r"\bA\b"):
        F.quantize_4bit(_tensor(dtype))


@pytest.mark.parametrize("dtype", BAD_FLOAT_INPUTS, ids=str)
def test_int8_vectorwise_quant_wrong_dtype(dtype):
    with pytest.raises((TypeError, ValueError), match=r"\bA\b"):
        F.int8_vectorwise_quant(_tensor(dtype))


@pytest.mark.parametrize("dtype", BAD_FLOAT_INPUTS, ids=str)
def test_int8_double_quant_wrong_dtype(dtype):
    with pytest.raises((TypeError, ValueError), match=r"\bA\b"):
        F.int8_double_quant(_tensor(dtype))


@pytest.mark.parametrize("dtype", [torch.int8, torch.float32, torch.int32], ids=str)
def test_dequantize_blockwise_requires_uint8(dtype):
    with pytest.raises((TypeError, ValueError), match="uint8"):
        F.dequantize_blockwise(_tensor(dtype, (100,)), absmax=torch.ones(1), blocksize=128)


def test_int8_vectorwise_dequant_wrong_dtypes():
    with pytest.raises((TypeError, ValueError), match=r"\bA\b"):
        F.int8_vectorwise_dequant(torch.zeros(4, 8), torch.ones(4))
    with pytest.raises((TypeError, ValueError), match="stats"):
        F.int8_vectorwise_dequant(torch.zeros(4, 8, dtype=torch.int8), torch.ones(4, dtype=torch.float16))


def test_code_wrong_dtype_or_size():
    x = torch.randn(100)
    with pytest.raises((TypeError, ValueError), match="code"):
        F.quantize_blockwise(x, code=F.create_dynamic_map().double(), blocksize=64)
    with pytest.raises(ValueError, match="code"):
        F.quantize_blockwise(x, code=torch.linspace(-1, 1, 16), blocksize=64)


def test_dequantize_4bit_absmax_must_be_float32():
    x = torch.randn(128)
    packed, state = F.quantize_4bit(x, quant_type="nf4")
    with pytest.raises((TypeError, ValueError), match="absmax"):
        F.dequantize_4bit(packed, absmax=state.absmax.half(), out=torch.empty(128), quant_type="nf4")


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32], ids=str)
def test_op_level_output_dtype_checked(dtype):
    code = F.create_dynamic_map()
    A = torch.zeros(64, dtype=torch.uint8)
    with pytest.raises((TypeError, ValueError, RuntimeError), match="dtype"):
        ops.dequantize_blockwise(A, torch.ones(1), code, 64, dtype)
    packed = torch.zeros(32, 1, dtype=torch.uint8)
    with pytest.raises((TypeError, ValueError, RuntimeError), match="dtype"):
        ops.dequantize_4bit(packed, torch.ones(1), 64, "nf4", [64], dtype)


# ---- blocksize / quant_type ---------------------------------------------------------------------------------


@pytest.mark.parametrize("blocksize", [0, -1, -64])
def test_quantize_blockwise_bad_blocksize(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        F.quantize_blockwise(torch.randn(100), blocksize=blocksize)
    with pytest.raises(ValueError, match="blocksize"):
        F.dequantize_blockwise(torch.zeros(100, dtype=torch.uint8), absmax=torch.ones(1), blocksize=blocksize)


@pytest.mark.parametrize("blocksize", [0, -1, 16, 48, 100, 8192])
def test_4bit_bad_blocksize(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        F.quantize_4bit(torch.randn(256), blocksize=blocksize)
    with pytest.raises(ValueError, match="blocksize"):
        F.dequantize_4bit(torch.zeros(128, 1, dtype=torch.uint8), absmax=torch.ones(8), out=torch.empty(256),
                          blocksize=blocksize)
    with pytest.raises((ValueError, RuntimeError), match="blocksize"):
        ops.quantize_4bit(torch.randn(256), blocksize, "nf4", torch.uint8)


@pytest.mark.parametrize("quant_type", ["nf5", "int4", "NF4", "", "af4"])
def test_4bit_bad_quant_type(quant_type):
    with pytest.raises(ValueError, match="quant_type"):
        F.quantize_4bit(torch.randn(256), quant_type=quant_type)
    with pytest.raises(ValueError, match="quant_type"):
        F.dequantize_4bit(torch.zeros(128, 1, dtype=torch.uint8), absmax=torch.ones(4), out=torch.empty(256),
                          quant_type=quant_type)
    with pytest.raises((ValueError, RuntimeError), match="quant_type"):
        ops.quantize_4bit(torch.randn(256), 64, quant_type, torch.uint8)


# ---- missing state / shape mismatches ---------------------------------------------------------------------------


def test_dequantize_blockwise_needs_state_or_absmax():
    with pytest.raises(ValueError):
        F.dequantize_blockwise(torch.zeros(10, dtype=torch.uint8))


@pytest.mark.parametrize("kwargs", [{}, {"absmax": torch.ones(4)}, {"out": torch.empty(256)}], ids=["none", "absmax", "out"])
def test_dequantize_4bit_needs_state_or_absmax_and_out(kwargs):
    with pytest.raises(ValueError):
        F.dequantize_4bit(torch.zeros(128, 1, dtype=torch.uint8), **kwargs)


def test_wrong_absmax_length():
    q, state = F.quantize_blockwise(torch.randn(1000), blocksize=128)
    with pytest.raises(ValueError, match="absmax"):
        F.dequantize_blockwise(q, absmax=state.absmax[:-1], blocksize=128)
    packed, st4 = F.quantize_4bit(torch.randn(1000), quant_type="nf4")
    with pytest.raises(ValueError, match="absmax"):
        F.dequantize_4bit(packed, absmax=st4.absmax[:-1], out=torch.empty(1000), quant_type="nf4")


def test_packed_tensor_too_small_for_shape():
    packed, state = F.quantize_4bit(torch.randn(1000), quant_type="nf4")
    with pytest.raises(ValueError):
        F.dequantize_4bit(packed[:-10], absmax=state.absmax, out=torch.empty(1000), quant_type="nf4")


def test_negative_threshold():
    with pytest.raises(ValueError, match="threshold"):
        F.int8_vectorwise_quant(torch.randn(4, 4), threshold=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        F.int8_double_quant(torch.randn(4, 4), threshold=-1.0)


def test_int8_quant_zero_dim():
    with pytest.raises(ValueError):
        ops.int8_vectorwise_quant(torch.tensor(1.0), 0.0)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf")], ids=str)
def test_non_finite_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        F.int8_vectorwise_quant(torch.randn(4, 4), threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        F.int8_double_quant(torch.randn(4, 4), threshold=threshold)


def test_int8_functions_name_non_tensor_arguments():
    acc = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(TypeError, match="row_stats"):
        F.int8_mm_dequant(acc, [1.0, 2.0], torch.ones(3))
    with pytest.raises(TypeError, match="B"):
        F.int8_linear_matmul(torch.zeros(2, 3, dtype=torch.int8), None)
    with pytest.raises(TypeError, match="stats"):
        F.int8_vectorwise_dequant(torch.zeros(2, 3, dtype=torch.int8), 1.0)


# ---- a failed call leaves its inputs unchanged ------------------------------------------------------------------


def test_failed_quantize_blockwise_leaves_inputs_unchanged():
    x = randn((10, 100), torch.float32)
    x0 = x.clone()
    out = torch.full((10, 99), 3, dtype=torch.uint8)  # wrong shape
    absmax = torch.full((8,), -2.0)
    with pytest.raises(ValueError, match="out"):
        F.quantize_blockwise(x, out=out, absmax=absmax, blocksize=128)
    assert torch.equal(x, x0)
    assert torch.all(out == 3) and torch.all(absmax == -2.0)


def test_failed_quantize_4bit_leaves_inputs_unchanged():
    x = randn((10, 64), torch.float16)
    x0 = x.clone()
    out = torch.full((320, 1), 5, dtype=torch.uint8)
    absmax = torch.full((10,), -2.0)
    with pytest.raises(ValueError):
        F.quantize_4bit(x, absmax=absmax, out=out, blocksize=48)
    assert torch.equal(x, x0) and torch.all(out == 5) and torch.all(absmax == -2.0)
    bad_out = torch.full((321, 1), 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match="out"):
        F.quantize_4bit(x, out=bad_out)
    assert torch.equal(x, x0) and torch.all(bad_out == 5)


def test_failed_dequantize_leaves_out_unchanged():
    q, state = F.quantize_blockwise(torch.randn(300), blocksize=64)
    q0 = q.clone()
    out = torch.full((300,), 1.5, dtype=torch.float16)  # state dtype is float32
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        F.dequantize_blockwise(q, state, out=out)
    assert torch.all(out == 1.5) and torch.equal(q, q0)

    packed, st4 = F.quantize_4bit(torch.randn(300), quant_type="fp4")
    packed0 = packed.clone()
    out4 = torch.full((299,), 1.5)  # wrong shape
    with pytest.raises((ValueError, RuntimeError)):
        F.dequantize_4bit(packed, st4, out=out4)
    assert torch.all(out4 == 1.5) and torch.equal(packed, packed0)


def test_failed_int8_calls_leave_out_unchanged():
    A = torch.randint(-127, 128, (4, 64), dtype=torch.int8)
    B = torch.randint(-127, 128, (8, 64), dtype=torch.int8)
    out = torch.full((4, 8), 9, dtype=torch.int32)
    with pytest.raises(ValueError, match="K"):
        F.int8_linear_matmul(A, B[:, :32].contiguous(), out=torch.full((4, 8), 9, dtype=torch.int32))
    with pytest.raises(ValueError, match="K"):
        ops.int8_linear_matmul.out(A, B[:, :32].contiguous(), out)
    assert torch.all(out == 9)
    acc = torch.ones(4, 8, dtype=torch.int32)
    out16 = torch.full((4, 8), 9.0, dtype=torch.float16)
    with pytest.raises(ValueError, match="col_stats"):
        F.int8_mm_dequant(acc, torch.ones(4), torch.ones(7), out=out16)
    assert torch.all(out16 == 9.0)


def test_failed_op_out_overload_leaves_out_unchanged():
    code = F.create_dynamic_map()
    A = torch.randint(0, 256, (4, 64), dtype=torch.uint8)
    out = torch.full((4, 65), 2.0)
    with pytest.raises((ValueError, RuntimeError)):
        ops.dequantize_blockwise.out(A, torch.ones(4), code, 64, torch.float32, out=out)
    assert torch.all(out == 2.0)


# ---- mixed devices ----------------------------------------------------------------------------------------------


@needs_cuda
def test_mixed_devices():
    x = torch.randn(1000, device="cuda")
    cpu_code = F.create_dynamic_map()
    with pytest.raises(ValueError, match="device|cuda|cpu"):
        F.quantize_blockwise(x, code=cpu_code, blocksize=128)
    q, state = F.quantize_blockwise(x, blocksize=128)
    with pytest.raises(ValueError, match="device|cuda|cpu"):
        F.dequantize_blockwise(q, absmax=state.absmax.cpu(), code=state.code, blocksize=128)
    packed, st4 = F.quantize_4bit(x, quant_type="nf4")
    with pytest.raises(ValueError, match="device|cuda|cpu"):
        F.dequantize_4bit(packed, absmax=st4.absmax.cpu(), out=torch.empty(1000, device="cuda"), quant_type="nf4")
    with pytest.raises(ValueError, match="device|cuda|cpu"):
        F.quantize_4bit(x, out=torch.empty(500, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="device|cuda|cpu"):
        F.int8_vectorwise_dequant(torch.zeros(4, 4, dtype=torch.int8, device="cuda"), torch.ones(4))
    with pytest.raises((ValueError, RuntimeError), match="device|cuda|cpu"):
        ops.quantize_blockwise(x, cpu_code, 128)


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_quantize_outputs_are_checked_before_either_is_written(nested):
    # A good out with a bad absmax: nothing may be written (the absmax of a nested call holds 8-bit codes).
    x = randn((10, 64), torch.float32)
    out = torch.full((320, 1), 7, dtype=torch.uint8)
    for bad in (torch.full((5,), -2.0), torch.full((10,), -2.0, dtype=torch.float32 if nested else torch.float16)):
        with pytest.raises((TypeError, ValueError), match="absmax"):
            F.quantize_4bit(x, out=out, absmax=bad, compress_statistics=nested)
        assert torch.all(out == 7)
    out8 = torch.full((10, 64), 7, dtype=torch.uint8)
    with pytest.raises((TypeError, ValueError), match="absmax"):
        F.quantize_blockwise(x, out=out8, absmax=torch.full((3,), -2.0), blocksize=64, nested=nested)
    assert torch.all(out8 == 7)
    # good ones receive the results (oracle: the same call without in-place outputs)
    absmax = torch.empty(10, dtype=torch.uint8 if nested else torch.float32)
    packed, state = F.quantize_4bit(x, out=out, absmax=absmax, compress_statistics=nested)
    ref_packed, ref_state = F.quantize_4bit(x, compress_statistics=nested)
    assert packed is out and state.absmax is absmax
    assert torch.equal(out, ref_packed) and torch.equal(absmax, ref_state.absmax)


def test_dequantize_4bit_refuses_a_packed_tensor_of_another_shape():
    w = randn((32, 64), torch.float32)
    qa, qsa = F.quantize_4bit(w, blocksize=64)  # 32 blocks
    qb, _ = F.quantize_4bit(randn((64, 64), torch.float32, seed=1), blocksize=128)  # 32 blocks, twice the bytes
    for bad, exc in [(qb, ValueError), (w, ValueError), (qa.reshape(-1).view(torch.int64), TypeError)]:
        with pytest.raises(exc, match="A"):
            F.dequantize_4bit(bad, qsa)


@pytest.mark.parametrize("storage", [torch.int8, torch.int32, torch.int64, torch.bool, torch.complex64, torch.float64],
                         ids=str)
def test_quantize_4bit_refuses_unsupported_storage(storage):
    with pytest.raises(TypeError, match="quant_storage"):
        F.quantize_4bit(randn((8, 64), torch.float32), quant_storage=storage)


def test_quant_state_from_dict_errors_are_clear():
    _, state = F.quantize_4bit(randn((16, 64), torch.float32), quant_type="nf4", compress_statistics=True)
    sd = state.as_dict(packed=False)
    for key in ("quant_map", "absmax", "nested_quant_map"):
        broken = {k: v for k, v in sd.items() if k != key}
        with pytest.raises(ValueError, match=f"missing.*{key}"):
            F.QuantState.from_dict(broken, device="cpu")
    for name in ("float64x", "Tensor", 3):
        with pytest.raises(ValueError, match="dtype"):
            F.QuantState.from_dict({**sd, "dtype": name}, device="cpu")

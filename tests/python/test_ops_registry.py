"""torch.ops.bitsandbytes: names, exact schemas, fake kernels, opcheck, torch.compile (compat.md §1.2, §6.1)."""

import re

import pytest
import torch

import bitsandbytes  # noqa: F401  (registers the ops)
from helpers import DEVICES, dtype_id, randn

ops = torch.ops.bitsandbytes

# Transcribed from the op table of compat.md §1.2 (".out" overloads written out in full).
SPEC_SCHEMAS = {
    "int8_linear_matmul": "(Tensor A, Tensor B) -> Tensor",
    "int8_linear_matmul.out": "(Tensor A, Tensor B, Tensor! out) -> ()",
    "int8_vectorwise_quant": "(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor?)",
    "int8_vectorwise_dequant": "(Tensor A, Tensor stats) -> Tensor",
    "int8_mm_dequant": "(Tensor A, Tensor row_stats, Tensor col_stats, ScalarType? dtype=None, Tensor? bias=None) -> Tensor",
    "int8_scaled_mm": "(Tensor A, Tensor B, Tensor row_stats, Tensor col_stats, Tensor? bias=None, ScalarType? dtype=None) -> Tensor",
    "int8_mixed_scaled_mm": "(Tensor A, Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, Tensor? outlier_cols=None, Tensor? bias=None) -> (Tensor, Tensor?)",
    "int8_double_quant": "(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor, Tensor, Tensor?)",
    "quantize_blockwise": "(Tensor A, Tensor code, int blocksize) -> (Tensor, Tensor)",
    "dequantize_blockwise": "(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype) -> Tensor",
    "dequantize_blockwise.out": "(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype, Tensor! out) -> ()",
    "quantize_4bit": "(Tensor A, int blocksize, str quant_type, ScalarType quant_storage) -> (Tensor, Tensor)",
    "dequantize_4bit": "(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype) -> Tensor",
    "dequantize_4bit.out": "(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype, Tensor! out) -> ()",
    "gemv_4bit": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize) -> Tensor",
    "gemv_4bit.out": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize, Tensor! out) -> ()",
    "gemm_4bit": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, int blocksize, str quant_type, Tensor? bias=None, Tensor? absmax_8bit=None, Tensor? absmax_code=None, Tensor? absmax_offset=None) -> Tensor",
    "optimizer_update_32bit": "(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, Tensor(a3!)? state2, Tensor(a4!)? unorm_vec, float max_unorm, float param_norm, float beta1, float beta2, float beta3, float alpha, float eps, float weight_decay, int step, float lr, float gnorm_scale, bool skip_zeros=False) -> ()",
    "optimizer_update_8bit_blockwise": "(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, Tensor(a3!)? state2, float beta1, float beta2, float beta3, float alpha, float eps, int step, float lr, Tensor(a4!) qmap1, Tensor(a5!)? qmap2, Tensor(a6!) absmax1, Tensor(a7!)? absmax2, float weight_decay, float gnorm_scale, bool skip_zeros=False) -> ()",
}

OP_NAMES = sorted({k.split(".")[0] for k in SPEC_SCHEMAS})
OUT_OVERLOADS = sorted(k for k in SPEC_SCHEMAS if k.endswith(".out"))


def _normalise(schema: str) -> str:
    """Drop the namespace and print anonymous write annotations the way the spec does (``Tensor!``)."""
    s = re.sub(r"^bitsandbytes::[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?", "", schema)
    s = re.sub(r"Tensor\(\$\d+!\s*->\s*\)", "Tensor!", s)
    s = re.sub(r"=(\d+)\.(?=[,)])", r"=\1.0", s)  # torch prints float defaults as "0."
    return re.sub(r"\s+", " ", s).strip()


def _overload(key: str):
    name, _, overload = key.partition(".")
    return getattr(getattr(ops, name), overload or "default")


def test_spec_lists_15_ops_and_4_out_overloads():
    # Guards the transcription above.
    assert len(OP_NAMES) == 15
    assert OUT_OVERLOADS == ["dequantize_4bit.out", "dequantize_blockwise.out", "gemv_4bit.out", "int8_linear_matmul.out"]


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_overloads_exist(name):
    packet = getattr(ops, name)
    expected = {"default"} | ({"out"} if f"{name}.out" in SPEC_SCHEMAS else set())
    assert set(packet.overloads()) == expected


@pytest.mark.parametrize("key", sorted(SPEC_SCHEMAS))
def test_schema_matches_spec(key):
    op = _overload(key)
    assert str(op._schema).startswith(f"bitsandbytes::{key.split('.')[0]}")
    assert _normalise(str(op._schema)) == _normalise(SPEC_SCHEMAS[key])


def test_schema_normaliser_is_not_vacuous():
    # A differently named argument must not normalise to the spec text.
    assert _normalise("bitsandbytes::foo.out(Tensor A, Tensor($0! -> ) result) -> ()") == "(Tensor A, Tensor! result) -> ()"


# ---- opcheck ----------------------------------------------------------------------------------------------

# opcheck runs the op under the schema, fake-tensor, autograd-registration and aot-dispatch checks.


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
def test_opcheck_quantize_blockwise(device, dtype):
    from bitsandbytes.functional import create_dynamic_map

    A = randn((5, 77), dtype, device)
    code = create_dynamic_map().to(device)
    torch.library.opcheck(ops.quantize_blockwise.default, (A, code, 128))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
def test_opcheck_dequantize_blockwise(device, dtype):
    from bitsandbytes.functional import create_dynamic_map

    code = create_dynamic_map().to(device)
    A = torch.randint(0, 256, (5, 77), dtype=torch.uint8, device=device)
    absmax = torch.rand(-(385 // -128), device=device) + 0.1
    torch.library.opcheck(ops.dequantize_blockwise.default, (A, absmax, code, 128, dtype))
    out = torch.empty(5, 77, dtype=dtype, device=device)
    torch.library.opcheck(ops.dequantize_blockwise.out, (A, absmax, code, 128, dtype, out))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("storage", [torch.uint8, torch.float16, torch.bfloat16, torch.float32], ids=dtype_id)
def test_opcheck_quantize_4bit(device, quant_type, storage):
    A = randn((16, 40), torch.float16, device)
    if storage != torch.uint8:
        # opcheck compares outputs with assert_close, and packed bytes viewed as a float dtype can
        # spell NaN. Keep every byte <= 0x77 (fp4 codes of positive values, nf4 codes of negative
        # values): such bytes never form an Inf/NaN pattern in fp16, bf16 or fp32.
        A = A.abs() if quant_type == "fp4" else -A.abs()
    torch.library.opcheck(ops.quantize_4bit.default, (A, 64, quant_type, storage))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
def test_opcheck_dequantize_4bit(device, quant_type, dtype):
    A = randn((16, 40), torch.float32, device)
    packed, absmax = ops.quantize_4bit(A, 64, quant_type, torch.uint8)
    torch.library.opcheck(ops.dequantize_4bit.default, (packed, absmax, 64, quant_type, [16, 40], dtype))
    out = torch.empty(16, 40, dtype=dtype, device=device)
    torch.library.opcheck(ops.dequantize_4bit.out, (packed, absmax, 64, quant_type, [16, 40], dtype, out))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.0, 3.0, 100.0], ids=["no_threshold", "outliers", "threshold_no_outliers"])
def test_opcheck_int8_vectorwise_quant(device, threshold):
    A = randn((12, 33), torch.float16, device)
    A[2, 5] = 8.0
    A[7, 30] = -9.0
    torch.library.opcheck(ops.int8_vectorwise_quant.default, (A, threshold))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_int8_vectorwise_dequant(device):
    A = torch.randint(-127, 128, (6, 10), dtype=torch.int8, device=device)
    stats = torch.rand(6, device=device) + 0.5
    torch.library.opcheck(ops.int8_vectorwise_dequant.default, (A, stats))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.0, 3.0])
def test_opcheck_int8_double_quant(device, threshold):
    A = randn((12, 33), torch.float16, device)
    A[4, 1] = 7.5
    torch.library.opcheck(ops.int8_double_quant.default, (A, threshold))


# ---- fake kernels agree with real outputs ------------------------------------------------------------------


@pytest.mark.parametrize("storage", [torch.uint8, torch.float16, torch.bfloat16, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("shape", [(0,), (1,), (7, 9), (3, 64), (2, 3, 40)], ids=str)
def test_meta_quantize_4bit_matches_real(storage, shape):
    n = torch.Size(shape).numel()
    if (n + 1) // (2 * storage.itemsize) * storage.itemsize < (n + 1) // 2:
        # The packed shape cannot hold every code in this storage: both kernels refuse it.
        with pytest.raises(ValueError, match="do not fit"):
            ops.quantize_4bit(torch.randn(shape), 64, "nf4", storage)
        with pytest.raises(RuntimeError, match="do not fit"):
            ops.quantize_4bit(torch.empty(shape, device="meta"), 64, "nf4", storage)
        return
    real = ops.quantize_4bit(torch.randn(shape), 64, "nf4", storage)
    meta = ops.quantize_4bit(torch.empty(shape, device="meta"), 64, "nf4", storage)
    assert real[0].shape == meta[0].shape == ((n + 1) // (2 * storage.itemsize), 1)
    assert real[0].dtype == meta[0].dtype == storage
    assert real[1].shape == meta[1].shape == (-(n // -64),)
    assert real[1].dtype == meta[1].dtype == torch.float32


@pytest.mark.parametrize("shape", [(0,), (1,), (7, 9), (2, 3, 4097)], ids=str)
def test_meta_quantize_blockwise_matches_real(shape):
    from bitsandbytes.functional import create_dynamic_map

    code = create_dynamic_map()
    real = ops.quantize_blockwise(torch.randn(shape), code, 4096)
    meta = ops.quantize_blockwise(torch.empty(shape, device="meta"), code.to("meta"), 4096)
    assert real[0].shape == meta[0].shape == shape and real[0].dtype == meta[0].dtype == torch.uint8
    assert real[1].shape == meta[1].shape and real[1].dtype == meta[1].dtype == torch.float32


def test_meta_int8_vectorwise_quant_third_output():
    A = torch.empty(4, 8, device="meta", dtype=torch.float16)
    q, stats, cols = ops.int8_vectorwise_quant(A, 0.0)
    assert q.dtype == torch.int8 and q.shape == (4, 8)
    assert stats.dtype == torch.float32 and stats.shape == (4,)
    assert cols is None


# ---- torch.compile -----------------------------------------------------------------------------------------


def test_compile_fullgraph_4bit_round_trip_matches_eager():
    def round_trip(x):
        packed, absmax = ops.quantize_4bit(x, 64, "nf4", torch.uint8)
        # No pointwise op around the custom ops: inductor would then build a C++ kernel (slow on CI).
        return ops.dequantize_4bit(packed, absmax, 64, "nf4", list(x.shape), x.dtype)

    torch._dynamo.reset()
    x = randn((8, 64), torch.float32)
    compiled = torch.compile(round_trip, fullgraph=True)
    got = compiled(x)
    want = round_trip(x)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert torch.equal(got, want)
    # And it is a real round trip, not an identity.
    assert not torch.equal(got, x)
    assert (got - x).abs().max() <= x.abs().max() * 0.2

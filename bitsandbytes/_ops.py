"""The ``torch.ops.bitsandbytes`` op registry: schemas and fake (meta) kernels.

These definitions are what torch.compile and downstream code see. Device kernels are
attached elsewhere (``backends/``) with ``torch.library.register_kernel``. Names, schemas and
fake output shapes/dtypes follow the public contract exactly.
"""

from __future__ import annotations

import math
from math import prod
from typing import Optional, Sequence

import torch

from . import _validate as check

_NS = "bitsandbytes"
_lib_defs: list = []


def _define(schema: str) -> None:
    torch.library.define(f"{_NS}::{schema.split('(', 1)[0]}", "(" + schema.split("(", 1)[1])


def _fake(name: str):
    return torch.library.register_fake(f"{_NS}::{name}")


def _num_blocks(n: int, blocksize: int) -> int:
    return -(n // -blocksize)


def _same_device(A, **others) -> None:
    """Every tensor on A's device. Without this check a meta tensor among real ones sends the call to
    these fake kernels, which would return an uninitialised real tensor instead of failing."""
    for name, t in others.items():
        if t is not None:
            torch._check(t.device == A.device,
                         lambda: f"{name} is on {t.device} but A is on {A.device}: all tensors of one call must be "
                                 "on the same device")


# ---- LLM.int8() ------------------------------------------------------------------------------------
# The fake kernels check what the device kernels check (dtypes, sizes, devices, threshold), so traced
# and compiled code fails where eager code fails instead of describing outputs no kernel would make.

_define("int8_linear_matmul(Tensor A, Tensor B) -> Tensor")
_define("int8_linear_matmul.out(Tensor A, Tensor B, Tensor! out) -> ()")


def _int8_matmul_checks(A: torch.Tensor, B: torch.Tensor) -> None:
    torch._check(A.dtype == torch.int8, lambda: f"A must be int8, got {A.dtype}")
    torch._check(B.dtype == torch.int8, lambda: f"B must be int8, got {B.dtype}")
    torch._check(B.dim() == 2, lambda: f"B must be 2-D [N, K], got shape {tuple(B.shape)}")
    torch._check(A.dim() >= 1, lambda: "A must have at least one dimension [..., K]")
    torch._check(A.shape[-1] == B.shape[-1], lambda: f"A [..., K] and B [N, K] disagree on K: {A.shape}, {B.shape}")
    _same_device(A, B=B)


def _rows(A: torch.Tensor):
    """Rows of a row-wise int8 operand: every leading dimension (a 0-d tensor is one row)."""
    return prod(A.shape[:-1])


def _int8_dequant_checks(rows, N, row_stats, col_stats, bias, dtype, device) -> None:
    """Per-row and per-column float scales of exactly M and N values, a float bias of N values, a float
    output dtype, all on the product's device (the kernels index the scales without bounds checks)."""
    for name, t, n in (("row_stats", row_stats, rows), ("col_stats", col_stats, N), ("bias", bias, N)):
        if t is None:
            continue
        torch._check(t.dtype in check.FLOAT_DTYPES, lambda: f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        torch._check(t.numel() == n, lambda: f"{name} must have {n} elements, got shape {tuple(t.shape)}")
        torch._check(t.device == device, lambda: f"{name} is on {t.device} but the product is on {device}: all "
                                                 "tensors of one call must be on the same device")
    torch._check(dtype is None or dtype in check.FLOAT_DTYPES,
                 lambda: f"dtype must be float16, bfloat16 or float32, got {dtype}")


def _int8_threshold_check(threshold: float) -> None:
    # As check.int8_threshold: the kernels compare in float32, where larger values are infinity.
    torch._check(math.isfinite(threshold) and 0.0 <= threshold <= torch.finfo(torch.float32).max,
                 lambda: f"threshold must be finite and >= 0, got {threshold}")


def _int8_quant_checks(A: torch.Tensor, threshold: float) -> None:
    torch._check(A.dtype in check.FLOAT_DTYPES, lambda: f"A must be float16, bfloat16 or float32, got {A.dtype}")
    torch._check(A.dim() >= 1, lambda: "A must have at least one dimension (rows x columns)")
    _int8_threshold_check(threshold)


@_fake("int8_linear_matmul")
def _(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    _int8_matmul_checks(A, B)
    return torch.empty((*A.shape[:-1], B.shape[0]), device=A.device, dtype=torch.int32)


@_fake("int8_linear_matmul.out")
def _(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    _int8_matmul_checks(A, B)
    torch._check(out.dtype == torch.int32, lambda: f"out must be int32, got {out.dtype}")
    torch._check(out.shape == (*A.shape[:-1], B.shape[0]),
                 lambda: f"out must have shape {(*A.shape[:-1], B.shape[0])}, got {tuple(out.shape)}")
    _same_device(A, out=out)


_define("int8_vectorwise_quant(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor?)")


@_fake("int8_vectorwise_quant")
def _(A: torch.Tensor, threshold: float = 0.0):
    _int8_quant_checks(A, threshold)
    out = torch.empty_like(A, dtype=torch.int8)
    row_stats = torch.empty(_rows(A), device=A.device, dtype=torch.float32)
    if threshold == 0.0:
        return out, row_stats, None
    outlier_count = torch.library.get_ctx().new_dynamic_size()
    return out, row_stats, A.new_empty(outlier_count, dtype=torch.int64)


_define("int8_vectorwise_dequant(Tensor A, Tensor stats) -> Tensor")

# 1/127 as the contract states it (so every backend dequantizes identically).
INT8_DEQUANT_MULTIPLIER = 7.874015718698502e-3


@_fake("int8_vectorwise_dequant")
def _(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    torch._check(A.dtype == torch.int8, lambda: f"A must be int8, got {A.dtype}")
    torch._check(stats.dtype == torch.float32, lambda: f"stats must be float32, got {stats.dtype}")
    torch._check(stats.numel() == _rows(A), lambda: f"stats must have one value per row ({_rows(A)}), got shape "
                                                    f"{tuple(stats.shape)}")
    _same_device(A, stats=stats)
    return torch.empty_like(A, dtype=torch.float32)


@torch.library.register_kernel(f"{_NS}::int8_vectorwise_dequant", "default")
def _(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    check.dtype_in("A", A, (torch.int8,))
    check.dtype_in("stats", stats, (torch.float32,))
    # One scale per row, exactly: a single value would otherwise broadcast over every row.
    rows, cols = _rows(A), (A.shape[-1] if A.dim() else 1)
    check.numel("stats", stats, rows)
    check.same_device("A", A, stats=stats)
    return (A.reshape(rows, cols) * stats.reshape(rows, 1) * INT8_DEQUANT_MULTIPLIER).reshape(A.shape)


_define("int8_mm_dequant(Tensor A, Tensor row_stats, Tensor col_stats, ScalarType? dtype=None, Tensor? bias=None) -> Tensor")


@_fake("int8_mm_dequant")
def _(A, row_stats, col_stats, dtype=None, bias=None):
    torch._check(A.dtype == torch.int32, lambda: f"A must be int32, got {A.dtype}")
    torch._check(A.dim() >= 1, lambda: "A must have at least one dimension [..., N]")
    _int8_dequant_checks(_rows(A), A.shape[-1], row_stats, col_stats, bias, dtype, A.device)
    return torch.empty_like(A, dtype=dtype or torch.float16)


_define(
    "int8_scaled_mm(Tensor A, Tensor B, Tensor row_stats, Tensor col_stats, Tensor? bias=None, "
    "ScalarType? dtype=None) -> Tensor"
)


@_fake("int8_scaled_mm")
def _(A, B, row_stats, col_stats, bias=None, dtype=None):
    _int8_matmul_checks(A, B)
    _int8_dequant_checks(_rows(A), B.shape[0], row_stats, col_stats, bias, dtype, A.device)
    return torch.empty((*A.shape[:-1], B.shape[0]), device=A.device, dtype=dtype or torch.float16)


_define(
    "int8_mixed_scaled_mm(Tensor A, Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, Tensor? outlier_cols=None, "
    "Tensor? bias=None) -> (Tensor, Tensor?)"
)


@_fake("int8_mixed_scaled_mm")
def _(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
    torch._check(A.dtype in check.FLOAT_DTYPES, lambda: f"A must be float16, bfloat16 or float32, got {A.dtype}")
    torch._check(A.shape == CA.shape, lambda: f"A and CA must have the same shape, got {A.shape} and {CA.shape}")
    _int8_matmul_checks(CA, CB)
    _same_device(A, CA=CA, outlier_cols=outlier_cols)
    _int8_dequant_checks(_rows(CA), CB.shape[0], SCA, SCB, bias, None, A.device)
    out = torch.empty((*CA.shape[:-1], CB.shape[0]), device=A.device, dtype=A.dtype)
    # The contract's fake describes subA as a 1-D int64 of dynamic size (real kernels return A's dtype).
    subA = A.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.int64)
    return out, subA


_define("int8_double_quant(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor, Tensor, Tensor?)")


@_fake("int8_double_quant")
def _(A: torch.Tensor, threshold: float = 0.0):
    _int8_quant_checks(A, threshold)
    out_row = torch.empty_like(A, dtype=torch.int8)
    out_col = torch.empty_like(A, dtype=torch.int8)
    row_stats = torch.empty(_rows(A), device=A.device, dtype=torch.float32)
    col_stats = torch.empty(A.shape[-1], device=A.device, dtype=torch.float32)
    if threshold == 0.0:
        return out_row, out_col, row_stats, col_stats, None
    outlier_count = torch.library.get_ctx().new_dynamic_size()
    return out_row, out_col, row_stats, col_stats, A.new_empty(outlier_count, dtype=torch.int64)


# ---- 8-bit blockwise ---------------------------------------------------------------------------------

_define("quantize_blockwise(Tensor A, Tensor code, int blocksize) -> (Tensor, Tensor)")


@_fake("quantize_blockwise")
def _(A: torch.Tensor, code: torch.Tensor, blocksize: int):
    torch._check(blocksize > 0, lambda: f"blocksize must be positive, got {blocksize}")
    torch._check(A.dtype in check.FLOAT_DTYPES, lambda: f"A must be float16, bfloat16 or float32, got {A.dtype}")
    out = torch.empty_like(A, dtype=torch.uint8)
    absmax = torch.empty(_num_blocks(A.numel(), blocksize), device=A.device, dtype=torch.float32)
    return out, absmax


_define("dequantize_blockwise(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype) -> Tensor")
_define(
    "dequantize_blockwise.out(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype, "
    "Tensor! out) -> ()"
)


def _dequantize_blockwise_checks(A, blocksize, dtype):
    torch._check(A.dtype == torch.uint8, lambda: f"A must be uint8, got {A.dtype}")
    torch._check(blocksize > 0, lambda: f"blocksize must be positive, got {blocksize}")
    torch._check(dtype in check.FLOAT_DTYPES, lambda: f"dtype must be float16, bfloat16 or float32, got {dtype}")


@_fake("dequantize_blockwise")
def _(A, absmax, code, blocksize, dtype):
    _dequantize_blockwise_checks(A, blocksize, dtype)
    return torch.empty_like(A, dtype=dtype)


@_fake("dequantize_blockwise.out")
def _(A, absmax, code, blocksize, dtype, out):
    _dequantize_blockwise_checks(A, blocksize, dtype)
    torch._check(out.dtype == dtype, lambda: f"out must have dtype {dtype}, got {out.dtype}")
    torch._check(out.shape == A.shape, lambda: f"out must have shape {tuple(A.shape)}, got {tuple(out.shape)}")


# ---- 4-bit -------------------------------------------------------------------------------------------

_define("quantize_4bit(Tensor A, int blocksize, str quant_type, ScalarType quant_storage) -> (Tensor, Tensor)")


def _4bit_checks(blocksize: int, quant_type: str) -> None:
    torch._check(blocksize in check.BLOCKSIZES_4BIT, lambda: f"blocksize must be one of {check.BLOCKSIZES_4BIT}, got {blocksize}")
    torch._check(quant_type in check.QUANT_TYPES_4BIT, lambda: f"quant_type must be nf4 or fp4, got {quant_type!r}")


def packed_4bit_shape(n: int, quant_storage: torch.dtype) -> tuple:
    """[(n + 1) // (2 * itemsize), 1]: two codes per byte, reinterpreted as quant_storage."""
    return ((n + 1) // (2 * quant_storage.itemsize), 1)


@_fake("quantize_4bit")
def _(A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype):
    _4bit_checks(blocksize, quant_type)
    torch._check(A.dtype in check.FLOAT_DTYPES, lambda: f"A must be float16, bfloat16 or float32, got {A.dtype}")
    n = A.numel()
    torch._check(quant_storage in check.QUANT_STORAGES_4BIT,
                 lambda: f"quant_storage must be one of {check.QUANT_STORAGES_4BIT}, got {quant_storage}")
    # The packed shape must hold every code (wider storage rounds it down), as the kernels check.
    isz = quant_storage.itemsize
    torch._check((n + 1) // (2 * isz) * isz >= (n + 1) // 2,
                 lambda: f"{n} 4-bit values do not fit the packed shape of quant_storage {quant_storage}")
    absmax = torch.empty(_num_blocks(n, blocksize), device=A.device, dtype=torch.float32)
    out = torch.empty(packed_4bit_shape(n, quant_storage), device=A.device, dtype=quant_storage)
    return out, absmax


_define(
    "dequantize_4bit(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype) -> Tensor"
)
_define(
    "dequantize_4bit.out(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype, "
    "Tensor! out) -> ()"
)


def _dequantize_4bit_checks(absmax, blocksize, quant_type, dtype):
    _4bit_checks(blocksize, quant_type)
    torch._check(dtype in check.FLOAT_DTYPES, lambda: f"dtype must be float16, bfloat16 or float32, got {dtype}")
    torch._check(absmax.dtype == torch.float32, lambda: f"absmax must be float32, got {absmax.dtype}")


@_fake("dequantize_4bit")
def _(A, absmax, blocksize, quant_type, shape, dtype):
    _dequantize_4bit_checks(absmax, blocksize, quant_type, dtype)
    return torch.empty(shape, device=A.device, dtype=dtype)


@_fake("dequantize_4bit.out")
def _(A, absmax, blocksize, quant_type, shape, dtype, out):
    _dequantize_4bit_checks(absmax, blocksize, quant_type, dtype)
    torch._check(out.dtype == dtype, lambda: f"out must have dtype {dtype}, got {out.dtype}")
    torch._check(list(out.shape) == list(shape), lambda: f"out must have shape {list(shape)}, got {list(out.shape)}")


_define("gemv_4bit(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize) -> Tensor")
_define(
    "gemv_4bit.out(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize, Tensor! out) -> ()"
)


def _gemv_4bit_checks(A, B, shapeB, absmax, code, blocksize):
    torch._check_is_size(blocksize)
    torch._check(len(shapeB) == 2, lambda: f"shapeB must be 2-D [N, K], got {shapeB}")
    torch._check(A.shape[-1] == shapeB[1], lambda: f"A [..., K] must match shapeB [N, K]; got {A.shape} and {shapeB}")
    _same_device(A, B=B, absmax=absmax, code=code)
    torch._check(
        B.dtype in check.QUANT_STORAGES_4BIT,
        lambda: f"B must be a packed 4-bit tensor (uint8/bf16/fp16/fp32 storage), got {B.dtype}",
    )
    torch._check(absmax.dtype == torch.float32, lambda: f"absmax must be float32, got {absmax.dtype}")
    torch._check(code.dtype == torch.float32, lambda: f"code must be float32, got {code.dtype}")


@_fake("gemv_4bit")
def _(A, B, shapeB, absmax, code, blocksize):
    _gemv_4bit_checks(A, B, shapeB, absmax, code, blocksize)
    return torch.empty((*A.shape[:-1], shapeB[0]), device=A.device, dtype=A.dtype)


@_fake("gemv_4bit.out")
def _(A, B, shapeB, absmax, code, blocksize, out):
    _gemv_4bit_checks(A, B, shapeB, absmax, code, blocksize)
    torch._check(out.dtype == A.dtype, lambda: f"out must have dtype {A.dtype}, got {out.dtype}")
    _same_device(A, out=out)


_define(
    "gemm_4bit(Tensor A, Tensor B, int[] shapeB, Tensor absmax, int blocksize, str quant_type, Tensor? bias=None, "
    "Tensor? absmax_8bit=None, Tensor? absmax_code=None, Tensor? absmax_offset=None) -> Tensor"
)


@_fake("gemm_4bit")
def _(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    torch._check(len(shapeB) == 2, lambda: f"shapeB must be 2-D [N, K], got {shapeB}")
    torch._check(A.shape[-1] == shapeB[1], lambda: f"A [..., K] must match shapeB [N, K]; got {A.shape} and {shapeB}")
    _4bit_checks(blocksize, quant_type)
    _same_device(A, B=B, absmax=absmax, bias=bias, absmax_8bit=absmax_8bit, absmax_code=absmax_code,
                 absmax_offset=absmax_offset)
    torch._check(absmax.dtype == torch.float32, lambda: f"absmax must be float32, got {absmax.dtype}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == shapeB[0], lambda: f"bias must be [N={shapeB[0]}]")
        torch._check(bias.dtype == A.dtype, lambda: f"bias must have A's dtype {A.dtype}, got {bias.dtype}")
    if absmax_8bit is not None:
        torch._check(absmax_8bit.dtype == torch.uint8 and absmax_8bit.dim() == 1, lambda: "absmax_8bit must be 1-D uint8")
    if absmax_code is not None:
        torch._check(absmax_code.dtype == torch.float32 and absmax_code.numel() == 256, lambda: "absmax_code must be f32 [256]")
    if absmax_offset is not None:
        torch._check(absmax_offset.dtype == torch.float32 and absmax_offset.dim() == 0, lambda: "absmax_offset must be a 0-d f32")
    return torch.empty((*A.shape[:-1], shapeB[0]), device=A.device, dtype=A.dtype)


# ---- optimizers ----------------------------------------------------------------------------------------

_define(
    "optimizer_update_32bit(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, "
    "Tensor(a3!)? state2, Tensor(a4!)? unorm_vec, float max_unorm, float param_norm, float beta1, float beta2, "
    "float beta3, float alpha, float eps, float weight_decay, int step, float lr, float gnorm_scale, "
    "bool skip_zeros=False) -> ()"
)


@_fake("optimizer_update_32bit")
def _(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3, alpha, eps,
      weight_decay, step, lr, gnorm_scale, skip_zeros=False):
    torch._check(g.numel() == p.numel(), lambda: f"g and p differ in size: {g.numel()} vs {p.numel()}")


_define(
    "optimizer_update_8bit_blockwise(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, "
    "Tensor(a3!)? state2, float beta1, float beta2, float beta3, float alpha, float eps, int step, float lr, "
    "Tensor(a4!) qmap1, Tensor(a5!)? qmap2, Tensor(a6!) absmax1, Tensor(a7!)? absmax2, float weight_decay, "
    "float gnorm_scale, bool skip_zeros=False) -> ()"
)


@_fake("optimizer_update_8bit_blockwise")
def _(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1,
      absmax2, weight_decay, gnorm_scale, skip_zeros=False):
    torch._check(g.numel() == p.numel(), lambda: f"g and p differ in size: {g.numel()} vs {p.numel()}")
    torch._check(state1.dtype == torch.uint8, lambda: f"state1 must be uint8, got {state1.dtype}")

"""Public functional API: code books, QuantState, 8-bit blockwise, 4-bit and LLM.int8() quantization.

Every function validates its arguments (dtype, device, shape, blocksize) and raises
TypeError / ValueError naming the argument; the computation runs in ``torch.ops.bitsandbytes``.
"""

from __future__ import annotations

import ctypes as ct
import warnings
from typing import Iterable, Optional, Tuple

import torch

from . import _validate as check
from ._code_maps import (
    create_dynamic_map,
    create_fp8_map,
    create_linear_map,
    create_normal_map,
    create_quantile_map,
    estimate_quantiles,
    get_4bit_type,
)
from ._ops import packed_4bit_shape
from ._quant_state import QuantState

__all__ = [
    "QuantState",
    "create_dynamic_map",
    "create_fp8_map",
    "create_linear_map",
    "create_normal_map",
    "create_quantile_map",
    "estimate_quantiles",
    "get_4bit_type",
    "quantize_blockwise",
    "dequantize_blockwise",
    "quantize_4bit",
    "dequantize_4bit",
    "quantize_fp4",
    "quantize_nf4",
    "dequantize_fp4",
    "dequantize_nf4",
    "gemv_4bit",
    "int8_vectorwise_quant",
    "int8_vectorwise_dequant",
    "int8_double_quant",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "check_matmul",
    "igemm",
    "batched_igemm",
    "get_ptr",
    "is_on_gpu",
]

# 8-bit LLM.int8() scale constant.
C = 127.0

# Cache of the standard code books, by name ("dynamic" signed, "udynamic" unsigned).
name2qmap: dict = {}


def _dynamic_code(device: torch.device) -> torch.Tensor:
    if "dynamic" not in name2qmap:
        name2qmap["dynamic"] = create_dynamic_map(signed=True)
    return name2qmap["dynamic"].to(device)


# ---- 8-bit blockwise ----------------------------------------------------------------------------------


def quantize_blockwise(
    A: torch.Tensor,
    code: Optional[torch.Tensor] = None,
    absmax: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> Tuple[torch.Tensor, QuantState]:
    """Quantize A blockwise to 8-bit indices into `code` (default: the signed dynamic map).

    Each value x of a block maps to the entry of `code` nearest to x / absmax. `code` may be in any
    order (e.g. the zero-padded ``create_linear_map(signed=False, total_bits=4)``); an ascending code
    gives exactly the midpoint rule, and among equal entries CPU and CUDA pick the same index.

    Blocks holding inf or NaN never come back as plausible finite numbers. A block with a NaN gets
    absmax NaN, so all its values dequantize to NaN. Otherwise a block with +-inf gets absmax +inf:
    +inf takes the largest entry of `code` and -inf the smallest (each returns as an infinity of its
    own sign when `code` has entries of both signs), and the block's finite values take the entry
    nearest 0, so they return as 0 * inf = NaN (an infinity if `code` has no zero). A block whose absmax
    is below 2^-126 (a float32 subnormal, where 1 / absmax would overflow) is scaled by 0 like a block of
    zeros: its values take the entry nearest 0.

    Returns the uint8 tensor (A's shape) and a QuantState with the per-block absmax. With
    ``nested=True`` the absmax values are themselves quantized around an offset, their mean (the mean
    of the finite ones when some are not: a block with inf or NaN then spreads to the blocks that share
    its second-level block, not to the whole tensor).
    """
    check.tensor("A", A)
    if A.dtype not in check.FLOAT_DTYPES:
        raise ValueError(f"A must be float16, bfloat16 or float32 to quantize; got {A.dtype}")
    check.blocksize_8bit(blocksize)
    code = _dynamic_code(A.device) if code is None else code
    check.code_book(code)
    check.same_device("A", A, code=code, absmax=absmax, out=out)
    # The deprecated in-place outputs are checked before anything is computed or written, so a bad one
    # leaves the other untouched. Nested absmax values are stored as their 8-bit codes.
    nblocks = -(A.numel() // -blocksize)
    if out is not None:
        check.out_tensor("out", out, A.shape, torch.uint8, A.device)
    if absmax is not None:
        check.out_tensor("absmax", absmax, (nblocks,), torch.uint8 if nested else torch.float32, A.device)

    q, _absmax = torch.ops.bitsandbytes.quantize_blockwise(A, code.to(A.device), blocksize)

    if nested:
        offset = _nested_offset(_absmax)
        qabsmax, state2 = quantize_blockwise(_absmax - offset, blocksize=blocksize, nested=False)
        state = QuantState(absmax=qabsmax, code=code.to(A.device, copy=True), blocksize=blocksize, dtype=A.dtype,
                           offset=offset, state2=state2)
    else:
        state = QuantState(absmax=_absmax, code=code.to(A.device, copy=True), blocksize=blocksize, dtype=A.dtype)

    # Deprecated in-place outputs (checked above): copy the results into the caller's tensors.
    if out is not None:
        q = out.copy_(q)
    if absmax is not None:
        state.absmax = absmax.copy_(state.absmax)
    return q, state


def _nested_offset(absmax: torch.Tensor) -> torch.Tensor:
    """The offset double-quantized block scales are stored around: their mean, or where a block holding inf
    or NaN makes that non-finite, the mean of the finite scales (0 if none is), so that such a block spreads
    to its own second-level block only. Computed on the device without waiting for it."""
    offset = absmax.mean()
    finite = torch.isfinite(absmax)
    finite_mean = torch.where(finite, absmax, 0.0).sum() / finite.sum().clamp_min(1)
    return torch.where(torch.isfinite(offset), offset, finite_mean)


def _nested_absmax(quant_state: QuantState) -> torch.Tensor:
    """Reconstruct float32 absmax from its double-quantized form: code[q] * absmax2[i // bs] + offset."""
    absmax = dequantize_blockwise(quant_state.absmax, quant_state.state2)
    absmax += quant_state.offset
    return absmax if absmax.dtype == torch.float32 else absmax.float()


def dequantize_blockwise(
    A: torch.Tensor,
    quant_state: Optional[QuantState] = None,
    absmax: Optional[torch.Tensor] = None,
    code: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> torch.Tensor:
    """Dequantize 8-bit indices: code[A] * absmax[block]. Without a quant_state the result is float32."""
    check.tensor("A", A)
    if quant_state is None and absmax is None:
        raise ValueError("dequantize_blockwise needs either quant_state or absmax")
    if A.dtype != torch.uint8:
        raise TypeError(f"A must be uint8 (8-bit codes); got {A.dtype}")
    if quant_state is None:
        code = _dynamic_code(A.device) if code is None else code
        quant_state = QuantState(absmax=absmax, code=code, blocksize=blocksize, dtype=torch.float32)
    absmax = quant_state.absmax
    if quant_state.nested:
        absmax = _nested_absmax(quant_state)
    check.same_device("A", A, absmax=absmax, code=quant_state.code, out=out)
    if out is not None:
        torch.ops.bitsandbytes.dequantize_blockwise.out(A, absmax, quant_state.code, quant_state.blocksize,
                                                        quant_state.dtype, out=out)
        return out
    return torch.ops.bitsandbytes.dequantize_blockwise(A, absmax, quant_state.code, quant_state.blocksize,
                                                       quant_state.dtype)


# ---- 4-bit ----------------------------------------------------------------------------------------------


def quantize_4bit(
    A: torch.Tensor,
    absmax: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    blocksize: Optional[int] = None,
    compress_statistics: bool = False,
    quant_type: str = "fp4",
    quant_storage: torch.dtype = torch.uint8,
) -> Tuple[torch.Tensor, QuantState]:
    """Quantize A to packed 4-bit codes (nf4 or fp4) with one float32 absmax per block.

    The packed tensor has shape [(n + 1) // (2 * itemsize), 1] and dtype `quant_storage`.
    ``compress_statistics=True`` double-quantizes absmax (8-bit, blocksize 256, around their mean as in
    `quantize_blockwise`).
    Blocks holding inf or NaN follow the rule of `quantize_blockwise`: a NaN makes the block's absmax
    NaN (the whole block dequantizes to NaN); else +-inf take the codes of +-1 and dequantize to +-inf,
    and the block's finite values take the code of 0 and dequantize to NaN. A block whose absmax is below
    2^-126 takes the code of 0 throughout and dequantizes to zeros.
    """
    check.tensor("A", A)
    blocksize = 64 if blocksize is None else blocksize
    check.dtype_in("A", A, check.FLOAT_DTYPES)
    check.blocksize_4bit(blocksize)
    check.quant_type_4bit(quant_type)
    n = A.numel()
    check.quant_storage_4bit(quant_storage, n)
    check.same_device("A", A, absmax=absmax, out=out)
    # The in-place outputs are checked before anything is computed or written (a bad absmax must not leave
    # out overwritten). Double-quantized absmax values are stored as their 8-bit codes.
    if out is not None:
        check.out_tensor("out", out, packed_4bit_shape(n, quant_storage), quant_storage, A.device)
    if absmax is not None:
        check.out_tensor("absmax", absmax, (-(n // -blocksize),), torch.uint8 if compress_statistics else torch.float32,
                         A.device)
    input_shape = A.shape

    packed, _absmax = torch.ops.bitsandbytes.quantize_4bit(A, blocksize, quant_type, quant_storage)
    code = get_4bit_type(quant_type, device=A.device)

    if compress_statistics:
        offset = _nested_offset(_absmax)
        qabsmax, state2 = quantize_blockwise(_absmax - offset, blocksize=256)
        state = QuantState(absmax=qabsmax, shape=input_shape, dtype=A.dtype, blocksize=blocksize, code=code,
                           quant_type=quant_type, offset=offset, state2=state2)
    else:
        state = QuantState(absmax=_absmax, shape=input_shape, dtype=A.dtype, blocksize=blocksize, code=code,
                           quant_type=quant_type)

    if out is not None:
        packed = out.copy_(packed)
    if absmax is not None:
        state.absmax = absmax.copy_(state.absmax)
    return packed, state


def quantize_fp4(A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=torch.uint8):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "fp4", quant_storage)


def quantize_nf4(A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=torch.uint8):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "nf4", quant_storage)


def dequantize_4bit(
    A: torch.Tensor,
    quant_state: Optional[QuantState] = None,
    absmax: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    blocksize: Optional[int] = None,
    quant_type: str = "fp4",
) -> torch.Tensor:
    """Dequantize packed 4-bit codes: table[code] * absmax[block], in float32, cast to the state's dtype."""
    check.tensor("A", A)
    blocksize = 64 if blocksize is None else blocksize
    if quant_state is None:
        if absmax is None or out is None:
            raise ValueError("dequantize_4bit without quant_state needs both absmax and out (out gives shape and dtype)")
        quant_state = QuantState(absmax=absmax, shape=out.shape, dtype=out.dtype, blocksize=blocksize,
                                 quant_type=quant_type)
    check.blocksize_4bit(quant_state.blocksize)
    check.quant_type_4bit(quant_state.quant_type)
    check.float_dtype("quant_state.dtype", quant_state.dtype)
    absmax = quant_state.absmax
    if quant_state.nested:
        absmax = _nested_absmax(quant_state)
    check.same_device("A", A, absmax=absmax, out=out)

    if out is not None:
        torch.ops.bitsandbytes.dequantize_4bit.out(A, absmax, quant_state.blocksize, quant_state.quant_type,
                                                   quant_state.shape, quant_state.dtype, out=out)
    else:
        out = torch.ops.bitsandbytes.dequantize_4bit(A, absmax, quant_state.blocksize, quant_state.quant_type,
                                                     quant_state.shape, quant_state.dtype)
    # A packed tensor viewed as [1, X] (a transposed [X, 1] weight) gives a transposed result. A
    # [1, 1] tensor is the same either way, and only 2-D results can be transposed.
    if A.dim() == 2 and A.shape[0] == 1 and A.shape[1] > 1 and out.dim() == 2:
        return out.t()
    return out


def gemv_4bit(
    A: torch.Tensor,
    B: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
    state: Optional[QuantState] = None,
) -> torch.Tensor:
    """``A @ dequantize_4bit(B).T`` for a packed 4-bit weight B of logical shape ``state.shape = [N, K]``
    (into ``out`` when given). ``transposed_A`` / ``transposed_B`` are accepted for compatibility and unused:
    B is read as packed bytes whatever its view."""
    if state is None:
        raise ValueError("gemv_4bit needs the weight's state (the QuantState returned by quantize_4bit); got None")
    check.tensor("A", A)
    check.tensor("B", B)
    absmax = state.absmax
    if state.nested:
        absmax = _nested_absmax(state)
    if out is not None:
        torch.ops.bitsandbytes.gemv_4bit.out(A, B, state.shape, absmax, state.code, state.blocksize, out=out)
        return out
    return torch.ops.bitsandbytes.gemv_4bit(A, B, state.shape, absmax, state.code, state.blocksize)


def dequantize_fp4(A, quant_state=None, absmax=None, out=None, blocksize=None):
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "fp4")


def dequantize_nf4(A, quant_state=None, absmax=None, out=None, blocksize=None):
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "nf4")


# ---- LLM.int8() -----------------------------------------------------------------------------------------


def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """Row-wise int8 quantization: (int8 A-shaped, row absmax float32, outlier columns int64 or None).

    With threshold > 0 values with |x| >= threshold are excluded from the row absmax and zeroed;
    the columns holding them are returned (and zeroed entirely when A has more than one row).
    ``threshold`` must be finite and >= 0.

    Non-finite values: +-inf is an outlier whenever threshold > 0 (|inf| >= threshold). A row that keeps
    a NaN, or (threshold = 0) an infinity, cannot be represented in int8: its row absmax is NaN (any NaN)
    or inf, and every code of the row is 0, so the row dequantizes, and multiplies, to NaN rather than to
    plausible finite numbers. NaN is never an outlier (it compares false with the threshold). A row whose
    absmax is below 2^-121 (where 127 / absmax could overflow) quantizes to zero codes.
    """
    check.tensor("A", A)
    check.dtype_in("A", A, check.FLOAT_DTYPES)
    threshold = check.int8_threshold(threshold)
    return torch.ops.bitsandbytes.int8_vectorwise_quant(A, threshold)


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """A * stats[row] / 127 as float32: one float32 scale per row (rows = all leading dimensions)."""
    check.tensor("A", A)
    check.tensor("stats", stats)
    check.dtype_in("A", A, (torch.int8,))
    check.dtype_in("stats", stats, (torch.float32,))
    check.same_device("A", A, stats=stats)
    return torch.ops.bitsandbytes.int8_vectorwise_dequant(A, stats)


def int8_double_quant(
    A: torch.Tensor,
    col_stats: Optional[torch.Tensor] = None,
    row_stats: Optional[torch.Tensor] = None,
    out_col: Optional[torch.Tensor] = None,
    out_row: Optional[torch.Tensor] = None,
    threshold: float = 0.0,
):
    """Row-wise and column-wise int8 quantization of A in one call:
    (out_row, out_col, row_stats, col_stats, outlier_cols).

    Non-finite values follow the rule of int8_vectorwise_quant, per column for the column-wise half: a
    column that keeps a NaN (or, threshold = 0, an infinity) gets col_stats NaN (or inf) and all-zero codes.
    """
    if any(t is not None for t in (col_stats, row_stats, out_col, out_row)):
        raise ValueError("int8_double_quant does not take pre-allocated outputs (col_stats, row_stats, out_col, out_row)")
    check.tensor("A", A)
    check.dtype_in("A", A, check.FLOAT_DTYPES)
    threshold = check.int8_threshold(threshold)
    return torch.ops.bitsandbytes.int8_double_quant(A, threshold)


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor, out: Optional[torch.Tensor] = None,
                       dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Exact int32 ``A @ B.T`` of int8 ``A [..., K]`` and int8 ``B [N, K]`` (into ``out`` when given)."""
    if dtype != torch.int32:
        raise NotImplementedError(f"int8_linear_matmul accumulates in int32 only; got dtype={dtype}")
    check.tensor("A", A)
    check.tensor("B", B)
    check.dtype_in("A", A, (torch.int8,))
    check.dtype_in("B", B, (torch.int8,))
    check.same_device("A", A, B=B)
    if out is not None:
        # (The op checks the operands too; their shapes are needed here to check out first.)
        if A.dim() < 1 or B.dim() != 2:
            raise ValueError(f"A [..., K] and B [N, K] expected; got shapes {tuple(A.shape)} and {tuple(B.shape)}")
        check.out_tensor("out", out, (*A.shape[:-1], B.shape[0]), torch.int32, A.device)
        torch.ops.bitsandbytes.int8_linear_matmul.out(A, B, out)
        return out
    return torch.ops.bitsandbytes.int8_linear_matmul(A, B)


def int8_mm_dequant(A: torch.Tensor, row_stats: torch.Tensor, col_stats: torch.Tensor,
                    out: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float16 ``A * row_stats[i] * col_stats[j] / 127^2 (+ bias)`` of an int32 matmul result A
    (copied into ``out`` when given: a float16 tensor of A's shape on A's device)."""
    check.tensor("A", A)
    check.tensor("row_stats", row_stats)
    check.tensor("col_stats", col_stats)
    check.dtype_in("A", A, (torch.int32,))
    check.dtype_in("row_stats", row_stats, (torch.float32,))
    check.dtype_in("col_stats", col_stats, (torch.float32,))
    check.same_device("A", A, row_stats=row_stats, col_stats=col_stats, bias=bias)
    if out is not None:
        # Checked before computing: copy_ would broadcast into a larger out or cast into another dtype.
        check.out_tensor("out", out, A.shape, torch.float16, A.device, contiguous=False)
    result = torch.ops.bitsandbytes.int8_mm_dequant(A, row_stats, col_stats, torch.float16, bias)
    if out is not None:
        return out.copy_(result)
    return result


# ---- deprecated int8 products (kept for old callers; int8_linear_matmul is the supported form) ---------------

_DEPRECATED = "This function is deprecated and will be removed in a future release."


def _operand(X: torch.Tensor, transposed: bool) -> torch.Tensor:
    return X.transpose(-1, -2) if transposed else X


def _checked_matmul_shape(A, B, out, transposed_A, transposed_B, expected_type) -> tuple:
    check.tensor("A", A)
    check.tensor("B", B)
    if A.dtype != expected_type or B.dtype != expected_type:
        raise TypeError(f"Expected {expected_type} input tensors A and B, but got {A.dtype} and {B.dtype}")
    a, b = _operand(A, transposed_A), _operand(B, transposed_B)
    # 2-D x 2-D, 3-D x 2-D (A's batch kept) or 3-D x 3-D with one batch size: a [..., M, K] @ b [..., K, N].
    shapes_fit = (A.dim() in (2, 3) and B.dim() in (2, A.dim()) and a.shape[-1] == b.shape[-2]
                  and (B.dim() == 2 or a.shape[0] == b.shape[0]))
    if not shapes_fit:
        raise ValueError(
            f"Tensor dimensions incorrect for matrix mulitiplication: A x B: {tuple(A.shape)} x {tuple(B.shape)} "
            f"with transpose for A x B: {transposed_A} x {transposed_B}."
        )
    shape = (*a.shape[:-1], b.shape[-1])
    if out is not None:
        check.out_tensor("out", out, shape, torch.int32, A.device, contiguous=False)
    return shape


def check_matmul(A, B, out=None, transposed_A=False, transposed_B=False, expected_type=torch.int8):
    """Deprecated: the output shape of ``A @ B`` (each optionally transposed in its last two dimensions);
    TypeError for other dtypes than ``expected_type``, ValueError for shapes that do not multiply."""
    warnings.warn(_DEPRECATED, FutureWarning, stacklevel=2)
    return _checked_matmul_shape(A, B, out, transposed_A, transposed_B, expected_type)


def _int8_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a [..., M, K] @ b [K, N]`` through int8_linear_matmul (which takes B as [N, K])."""
    return torch.ops.bitsandbytes.int8_linear_matmul(a, b.t())


def igemm(A, B, out=None, transposed_A=False, transposed_B=False):
    """Deprecated: exact int32 ``A @ B`` of int8 matrices (each optionally transposed); 3-D A with 2-D B
    keeps A's batch, 3-D A with 3-D B multiplies batch by batch. ``out`` (int32) receives a copy."""
    warnings.warn(_DEPRECATED, FutureWarning, stacklevel=2)
    _checked_matmul_shape(A, B, out, transposed_A, transposed_B, torch.int8)
    if A.dim() == 3 and B.dim() == 3:
        return _batched_int8_product(A, B, out, transposed_A, transposed_B)
    result = _int8_product(_operand(A, transposed_A), _operand(B, transposed_B))
    return result if out is None else out.copy_(result)


def _batched_int8_product(A, B, out, transposed_A, transposed_B):
    a, b = _operand(A, transposed_A), _operand(B, transposed_B)
    result = torch.empty((a.shape[0], a.shape[1], b.shape[2]), device=A.device, dtype=torch.int32)
    for i in range(a.shape[0]):
        result[i] = _int8_product(a[i], b[i])
    return result if out is None else out.copy_(result)


def batched_igemm(A, B, out=None, transposed_A=False, transposed_B=False):
    """Deprecated: exact int32 ``A[i] @ B[i]`` for 3-D int8 A [b, M, K] and B [b, K, N] (each optionally
    transposed in its last two dimensions)."""
    warnings.warn(_DEPRECATED, FutureWarning, stacklevel=2)
    if not (isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor) and A.dim() == 3 and B.dim() == 3):
        raise ValueError(f"batched_igemm multiplies 3-D tensors; got {getattr(A, 'shape', A)} and "
                         f"{getattr(B, 'shape', B)}")
    _checked_matmul_shape(A, B, out, transposed_A, transposed_B, torch.int8)
    return _batched_int8_product(A, B, out, transposed_A, transposed_B)


# ---- misc helpers used by downstream code -----------------------------------------------------------------


def get_ptr(A: Optional[torch.Tensor]) -> Optional[ct.c_void_p]:
    """The tensor's data pointer as a ctypes void pointer (None for None)."""
    return None if A is None else ct.c_void_p(A.data_ptr())


def is_on_gpu(tensors: Iterable[Optional[torch.Tensor]]) -> bool:
    """True if all (non-paged) tensors sit on one CUDA device; raises RuntimeError for mixed devices."""
    on_gpu, devices = True, set()
    for t in tensors:
        if t is None:
            continue
        if getattr(t, "is_paged", False):
            continue
        on_gpu &= t.device.type != "cpu"
        devices.add((t.device.type, t.device.index))
    if not on_gpu:
        raise RuntimeError(
            "All input tensors need to be on the same GPU, but found some tensors to not be on a GPU:\n"
            f" {[(t.shape, t.device) for t in tensors if t is not None]}"
        )
    if len(devices) > 1:
        raise RuntimeError(
            "Input tensors need to be on the same GPU, but found the following tensor and device combinations:\n"
            f" {[(t.shape, t.device) for t in tensors if t is not None]}"
        )
    return on_gpu
from ._functional_optim import *  # noqa: F401,F403

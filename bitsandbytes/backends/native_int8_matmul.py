"""LLM.int8() matmul ops for CPU and CUDA tensors: exact int8 products and their dequantization.

``int8_scaled_mm`` is one native call: the dequantization (row and column scales, bias, output dtype)
is applied to the int32 accumulators inside the product wherever the backend can (CPU always; CUDA
for up to 16 rows), so no int32 matrix is written. Outputs in bf16/fp32 are rounded once from the
float32 result, never through fp16.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _native, _validate as check
from .native import _DEVICES, _DTYPE_CODES, _exec, _ptr, _raw_stream, library

ops = torch.ops.bitsandbytes


def _register(name: str):
    return torch.library.register_kernel(f"bitsandbytes::{name}", _DEVICES)


def _int8_operands(A: torch.Tensor, B: torch.Tensor) -> tuple:
    """(A as [M, K] contiguous, B contiguous, M, N, K) after the checks every int8 product shares."""
    check.dtype_in("A", A, (torch.int8,))
    check.dtype_in("B", B, (torch.int8,))
    if B.dim() != 2:
        raise ValueError(f"B must be 2-D [N, K], got shape {tuple(B.shape)}")
    if A.dim() < 1:
        raise ValueError(f"A must have at least one dimension [..., K]; got a 0-d tensor (B is {tuple(B.shape)})")
    if A.shape[-1] != B.shape[1]:
        raise ValueError(f"A [..., K] and B [N, K] disagree on K: {tuple(A.shape)} and {tuple(B.shape)}")
    check.same_device("A", A, B=B)
    K = B.shape[1]
    M = _rows(A)  # (reshape(-1, K) cannot infer the rows when K = 0)
    A2 = A.reshape(M, K).contiguous()
    return A2, B.contiguous(), M, B.shape[0], K


def _rows(A: torch.Tensor) -> int:
    rows = 1
    for d in A.shape[:-1]:
        rows *= d
    return rows


def _on_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but A is on {device}: all tensors of one call must be on the "
                         "same device")


def _stats(name: str, t: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Scales as float32 [n]: other float dtypes are widened (exactly), other counts refused (the kernels
    read exactly n values)."""
    check.tensor(name, t)
    check.dtype_in(name, t, check.FLOAT_DTYPES)
    check.numel(name, t, n)
    _on_device(name, t, device)
    return t.reshape(-1).to(torch.float32).contiguous()


def _bias(bias: Optional[torch.Tensor], n: int, device: torch.device) -> Optional[torch.Tensor]:
    if bias is None:
        return None
    check.tensor("bias", bias)
    check.dtype_in("bias", bias, check.FLOAT_DTYPES)
    if bias.numel() != n:
        raise ValueError(f"bias must have N = {n} elements, got shape {tuple(bias.shape)}")
    _on_device("bias", bias, device)
    return bias.reshape(-1).contiguous()


def _out_dtype(dtype: Optional[torch.dtype]) -> torch.dtype:
    dtype = dtype or torch.float16
    check.float_dtype("dtype", dtype)
    return dtype


def _linear_matmul_into(A, B, out) -> None:
    A2, B2, M, N, K = _int8_operands(A, B)
    if K == 0:  # a sum of no products; the kernels are not asked to write an output they read nothing for
        out.zero_()
        return
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_int8_linear_matmul", _ptr(A2), _ptr(B2), _ptr(out), M, N, K, dev, stream)


@_register("int8_linear_matmul")
def _(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    out = torch.empty((*A.shape[:-1], B.shape[0] if B.dim() == 2 else 0), device=A.device, dtype=torch.int32)
    _linear_matmul_into(A, B, out)
    return out


@_register("int8_linear_matmul.out")
def _(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    shape = (*A.shape[:-1], B.shape[0] if B.dim() == 2 else 0)
    check.out_tensor("out", out, shape, torch.int32, A.device)
    _linear_matmul_into(A, B, out)


@_register("int8_mm_dequant")
def _(A, row_stats, col_stats, dtype=None, bias=None):
    check.dtype_in("A", A, (torch.int32,))
    if A.dim() < 1:
        raise ValueError("A must be at least 1-D [..., N]")
    N = A.shape[-1]
    M = _rows(A)
    dtype = _out_dtype(dtype)
    rows, cols = _stats("row_stats", row_stats, M, A.device), _stats("col_stats", col_stats, N, A.device)
    bias = _bias(bias, N, A.device)
    acc = A.contiguous()
    out = torch.empty(A.shape, device=A.device, dtype=dtype)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_int8_mm_dequant", _ptr(acc), _ptr(rows), _ptr(cols), _ptr(bias),
             _DTYPE_CODES[bias.dtype] if bias is not None else 0, _ptr(out), _DTYPE_CODES[dtype], M, N, dev, stream)
    return out


def scaled_mm(A, B, row_stats, col_stats, bias=None, dtype=None) -> torch.Tensor:
    A2, B2, M, N, K = _int8_operands(A, B)
    dtype = _out_dtype(dtype)
    rows, cols = _stats("row_stats", row_stats, M, A.device), _stats("col_stats", col_stats, N, A.device)
    bias = _bias(bias, N, A.device)
    if K == 0:
        # No products: the int32 sums are zeros, dequantized (row and column scales, bias) as any others.
        acc = torch.zeros((*A.shape[:-1], N), device=A.device, dtype=torch.int32)
        return ops.int8_mm_dequant(acc, rows, cols, dtype, bias)
    out = torch.empty((*A.shape[:-1], N), device=A.device, dtype=dtype)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_int8_scaled_mm", _ptr(A2), _ptr(B2), _ptr(rows), _ptr(cols), _ptr(bias),
             _DTYPE_CODES[bias.dtype] if bias is not None else 0, _ptr(out), _DTYPE_CODES[dtype], M, N, K, dev,
             stream)
    return out


@_register("int8_scaled_mm")
def _(A, B, row_stats, col_stats, bias=None, dtype=None):
    return scaled_mm(A, B, row_stats, col_stats, bias, dtype)


@_register("int8_mixed_scaled_mm")
def _(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
    """LLM.int8() with outliers: the int8 product of the quantized parts plus, in A's dtype, the
    product of the outlier columns of A (zeroed in CA) with the same columns of the dequantized weight."""
    check.dtype_in("A", A, check.FLOAT_DTYPES)
    if A.shape != CA.shape:
        raise ValueError(f"A and CA must have the same shape, got {tuple(A.shape)} and {tuple(CA.shape)}")
    check.same_device("A", A, CA=CA, CB=CB, SCA=SCA, SCB=SCB, outlier_cols=outlier_cols, bias=bias)
    if outlier_cols is not None:
        check.dtype_in("outlier_cols", outlier_cols, (torch.int64, torch.int32))
    out = scaled_mm(CA, CB, SCA, SCB, bias, A.dtype)
    if outlier_cols is None:
        return out, None
    cols = outlier_cols.reshape(-1)
    M = _rows(A)
    subA = A.reshape(M, A.shape[-1])[:, cols]
    if cols.numel():
        # Only the few outlier columns of the weight are dequantized (CB * SCB / 127, in float32).
        subB = (CB[:, cols].to(torch.float32) * (SCB.reshape(-1, 1).to(torch.float32) / 127.0)).to(A.dtype)
        out.reshape(M, out.shape[-1]).addmm_(subA, subB.t())
    return out, subA


# ---- eager inference fast path -----------------------------------------------------------------------------
# One native call quantizes the activations, multiplies, dequantizes and handles outlier columns on
# the device (no host synchronisation, no int32 matrix for few rows): what MatMul8bitLt does in
# several ops, at a fraction of the host time. Traced or compiled code and tensor subclasses keep
# using the ops.


_DIRECT_PLAN = "_int8_direct_plan"  # the memo's entry: (key, dtype code, M, K, N, output shape, device index)
_direct_function = None  # the CUDA library's bnb_int8_linear, looked up once (memoised calls are CUDA only)


def _mask_out(mask: Optional[torch.Tensor], threshold: float, K: int, device: torch.device):
    """The outlier mask the call writes: none without a threshold, else the offered buffer if it fits."""
    if threshold <= 0:
        return None
    if mask is None or mask.dtype != torch.uint8 or mask.numel() != K or mask.device != device:
        return torch.empty(K, device=device, dtype=torch.uint8)
    return mask


def _direct_key(A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, threshold: float,
                bias: Optional[torch.Tensor]) -> tuple:
    """What a call's checks depend on: the activations' dtype, shape and device, and which weight, scale
    and bias tensors (with their data addresses, so a tensor given new data is checked again)."""
    return (A.dtype, A.shape, A.device, id(CB), CB.data_ptr(), CB.shape, CB.dtype, id(SCB), SCB.data_ptr(),
            id(bias), None if bias is None else bias.data_ptr(), threshold)


def int8_linear_direct(A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, threshold: float,
                       bias: Optional[torch.Tensor], mask: Optional[torch.Tensor] = None,
                       memo: Optional[dict] = None):
    """``(A @ (CB * SCB / 127).T + bias, outlier_mask)`` by LLM.int8() in A's dtype, or None if the ops must
    handle the call. outlier_mask (uint8 [K], 1 = outlier column) is None when threshold == 0; ``mask``
    may offer a buffer for it (reused by layers: one allocation less per call).

    ``memo``: a dict the caller keeps per weight (layers keep one). A call with the same activation
    dtype, shape and device and the same weight, scale and bias tensors as the last checked one skips
    the checks and goes straight to the native function: at a few rows the host time of a call is as
    long as the GPU's, and the checks were a third of it."""
    if type(A) is not torch.Tensor or torch.compiler.is_compiling() or \
            torch.utils._python_dispatch._get_current_dispatch_mode() is not None:
        return None
    key = None
    if memo is not None:
        key = _direct_key(A, CB, SCB, threshold, bias)
        plan = memo.get(_DIRECT_PLAN)
        if plan is not None and plan[0] == key and A.is_contiguous():
            _, code, M, K, N, out_shape, index = plan
            device = key[2]
            out = torch.empty(out_shape, device=device, dtype=key[0])
            mask = _mask_out(mask, threshold, K, device)
            global _direct_function
            if _direct_function is None:
                _direct_function = getattr(library(device)._dll, "bnb_int8_linear")
            if _direct_function(A.data_ptr(), code, M, K, CB.data_ptr(), SCB.data_ptr(), N, float(threshold), _ptr(bias),
                  out.data_ptr(), _ptr(mask), index, _raw_stream(index)) == _native.STATUS_OK:
                return out, mask
            # A failed call wrote nothing: the checked path below repeats it with the error handling.
    if (A.dtype not in _DTYPE_CODES or CB.dtype != torch.int8 or CB.dim() != 2 or A.dim() == 0
            or A.shape[-1] != CB.shape[1] or A.numel() == 0 or SCB.dtype != torch.float32
            or A.device != CB.device or A.device != SCB.device or A.device.type not in _DEVICES
            or not CB.is_contiguous() or not SCB.is_contiguous() or SCB.numel() != CB.shape[0]):
        return None
    if bias is not None and (bias.device != A.device or bias.dim() != 1 or bias.numel() != CB.shape[0]
                             or bias.dtype not in _DTYPE_CODES):
        return None
    K, N = CB.shape[1], CB.shape[0]
    A2 = A if A.is_contiguous() else A.contiguous()
    M = A2.numel() // K
    if bias is not None:
        bias = bias.to(A.dtype).contiguous()
    out = torch.empty((*A.shape[:-1], N), device=A.device, dtype=A.dtype)
    mask = _mask_out(mask, threshold, K, A.device)
    lib, dev, stream = _exec(A.device)
    try:
        lib.call("bnb_int8_linear", A2.data_ptr(), _DTYPE_CODES[A.dtype], M, K, CB.data_ptr(), SCB.data_ptr(), N,
                 float(threshold), _ptr(bias), out.data_ptr(), _ptr(mask), dev, stream)
    except _native.NativeError:
        # e.g. no memory left for the call's scratch outside torch's caching allocator: the ops
        # allocate through torch (which can free its cache) and report anything that persists.
        return None
    if (key is not None and dev >= 0 and _raw_stream is not None and (bias is None or bias.dtype == A.dtype)
            and A.is_contiguous()):
        # Checked: the next call with this key may skip the checks (CUDA; a bias that needs no cast).
        # Only plain values are kept, so a memo held by a layer's state deep-copies and pickles.
        memo[_DIRECT_PLAN] = (key, _DTYPE_CODES[A.dtype], M, K, N, out.shape, dev)
    return out, mask

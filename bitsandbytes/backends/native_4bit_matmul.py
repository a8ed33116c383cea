"""gemm_4bit / gemv_4bit for CPU and CUDA tensors: native 4-bit dequantization, then the device's GEMM.

This is the dequantize-then-GEMM path: the weight is expanded once by the native dequantize_4bit
kernel into the activation dtype and multiplied by the platform BLAS (cuBLAS on CUDA, oneDNN/MKL on
CPU). It is the large-M path of the 4-bit matmul; a fused weight-streaming kernel for small M takes
over where it is faster.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _validate as check
from .native import _DEVICES

ops = torch.ops.bitsandbytes


def _weight(B, absmax, blocksize: int, quant_type: str, shapeB: Sequence[int], dtype: torch.dtype):
    if len(shapeB) != 2:
        raise ValueError(f"shapeB must be 2-D [N, K]; got {list(shapeB)}")
    return ops.dequantize_4bit(B, absmax, blocksize, quant_type, list(shapeB), dtype)


def _check_activations(A: torch.Tensor, shapeB: Sequence[int], bias: Optional[torch.Tensor]) -> None:
    check.dtype_in("A", A, check.FLOAT_DTYPES)
    if A.shape[-1] != shapeB[1]:
        raise ValueError(f"A [..., K] must match shapeB [N, K]; got {tuple(A.shape)} and {list(shapeB)}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != shapeB[0]:
            raise ValueError(f"bias must be 1-D with N = {shapeB[0]} elements; got shape {tuple(bias.shape)}")
        check.same_device("A", A, bias=bias)


@torch.library.register_kernel("bitsandbytes::gemm_4bit", _DEVICES)
def _(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    _check_activations(A, shapeB, bias)
    check.same_device("A", A, B=B, absmax=absmax, absmax_8bit=absmax_8bit, absmax_code=absmax_code,
                      absmax_offset=absmax_offset)
    if absmax_8bit is not None:
        # Double-quantized statistics: block scale = code[q] * absmax2[i // 256] + offset.
        if absmax_code is None or absmax_offset is None:
            raise ValueError("absmax_8bit needs absmax_code and absmax_offset (double-quantized statistics)")
        scales = ops.dequantize_blockwise(absmax_8bit, absmax, absmax_code, 256, torch.float32)
        scales += absmax_offset
    else:
        scales = absmax
    weight = _weight(B, scales, blocksize, quant_type, shapeB, A.dtype)
    return torch.nn.functional.linear(A, weight, bias)



def _quant_type_of(code: torch.Tensor) -> str:
    """nf4 or fp4 from a 16-entry table (FP4's second entry is positive, NF4's negative)."""
    check.dtype_in("code", code, (torch.float32,))
    check.numel("code", code, 16)
    return "fp4" if float(code[1]) > 0 else "nf4"


def _gemv(A, B, shapeB, absmax, code, blocksize):
    _check_activations(A, shapeB, None)
    check.same_device("A", A, B=B, absmax=absmax, code=code)
    weight = _weight(B, absmax, blocksize, _quant_type_of(code), shapeB, A.dtype)
    return torch.nn.functional.linear(A, weight)


@torch.library.register_kernel("bitsandbytes::gemv_4bit", _DEVICES)
def _(A, B, shapeB, absmax, code, blocksize):
    return _gemv(A, B, shapeB, absmax, code, blocksize)


@torch.library.register_kernel("bitsandbytes::gemv_4bit.out", _DEVICES)
def _(A, B, shapeB, absmax, code, blocksize, out):
    result = _gemv(A, B, shapeB, absmax, code, blocksize)
    check.out_tensor("out", out, result.shape, A.dtype, A.device)
    out.copy_(result)

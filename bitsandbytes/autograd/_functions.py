"""Autograd functions: the 4-bit matmul (QLoRA path) and the LLM.int8() state object.

``matmul_4bit`` multiplies an activation by a 4-bit weight stored as a flat packed tensor plus a
QuantState. Inference runs one fused op (``torch.ops.bitsandbytes.gemm_4bit``); when a gradient is
needed the same op runs inside ``MatMul4Bit``, whose backward dequantizes the weight once to form
``grad_A``. The weight itself never receives a gradient: 4-bit weights are frozen (LoRA adapters
train beside them).

The LLM.int8() matmul (``matmul``, ``MatMul8bitLt``, ``MatMul8bitFp``) lives in ``_int8_matmul`` and
is re-exported here, the module downstream code imports it from; its per-layer state
``MatmulLtState`` is defined here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as torchF

from .. import _validate as check, functional as F
from .._quant_state import QuantState
from ..backends.native_4bit_matmul import gemm_4bit_direct

__all__ = ["MatmulLtState", "MatMul4Bit", "MatMul8bitLt", "MatMul8bitFp", "matmul", "matmul_4bit"]

# gemm_4bit reconstructs a nested block scale as code[q[i]] * absmax2[i // 256] + offset: the
# second-level blocksize is fixed by the op's contract, not a tunable.
NESTED_BLOCKSIZE = 256


@dataclass
class MatmulLtState:
    """Per-layer state of LLM.int8() matmul (quantized weight rows, outlier columns...).

    The dataclass fields hold tensors that change as the layer runs; the plain class attributes
    below are configuration that Linear8bitLt sets per instance. Callers may also attach legacy
    attributes (e.g. ``CxB``) freely, so no ``__slots__``.
    """

    force_no_igemmlt: bool = False
    CB: Optional[torch.Tensor] = None
    SB: Optional[torch.Tensor] = None
    SCB: Optional[torch.Tensor] = None
    SBt: Optional[torch.Tensor] = None
    CBt: Optional[torch.Tensor] = None
    subB: Optional[torch.Tensor] = None
    outlier_pool: Optional[object] = None
    idx: Optional[torch.Tensor] = None

    has_accumulated_gradients = False
    threshold = 0.0
    is_training = True
    has_fp16_weights = True
    use_pool = False

    def set_outlier_mask(self, mask: torch.Tensor) -> None:
        """Record the outlier columns of the last call as a uint8 mask [K]; ``idx`` reads it lazily."""
        self.__dict__["_idx_value"] = None
        self.__dict__["_idx_mask"] = mask

    def reset_grads(self) -> None:
        # Drops every derived weight form so the next step re-quantizes from the updated fp16 weight.
        self.CB = None
        self.SB = None
        self.SCB = None
        self.SBt = None
        self.CBt = None


def _get_idx(state: MatmulLtState) -> Optional[torch.Tensor]:
    mask = state.__dict__.get("_idx_mask")
    if mask is not None:  # the sorted int64 column indices, as int8_vectorwise_quant returns them
        state.__dict__["_idx_value"] = torch.nonzero(mask).reshape(-1)
        state.__dict__["_idx_mask"] = None
    return state.__dict__.get("_idx_value")


def _set_idx(state: MatmulLtState, value: Optional[torch.Tensor]) -> None:
    state.__dict__["_idx_mask"] = None
    state.__dict__["_idx_value"] = value


# ``idx`` stays a dataclass field (constructor argument, equality, fields()) but is stored through a
# property, so the fused inference path can leave a device-side mask that is only turned into column
# indices (a host synchronisation) if somebody reads it.
MatmulLtState.idx = property(_get_idx, _set_idx)


def _check_4bit_state(quant_state: Optional[QuantState]) -> None:
    if quant_state is None:
        raise ValueError("matmul_4bit needs the weight's quant_state (got None); quantize the weight first")
    shape = quant_state.shape
    if shape is None or len(shape) != 2:
        raise ValueError(f"matmul_4bit needs a 2-D weight [N, K]; the quant_state holds shape {shape}")


def _gemm_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``A @ dequantize_4bit(B).T + bias`` through the fused op, in A's dtype."""
    if bias is not None and bias.dtype != A.dtype:
        bias = bias.to(A.dtype)  # the op contract: bias in A's dtype
    direct = gemm_4bit_direct(A, B, quant_state, bias)  # eager calls skip the dispatcher (same kernel)
    if direct is not None:
        return direct
    shape = list(quant_state.shape)
    if quant_state.nested:
        state2 = quant_state.state2
        if state2.blocksize != NESTED_BLOCKSIZE:
            raise NotImplementedError(
                f"gemm_4bit supports double-quantized absmax only with nested blocksize {NESTED_BLOCKSIZE}; "
                f"got {state2.blocksize}"
            )
        # Mapping of the nested statistics onto the op's arguments: the first-level absmax is the
        # 8-bit code index tensor, the second level supplies the float scales and its code book.
        return torch.ops.bitsandbytes.gemm_4bit(
            A, B, shape, state2.absmax, quant_state.blocksize, quant_state.quant_type, bias,
            quant_state.absmax, state2.code, quant_state.offset,
        )
    return torch.ops.bitsandbytes.gemm_4bit(A, B, shape, quant_state.absmax, quant_state.blocksize,
                                            quant_state.quant_type, bias)


def _empty_output(A: torch.Tensor, n: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The product of an input without values: [..., N] of zeros (a sum over K = 0 terms is 0, and M = 0
    rows have none), plus the bias as every path adds it."""
    out = torch.zeros((*A.shape[:-1], n), dtype=A.dtype, device=A.device)
    return out if bias is None else out.add_(bias.to(A.dtype))


class MatMul4Bit(torch.autograd.Function):
    """``A @ W.T + bias`` with W a frozen 4-bit weight; gradients flow to A and bias only."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, quant_state: Optional[QuantState] = None):
        n = quant_state.shape[0]
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.state = quant_state
        ctx.save_for_backward(B)
        if A.numel() == 0:
            ctx.empty = True
            return _empty_output(A, n, bias)
        ctx.empty = False
        return _gemm_4bit(A, B, quant_state, bias)

    @staticmethod
    def backward(ctx, grad_output):
        (B,) = ctx.saved_tensors
        need_A, _, _, need_bias, _ = ctx.needs_input_grad
        grad_A = grad_bias = None
        if need_bias:
            # Every leading dimension is a batch dimension of the bias broadcast.
            grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0, dtype=ctx.bias_dtype)
        if need_A:
            if ctx.empty:
                grad_A = torch.zeros((*grad_output.shape[:-1], ctx.state.shape[1]), dtype=grad_output.dtype,
                                     device=grad_output.device)
            else:
                weight = F.dequantize_4bit(B, ctx.state).to(grad_output.dtype)  # [N, K]
                grad_A = torch.matmul(grad_output, weight)
        return grad_A, None, None, grad_bias, None


def matmul_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, out: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``A @ dequantize_4bit(B).T + bias`` for a packed 4-bit weight of logical shape ``quant_state.shape = [N, K]``.

    ``B`` may be the packed tensor or its transpose (both hold the same bytes): it is flattened to
    ``[-1, 1]`` first. A weight quantized as ``[K, N]`` still works but is slow and deprecated.
    """
    _check_4bit_state(quant_state)
    n, k = quant_state.shape
    if not isinstance(A, torch.Tensor) or A.dim() == 0:
        raise ValueError(f"A must be a tensor [..., K] with at least one dimension; got "
                         f"{tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__}")
    if out is not None:
        # Checked before computing: copy_ would otherwise broadcast into a larger out or cast to its dtype.
        # (A weight quantized as [K, N] gives [..., K] outputs.)
        cols = k if (A.shape[-1] == n and n != k) else n
        check.out_tensor("out", out, (*A.shape[:-1], cols), A.dtype, A.device, contiguous=False)
    needs_grad = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
    if not needs_grad and out is None and A.shape[-1] == k:
        # Eager inference: the native kernels straight away (B's bytes are the same in any view).
        direct = gemm_4bit_direct(A, B, quant_state, bias if bias is None or bias.dtype == A.dtype else bias.to(A.dtype))
        if direct is not None:
            return direct
    B = B.view(-1, 1)
    if A.shape[-1] == n and n != k:
        warnings.warn(
            f"matmul_4bit got a weight quantized as [K, N] = {list(quant_state.shape)}; this layout takes a slow path "
            "(full dequantization). Re-quantize from the weight in [N, K] (out_features, in_features) layout.",
            DeprecationWarning,
            stacklevel=2,
        )
        weight = F.dequantize_4bit(B, quant_state).to(A.dtype)
        result = torchF.linear(A, weight.t(), None if bias is None else bias.to(A.dtype))
    elif needs_grad:
        result = MatMul4Bit.apply(A, B, None, bias, quant_state)
    elif A.numel() == 0:
        result = _empty_output(A, n, bias)
    else:
        result = _gemm_4bit(A, B, quant_state, bias)
    if out is not None:
        return out.copy_(result)
    return result


# Imported last: _int8_matmul refers back to MatmulLtState defined above.
from ._int8_matmul import MatMul8bitFp, MatMul8bitLt, matmul  # noqa: E402

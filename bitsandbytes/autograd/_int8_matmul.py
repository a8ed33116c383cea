"""LLM.int8() matmul: ``A @ W.T + bias`` with W stored as int8 rows (CB) and per-row scales (SCB).

Forward (``MatMul8bitLt``): the activation is quantized row-wise to int8 in its own dtype (fp16,
bf16 or fp32: no round trip through fp16). With ``threshold > 0`` the activation columns holding a
value ``|x| >= threshold`` (outlier features) are taken out of the int8 product and multiplied in
A's dtype against the dequantized weight columns (``int8_mixed_scaled_mm``); otherwise one fused
``int8_scaled_mm`` computes ``acc_i32 * row_scale * col_scale / 127^2 + bias``. The output has A's
dtype and shape ``[*A.shape[:-1], N]``.

Backward: ``grad_A = grad @ (CB * SCB / 127)`` in A's dtype, ``grad_bias`` = grad summed over all
batch dimensions, and, when the weight itself trains (``has_fp16_weights``), ``grad_B = grad.T @ A``
in floating point.

``MatMul8bitFp`` is the CPU training path: dequantize the weight once and run ``F.linear``, whose
backward is plain floating point as well.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as torchF

from .. import _validate as check, functional as F
from ..backends.native_int8_matmul import int8_linear_direct

__all__ = ["MatMul8bitLt", "MatMul8bitFp", "matmul"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Weights are quantized from their fp16 values: that is the reference procedure, so the int8 rows
# and scales are byte-identical to those in checkpoints written by other implementations.
_WEIGHT_QUANT_DTYPE = torch.float16

# The dequantized weight of the backward pass is built in column slices of at most this many
# float32 elements (256 MiB), so a large layer does not need a full float32 copy of its weight.
_DEQUANT_CHUNK_ELEMENTS = 1 << 26


def quantize_weight(weight: torch.Tensor):
    """(CB int8 [N, K], SCB float32 [N]): the row-wise int8 form of a float weight (rows = all leading dims)."""
    if weight.dim() == 0:
        raise ValueError("an 8-bit weight needs at least one dimension (rows x features)")
    if weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"only a float16/bfloat16/float32 weight can be quantized to int8; got {weight.dtype}")
    CB, SCB, _ = F.int8_vectorwise_quant(weight.detach().contiguous().to(_WEIGHT_QUANT_DTYPE))
    return CB, SCB


def _check_inputs(A: torch.Tensor, B: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    if not isinstance(A, torch.Tensor) or not isinstance(B, torch.Tensor):
        raise TypeError("matmul expects tensors A and B")
    if A.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"matmul: A must be float16, bfloat16 or float32; got {A.dtype}")
    if A.dim() == 0:
        raise ValueError("matmul: A must have at least one dimension [..., K]")
    if B.dim() != 2:
        raise ValueError(f"matmul: B must be the 2-D weight [N, K]; got shape {tuple(B.shape)}")
    if B.dtype != torch.int8 and B.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"matmul: B must be a float weight or its int8 rows; got {B.dtype}")
    if B.shape[1] != A.shape[-1]:
        raise ValueError(
            f"matmul: A [..., K={A.shape[-1]}] and the weight B [N, K={B.shape[1]}] disagree on K "
            f"(A {tuple(A.shape)}, B {tuple(B.shape)}); B must be stored as [out_features, in_features]"
        )
    if B.device != A.device:
        raise ValueError(f"matmul: A is on {A.device} but B is on {B.device}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != B.shape[0]:
            raise ValueError(f"matmul: bias must be 1-D of length N={B.shape[0]}; got shape {tuple(bias.shape)}")
        if bias.device != A.device:
            raise ValueError(f"matmul: A is on {A.device} but bias is on {bias.device}")


def _prepare_weight(B: torch.Tensor, state) -> None:
    """Make ``state.CB`` / ``state.SCB`` the int8 rows and scales of the weight B."""
    if B.dtype == torch.int8:
        # An int8 B is already the quantized weight; its row scales must come with the state (checked
        # before the state takes B, so a refused call leaves it as it was).
        if state.SCB is None:
            raise ValueError("matmul: B is an int8 weight but state.SCB (its per-row scales) is None")
        if state.CB is None:
            state.CB = B.detach()
    elif state.has_fp16_weights or state.CB is None or state.SCB is None:
        # A float weight that trains is re-quantized on every call: optimizers (ours included)
        # update weights in place without bumping version counters, so an int8 copy kept from an
        # earlier call could not be proven fresh. A frozen weight is quantized once.
        state.reset_grads()
        state.CB, state.SCB = quantize_weight(B)
    if state.CB.device != B.device or state.SCB.device != B.device:
        raise ValueError(
            f"matmul: the quantized weight in state is on {state.CB.device} but A and B are on {B.device}; "
            "move the layer (module.to(device)) so its state follows"
        )
    if tuple(state.CB.shape) != tuple(B.shape):
        raise ValueError(f"matmul: state.CB has shape {tuple(state.CB.shape)} but B has shape {tuple(B.shape)}")


def _dequantized_weight_matmul(grad: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, dtype: torch.dtype):
    """``grad [M, N] @ (CB * SCB / 127) [N, K]`` in ``dtype``; the weight is dequantized by column slices
    (each output column depends on one weight column only, so slicing changes no rounding)."""
    n, k = CB.shape
    grad = grad.to(dtype)
    step = max(1, _DEQUANT_CHUNK_ELEMENTS // max(n, 1))
    if step >= k:
        return grad @ F.int8_vectorwise_dequant(CB, SCB).to(dtype)
    out = torch.empty((grad.shape[0], k), dtype=dtype, device=grad.device)
    for k0 in range(0, k, step):
        w = F.int8_vectorwise_dequant(CB[:, k0:k0 + step].contiguous(), SCB).to(dtype)
        torch.matmul(grad, w, out=out[:, k0:k0 + step])
    return out


def _bias_grad(grad_output: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    # Every leading dimension is a batch dimension of the bias broadcast.
    return grad_output.reshape(-1, grad_output.shape[-1]).sum(0, dtype=dtype)


def _weight_grads(ctx, grad_output, CB, SCB, A, need_A: bool, need_B: bool):
    """(grad_A, grad_B) of ``A @ W.T`` for both int8 matmul functions: grad_A through the dequantized
    weight in A's dtype, grad_B (a trainable float weight) as ``grad.T @ A`` in floating point."""
    grad2 = grad_output.reshape(-1, grad_output.shape[-1])
    grad_A = grad_B = None
    if need_A:
        grad_A = _dequantized_weight_matmul(grad2, CB, SCB, ctx.a_dtype).reshape(ctx.a_shape)
    if need_B:
        A2 = A.reshape(-1, A.shape[-1])
        grad_B = (grad2.to(A2.dtype).t() @ A2).to(ctx.b_dtype)
    return grad_A, grad_B


class MatMul8bitLt(torch.autograd.Function):
    """``A @ W.T + bias`` on the int8 tensor cores (with 16-bit outlier columns when threshold > 0)."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, state=None):
        ctx.state = state
        ctx.a_shape = A.shape
        ctx.a_dtype = A.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.b_dtype = B.dtype
        n = B.shape[0]
        if A.numel() == 0:
            # Nothing to quantize. The product with an empty K is zero (plus bias).
            ctx.empty = True
            ctx.save_for_backward(None, None, None)
            result = torch.zeros((*A.shape[:-1], n), dtype=A.dtype, device=A.device)
            if bias is not None and result.numel():
                result += bias.to(A.dtype)
            return result
        ctx.empty = False

        _prepare_weight(B, state)
        CB, SCB = state.CB, state.SCB
        A2 = A.reshape(-1, A.shape[-1])
        bias_a = None if bias is None else bias.to(A.dtype)  # the ops take the bias in the output dtype

        CA, SCA, outlier_cols = F.int8_vectorwise_quant(A2, threshold=state.threshold)
        if state.threshold > 0.0:
            state.idx = outlier_cols
            result, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(A2, CA, CB, SCA, SCB, outlier_cols, bias_a)
        else:
            result = torch.ops.bitsandbytes.int8_scaled_mm(CA, CB, SCA, SCB, bias_a, A.dtype)

        # The backward pass needs the int8 weight as it was in this call, and A only for grad_B.
        need_b = ctx.needs_input_grad[1]
        ctx.save_for_backward(CB, SCB, A2 if need_b else None)
        return result.reshape(*A.shape[:-1], n)

    @staticmethod
    def backward(ctx, grad_output):
        need_A, need_B, _, need_bias, _ = ctx.needs_input_grad
        CB, SCB, A2 = ctx.saved_tensors
        grad_A = grad_B = grad_bias = None
        if need_bias:
            grad_bias = _bias_grad(grad_output, ctx.bias_dtype)
        if ctx.empty:
            if need_A:
                grad_A = torch.zeros(ctx.a_shape, dtype=ctx.a_dtype, device=grad_output.device)
            if need_B:
                n = grad_output.shape[-1]
                grad_B = torch.zeros((n, ctx.a_shape[-1]), dtype=ctx.b_dtype, device=grad_output.device)
            return grad_A, grad_B, None, grad_bias, None
        grad_A, grad_B = _weight_grads(ctx, grad_output, CB, SCB, A2, need_A, need_B)
        return grad_A, grad_B, None, grad_bias, None


class MatMul8bitFp(torch.autograd.Function):
    """``A @ dequant(W).T + bias`` in floating point: the training path on CPU, where one
    dequantization plus a BLAS GEMM beats quantizing every activation and gradient."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, state=None):
        _prepare_weight(B, state)
        CB, SCB = state.CB, state.SCB
        ctx.a_shape = A.shape
        ctx.a_dtype = A.dtype
        ctx.b_dtype = B.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(CB, SCB, A if ctx.needs_input_grad[1] else None)
        weight = F.int8_vectorwise_dequant(CB, SCB).to(A.dtype)
        return torchF.linear(A, weight, None if bias is None else bias.to(A.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        need_A, need_B, _, need_bias, _ = ctx.needs_input_grad
        CB, SCB, A = ctx.saved_tensors
        grad_bias = _bias_grad(grad_output, ctx.bias_dtype) if need_bias else None
        grad_A, grad_B = _weight_grads(ctx, grad_output, CB, SCB, A, need_A, need_B)
        return grad_A, grad_B, None, grad_bias, None


def matmul(A: torch.Tensor, B: torch.Tensor, out: Optional[torch.Tensor] = None, state=None,
           threshold: float = 0.0, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LLM.int8() ``A @ B.T + bias`` for a weight ``B = [N, K]`` (float, or int8 rows with ``state.SCB``).

    ``state`` (a MatmulLtState) carries the quantized weight between calls, the outlier
    ``threshold`` and the mode flags; ``threshold > 0`` here overrides the state's. Training on a CPU
    tensor runs the floating-point path (MatMul8bitFp); everything else the int8 path (MatMul8bitLt).
    ``out``, when given, receives a copy of the result.
    """
    from ._functions import MatmulLtState  # defined beside the 4-bit matmul; imported late (cycle)

    state = state if state is not None else MatmulLtState()
    threshold = check.int8_threshold(threshold)
    check.int8_threshold(state.threshold)  # (a layer's, possibly set by hand)
    _check_inputs(A, B, bias)
    if out is not None:
        # Checked before computing: copy_ would broadcast into a larger out or cast into another dtype.
        check.out_tensor("out", out, (*A.shape[:-1], B.shape[0]), A.dtype, A.device, contiguous=False)
    if threshold > 0.0:  # (only once the call is known to be valid: a refused call leaves the state as it was)
        state.threshold = threshold
    fp_path = state.is_training and A.device.type in ("cpu", "xpu")
    needs_grad = torch.is_grad_enabled() and (A.requires_grad or B.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if not fp_path and not needs_grad and not state.has_fp16_weights:
        # Inference with int8 weights: one native call (quantize, multiply, outliers, dequantize).
        CB = B.data if B.dtype == torch.int8 else state.CB
        if CB is not None and state.SCB is not None and tuple(CB.shape) == tuple(B.shape):
            fused = int8_linear_direct(A, CB, state.SCB, state.threshold, bias)
            if fused is not None:
                result, outlier_mask = fused
                state.CB = CB
                if outlier_mask is not None:
                    # state.idx (the outlier columns) is formed from the mask only when read: forming it
                    # here would make every call wait for the GPU.
                    state.set_outlier_mask(outlier_mask)
                return out.copy_(result) if out is not None else result
    if fp_path:
        result = MatMul8bitFp.apply(A, B, None, bias, state)
    else:
        result = MatMul8bitLt.apply(A, B, None, bias, state)
    if out is not None:
        return out.copy_(result)
    return result

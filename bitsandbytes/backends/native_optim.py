"""Kernels for the optimizer ops on CPU and CUDA tensors (the update itself runs in the native core)."""

from __future__ import annotations

import ctypes as ct
from typing import Optional

import torch

from .. import _native, _validate as check
from .native import _DEVICES, _DTYPE_CODES, _exec, _ptr

# Optimizer names of the registry and the update rule each uses. LAMB and LARS are Adam and
# momentum with the trust ratio (max_unorm > 0).
RULES = {
    "adam": "adam",
    "lamb": "adam",
    "momentum": "momentum",
    "lars": "momentum",
    "rmsprop": "rmsprop",
    "adagrad": "adagrad",
    "lion": "lion",
    "ademamix": "ademamix",
}
TWO_STATE = {"adam", "ademamix"}


def native_rule(optimizer_name: str) -> str:
    """The native update rule an optimizer name runs (ValueError for an unknown name)."""
    rule = RULES.get(optimizer_name)
    if rule is None:
        raise ValueError(f"optimizer_name must be one of {sorted(RULES)}; got {optimizer_name!r}")
    return rule


def _state_numel(rule: str, n: int) -> int:
    return 2 * n if rule == "ademamix" else n


def check_update_tensors(rule: str, g, p, state1, state2, state_dtype) -> None:
    """Dtypes, sizes and contiguity of an update's tensors (devices are checked by the caller)."""
    check.dtype_in("p", p, check.FLOAT_DTYPES)
    check.dtype_in("g", g, check.FLOAT_DTYPES)
    check.dtype_in("state1", state1, (state_dtype,))
    n = p.numel()
    check.numel("g", g, n)
    check.numel("state1", state1, _state_numel(rule, n))
    if rule in TWO_STATE:
        if state2 is None:
            raise ValueError(f"the {rule} update needs state2")
        check.dtype_in("state2", state2, (state_dtype,))
        check.numel("state2", state2, n)
    for name, t in (("p", p), ("state1", state1), ("state2", state2)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is updated in place); got strides {t.stride()}")


def _check_tensors(rule: str, g, p, state1, state2, state_dtype, extra: dict) -> None:
    check_update_tensors(rule, g, p, state1, state2, state_dtype)
    check.same_device("p", p, g=g, state1=state1, state2=state2, **extra)


def _hparams(lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale, max_unorm, param_norm, step, skip_zeros):
    return _native.OptimizerHparams(lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale, max_unorm,
                                    param_norm, int(step), int(bool(skip_zeros)))


def _unorm(unorm_vec: Optional[torch.Tensor], max_unorm: float, p: torch.Tensor):
    if max_unorm <= 0:
        return None
    if unorm_vec is None:
        raise ValueError("max_unorm > 0 needs unorm_vec (a float32 tensor of one element)")
    check.dtype_in("unorm_vec", unorm_vec, (torch.float32,))
    check.same_device("p", p, unorm_vec=unorm_vec)
    return unorm_vec


@torch.library.register_kernel("bitsandbytes::optimizer_update_32bit", _DEVICES)
def _(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3, alpha, eps,
      weight_decay, step, lr, gnorm_scale, skip_zeros=False):
    rule = native_rule(optimizer_name)
    _check_tensors(rule, g, p, state1, state2, torch.float32, {"unorm_vec": unorm_vec})
    unorm = _unorm(unorm_vec, max_unorm, p)
    g = g.contiguous()
    hp = _hparams(lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale, max_unorm, param_norm, step,
                  skip_zeros)
    lib, dev, stream = _exec(check.storage_device(p))
    lib.call("bnb_optimizer_update_32bit", _native.OPTIMIZERS[rule], ct.byref(hp), _ptr(p), _DTYPE_CODES[p.dtype],
             _ptr(g), _DTYPE_CODES[g.dtype], _ptr(state1), _ptr(state2 if rule in TWO_STATE else None), _ptr(unorm),
             p.numel(), dev, stream)


@torch.library.register_kernel("bitsandbytes::optimizer_update_8bit_blockwise", _DEVICES)
def _(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1, absmax2,
      weight_decay, gnorm_scale, skip_zeros=False):
    rule = native_rule(optimizer_name)
    _check_tensors(rule, g, p, state1, state2, torch.uint8,
                   {"qmap1": qmap1, "qmap2": qmap2, "absmax1": absmax1, "absmax2": absmax2})
    n = p.numel()
    blocks = -(n // -256)
    check.dtype_in("qmap1", qmap1, (torch.float32,))
    check.numel("qmap1", qmap1, 256)
    check.dtype_in("absmax1", absmax1, (torch.float32,))
    check.numel("absmax1", absmax1, 2 * blocks if rule == "ademamix" else blocks)
    if rule in TWO_STATE:
        for name, t, size in (("qmap2", qmap2, 256), ("absmax2", absmax2, blocks)):
            if t is None:
                raise ValueError(f"the {rule} update needs {name}")
            check.dtype_in(name, t, (torch.float32,))
            check.numel(name, t, size)
    for name, t in (("absmax1", absmax1), ("absmax2", absmax2 if rule in TWO_STATE else None)):
        if t is not None and not t.is_contiguous():  # (the new block scales are written through its pointer)
            raise ValueError(f"{name} must be contiguous (it is updated in place); got strides {t.stride()}")
    g = g.contiguous()
    # The registry op has no trust-ratio arguments: LAMB / LARS reach the trust ratio through the
    # optimizer classes, which call the native library with max_unorm directly.
    hp = _hparams(lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale, 0.0, 0.0, step, skip_zeros)
    two = rule in TWO_STATE
    lib, dev, stream = _exec(check.storage_device(p))
    lib.call("bnb_optimizer_update_8bit_blockwise", _native.OPTIMIZERS[rule], ct.byref(hp), _ptr(p),
             _DTYPE_CODES[p.dtype], _ptr(g), _DTYPE_CODES[g.dtype], _ptr(state1), _ptr(state2 if two else None),
             _ptr(qmap1.contiguous()), _ptr(qmap2.contiguous() if two else None), _ptr(absmax1),
             _ptr(absmax2 if two else None), None, n, dev, stream)

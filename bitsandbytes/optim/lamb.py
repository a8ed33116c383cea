"""LAMB: the Adam update scaled per tensor by a trust ratio so that ||update|| <= max_unorm * ||p||."""

from .optimizer import Optimizer2State

__all__ = ["LAMB", "LAMB8bit", "LAMB32bit"]


class LAMB(Optimizer2State):
    """LAMB. ``bias_correction`` and ``adam_w_mode`` are accepted for compatibility: the update is
    always bias-corrected and the weight decay always decoupled. ``amsgrad`` is ignored."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, optim_bits=32, args=None, min_8bit_size=4096, max_unorm=1.0):
        super().__init__("lamb", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size,
                         max_unorm=max_unorm)


class LAMB8bit(Optimizer2State):
    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, args=None, min_8bit_size=4096, max_unorm=1.0):
        if amsgrad:
            raise ValueError("LAMB8bit does not support amsgrad=True")
        if max_unorm != 1.0:
            raise ValueError(f"LAMB8bit only supports max_unorm=1.0; got {max_unorm}")
        super().__init__("lamb", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, max_unorm=1.0)


class LAMB32bit(Optimizer2State):
    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, args=None, min_8bit_size=4096, max_unorm=1.0):
        super().__init__("lamb", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, max_unorm=max_unorm)

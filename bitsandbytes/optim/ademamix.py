"""AdEMAMix: Adam with an additional slow momentum (decay beta3) mixed in with weight alpha.

The optional schedulers warm alpha and beta3 up over ``t_alpha`` / ``t_beta3`` steps, which keeps
the slow momentum from dominating early training.
"""

import math
from typing import Optional

from .optimizer import Optimizer2State

__all__ = ["AdEMAMix", "AdEMAMix8bit", "AdEMAMix32bit", "PagedAdEMAMix", "PagedAdEMAMix8bit", "PagedAdEMAMix32bit"]


def scheduled_alpha(step: int, alpha: float, t_alpha: Optional[int]) -> float:
    """Linear warm-up of alpha over t_alpha steps."""
    if not t_alpha:
        return alpha
    return min(step * alpha / t_alpha, alpha)


def scheduled_beta3(step: int, beta1: float, beta3: float, t_beta3: Optional[int]) -> float:
    """Warm-up of beta3 from beta1 to beta3 over t_beta3 steps, linear in the half-life of the EMA."""
    if not t_beta3:
        return beta3
    ln_b1, ln_b3 = math.log(beta1), math.log(beta3)
    s = step / t_beta3
    return min(math.exp((ln_b1 * ln_b3) / ((1.0 - s) * ln_b3 + s * ln_b1)), beta3)


class _AdEMAMixBase(Optimizer2State):
    def __init__(self, params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits, min_8bit_size,
                 is_paged):
        from .optimizer import _parse_betas

        betas = _parse_betas(betas)
        if len(betas) != 3:
            raise ValueError(f"AdEMAMix needs three betas (beta1, beta2, beta3); got {betas}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        if t_beta3 and betas[0] <= 0.0:
            raise ValueError("the beta3 scheduler (t_beta3) needs beta1 > 0")
        super().__init__("ademamix", params, lr, betas, eps, weight_decay, optim_bits, None, min_8bit_size,
                         is_paged=is_paged, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3)

    def _kernel_args(self, config, step):
        beta1, beta2, beta3 = config["betas"]
        alpha = scheduled_alpha(step, config["alpha"], config["t_alpha"])
        beta3 = scheduled_beta3(step, beta1, beta3, config["t_beta3"])
        return beta1, beta2, beta3, alpha


class AdEMAMix(_AdEMAMixBase):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha: Optional[int] = None,
                 t_beta3: Optional[int] = None, eps=1e-8, weight_decay=1e-2, optim_bits=32, min_8bit_size=4096,
                 is_paged=False):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits, min_8bit_size,
                         is_paged)


class AdEMAMix8bit(_AdEMAMixBase):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha: Optional[int] = None,
                 t_beta3: Optional[int] = None, eps=1e-8, weight_decay=1e-2, min_8bit_size=4096, is_paged=False):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, is_paged)


class AdEMAMix32bit(_AdEMAMixBase):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha: Optional[int] = None,
                 t_beta3: Optional[int] = None, eps=1e-8, weight_decay=1e-2, min_8bit_size=4096, is_paged=False):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 32, min_8bit_size, is_paged)


class PagedAdEMAMix(_AdEMAMixBase):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha: Optional[int] = None,
                 t_beta3: Optional[int] = None, eps=1e-8, weight_decay=1e-2, optim_bits=32, min_8bit_size=4096):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits, min_8bit_size,
                         True)


class PagedAdEMAMix8bit(_AdEMAMixBase):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha: Optional[int] = None,
                 t_beta3: Optional[int] = None, eps=1e-8, weight_decay=1e-2, min_8bit_size=4096):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, True)


class PagedAdEMAMix32bit(_AdEMAMixBase):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha: Optional[int] = None,
                 t_beta3: Optional[int] = None, eps=1e-8, weight_decay=1e-2, min_8bit_size=4096):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 32, min_8bit_size, True)

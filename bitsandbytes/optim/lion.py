"""Lion (sign of an interpolated momentum, decoupled weight decay): one state, 32-bit or 8-bit."""

from .optimizer import Optimizer1State

__all__ = ["Lion", "Lion8bit", "Lion32bit", "PagedLion", "PagedLion8bit", "PagedLion32bit"]

# Lion has no epsilon: the update is a sign.
_EPS = 0.0


class Lion(Optimizer1State):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, optim_bits=32, args=None,
                 min_8bit_size=4096, is_paged=False):
        super().__init__("lion", params, lr, betas, _EPS, weight_decay, optim_bits, args, min_8bit_size,
                         is_paged=is_paged)


class Lion8bit(Optimizer1State):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, args=None, min_8bit_size=4096,
                 is_paged=False):
        super().__init__("lion", params, lr, betas, _EPS, weight_decay, 8, args, min_8bit_size, is_paged=is_paged)


class Lion32bit(Optimizer1State):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, args=None, min_8bit_size=4096,
                 is_paged=False):
        super().__init__("lion", params, lr, betas, _EPS, weight_decay, 32, args, min_8bit_size, is_paged=is_paged)


class PagedLion(Optimizer1State):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, optim_bits=32, args=None,
                 min_8bit_size=4096):
        super().__init__("lion", params, lr, betas, _EPS, weight_decay, optim_bits, args, min_8bit_size,
                         is_paged=True)


class PagedLion8bit(Optimizer1State):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, args=None, min_8bit_size=4096):
        super().__init__("lion", params, lr, betas, _EPS, weight_decay, 8, args, min_8bit_size, is_paged=True)


class PagedLion32bit(Optimizer1State):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, args=None, min_8bit_size=4096):
        super().__init__("lion", params, lr, betas, _EPS, weight_decay, 32, args, min_8bit_size, is_paged=True)

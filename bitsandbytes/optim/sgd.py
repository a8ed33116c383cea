"""SGD with momentum (coupled weight decay): one state, 32-bit or 8-bit."""

from .optimizer import Optimizer1State

__all__ = ["SGD", "SGD8bit", "SGD32bit"]


def _check_momentum(name, momentum):
    # Plain SGD has no state to quantize; torch.optim.SGD is the right tool for it.
    if momentum == 0:
        raise NotImplementedError(f"{name} without momentum is not supported!")


class SGD(Optimizer1State):
    """SGD with momentum: ``m = g`` at the first step, then ``m = momentum * m + g``. ``dampening``
    and ``nesterov`` are accepted for compatibility and ignored."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None,
                 min_8bit_size=4096):
        _check_momentum("SGD", momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, optim_bits, args,
                         min_8bit_size)


class SGD8bit(Optimizer1State):
    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096):
        _check_momentum("SGD", momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 8, args, min_8bit_size)


class SGD32bit(Optimizer1State):
    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096):
        _check_momentum("SGD", momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 32, args, min_8bit_size)

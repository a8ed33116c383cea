"""LARS: SGD momentum scaled per tensor by a trust ratio (||update|| <= max_unorm * ||p||), plus a
plain-PyTorch implementation (PytorchLARS) that serves as the readable reference."""

import torch
from torch.optim import Optimizer

from .optimizer import Optimizer1State

__all__ = ["LARS", "LARS8bit", "LARS32bit", "PytorchLARS"]


def _check_momentum(momentum):
    if momentum == 0:
        raise NotImplementedError("LARS without momentum is not supported!")


class LARS(Optimizer1State):
    """LARS with momentum. ``dampening`` and ``nesterov`` are accepted for compatibility and ignored."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None,
                 min_8bit_size=4096, max_unorm=0.02):
        _check_momentum(momentum)
        super().__init__("lars", params, lr, (momentum, dampening), 0.0, weight_decay, optim_bits, args,
                         min_8bit_size, max_unorm=max_unorm)


class LARS8bit(Optimizer1State):
    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096, max_unorm=0.02):
        _check_momentum(momentum)
        super().__init__("lars", params, lr, (momentum, dampening), 0.0, weight_decay, 8, args, min_8bit_size,
                         max_unorm=max_unorm)


class LARS32bit(Optimizer1State):
    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096, max_unorm=0.02):
        _check_momentum(momentum)
        super().__init__("lars", params, lr, (momentum, dampening), 0.0, weight_decay, 32, args, min_8bit_size,
                         max_unorm=max_unorm)


class PytorchLARS(Optimizer):
    """LARS written with torch operations only.

    Per parameter: ``d = g + wd p``; momentum buffer ``b = d`` at the first step, then
    ``b = momentum b + (1 - dampening) d``; the update is ``b`` (``d + momentum b`` with nesterov,
    ``d`` without momentum); when ``max_unorm > 0`` and ``||update|| > max_unorm ||p||`` it is scaled
    down to that norm; ``p -= lr * scale * update``.
    """

    def __init__(self, params, lr=0.01, momentum=0, dampening=0, weight_decay=0, nesterov=False, max_unorm=0.02):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        max_unorm=max_unorm)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum, dampening = group["weight_decay"], group["momentum"], group["dampening"]
            nesterov, max_unorm, lr = group["nesterov"], group["max_unorm"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad.to(p.dtype)
                if wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                update = d_p
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    update = d_p.add(buf, alpha=momentum) if nesterov else buf
                scale = 1.0
                if max_unorm > 0.0:
                    pnorm = torch.linalg.vector_norm(p.float())
                    unorm = torch.linalg.vector_norm(update.float())
                    limit = max_unorm * pnorm
                    scale = torch.where(unorm > limit, limit / unorm, torch.ones_like(unorm))
                    p.add_(update * scale.to(p.dtype), alpha=-lr)
                else:
                    p.add_(update, alpha=-lr)
        return loss

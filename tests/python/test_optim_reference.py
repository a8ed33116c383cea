"""Plain-PyTorch reference optimizers (float64) used as oracles by the optimizer tests, and the tests
that tie these references to torch.optim where the two share their math.

Each reference keeps its parameter in float64 but rounds it to the parameter's storage dtype after
every step, as a kernel that stores p in that dtype does; states stay float64.
"""

import math

import pytest
import torch


def sched_alpha(t, alpha, t_alpha):
    return alpha if not t_alpha else min(t / t_alpha, 1.0) * alpha


def sched_beta3(t, beta1, beta3, t_beta3):
    """beta3 warm-up: 1 / ln(beta) (proportional to the EMA's half-life) moves linearly from beta1's
    value to beta3's over t_beta3 steps."""
    if not t_beta3:
        return beta3
    s = t / t_beta3
    inv = (1.0 - s) / math.log(beta1) + s / math.log(beta3)
    return min(math.exp(1.0 / inv), beta3)


class RefOptimizer:
    """One parameter tensor updated by a named rule. hp keys: lr, betas, eps, weight_decay, alpha,
    t_alpha, t_beta3, max_unorm, skip_zeros."""

    def __init__(self, rule, p, **hp):
        self.rule = rule
        self.dtype = p.dtype
        self.p = p.detach().double().clone()
        self.hp = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, alpha=0.0, t_alpha=None, t_beta3=None,
                       max_unorm=0.0, skip_zeros=False)
        self.hp.update(hp)
        z = torch.zeros_like(self.p)
        self.m, self.v, self.m2 = z.clone(), z.clone(), z.clone()
        self.t = 0

    def _trust(self, u, mask, extra_eps=0.0):
        max_unorm = self.hp["max_unorm"]
        if max_unorm <= 0:
            return 1.0
        unorm = torch.sqrt((u[mask] ** 2).sum())
        limit = max_unorm * torch.linalg.vector_norm(self.p) + extra_eps
        return float(limit / unorm) if unorm > limit else 1.0

    def step(self, g):
        h = self.hp
        self.t += 1
        t = self.t
        g = g.detach().double()
        mask = torch.isfinite(g)
        if h["skip_zeros"]:
            mask &= g != 0
        g = torch.where(mask, g, torch.zeros_like(g))
        p, lr, wd, eps = self.p, h["lr"], h["weight_decay"], h["eps"]
        b1 = h["betas"][0]
        b2 = h["betas"][1] if len(h["betas"]) > 1 else 0.0
        m, v, m2 = self.m, self.v, self.m2
        decay = 1.0
        if self.rule in ("adam", "lamb"):
            m_new = b1 * m + (1 - b1) * g
            v_new = b2 * v + (1 - b2) * g * g
            u = (m_new / (1 - b1**t)) / (torch.sqrt(v_new) / math.sqrt(1 - b2**t) + eps)
            scale = self._trust(u, mask)
            decay = 1 - lr * wd
        elif self.rule == "ademamix":
            b3 = sched_beta3(t, b1, h["betas"][2], h["t_beta3"])
            alpha = sched_alpha(t, h["alpha"], h["t_alpha"])
            m_new = b1 * m + (1 - b1) * g
            m2_new = b3 * m2 + (1 - b3) * g
            v_new = b2 * v + (1 - b2) * g * g
            u = (m_new / (1 - b1**t) + alpha * m2_new) / (torch.sqrt(v_new) / math.sqrt(1 - b2**t) + eps)
            scale = 1.0
            decay = 1 - lr * wd
            self.m2 = torch.where(mask, m2_new, m2)
        elif self.rule in ("momentum", "lars"):
            gg = g + wd * p
            m_new = gg if t == 1 else b1 * m + gg
            v_new = v
            u = m_new
            scale = self._trust(u, mask, extra_eps=eps)
        elif self.rule == "rmsprop":
            gg = g + wd * p
            m_new = b1 * m + (1 - b1) * gg * gg
            v_new = v
            u = gg / (torch.sqrt(m_new) + eps)
            scale = 1.0
        elif self.rule == "adagrad":
            gg = g + wd * p
            m_new = m + gg * gg
            v_new = v
            u = gg / (torch.sqrt(m_new) + eps)
            scale = 1.0
        elif self.rule == "lion":
            c = b1 * m + (1 - b1) * g
            m_new = b2 * m + (1 - b2) * g
            v_new = v
            u = torch.sign(c)
            scale = 1.0
            decay = 1 - lr * wd
        else:
            raise ValueError(self.rule)
        p_new = p * decay - lr * scale * u
        self.m = torch.where(mask, m_new, m)
        self.v = torch.where(mask, v_new, v)
        self.p = torch.where(mask, p_new, p).to(self.dtype).double()

    def states(self):
        """(state1, state2) in the kernels' layout: AdEMAMix state1 stacks the two first moments."""
        if self.rule == "ademamix":
            return torch.stack([self.m, self.m2]), self.v
        if self.rule in ("adam", "lamb"):
            return self.m, self.v
        return self.m, None


# ---- the references agree with torch.optim where the math is shared ----------------------------------------

TORCH_MATCHES = {
    "adam": (lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8), dict(lr=1e-2, betas=(0.9, 0.99))),
    "adamw": (lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1),
              dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)),
    "momentum": (lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.01),
                 dict(lr=1e-2, betas=(0.9, 0.0), eps=0.0, weight_decay=0.01)),
    "rmsprop": (lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-8, weight_decay=0.01),
                dict(lr=1e-3, betas=(0.9, 0.0), eps=1e-8, weight_decay=0.01)),
    "adagrad": (lambda ps: torch.optim.Adagrad(ps, lr=1e-2, eps=1e-10, weight_decay=0.01),
                dict(lr=1e-2, betas=(0.0, 0.0), eps=1e-10, weight_decay=0.01)),
}


@pytest.mark.parametrize("name", sorted(TORCH_MATCHES))
def test_reference_matches_torch(name):
    make, hp = TORCH_MATCHES[name]
    rule = "adam" if name == "adamw" else name
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(300, generator=g, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = make([p])
    ref = RefOptimizer(rule, p0, **hp)
    for _ in range(15):
        grad = torch.randn(300, generator=g, dtype=torch.float64) * 0.1 + 0.02
        p.grad = grad.clone()
        opt.step()
        ref.step(grad)
    torch.testing.assert_close(p.detach(), ref.p, rtol=1e-10, atol=1e-12)


def test_beta3_schedule_matches_closed_form():
    # The closed form of the scheduler: exp(ln b1 ln b3 / ((1 - s) ln b3 + s ln b1)).
    b1, b3, T = 0.9, 0.9999, 100
    for t in (1, 10, 50, 99, 100, 150):
        s = t / T
        expected = min(math.exp(math.log(b1) * math.log(b3) / ((1 - s) * math.log(b3) + s * math.log(b1))), b3)
        assert sched_beta3(t, b1, b3, T) == pytest.approx(expected, rel=1e-12)
    assert sched_beta3(T, b1, b3, T) == pytest.approx(b3)
    assert sched_alpha(5, 8.0, 10) == 4.0 and sched_alpha(20, 8.0, 10) == 8.0

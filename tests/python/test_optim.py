"""Optimizer numerics: per-step parity with plain-PyTorch references (32-bit states), 8-bit states
tracking the 32-bit run, a small training run, gradient dtypes, non-finite gradients, skip_zeros and
the fused multi-tensor step against the per-tensor path."""

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
import bitsandbytes.optim.optimizer as optimizer_module
from bitsandbytes.optim.optimizer import Optimizer1State, Optimizer2State
from helpers import DEVICES, dtype_id, needs_cuda
from test_optim_reference import RefOptimizer

O = bnb.optim


@pytest.fixture(autouse=True)
def _fresh_manager():
    # Overrides are keyed by id(param); ids of dead parameters from other tests may be reused.
    O.GlobalOptimManager.get_instance().initialize()
    yield

# name -> (factory(params, optim_bits), reference rule, reference hyper-parameters)
CASES = {
    "adam": (lambda ps, b: O.Adam(ps, lr=1e-2, betas=(0.9, 0.99), optim_bits=b), "adam",
             dict(lr=1e-2, betas=(0.9, 0.99))),
    "adamw": (lambda ps, b: O.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, optim_bits=b), "adam",
              dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)),
    "lion": (lambda ps, b: O.Lion(ps, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, optim_bits=b), "lion",
             dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, eps=0.0)),
    "ademamix": (lambda ps, b: O.AdEMAMix(ps, lr=1e-2, betas=(0.9, 0.99, 0.999), alpha=5.0, weight_decay=0.01,
                                          optim_bits=b), "ademamix",
                 dict(lr=1e-2, betas=(0.9, 0.99, 0.999), alpha=5.0, weight_decay=0.01)),
    "ademamix_sched": (lambda ps, b: O.AdEMAMix(ps, lr=1e-2, betas=(0.9, 0.99, 0.999), alpha=5.0, t_alpha=20,
                                                t_beta3=20, weight_decay=0.01, optim_bits=b), "ademamix",
                       dict(lr=1e-2, betas=(0.9, 0.99, 0.999), alpha=5.0, t_alpha=20, t_beta3=20, weight_decay=0.01)),
    "lamb": (lambda ps, b: O.LAMB(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01, optim_bits=b), "lamb",
             dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01, max_unorm=1.0)),
    "lars": (lambda ps, b: O.LARS(ps, lr=1e-2, momentum=0.9, weight_decay=0.01, optim_bits=b), "lars",
             dict(lr=1e-2, betas=(0.9, 0.0), eps=0.0, weight_decay=0.01, max_unorm=0.02)),
    "sgd": (lambda ps, b: O.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.01, optim_bits=b), "momentum",
            dict(lr=1e-2, betas=(0.9, 0.0), eps=0.0, weight_decay=0.01)),
    "rmsprop": (lambda ps, b: O.RMSprop(ps, lr=1e-3, alpha=0.9, weight_decay=0.01, optim_bits=b), "rmsprop",
                dict(lr=1e-3, betas=(0.9, 0.0), weight_decay=0.01)),
    "adagrad": (lambda ps, b: O.Adagrad(ps, lr=1e-2, weight_decay=0.01, optim_bits=b), "adagrad",
                dict(lr=1e-2, betas=(0.0, 0.0), eps=1e-10, weight_decay=0.01)),
}

# Worst relative state error (dequantized 8-bit vs 32-bit state, norm over the tensor) after 300
# steps. Adagrad's accumulator only grows, so increments smaller than half a code step are lost once
# it is large: its 8-bit state drifts most.
STATE_8BIT_TOL = {"adagrad": 0.25}
# Relative drift of the 8-bit run's parameters from the 32-bit run, normalised by the total update.
PARAM_8BIT_TOL = 0.1

# Elements per test tensor: >= min_8bit_size (4096) and not a multiple of the 256 block.
SHAPE_8BIT = (71, 73)
SHAPE_32BIT = (37, 29)


def grads(shape, steps, seed=1, device="cpu", dtype=torch.float32):
    """Deterministic gradients with a persistent mean, so that the moments are not just noise."""
    gen = torch.Generator().manual_seed(seed)
    bias = torch.randn(shape, generator=gen) * 0.05
    for _ in range(steps):
        yield (torch.randn(shape, generator=gen) * 0.1 + bias).to(device=device, dtype=dtype)


def init_param(shape, dtype=torch.float32, device="cpu", seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.1).to(device=device, dtype=dtype)


def dequant_state(q, absmax, qmap):
    """Dequantize an 8-bit state; AdEMAMix's [2, ...] state1 has one absmax row per half."""
    if absmax.dim() == 2:
        return torch.stack([dequant_state(q[i], absmax[i], qmap) for i in range(absmax.shape[0])])
    out = F.dequantize_blockwise(q.reshape(-1), absmax=absmax.reshape(-1), code=qmap, blocksize=256)
    return out.view(q.shape)


def rel_max(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("name", sorted(CASES))
def test_32bit_matches_reference_every_step(name, dtype, device):
    make, rule, hp = CASES[name]
    p0 = init_param(SHAPE_32BIT, dtype, device)
    p = torch.nn.Parameter(p0.clone())
    opt = make([p], 32)
    ref = RefOptimizer(rule, p0.cpu(), **hp)
    # fp32: about 1e-6 relative; 16-bit: the kernel and the reference may round a value to
    # neighbouring representable numbers, so allow two units in the last place.
    p_tol = 2e-6 if dtype == torch.float32 else 2 * ULP[dtype]
    for g in grads(SHAPE_32BIT, 20, device=device, dtype=dtype):
        p.grad = g.clone()
        opt.step()
        ref.step(g.cpu())
        assert rel_max(p.detach(), ref.p) <= p_tol
        s1_ref, s2_ref = ref.states()
        state = opt.state[p]
        assert state["state1"].dtype == torch.float32
        assert rel_max(state["state1"], s1_ref) <= 3e-6
        if s2_ref is not None:
            assert rel_max(state["state2"], s2_ref) <= 3e-6
    assert opt.state[p]["step"] == 20


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_8bit_tracks_32bit(name, device):
    make, _, _ = CASES[name]
    p0 = init_param(SHAPE_8BIT, device=device)
    p32 = torch.nn.Parameter(p0.clone())
    p8 = torch.nn.Parameter(p0.clone())
    o32, o8 = make([p32], 32), make([p8], 8)
    for g in grads(SHAPE_8BIT, 300, device=device):
        p32.grad = g.clone()
        p8.grad = g.clone()
        o32.step()
        o8.step()
    s8, s32 = o8.state[p8], o32.state[p32]
    assert s8["state1"].dtype == torch.uint8 and s32["state1"].dtype == torch.float32
    drift = ((p8 - p32).norm() / (p32 - p0).norm()).item()
    assert drift < PARAM_8BIT_TOL, drift
    tol = STATE_8BIT_TOL.get(name, 0.1)
    deq1 = dequant_state(s8["state1"], s8["absmax1"], s8["qmap1"])
    assert ((deq1 - s32["state1"]).norm() / s32["state1"].norm()).item() < tol
    if "state2" in s32:
        deq2 = dequant_state(s8["state2"], s8["absmax2"], s8["qmap2"])
        assert ((deq2 - s32["state2"]).norm() / s32["state2"].norm()).item() < tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("name", ["adamw", "lion", "ademamix"])
def test_8bit_16bit_params_track_32bit(name, dtype):
    make, _, _ = CASES[name]
    p0 = init_param(SHAPE_8BIT, dtype)
    p32 = torch.nn.Parameter(p0.clone())
    p8 = torch.nn.Parameter(p0.clone())
    o32, o8 = make([p32], 32), make([p8], 8)
    for g in grads(SHAPE_8BIT, 100, dtype=dtype):
        p32.grad = g.clone()
        p8.grad = g.clone()
        o32.step()
        o8.step()
    drift = ((p8.float() - p32.float()).norm() / (p32.float() - p0.float()).norm()).item()
    assert drift < PARAM_8BIT_TOL


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "adagrad"])
def test_32bit_matches_torch_optim(name):
    """The same math as torch.optim (float32, per step) where the rules coincide."""
    make, _, _ = CASES[name]
    torch_make = {
        "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.9, 0.99)),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1),
        "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.01),
        "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, weight_decay=0.01),
        "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, weight_decay=0.01, eps=1e-10),
    }[name]
    p0 = init_param(SHAPE_32BIT)
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    oa, ob = make([a], 32), torch_make([b])
    for g in grads(SHAPE_32BIT, 20):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        assert rel_max(a.detach(), b.detach()) <= 2e-6


def test_pytorch_lars_matches_reference():
    p0 = init_param(SHAPE_32BIT)
    p = torch.nn.Parameter(p0.clone())
    opt = O.PytorchLARS([p], lr=1e-2, momentum=0.9, weight_decay=0.01, max_unorm=0.02)
    ref = RefOptimizer("lars", p0, lr=1e-2, betas=(0.9, 0.0), eps=0.0, weight_decay=0.01, max_unorm=0.02)
    for g in grads(SHAPE_32BIT, 20):
        p.grad = g.clone()
        opt.step()
        ref.step(g)
        assert rel_max(p.detach(), ref.p) <= 2e-6


def test_pytorch_lars_and_lars_agree():
    p0 = init_param(SHAPE_32BIT)
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    oa = O.PytorchLARS([a], lr=1e-2, momentum=0.9, weight_decay=0.01, max_unorm=0.02)
    ob = O.LARS([b], lr=1e-2, momentum=0.9, weight_decay=0.01, max_unorm=0.02)
    for g in grads(SHAPE_32BIT, 10):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert rel_max(b.detach(), a.detach()) <= 2e-6


def test_training_run_adamw8bit_matches_torch_adamw():
    """A small MLP regression: AdamW8bit ends within 2% (of the starting loss) of torch AdamW."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=gen)
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    with torch.no_grad():
        y = teacher(x) + 0.01 * torch.randn(512, 1, generator=gen)

    def run(make_opt):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                    torch.nn.ReLU(), torch.nn.Linear(128, 1))
        opt = make_opt(model.parameters())
        losses = []
        for i in range(150):
            idx = torch.arange(i * 64, (i + 1) * 64) % 512
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            final = torch.nn.functional.mse_loss(model(x), y).item()
        return losses[0], final, opt

    start, final_torch, _ = run(lambda ps: torch.optim.AdamW(ps, lr=2e-3))
    _, final_8bit, opt = run(lambda ps: O.AdamW8bit(ps, lr=2e-3))
    # The 128x128 layer (16384 elements) has 8-bit states; the small ones fall back to 32-bit.
    bits = {st["state1"].dtype for st in opt.state.values()}
    assert bits == {torch.uint8, torch.float32}
    assert final_torch < 0.5 * start
    assert abs(final_8bit - final_torch) < 0.02 * start


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", ["adamw", "lion", "ademamix", "sgd", "lamb"])
def test_bf16_grads_for_fp32_params(name, bits):
    """Gradients keep their own dtype (no cast): bf16 gradients give exactly the result of the same
    values given in float32."""
    make, _, _ = CASES[name]
    p0 = init_param(SHAPE_8BIT)
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    oa, ob = make([a], bits), make([b], bits)
    for g in grads(SHAPE_8BIT, 5, dtype=torch.bfloat16):
        # torch checks a gradient's dtype on assignment (mixed-precision frameworks set it through
        # .data or grad_dtype); .data works on every supported torch version.
        a.grad = torch.zeros_like(a)
        a.grad.data = g.clone()
        b.grad = g.float()
        oa.step()
        ob.step()
    assert a.grad.dtype == torch.bfloat16
    assert torch.equal(a, b)
    assert torch.equal(oa.state[a]["state1"], ob.state[b]["state1"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_nonfinite_gradients_leave_param_and_state_unchanged_32bit(name):
    make, _, _ = CASES[name]
    p = torch.nn.Parameter(init_param(SHAPE_32BIT))
    opt = make([p], 32)
    it = grads(SHAPE_32BIT, 3)
    p.grad = next(it)
    opt.step()
    before_p = p.detach().clone()
    before = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v) and k != "unorm_vec"}
    g = next(it)
    bad = torch.zeros(g.shape, dtype=torch.bool)
    bad.view(-1)[::7] = True
    g[bad] = torch.tensor([float("nan"), float("inf"), float("-inf")]).repeat(bad.sum().item() // 3 + 1)[
        : bad.sum().item()]
    p.grad = g
    opt.step()
    assert torch.equal(p.detach()[bad], before_p[bad])
    assert not torch.equal(p.detach()[~bad], before_p[~bad])
    assert torch.isfinite(p).all()
    for k, v in before.items():
        now = opt.state[p][k]
        if now.shape == v.shape and now.shape[-len(SHAPE_32BIT):] == SHAPE_32BIT:
            assert torch.equal(now[..., bad], v[..., bad]), k
            assert torch.isfinite(now).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["adamw", "lion", "ademamix", "sgd"])
def test_nonfinite_gradients_8bit(name, device):
    make, _, _ = CASES[name]
    p = torch.nn.Parameter(init_param(SHAPE_8BIT, device=device))
    opt = make([p], 8)
    it = grads(SHAPE_8BIT, 3, device=device)
    p.grad = next(it)
    opt.step()
    st = opt.state[p]
    before_p = p.detach().clone()
    before_s1 = dequant_state(st["state1"], st["absmax1"], st["qmap1"])
    g = next(it)
    bad = torch.zeros(g.shape, dtype=torch.bool, device=device)
    bad.view(-1)[::5] = True
    g[bad] = float("nan")
    g.view(-1)[1::10] = float("inf")
    bad.view(-1)[1::10] = True
    p.grad = g
    opt.step()
    assert torch.equal(p.detach()[bad], before_p[bad])
    assert torch.isfinite(p).all()
    after_s1 = dequant_state(st["state1"], st["absmax1"], st["qmap1"])
    assert torch.isfinite(after_s1).all() and torch.isfinite(st["absmax1"]).all()
    if "state2" in st:
        # Two-state updates clear both states of an element whose gradient is not finite (spec: the
        # blockwise two-state kernel's rule), and only those.
        after_s2 = dequant_state(st["state2"], st["absmax2"], st["qmap2"])
        assert (after_s1[..., bad] == 0).all() and (after_s2[bad] == 0).all()
        assert (after_s2[~bad] != 0).any()
    else:
        # The state of skipped elements is only re-quantized against the block's new absmax.
        scale = st["absmax1"].max()
        assert ((after_s1[..., bad] - before_s1[..., bad]).abs().max() / scale).item() < 0.05


@needs_cuda
@pytest.mark.parametrize("make", [lambda ps: O.Lion8bit(ps, lr=1e-3, betas=(0.9, 0.0)),
                                  lambda ps: O.Adam8bit(ps, lr=1e-3, betas=(0.0, 0.0))], ids=["lion", "adam"])
def test_8bit_state_codes_match_cpu_near_zero(make):
    """With beta2 = 0 (Lion) or both betas 0 (Adam) the new states are g and g * g themselves, so after
    one step their 8-bit codes are the blockwise quantization of those on either device, bit for bit:
    signed (nearest code of the value's own sign) and unsigned. Values a few codes away from zero, of
    both signs, and signed zeros exercise the buckets next to the zero code, where the GPU's
    one-comparison search must not be taken for a signed state."""
    g = torch.randn(256 * 64, generator=torch.Generator().manual_seed(5))
    exponents = torch.randint(-9, -1, g.shape, generator=torch.Generator().manual_seed(6)).float()
    g = torch.where(torch.arange(g.numel()) % 3 == 0, g, g * 10.0 ** exponents)
    g[::97] = 0.0
    g[1::97] = -0.0
    states = {}
    for device in ("cpu", "cuda"):
        p = torch.nn.Parameter(torch.zeros(g.numel(), device=device))
        opt = make([p])
        p.grad = g.to(device)
        opt.step()
        states[device] = {k: v.cpu() for k, v in opt.state[p].items() if k.startswith(("state", "absmax"))}
    assert states["cuda"].keys() == states["cpu"].keys() and "state1" in states["cpu"]
    for key, cpu in states["cpu"].items():
        assert torch.equal(states["cuda"][key], cpu), key


@pytest.mark.parametrize("cls,name", [(Optimizer2State, "adam"), (Optimizer1State, "momentum"),
                                      (Optimizer1State, "rmsprop")])
def test_skip_zeros(cls, name):
    p = torch.nn.Parameter(init_param(SHAPE_32BIT))
    opt = cls(name, [p], lr=1e-2, betas=(0.9, 0.99) if cls is Optimizer2State else (0.9, 0.0), skip_zeros=True)
    it = grads(SHAPE_32BIT, 3)
    p.grad = next(it)
    opt.step()
    before_p = p.detach().clone()
    before_s = opt.state[p]["state1"].clone()
    g = next(it)
    zero = torch.zeros(g.shape, dtype=torch.bool)
    zero.view(-1)[::3] = True
    g[zero] = 0.0
    p.grad = g
    opt.step()
    assert torch.equal(p.detach()[zero], before_p[zero])
    assert torch.equal(opt.state[p]["state1"][zero], before_s[zero])
    assert not torch.equal(p.detach()[~zero], before_p[~zero])


# ---- fused multi-tensor step ------------------------------------------------------------------------------


def _mixed_model(device="cpu"):
    """Parameters of several shapes and dtypes: some big enough for 8-bit states, some not."""
    torch.manual_seed(3)
    shapes = [(300, 20), (7,), (64, 80), (5, 3, 2), (4100,), (33, 129), (1,), (257,)]
    dtypes = [torch.float32, torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.float32,
              torch.float32, torch.bfloat16]
    return [torch.nn.Parameter((torch.randn(s) * 0.1).to(device=device, dtype=dt)) for s, dt in zip(shapes, dtypes)]


def _run_mixed(name, bits, fused, steps=6, device="cpu"):
    make, _, _ = CASES[name]
    params = _mixed_model(device)
    opt = make([{"params": params[:5]}, {"params": params[5:], "lr": 3e-3}], bits)
    opt._fused = fused
    gen = torch.Generator().manual_seed(5)
    for step in range(steps):
        for i, p in enumerate(params):
            # Some parameters skip some steps, so their step counters differ within a group.
            if (i + step) % 4 == 3:
                p.grad = None
            else:
                p.grad = (torch.randn(p.shape, generator=gen) * 0.1).to(device=device, dtype=p.dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_equals_per_tensor(name, bits, device):
    pa, oa = _run_mixed(name, bits, fused=True, device=device)
    pb, ob = _run_mixed(name, bits, fused=False, device=device)
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        sa, sb = oa.state[a], ob.state[b]
        assert sa.keys() == sb.keys()
        for k in sa:
            if torch.is_tensor(sa[k]) and k != "unorm_vec":
                assert torch.equal(sa[k], sb[k]), k
            elif k == "step":
                assert sa[k] == sb[k]


# Large enough that every warp of the CUDA kernels' persistent grid takes several 256-element blocks,
# with a partial last block. A piece of PIECE elements has fewer blocks than the grid has warps: each
# warp takes at most one.
BIG_N = 3 * 2**20 + 77
PIECE = 2**18
BIG_RULES = {"adam": O.Adam8bit, "lion": O.Lion8bit, "ademamix": O.AdEMAMix8bit}


def _big_8bit_state(rule, n, gen):
    """Random codes and positive block scales: every block starts from a different, non-trivial state."""
    halves = 2 if rule == "ademamix" else 1
    blocks = -(n // -256)
    s1 = torch.randint(0, 256, (halves * n,), generator=gen, dtype=torch.uint8)
    a1 = torch.rand(halves * blocks, generator=gen) * 0.1 + 1e-3
    s2 = torch.randint(128, 256, (n,), generator=gen, dtype=torch.uint8) if rule != "lion" else None
    a2 = torch.rand(blocks, generator=gen) * 0.01 + 1e-4 if rule != "lion" else None
    return s1, s2, a1, a2


def _step_blockwise(rule, g, p, s1, s2, a1, a2, step):
    q1 = F.create_dynamic_map(True).to(p.device)
    q2 = F.create_dynamic_map(False).to(p.device) if s2 is not None else None
    F.optimizer_update_8bit_blockwise(rule, g, p, s1, s2, 0.9, 0.99, 0.999, 5.0, 1e-8, step, 1e-3, q1, q2, a1, a2,
                                      weight_decay=0.01)


@needs_cuda
@pytest.mark.parametrize("offset", [0, 4], ids=["aligned", "offset4"])
@pytest.mark.parametrize("p_dtype,g_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                             (torch.bfloat16, torch.float32), (torch.float32, torch.float32)],
                         ids=["bf16", "fp16", "bf16-fp32grad", "fp32"])
@pytest.mark.parametrize("rule", sorted(BIG_RULES))
def test_8bit_step_of_a_large_tensor_equals_the_step_of_its_pieces(rule, p_dtype, g_dtype, offset):
    """The 8-bit update is blockwise: stepping a large tensor at once (each warp striding over many
    blocks) and stepping it in pieces of whole blocks (one block per warp) must give the same bytes.
    The pieces are separate tensors; `offset` moves the whole tensor off 16-byte alignment (8 bytes for
    16-bit values). Non-finite gradient elements are spread through it."""
    gen = torch.Generator().manual_seed(11)
    n = BIG_N
    halves = 2 if rule == "ademamix" else 1
    blocks = -(n // -256)
    p_buf = (torch.randn(n + offset, generator=gen) * 0.1).to(p_dtype)
    g_buf = (torch.randn(n + offset, generator=gen) * 0.01).to(g_dtype)
    g_buf[offset + 1000::100003] = float("nan")
    g_buf[offset + 5000::200003] = float("inf")
    s1, s2, a1, a2 = _big_8bit_state(rule, n, gen)
    whole = [t.cuda() if t is not None else None for t in (p_buf, g_buf, s1, s2, a1, a2)]
    p, g = whole[0][offset:], whole[1][offset:]
    for step in (1, 2):
        _step_blockwise(rule, g, p, whole[2], whole[3], whole[4], whole[5], step)

    pieces = {"p": [], "s1": [], "s2": [], "a1": [], "a2": []}
    for lo in range(0, n, PIECE):
        hi = min(n, lo + PIECE)
        blo, bhi = lo // 256, -(hi // -256)
        pp = p_buf[offset + lo:offset + hi].cuda()
        gp = g_buf[offset + lo:offset + hi].cuda()
        s1p = s1.view(halves, n)[:, lo:hi].contiguous().reshape(-1).cuda()
        a1p = a1.view(halves, blocks)[:, blo:bhi].contiguous().reshape(-1).cuda()
        s2p = s2[lo:hi].cuda() if s2 is not None else None
        a2p = a2[blo:bhi].cuda() if a2 is not None else None
        for step in (1, 2):
            _step_blockwise(rule, gp, pp, s1p, s2p, a1p, a2p, step)
        pieces["p"].append(pp)
        pieces["s1"].append(s1p.view(halves, -1))
        pieces["a1"].append(a1p.view(halves, -1))
        if s2 is not None:
            pieces["s2"].append(s2p)
            pieces["a2"].append(a2p)
    assert torch.equal(p, torch.cat(pieces["p"]))
    assert torch.equal(whole[2].view(halves, n), torch.cat(pieces["s1"], dim=1))
    assert torch.equal(whole[4].view(halves, blocks), torch.cat(pieces["a1"], dim=1))
    if s2 is not None:
        assert torch.equal(whole[3], torch.cat(pieces["s2"]))
        assert torch.equal(whole[5], torch.cat(pieces["a2"]))


def assert_same_params_and_states(pa, oa, pb, ob):
    """Parameters pa (optimizer oa) and pb (ob) hold the same bits, and so do their states."""
    for a, b in zip(pa, pb, strict=True):
        assert torch.equal(a, b)
        for k in ("state1", "state2", "absmax1", "absmax2"):
            if k in oa.state[a]:
                assert torch.equal(oa.state[a][k], ob.state[b][k]), k


def assert_fused_equals_per_tensor(make_params, make_optimizer, grad_of, steps):
    """`steps` steps of the fused path and of the per-tensor path from the same parameters and
    gradients (grad_of(param, generator)) end with the same bits."""
    def run(fused):
        params = make_params()
        opt = make_optimizer(params)
        opt._fused = fused
        gen = torch.Generator().manual_seed(7)
        for _ in range(steps):
            for q in params:
                q.grad = grad_of(q, gen)
            opt.step()
        return params, opt

    assert_same_params_and_states(*run(True), *run(False))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("rule", sorted(BIG_RULES))
def test_fused_8bit_step_of_large_tensors_equals_per_tensor(rule, dtype):
    """Large tensors in one fused launch (a warp's blocks run across tensor boundaries) against one
    launch per tensor. One tensor starts one element past an aligned address, so the kernel's whole-block
    path and its element-wise path alternate within a warp's sequence of blocks."""
    shapes = [(BIG_N,), (2**20 + 512,), (3001,), (2**18 + 5,), (2**19,)]
    misaligned = 3

    def param(i, s):
        values = (torch.randn(s, generator=torch.Generator().manual_seed(i)) * 0.1).to(dtype)
        if i != misaligned:
            return torch.nn.Parameter(values.cuda())
        storage = torch.empty(values.numel() + 1, device="cuda", dtype=dtype)
        storage[1:] = values.cuda()
        return torch.nn.Parameter(storage[1:])

    def params():
        ps = [param(i, s) for i, s in enumerate(shapes)]
        assert ps[misaligned].data_ptr() % 8 != 0
        return ps

    assert_fused_equals_per_tensor(
        params, lambda ps: BIG_RULES[rule](ps, lr=1e-3),
        lambda q, gen: (torch.randn(q.shape, generator=gen) * 0.01).to(device="cuda", dtype=dtype), steps=3)


@needs_cuda
@pytest.mark.parametrize("bits", [8, 32])
def test_fused_step_of_a_thousand_cuda_tensors_equals_per_tensor(bits):
    """1000 tensors of uneven sizes in one fused launch (the table in device memory; a warp passes
    hundreds of tensors between two of its blocks) against one launch per tensor."""
    sizes = [4096 + (i * 37) % 700 for i in range(1000)]

    def params():
        gen = torch.Generator().manual_seed(3)
        return [torch.nn.Parameter(torch.randn(n, generator=gen).cuda()) for n in sizes]

    assert_fused_equals_per_tensor(params, lambda ps: O.AdamW(ps, lr=1e-2, optim_bits=bits),
                                   lambda q, gen: torch.randn(q.shape, generator=gen).cuda(), steps=2)


@needs_cuda
def test_fused_step_captured_in_a_cuda_graph_equals_eager():
    """A step captured in a CUDA graph (its tensor table in the kernel parameters, two launches for
    600 tensors) replays as the eager step (table in device memory) of a twin optimizer, also after
    other eager steps have cycled the host staging buffers."""
    sizes = [4096 + 256 * (i % 5) + i % 3 for i in range(600)]

    def make():
        gen = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(n, generator=gen).cuda()) for n in sizes]
        for q in params:
            q.grad = torch.zeros_like(q)
        return params, O.AdamW8bit(params, lr=1e-2)

    def load_grads(params, seed):
        gen = torch.Generator().manual_seed(seed)
        for q in params:
            q.grad.copy_(torch.randn(q.shape, generator=gen).cuda())

    (pa, oa), (pb, ob), (pc, oc) = make(), make(), make()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for seed in (1, 2):
            load_grads(pa, seed)
            load_grads(pb, seed)
            oa.step()
            ob.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        oa.step()
    for seed in range(20):  # more eager fused steps than the staging ring has buffers
        load_grads(pc, seed)
        oc.step()
    load_grads(pa, 3)
    load_grads(pb, 3)
    graph.replay()
    ob.step()
    torch.cuda.synchronize()
    assert_same_params_and_states(pa, oa, pb, ob)


def test_fused_switch_from_environment(monkeypatch):
    monkeypatch.setenv("BNB_OPTIM_FUSED", "0")
    assert O.Adam([torch.nn.Parameter(torch.zeros(3))])._fused is False
    monkeypatch.setenv("BNB_OPTIM_FUSED", "1")
    assert O.Adam([torch.nn.Parameter(torch.zeros(3))])._fused is True


def test_fused_one_native_call_per_partition(monkeypatch):
    calls = []
    real = optimizer_module.multi_tensor_update

    def counting(rule, hparams, bits, p_dtype, g_dtype, qmap1, qmap2, table, device):
        calls.append((bits, p_dtype, g_dtype, hparams.step, table.shape[0]))
        return real(rule, hparams, bits, p_dtype, g_dtype, qmap1, qmap2, table, device)

    monkeypatch.setattr(optimizer_module, "multi_tensor_update", counting)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (10, 20, 5000, 6000, 30)]
    params.append(torch.nn.Parameter(torch.randn(40, dtype=torch.bfloat16)))
    opt = O.AdamW8bit(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    # 32-bit fp32 states, 8-bit fp32, 32-bit bf16 params: three partitions, one call each.
    assert sorted(calls, key=str) == sorted([(32, torch.float32, torch.float32, 1, 3),
                                             (8, torch.float32, torch.float32, 1, 2),
                                             (32, torch.bfloat16, torch.bfloat16, 1, 1)], key=str)


def test_fused_step_never_synchronises(monkeypatch):
    params = [torch.nn.Parameter(torch.randn(n)) for n in (10, 5000, 300)]
    opt = O.AdamW8bit(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside step()")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    monkeypatch.setattr(torch.Tensor, "cpu", forbidden)
    monkeypatch.setattr(torch.cuda, "synchronize", forbidden)
    for _ in range(3):
        opt.step()


def test_fused_many_tensors_equal_per_tensor():
    """More tensors than one captured CUDA launch takes (BNB_OPTIM_MULTI_MAX_TENSORS), on the CPU."""
    def run(fused):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(3)) for _ in range(1000)]
        opt = O.Adam(params, lr=1e-2)
        opt._fused = fused
        for _ in range(2):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        return params

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)


def test_lr_change_between_steps_is_used():
    p0 = init_param(SHAPE_32BIT)
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    oa = O.AdamW([a], lr=1e-2)
    ob = torch.optim.AdamW([b], lr=1e-2)
    sa = torch.optim.lr_scheduler.StepLR(oa, step_size=2, gamma=0.5)
    sb = torch.optim.lr_scheduler.StepLR(ob, step_size=2, gamma=0.5)
    for g in grads(SHAPE_32BIT, 6):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        sa.step()
        sb.step()
    assert rel_max(a.detach(), b.detach()) <= 2e-6


def test_closure_returns_loss():
    p = torch.nn.Parameter(torch.ones(4))
    opt = O.Adam([p])

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 4.0
    assert (p < 1).all()


# ---- functional API --------------------------------------------------------------------------------------


def test_functional_32bit_update_matches_reference():
    p0 = init_param(SHAPE_32BIT)
    p = p0.clone()
    s1, s2 = torch.zeros_like(p), torch.zeros_like(p)
    ref = RefOptimizer("adam", p0, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    for t, g in enumerate(grads(SHAPE_32BIT, 5), start=1):
        F.optimizer_update_32bit("adam", g, p, s1, 0.9, 1e-8, t, 1e-2, s2, beta2=0.99, weight_decay=0.1)
        ref.step(g)
    assert rel_max(p, ref.p) <= 2e-6


def test_functional_8bit_trust_ratio_goes_native():
    """LAMB with 8-bit states: the registry op has no trust-ratio arguments, the native call does."""
    n = 5000
    p0 = init_param((n,))
    p = p0.clone()
    blocks = -(n // -256)
    s1, s2 = torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8)
    a1, a2 = torch.zeros(blocks), torch.zeros(blocks)
    q1, q2 = F.create_dynamic_map(True), F.create_dynamic_map(False)
    unorm = torch.zeros(1)
    ref = RefOptimizer("lamb", p0, lr=1e-2, betas=(0.9, 0.99), max_unorm=0.5)
    g = next(grads((n,), 1))
    F.optimizer_update_8bit_blockwise("lamb", g, p, s1, s2, 0.9, 0.99, 0.0, 0.0, 1e-8, 1, 1e-2, q1, q2, a1, a2,
                                      unorm_vec=unorm, max_unorm=0.5)
    ref.step(g)
    assert unorm.item() > 0
    # One step from zero states: 8-bit rounding of the states only perturbs the update slightly.
    assert rel_max(p, ref.p) < 1e-2
    assert ((p - p0).norm() / (ref.p - p0.double()).norm()).item() == pytest.approx(1.0, rel=0.05)


def test_functional_rejects_mixed_devices():
    p = torch.zeros(10)
    with pytest.raises(RuntimeError, match="same device"):
        F.optimizer_update_32bit("adam", torch.zeros(10, device="meta"), p, torch.zeros(10), 0.9, 1e-8, 1, 1e-3,
                                 torch.zeros(10), beta2=0.99)
    with pytest.raises(ValueError, match="optimizer_name"):
        F.optimizer_update_32bit("adamax", torch.zeros(10), p, torch.zeros(10), 0.9, 1e-8, 1, 1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_replaced_state_and_param_storage_are_picked_up(fused):
    """Tensors swapped in by hand (a state moved and back, p.data replaced) are used by the next step."""
    def run(swap):
        p = torch.nn.Parameter(init_param(SHAPE_8BIT))
        opt = O.AdamW8bit([p])
        opt._fused = fused
        for i, g in enumerate(grads(SHAPE_8BIT, 6)):
            p.grad = g
            opt.step()
            if swap and i == 2:
                st = opt.state[p]
                for k in ("state1", "state2", "absmax1", "absmax2"):
                    st[k] = st[k].clone()
                p.data = p.data.clone()
        return p, opt

    pa, oa = run(True)
    pb, ob = run(False)
    assert torch.equal(pa, pb)
    for k in ("state1", "state2", "absmax1", "absmax2"):
        assert torch.equal(oa.state[pa][k], ob.state[pb][k])


@pytest.mark.parametrize("device", DEVICES)
def test_fused_gradients_kept_between_steps_are_reread(device):
    """Gradient tensors kept from step to step (zeroed and refilled in place) take the fused step's
    shortcut; a gradient whose storage is replaced under the same tensor (.data =), or a new gradient
    tensor, is picked up all the same: every step equals one with fresh gradients."""
    gen = torch.Generator().manual_seed(4)
    values = [torch.randn(SHAPE_8BIT, generator=gen) * 0.1 for _ in range(8)]

    def run(kept):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(init_param(SHAPE_8BIT).to(device)) for _ in range(3)]
        opt = O.AdamW8bit(params)
        for i, v in enumerate(values):
            for j, p in enumerate(params):
                fresh = (v * (j + 1)).to(device)
                if not kept or p.grad is None or i == 5:
                    p.grad = fresh
                elif i == 3:
                    p.grad.data = fresh.clone()  # same tensor object, new storage
                else:
                    p.grad.zero_()
                    p.grad.add_(fresh)
            opt.step()
        return params

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)


def test_fused_step_keeps_no_gradient_alive():
    """The fused step remembers gradients only weakly: one dropped by zero_grad() is freed."""
    import gc
    import weakref

    params = [torch.nn.Parameter(torch.randn(5000)) for _ in range(2)]
    opt = O.AdamW8bit(params)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    refs = [weakref.ref(p.grad) for p in params]
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("layout", ["coo"])  # (torch itself refuses a compressed-layout .grad on a dense parameter)
def test_sparse_gradients_are_refused_with_parameters_unchanged(layout):
    p = torch.nn.Parameter(torch.randn(8, 8))
    before = p.detach().clone()
    opt = bnb.optim.AdamW8bit([p], min_8bit_size=0)
    dense = torch.eye(8)
    p.grad = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(p.detach(), before)

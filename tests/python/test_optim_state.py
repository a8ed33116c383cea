"""Optimizer API surface: constructors and their validation, state layout, state dicts, the
GlobalOptimManager, bad input, state memory and paged states."""

import ctypes as ct
import gc
import inspect
import io
import warnings

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes._functional_optim as FO
import bitsandbytes.functional as F
from bitsandbytes.optim import GlobalOptimManager
from helpers import needs_cuda

O = bnb.optim

EXPECTED_NAMES = {
    "Adam", "Adam8bit", "Adam32bit", "PagedAdam", "PagedAdam8bit", "PagedAdam32bit",
    "AdamW", "AdamW8bit", "AdamW32bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit",
    "AdEMAMix", "AdEMAMix8bit", "AdEMAMix32bit", "PagedAdEMAMix", "PagedAdEMAMix8bit", "PagedAdEMAMix32bit",
    "LAMB", "LAMB8bit", "LAMB32bit", "LARS", "LARS8bit", "LARS32bit", "PytorchLARS",
    "Lion", "Lion8bit", "Lion32bit", "PagedLion", "PagedLion8bit", "PagedLion32bit",
    "RMSprop", "RMSprop8bit", "RMSprop32bit", "SGD", "SGD8bit", "SGD32bit",
    "Adagrad", "Adagrad8bit", "Adagrad32bit", "GlobalOptimManager",
}


@pytest.fixture(autouse=True)
def _fresh_manager():
    GlobalOptimManager.get_instance().initialize()
    yield
    GlobalOptimManager.get_instance().initialize()


def param(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter((torch.randn(shape, generator=g) * 0.1).to(dtype))


def fill_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 0.1).to(device=p.device, dtype=p.dtype)


# ---- names, constructors, validation ---------------------------------------------------------------------


def test_exports_exactly_the_41_names():
    assert set(O.__all__) == EXPECTED_NAMES and len(O.__all__) == 41
    for name in EXPECTED_NAMES:
        assert hasattr(O, name)


@pytest.mark.parametrize("cls,defaults", [
    (O.Adam, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32, args=None,
                  min_8bit_size=4096, is_paged=False)),
    (O.AdamW, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, optim_bits=32,
                   min_8bit_size=4096, is_paged=False)),
    (O.AdEMAMix, dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None, eps=1e-8,
                      weight_decay=1e-2, optim_bits=32, min_8bit_size=4096, is_paged=False)),
    (O.LAMB, dict(lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                  adam_w_mode=True, optim_bits=32, min_8bit_size=4096, max_unorm=1.0)),
    (O.LARS, dict(momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, min_8bit_size=4096,
                  max_unorm=0.02)),
    (O.SGD, dict(momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, min_8bit_size=4096)),
    (O.RMSprop, dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, optim_bits=32)),
    (O.Adagrad, dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, optim_bits=32)),
    (O.Adagrad8bit, dict(optim_bits=8)),
    (O.Lion, dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0, optim_bits=32, min_8bit_size=4096, is_paged=False)),
    (O.PytorchLARS, dict(lr=0.01, momentum=0, dampening=0, weight_decay=0, nesterov=False, max_unorm=0.02)),
])
def test_signature_defaults(cls, defaults):
    sig = inspect.signature(cls.__init__).parameters
    for k, v in defaults.items():
        assert sig[k].default == v, (cls.__name__, k)


def test_paged_adamw_has_no_is_paged_argument():
    for cls in (O.PagedAdamW, O.PagedAdamW8bit, O.PagedAdamW32bit):
        assert "is_paged" not in inspect.signature(cls.__init__).parameters


@pytest.mark.parametrize("cls", [O.Adam, O.AdamW8bit, O.Lion, O.PagedAdamW, O.AdEMAMix8bit, O.LAMB])
@pytest.mark.parametrize("kw", ["percentile_clipping", "block_wise"])
def test_removed_arguments_raise_type_error(cls, kw):
    with pytest.raises(TypeError):
        cls([param(4)], **{kw: 100 if kw == "percentile_clipping" else True})


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(eps=-1e-8), dict(betas=(1.0, 0.999)),
                                    dict(betas=(0.9, -0.1)), dict(weight_decay=-0.1)])
@pytest.mark.parametrize("cls", [O.Adam, O.AdamW8bit, O.Lion8bit])
def test_invalid_hyperparameters(cls, kwargs):
    if cls.__name__.startswith("Lion") and "eps" in kwargs:
        pytest.skip("Lion has no eps")
    with pytest.raises(ValueError):
        cls([param(4)], **kwargs)


def test_betas_given_as_string():
    opt = bnb.optim.optimizer.Optimizer2State("adam", [param(4)], betas="(0.8, 0.95)")
    assert tuple(opt.param_groups[0]["betas"]) == (0.8, 0.95)
    with pytest.raises(ValueError):
        bnb.optim.optimizer.Optimizer2State("adam", [param(4)], betas="(0.8, 1.5)")


@pytest.mark.parametrize("build,exc", [
    (lambda ps: O.Adam8bit(ps, amsgrad=True), ValueError),
    (lambda ps: O.Adam8bit(ps, optim_bits=8), ValueError),
    (lambda ps: O.AdamW8bit(ps, amsgrad=True), ValueError),
    (lambda ps: O.PagedAdamW8bit(ps, optim_bits=16), ValueError),
    (lambda ps: O.PagedAdam8bit(ps, amsgrad=True), ValueError),
    (lambda ps: O.LAMB8bit(ps, amsgrad=True), ValueError),
    (lambda ps: O.LAMB8bit(ps, max_unorm=0.5), ValueError),
    (lambda ps: O.SGD(ps, lr=0.1), NotImplementedError),
    (lambda ps: O.SGD8bit(ps, lr=0.1, momentum=0), NotImplementedError),
    (lambda ps: O.LARS(ps, lr=0.1), NotImplementedError),
    (lambda ps: O.LARS8bit(ps, lr=0.1), NotImplementedError),
    (lambda ps: O.RMSprop(ps, alpha=0.0), NotImplementedError),
    (lambda ps: O.RMSprop8bit(ps, centered=True), NotImplementedError),
    (lambda ps: O.Adagrad(ps, lr_decay=0.1), ValueError),
    (lambda ps: O.Adagrad(ps, initial_accumulator_value=0.1), ValueError),
    (lambda ps: O.Adagrad(ps, lr=-1), ValueError),
    (lambda ps: O.Adagrad8bit(ps, optim_bits=32), ValueError),
    (lambda ps: O.AdEMAMix(ps, betas=(0.9, 0.999)), ValueError),
    (lambda ps: O.PytorchLARS(ps, lr=-0.1), ValueError),
])
def test_constructor_guards(build, exc):
    with pytest.raises(exc):
        build([param(4)])


def test_args_and_defaults_in_param_groups():
    opt = O.AdEMAMix8bit([param(4)], t_alpha=100, t_beta3=200)
    assert opt.args.optim_bits == 8 and opt.args.min_8bit_size == 4096
    assert opt.args.max_unorm == 0.0 and opt.args.skip_zeros is False
    group = opt.param_groups[0]
    for k in ("lr", "betas", "eps", "weight_decay", "alpha", "t_alpha", "t_beta3"):
        assert k in group
    assert group["t_alpha"] == 100 and group["alpha"] == 5.0
    lion = O.Lion([param(4)])
    assert set(lion.param_groups[0]) == {"params", "lr", "betas", "eps", "weight_decay"}
    assert O.LAMB([param(4)]).args.max_unorm == 1.0
    assert O.LARS([param(4)], lr=0.1, momentum=0.9).args.max_unorm == 0.02


def test_user_args_object_is_used():
    args = bnb.optim.optimizer.MockArgs({"optim_bits": 8, "min_8bit_size": 10, "max_unorm": 0.0, "skip_zeros": False})
    p = param(100)
    opt = O.Adam([p], args=args)
    fill_grads([p], 0)
    opt.step()
    assert opt.state[p]["state1"].dtype == torch.uint8


# ---- state layout ----------------------------------------------------------------------------------------


def test_state_layout_8bit_and_min_8bit_size():
    small, edge, big = param(4095), param(4096), param(71, 73)
    opt = O.Adam8bit([small, edge, big])
    fill_grads([small, edge, big], 0)
    opt.step()
    assert opt.state[small]["state1"].dtype == torch.float32
    assert set(opt.state[small]) == {"step", "state1", "state2"}
    st = opt.state[big]
    assert set(st) == {"step", "state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2"}
    assert st["step"] == 1 and isinstance(st["step"], int)
    assert st["state1"].dtype == torch.uint8 and st["state1"].shape == big.shape
    assert st["absmax1"].shape == (-(71 * 73 // -256),) and st["absmax1"].dtype == torch.float32
    assert torch.equal(st["qmap1"], F.create_dynamic_map(signed=True))
    assert torch.equal(st["qmap2"], F.create_dynamic_map(signed=False))
    assert opt.state[edge]["state1"].dtype == torch.uint8
    custom = param(200)
    opt2 = O.Adam8bit([custom], min_8bit_size=100)
    fill_grads([custom], 0)
    opt2.step()
    assert opt2.state[custom]["state1"].dtype == torch.uint8


def test_state_layout_ademamix_and_trust_ratio():
    p = param(71, 73)
    opt = O.AdEMAMix8bit([p])
    fill_grads([p], 0)
    opt.step()
    st = opt.state[p]
    blocks = -(71 * 73 // -256)
    assert st["state1"].shape == (2, 71, 73) and st["absmax1"].shape == (2, blocks)
    assert st["state2"].shape == (71, 73) and st["absmax2"].shape == (blocks,)
    q = param(10)
    opt = O.AdEMAMix([q])
    fill_grads([q], 0)
    opt.step()
    assert opt.state[q]["state1"].shape == (2, 10) and opt.state[q]["state1"].dtype == torch.float32
    r = param(300)
    lamb = O.LAMB([r])
    fill_grads([r], 0)
    lamb.step()
    assert lamb.state[r]["unorm_vec"].shape == (1,) and lamb.state[r]["unorm_vec"].dtype == torch.float32
    one = param(5000)
    lion = O.Lion8bit([one])
    fill_grads([one], 0)
    lion.step()
    assert set(lion.state[one]) == {"step", "state1", "qmap1", "absmax1"}


@pytest.mark.parametrize("cls,limit", [(O.AdamW8bit, 2.04), (O.AdEMAMix8bit, 3.06), (O.Lion8bit, 1.02),
                                       (O.RMSprop8bit, 1.02)])
def test_state_memory_per_parameter(cls, limit):
    p = torch.nn.Parameter(torch.zeros(1 << 20))
    opt = cls([p])
    p.grad = torch.zeros_like(p)
    opt.step()
    total = sum(v.numel() * v.element_size() for v in opt.state[p].values() if torch.is_tensor(v))
    assert total / p.numel() <= limit


# ---- state dict --------------------------------------------------------------------------------------------

ROUND_TRIP = {
    "AdamW8bit": lambda ps: O.AdamW8bit(ps, lr=1e-2),
    "AdEMAMix8bit": lambda ps: O.AdEMAMix8bit(ps, lr=1e-2, t_alpha=10, t_beta3=10),
    "Lion8bit": lambda ps: O.Lion8bit(ps, lr=1e-3),
    "LAMB8bit": lambda ps: O.LAMB8bit(ps, lr=1e-2),
    "AdamW": lambda ps: O.AdamW(ps, lr=1e-2),
    "AdEMAMix32bit": lambda ps: O.AdEMAMix32bit(ps, lr=1e-2),
    "SGD8bit": lambda ps: O.SGD8bit(ps, lr=1e-2, momentum=0.9),
}


def _model_params(seed=0):
    # 71 * 73 = 5183: 8-bit states whose last block is partial; 100: 32-bit fallback.
    return [param(71, 73, seed=seed), param(100, seed=seed + 1), param(260, 20, dtype=torch.bfloat16, seed=seed + 2)]


def _tensor_bytes(t):
    return t.detach().cpu().contiguous().view(torch.uint8).reshape(-1)


def _assert_states_identical(sa, sb):
    assert sa.keys() == sb.keys()
    for k in sa:
        if torch.is_tensor(sa[k]):
            assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
            assert torch.equal(_tensor_bytes(sa[k]), _tensor_bytes(sb[k])), k
        else:
            assert sa[k] == sb[k], k


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_state_dict_round_trip_is_byte_exact(name):
    make = ROUND_TRIP[name]
    pa = _model_params()
    oa = make(pa)
    for s in range(3):
        fill_grads(pa, s)
        oa.step()
    sd = oa.state_dict()
    # Nested layout: step at top level, quantization tensors under the wrapper key.
    for idx, st in sd["state"].items():
        assert set(st) == {"step", "__bnb_optimizer_quant_state__"}
        assert "state1" in st["__bnb_optimizer_quant_state__"]
    # The live state is not restructured by state_dict().
    assert "state1" in oa.state[pa[0]]
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    ob = make(pb)
    ob.load_state_dict(loaded)
    for a, b in zip(pa, pb):
        _assert_states_identical(oa.state[a], ob.state[b])
    assert ob.param_groups[0]["lr"] == oa.param_groups[0]["lr"]
    # Saving again gives the same bytes.
    sd2 = ob.state_dict()
    for idx in sd["state"]:
        qa, qb = sd["state"][idx]["__bnb_optimizer_quant_state__"], sd2["state"][idx]["__bnb_optimizer_quant_state__"]
        _assert_states_identical(qa, qb)
    # Training goes on identically, and never writes into the loaded dict.
    snapshot = {k: v.clone() for k, v in loaded["state"][0]["__bnb_optimizer_quant_state__"].items()}
    for s in range(3, 6):
        fill_grads(pa, s)
        fill_grads(pb, s)
        oa.step()
        ob.step()
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        _assert_states_identical(oa.state[a], ob.state[b])
    for k, v in snapshot.items():
        assert torch.equal(loaded["state"][0]["__bnb_optimizer_quant_state__"][k], v)


def test_legacy_flat_state_dict_loads():
    pa = _model_params()
    oa = O.AdamW8bit(pa)
    fill_grads(pa, 0)
    oa.step()
    sd = oa.state_dict()
    flat = {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        st = dict(st)
        st.update(st.pop("__bnb_optimizer_quant_state__"))
        flat["state"][idx] = st
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    ob = O.AdamW8bit(pb)
    ob.load_state_dict(flat)
    for a, b in zip(pa, pb):
        _assert_states_identical(oa.state[a], ob.state[b])


def test_load_keeps_state_dtypes_for_16bit_params():
    p = param(71, 73, dtype=torch.float16)
    q = param(50, dtype=torch.bfloat16)
    oa = O.Adam8bit([p, q])
    fill_grads([p, q], 0)
    oa.step()
    ob = O.Adam8bit([torch.nn.Parameter(p.detach().clone()), torch.nn.Parameter(q.detach().clone())])
    ob.load_state_dict(oa.state_dict())
    st = list(ob.state.values())
    assert st[0]["state1"].dtype == torch.uint8 and st[0]["absmax1"].dtype == torch.float32
    assert st[0]["qmap1"].dtype == torch.float32
    assert st[1]["state1"].dtype == torch.float32


def test_load_state_dict_group_mismatch():
    pa = _model_params()
    oa = O.AdamW8bit(pa)
    sd = oa.state_dict()
    with pytest.raises(ValueError):
        O.AdamW8bit(pa[:2]).load_state_dict(sd)
    with pytest.raises(ValueError):
        O.AdamW8bit([{"params": pa[:1]}, {"params": pa[1:]}]).load_state_dict(sd)


def test_load_before_first_step_then_step():
    pa = _model_params()
    oa = O.AdamW8bit(pa)
    fill_grads(pa, 0)
    oa.step()
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    ob = O.AdamW8bit(pb)
    ob.load_state_dict(oa.state_dict())
    fill_grads(pa, 1)
    fill_grads(pb, 1)
    oa.step()
    ob.step()
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        assert ob.state[b]["step"] == 2


@needs_cuda
def test_state_dict_across_devices():
    pa = [p.cuda() for p in _model_params()]
    pa = [torch.nn.Parameter(p) for p in pa]
    oa = O.AdamW8bit(pa)
    fill_grads(pa, 0)
    oa.step()
    buf = io.BytesIO()
    torch.save(oa.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    pc = [torch.nn.Parameter(p.detach().cpu()) for p in pa]
    oc = O.AdamW8bit(pc)
    oc.load_state_dict(sd)
    for a, c in zip(pa, pc):
        for k, v in oc.state[c].items():
            if torch.is_tensor(v):
                assert v.device.type == "cpu"
                assert torch.equal(v, oa.state[a][k].cpu())
    pd = [torch.nn.Parameter(p.detach().cuda()) for p in pc]
    od = O.AdamW8bit(pd)
    od.load_state_dict(oc.state_dict())
    for a, d in zip(pa, pd):
        _assert_states_identical(oa.state[a], od.state[d])
        assert od.state[d]["state1"].device == d.device


# ---- GlobalOptimManager -------------------------------------------------------------------------------------


def test_manager_is_a_singleton():
    with pytest.raises(RuntimeError):
        GlobalOptimManager()
    assert GlobalOptimManager.get_instance() is GlobalOptimManager.get_instance()
    mng = GlobalOptimManager.get_instance()
    mng.override_config(param(3), "lr", 0.1)
    mng.initialize()
    assert mng.pid2config == {} and mng.index2config == {} and mng.module_weight_config_triple == []
    assert mng.uses_config_override is False and mng.optimizer is None


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(80, 64)
        self.fc2 = torch.nn.Linear(64, 80)


def _step_model(model, opt, seed=0):
    fill_grads(list(model.parameters()), seed)
    opt.step()


@pytest.mark.parametrize("when", ["before_register", "after_register", "after_optimizer"])
def test_override_optim_bits(when):
    mng = GlobalOptimManager.get_instance()
    model = TwoLayer()
    if when == "before_register":
        mng.override_config(model.fc1.weight, "optim_bits", 32)
        mng.register_parameters(model.parameters())
        opt = O.Adam(model.parameters(), optim_bits=8)
    elif when == "after_register":
        mng.register_parameters(model.parameters())
        mng.override_config(model.fc1.weight, "optim_bits", 32)
        opt = O.Adam(model.parameters(), optim_bits=8)
    else:
        opt = O.Adam(model.parameters(), optim_bits=8)
        mng.override_config([model.fc1.weight], key_value_dict={"optim_bits": 32})
    _step_model(model, opt)
    assert opt.state[model.fc1.weight]["state1"].dtype == torch.float32
    assert opt.state[model.fc2.weight]["state1"].dtype == torch.uint8


def test_module_override_resolved_at_first_step():
    mng = GlobalOptimManager.get_instance()
    model = TwoLayer()
    mng.register_module_override(model.fc2, "weight", {"optim_bits": 32})
    opt = O.AdamW8bit(model.parameters())
    _step_model(model, opt)
    assert opt.state[model.fc2.weight]["state1"].dtype == torch.float32
    assert opt.state[model.fc1.weight]["state1"].dtype == torch.uint8


@pytest.mark.parametrize("fused", [True, False])
def test_override_hyperparameters_per_parameter(fused):
    """A per-parameter lr/betas override must reach the kernel (also inside a fused step)."""
    mng = GlobalOptimManager.get_instance()
    model = TwoLayer()
    mng.override_config(model.fc1.weight, key_value_dict={"lr": 1e-1, "betas": (0.5, 0.9)})
    opt = O.Adam(model.parameters(), lr=1e-3)
    opt._fused = fused
    w0 = model.fc1.weight.detach().clone()
    b0 = model.fc1.bias.detach().clone()
    _step_model(model, opt)
    ref_w = torch.nn.Parameter(w0.clone())
    ref_b = torch.nn.Parameter(b0.clone())
    rw = torch.optim.Adam([ref_w], lr=1e-1, betas=(0.5, 0.9))
    rb = torch.optim.Adam([ref_b], lr=1e-3)
    fill_grads(list(model.parameters()), 0)
    ref_w.grad, ref_b.grad = model.fc1.weight.grad.clone(), model.fc1.bias.grad.clone()
    rw.step()
    rb.step()
    torch.testing.assert_close(model.fc1.weight.detach(), ref_w.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model.fc1.bias.detach(), ref_b.detach(), rtol=1e-6, atol=1e-7)


def test_get_config_overlay_order():
    mng = GlobalOptimManager.get_instance()
    p, q = param(10), param(10)
    opt = O.Adam([p, q], lr=1e-3)
    mng.index2config[(0, 0)] = {"lr": 0.5, "eps": 1e-3}
    mng.pid2config[id(p)] = {"lr": 0.25}
    cfg = opt.get_config(0, 0, opt.param_groups[0])
    assert cfg["lr"] == 0.25 and cfg["eps"] == 1e-3
    assert opt.get_config(0, 1, opt.param_groups[0])["lr"] == 1e-3
    for k in ("betas", "eps", "weight_decay", "lr", "alpha", "t_alpha", "t_beta3", "optim_bits", "min_8bit_size",
              "max_unorm", "skip_zeros"):
        assert k in cfg


# ---- bad input leaves everything unchanged -----------------------------------------------------------------


def _snapshot(params, opt):
    return ([p.detach().clone() for p in params],
            {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
             for p in params if p in opt.state})


def _assert_unchanged(params, opt, snap):
    values, states = snap
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)
    assert {id(p) for p in params if opt.state.get(p)} == set(states)
    for p in params:
        if id(p) in states:
            for k, v in states[id(p)].items():
                now = opt.state[p][k]
                if torch.is_tensor(v):
                    assert now.device == v.device and (v.is_meta or torch.equal(now, v))
                else:
                    assert now == v


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("after_first_step", [False, True])
@pytest.mark.parametrize("problem", ["mixed_devices", "float64_param"])
def test_bad_input_raises_before_any_change(problem, after_first_step, fused):
    good = [param(71, 73), param(300)]
    if problem == "float64_param":
        bad = torch.nn.Parameter(torch.randn(30, dtype=torch.float64))
    else:
        bad = param(30)
    params = good + [bad]
    opt = O.AdamW8bit([{"params": good}, {"params": [bad]}])
    opt._fused = fused
    if after_first_step or problem == "mixed_devices":
        fill_grads(good, 0)
        if problem == "mixed_devices":
            # torch refuses a gradient on another device than its parameter, so devices can only
            # get mixed through the optimizer state (e.g. a state moved by hand).
            fill_grads([bad], 0)
        opt.step()
    fill_grads(good, 1)
    bad.grad = torch.zeros_like(bad)
    if problem == "mixed_devices":
        opt.state[bad]["state1"] = opt.state[bad]["state1"].to("meta")
    snap = _snapshot(params, opt)
    expected = {"mixed_devices": RuntimeError, "float64_param": TypeError}[problem]
    with pytest.raises(expected) as info:
        opt.step()
    assert "parameter" in str(info.value) or "device" in str(info.value)
    _assert_unchanged(params, opt, snap)


def test_mismatched_loaded_state_raises_before_any_change():
    pa = [param(71, 73), param(300)]
    oa = O.AdamW8bit(pa)
    fill_grads(pa, 0)
    oa.step()
    sd = oa.state_dict()
    pb = [param(71, 73), param(299)]  # second parameter has a different size
    ob = O.AdamW8bit(pb)
    fill_grads(pb, 1)
    ob.step()
    snap = _snapshot(pb, ob)
    with pytest.raises(ValueError, match="elements"):
        ob.load_state_dict(sd)  # reported at load, the optimizer's own state kept
    _assert_unchanged(pb, ob, snap)
    assert all(ob.state[p]["step"] == 1 for p in pb)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("cls", [O.AdamW8bit, O.Adam, O.SGD8bit, O.LAMB])
def test_loading_into_a_stepped_optimizer_continues_exactly_like_the_saved_one(cls, fused):
    kwargs = {"lr": 0.1, "momentum": 0.9} if cls is O.SGD8bit else {}
    pa, pb = [param(71, 73), param(300, seed=1)], [param(71, 73, seed=2), param(300, seed=3)]
    oa, ob = cls(pa, **kwargs), cls(pb, **kwargs)
    oa._fused = ob._fused = fused
    for seed in range(3):
        fill_grads(pa, seed)
        oa.step()
    for seed in range(2):  # ob has cached fast-step state of its own by now
        fill_grads(pb, 10 + seed)
        ob.step()
    with torch.no_grad():
        for a, b in zip(pa, pb):
            b.copy_(a)
    ob.load_state_dict(oa.state_dict())
    for seed in range(3, 5):
        fill_grads(pa, seed)
        fill_grads(pb, seed)
        oa.step()
        ob.step()
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        assert oa.state[a]["step"] == ob.state[b]["step"] == 5
        assert torch.equal(oa.state[a]["state1"], ob.state[b]["state1"])


@pytest.mark.parametrize("reset", ["clear", "new_mapping", "delete_one"])
def test_resetting_the_state_by_hand_starts_the_parameters_afresh(reset):
    ps = [param(300), param(500, seed=1)]
    opt = O.AdamW8bit(ps, min_8bit_size=256)
    for seed in range(3):
        fill_grads(ps, seed)
        opt.step()
    if reset == "clear":
        opt.state.clear()
    elif reset == "new_mapping":
        from collections import defaultdict
        opt.state = defaultdict(dict)
    else:
        del opt.state[ps[0]]
    fill_grads(ps, 9)
    before0, grad0 = ps[0].detach().clone(), ps[0].grad.clone()
    opt.step()
    assert opt.state[ps[1]]["step"] == (1 if reset != "delete_one" else 4)
    assert opt.state[ps[0]]["step"] == 1
    # Oracle: a fresh optimizer's first step from the same values and gradient gives the same state.
    fresh_p = torch.nn.Parameter(before0)
    fresh = O.AdamW8bit([fresh_p], min_8bit_size=256)
    fresh_p.grad = grad0
    fresh.step()
    assert torch.equal(fresh_p.detach(), ps[0].detach())
    assert torch.equal(fresh.state[fresh_p]["state1"], opt.state[ps[0]]["state1"])


def test_override_config_after_training_started_applies_to_the_next_step():
    p, q = param(300), param(300, seed=1)
    opt = O.SGD8bit([p, q], lr=0.1, momentum=0.9, min_8bit_size=256)
    for seed in range(2):
        fill_grads([p, q], seed)
        opt.step()
    GlobalOptimManager.get_instance().override_config(p, "lr", 0.0)
    before_p, before_q = p.detach().clone(), q.detach().clone()
    fill_grads([p, q], 5)
    opt.step()
    assert torch.equal(p, before_p)
    assert not torch.equal(q, before_q)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("when", ["from_the_start", "after_a_step"])
@pytest.mark.parametrize("cls", [O.Adagrad8bit, O.Adagrad, O.LAMB])
def test_non_contiguous_parameters_are_updated_like_contiguous_ones(cls, when, fused):
    # bitsandbytes gives such a parameter contiguous storage before its update; the oracle is the same
    # optimizer on a contiguous copy with the same gradients (LAMB: a fused-path trust-ratio update).
    kwargs = {"min_8bit_size": 256} if cls is O.Adagrad8bit else {}
    base = torch.randn(30, 20)
    if when == "from_the_start":
        p = torch.nn.Parameter(base.t())
    else:
        p = torch.nn.Parameter(base.t().contiguous())
    ref = torch.nn.Parameter(base.t().contiguous())
    other, other_ref = param(300), param(300)
    opt, ref_opt = cls([other, p], **kwargs), cls([other_ref, ref], **kwargs)
    opt._fused = fused
    steps = 3
    for step in range(steps):
        if when == "after_a_step" and step == 1:
            # The same storage seen transposed (same address): the element at [0, 1] of the new view
            # must be the one updated by a gradient at [0, 1]; the oracle gets the same values contiguous.
            p.data = p.data.t()
            ref.data = ref.data.t().contiguous()
            assert not p.is_contiguous()
        g = torch.zeros(p.shape)
        g[0, 1] = 1.0 + step
        g[5, 7] = -2.0
        p.grad, ref.grad = g.clone(), g.clone()
        fill_grads([other], step)
        other_ref.grad = other.grad.clone()
        opt.step()
        ref_opt.step()
    assert torch.equal(p.detach(), ref.detach())
    assert torch.equal(other.detach(), other_ref.detach())


@pytest.mark.parametrize("fused", [True, False])
def test_a_gradient_resized_behind_the_cached_step_raises(fused):
    p = torch.nn.Parameter(torch.randn(4096))
    opt = O.SGD8bit([p], lr=0.1, momentum=0.9, min_8bit_size=256)
    opt._fused = fused
    p.grad = torch.randn(4096)
    opt.step()
    before = p.detach().clone()
    p.grad = torch.zeros_like(p)
    p.grad.data = torch.ones(1)  # a gradient of 1 element behind a parameter of 4096
    with pytest.raises(ValueError, match="gradient has 1 elements"):
        opt.step()
    assert torch.equal(p.detach(), before)


# ---- paged memory -------------------------------------------------------------------------------------------


def test_paged_optimizer_with_cpu_params_falls_back_with_one_warning():
    FO._paged_warned.discard("paged-cpu")
    p = param(100_000)
    q = param(100_000, seed=1)
    ref = torch.nn.Parameter(p.detach().clone())
    opt = O.PagedAdamW8bit([p, q])
    plain = O.AdamW8bit([ref])
    assert opt.is_paged
    fill_grads([p, q], 0)
    ref.grad = p.grad.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
        opt.step()
    plain.step()
    plain.step()
    assert sum("paged" in str(w.message) for w in caught) == 1
    assert not getattr(opt.state[p]["state1"], "is_paged", False)
    assert torch.equal(p, ref)


def test_paged_wrapper_frees_when_last_view_dies():
    """The tensor wrapper over managed memory (exercised with host memory from the C library)."""
    libc = ct.CDLL(None)
    libc.malloc.restype = ct.c_void_p
    libc.malloc.argtypes = [ct.c_size_t]
    libc.free.argtypes = [ct.c_void_p]
    freed = []

    def free(ptr):
        freed.append(ptr)
        libc.free(ptr)

    nbytes = 6 * 4
    ptr = libc.malloc(nbytes)
    t = FO._wrap_managed(ptr, nbytes, (2, 3), torch.float32, 0, free)
    assert t.shape == (2, 3) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert t.is_paged is True and t.page_deviceid == 0 and t.data_ptr() == ptr
    F.fill(t, 2.0)
    F._mul(t, torch.full((2, 3), 3.0))
    view = t[1]
    del t
    gc.collect()
    assert freed == []
    assert torch.equal(view, torch.full((3,), 6.0))
    del view
    gc.collect()
    assert freed == [ptr]


def test_page_manager_singleton_tracks_live_tensors():
    with pytest.raises(RuntimeError):
        F.GlobalPageManager()
    mng = F.GlobalPageManager.get_instance()
    assert mng is F.GlobalPageManager.get_instance()
    before = len(mng.paged_tensors)
    t = torch.zeros(3)
    mng.paged_tensors.append(t)
    assert len(mng.paged_tensors) == before + 1
    del t
    gc.collect()
    assert len(mng.paged_tensors) == before


def test_prefetch_refuses_regular_tensors():
    with pytest.raises(ValueError, match="paged"):
        F.prefetch_tensor(torch.zeros(3))


def test_storage_device_of_paged_tensor():
    t = torch.zeros(3)
    t.is_paged, t.page_deviceid = True, 1
    assert FO.storage_device(t) == torch.device("cuda", 1)
    assert FO.storage_device(torch.zeros(1)) == torch.device("cpu")


@needs_cuda
def test_get_paged_on_gpu():
    support = FO.paged_support()
    t = F.get_paged(100, 7, dtype=torch.float16)
    if not support["concurrent"]:
        assert t.device.type == "cuda"
        return
    assert t.is_paged and t.page_deviceid == 0 and t.shape == (100, 7) and t.dtype == torch.float16
    F.fill(t, 1.5)
    F.prefetch_tensor(t)
    F.prefetch_tensor(t, to_cpu=True)
    torch.cuda.synchronize()
    assert (t == 1.5).all()
    with pytest.raises(torch.OutOfMemoryError):
        F.get_paged(support["free_bytes"] // 4 + 1024, dtype=torch.float32)


@needs_cuda
@pytest.mark.parametrize("paged_cls,plain_cls", [(O.PagedAdamW8bit, O.AdamW8bit), (O.PagedAdamW, O.AdamW),
                                                 (O.PagedLion8bit, O.Lion8bit), (O.PagedAdEMAMix8bit, O.AdEMAMix8bit)])
def test_paged_equals_non_paged_on_gpu(paged_cls, plain_cls):
    pa = torch.nn.Parameter(torch.randn(400, 300, device="cuda") * 0.1)
    pb = torch.nn.Parameter(pa.detach().clone())
    oa, ob = paged_cls([pa]), plain_cls([pb])
    for s in range(5):
        g = torch.randn_like(pa) * 0.1
        pa.grad, pb.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    if FO.paged_support()["concurrent"]:
        assert oa.state[pa]["state1"].is_paged
        assert len(F.GlobalPageManager.get_instance().paged_tensors) > 0
    assert torch.equal(pa, pb)
    torch.testing.assert_close(oa.state[pa]["state1"].cuda(), ob.state[pb]["state1"], rtol=0, atol=0)


def test_pickled_optimizer_keeps_working():
    pa = _model_params()
    oa = O.AdamW8bit(pa, lr=1e-2)
    fill_grads(pa, 0)
    oa.step()
    buf = io.BytesIO()
    torch.save({"params": pa, "opt": oa}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    pb, ob = loaded["params"], loaded["opt"]
    assert ob.optimizer_name == "adam" and ob.args.optim_bits == 8
    for s in (1, 2):
        fill_grads(pa, s)
        fill_grads(pb, s)
        oa.step()
        ob.step()
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)


def test_unsupported_device_raises_before_any_change():
    good = param(300)
    meta = torch.nn.Parameter(torch.zeros(30, device="meta"))
    opt = O.AdamW([good, meta])
    fill_grads([good], 0)
    meta.grad = torch.zeros(30, device="meta")
    before = good.detach().clone()
    with pytest.raises(NotImplementedError, match="meta"):
        opt.step()
    assert torch.equal(good, before) and not opt.state.get(good)


@pytest.mark.parametrize("which", ["absmax1", "absmax2"])
def test_the_8bit_update_op_rejects_strided_block_scales_before_writing(which):
    # The op writes the new block scales through the tensor's pointer: a strided view would have its
    # gaps overwritten and its elements left stale.
    n, blocks = 600, 3
    gen = torch.Generator().manual_seed(0)
    p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    s1, s2 = torch.full((n,), 130, dtype=torch.uint8), torch.full((n,), 200, dtype=torch.uint8)
    scales = {"absmax1": torch.full((blocks,), 0.5), "absmax2": torch.full((blocks,), 0.25)}
    backing = torch.full((2 * blocks,), -7.0)
    strided = backing[::2]
    strided.copy_(scales[which])
    scales[which] = strided
    before = (p.clone(), s1.clone(), s2.clone(), backing.clone())
    with pytest.raises(ValueError, match=f"{which} must be contiguous"):
        torch.ops.bitsandbytes.optimizer_update_8bit_blockwise(
            "adam", g, p, s1, s2, 0.9, 0.999, 0.0, 0.0, 1e-8, 1, 1e-3, F.create_dynamic_map(True),
            F.create_dynamic_map(False), scales["absmax1"], scales["absmax2"], 0.0, 1.0)
    for a, b in zip((p, s1, s2, backing), before):
        assert torch.equal(a, b)

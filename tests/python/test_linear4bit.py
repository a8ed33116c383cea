"""matmul_4bit, MatMul4Bit, Linear4bit / LinearNF4 / LinearFP4, Embedding4bit and nn.parametrize
(compat.md §1.5, §1.6, §1.7, §2.1).

Oracle: the dequantized weight W = dequantize_4bit(packed, state) (itself checked bit-exactly
against the nibble-table oracle in test_4bit.py), cast to the activation dtype and multiplied in
float64. Error measure: ||out - ref|| / ||ref|| (relative Frobenius norm), bounded per activation
dtype by the rounding of the activation dtype over a K-term dot product.
"""

import json
import logging
import time
import warnings

import pytest
import torch
import torch.nn.functional as torchF

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.nn import parametrize as bnb_parametrize
from helpers import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda, randn

QUANT_TYPES = ["nf4", "fp4"]
STORAGES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32]
# Relative-norm error of the computed product against the float64 oracle, per activation dtype
# (a few units of the dtype's epsilon: 2^-23, 2^-10, 2^-7).
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOGGER = "bitsandbytes.nn.modules"


def _rel_err(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _oracle(x, packed, state, bias=None):
    """F.linear in float64 on the dequantized weight cast to x's dtype (what the layer promises)."""
    w = F.dequantize_4bit(packed, state).to(x.dtype).double()
    b = None if bias is None else bias.to(x.dtype).double()
    return torchF.linear(x.double(), w, b)


def _quantized_linear(n, k, quant_type, nested, device, dtype=torch.float16, bias=True, storage=torch.uint8):
    layer = bnb.nn.Linear4bit(k, n, bias=bias, compress_statistics=nested, quant_type=quant_type,
                              quant_storage=storage)
    with torch.no_grad():
        layer.weight.data = randn((n, k), dtype, scale=0.5)
        if bias:
            layer.bias.data = randn((n,), dtype, seed=1)
    return layer.to(device)


# ---- matmul_4bit -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("a_shape", [(1, 200), (7, 200), (2, 3, 200)], ids=["M1", "M7", "3d"])
def test_matmul_4bit_matches_float64_oracle(device, dtype, quant_type, nested, a_shape):
    # K = 200 is not a multiple of the 64-element block: blocks straddle weight rows.
    n, k = 48, a_shape[-1]
    w = randn((n, k), dtype, device)
    packed, state = F.quantize_4bit(w, compress_statistics=nested, quant_type=quant_type)
    x = randn(a_shape, dtype, device, seed=2)
    bias = randn((n,), dtype, device, seed=3)
    for b in (None, bias):
        out = bnb.matmul_4bit(x, packed, state, bias=b)
        assert out.shape == (*a_shape[:-1], n) and out.dtype == dtype and out.device.type == device
        assert _rel_err(out, _oracle(x, packed, state, b)) < REL_TOL[dtype]
    # The transposed view holds the same bytes: B is flattened to [-1, 1] first.
    torch.testing.assert_close(bnb.matmul_4bit(x, packed.t(), state, bias=bias),
                               bnb.matmul_4bit(x, packed, state, bias=bias), rtol=0, atol=0)


def test_matmul_4bit_out_argument_and_empty_batch():
    w = randn((16, 64), torch.float32)
    packed, state = F.quantize_4bit(w, quant_type="nf4")
    x = randn((3, 64), torch.float32, seed=1)
    out = torch.empty(3, 16)
    got = bnb.matmul_4bit(x, packed, state, out=out)
    assert got is out
    assert _rel_err(out, _oracle(x, packed, state)) < REL_TOL[torch.float32]
    empty = bnb.matmul_4bit(torch.empty(0, 64), packed, state)
    assert empty.shape == (0, 16)
    x0 = torch.empty(0, 64, requires_grad=True)
    y = bnb.matmul_4bit(x0, packed, state)
    y.sum().backward()
    assert y.shape == (0, 16) and x0.grad.shape == (0, 64)


def test_matmul_4bit_errors():
    w = randn((16, 64), torch.float32)
    packed, state = F.quantize_4bit(w, compress_statistics=True)
    x = randn((2, 64), torch.float32)
    with pytest.raises(ValueError, match="quant_state"):
        bnb.matmul_4bit(x, packed, None)
    _, state3d = F.quantize_4bit(randn((2, 8, 64), torch.float32))
    with pytest.raises(ValueError, match="2-D"):
        bnb.matmul_4bit(x, packed, state3d)
    state.state2.blocksize = 128
    with pytest.raises(NotImplementedError, match="256"):
        bnb.matmul_4bit(x, packed, state)


def test_matmul_4bit_kn_layout_is_deprecated_but_correct():
    k, n = 64, 32
    w_kn = randn((k, n), torch.float32)  # quantized the wrong way round: [K, N]
    packed, state = F.quantize_4bit(w_kn, quant_type="nf4")
    x = randn((5, k), torch.float32, seed=1)
    bias = randn((n,), torch.float32, seed=2)
    with pytest.warns(DeprecationWarning, match="Re-quantize from the weight"):
        out = bnb.matmul_4bit(x, packed, state, bias=bias)
    ref = x.double() @ F.dequantize_4bit(packed, state).double() + bias.double()
    assert out.shape == (5, n) and _rel_err(out, ref) < REL_TOL[torch.float32]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_matmul_4bit_gradients_match_float64(device, dtype, nested):
    n, k = 24, 96
    packed, state = F.quantize_4bit(randn((n, k), dtype, device), compress_statistics=nested, quant_type="nf4")
    x = randn((2, 5, k), dtype, device, seed=1).requires_grad_()
    bias = randn((n,), dtype, device, seed=2).requires_grad_()
    g = randn((2, 5, n), dtype, device, seed=3)
    out = bnb.matmul_4bit(x, packed, state, bias=bias)
    assert out.grad_fn is not None
    out.backward(g)
    w = F.dequantize_4bit(packed, state).to(dtype).double()
    assert x.grad.dtype == dtype and bias.grad.dtype == dtype
    assert _rel_err(x.grad, g.double() @ w) < REL_TOL[dtype]
    assert _rel_err(bias.grad, g.double().reshape(-1, n).sum(0)) < REL_TOL[dtype]


def test_matmul_4bit_gradient_matches_finite_differences():
    # The map A -> A @ W.T is linear, so a central difference with a large step is exact up to
    # float32 rounding of the outputs (|out| ~ 10, ulp ~ 1e-6, step 0.5 -> error ~ 1e-5).
    n, k = 8, 64
    packed, state = F.quantize_4bit(randn((n, k), torch.float32), quant_type="fp4")
    x = randn((3, k), torch.float32, seed=1).requires_grad_()
    weights = randn((3, n), torch.float32, seed=2)
    (bnb.matmul_4bit(x, packed, state) * weights).sum().backward()
    step = 0.5
    for i, j in [(0, 0), (1, 17), (2, 63)]:
        plus, minus = x.detach().clone(), x.detach().clone()
        plus[i, j] += step
        minus[i, j] -= step
        with torch.no_grad():
            fd = ((bnb.matmul_4bit(plus, packed, state) - bnb.matmul_4bit(minus, packed, state)) * weights).sum()
        assert abs(fd.item() / (2 * step) - x.grad[i, j].item()) < 1e-4


def test_no_grad_path_uses_gemm_4bit_op(monkeypatch):
    from bitsandbytes.backends import native_4bit_matmul as mm

    calls = []
    real = torch.ops.bitsandbytes.gemm_4bit

    class Spy:
        def __call__(self, *args):
            calls.append(args)
            return real(*args)

    packed, state = F.quantize_4bit(randn((16, 64), torch.float16), compress_statistics=True)
    monkeypatch.setattr(torch.ops.bitsandbytes, "gemm_4bit", Spy())
    rows = mm._cpu_streaming_max_rows(torch.float16) + 1  # more than the eager streaming path serves: the op
    x = randn((rows, 64), torch.float16)
    bnb.matmul_4bit(x, packed, state)
    (A, B, shape, absmax, blocksize, qt, bias, absmax_8bit, absmax_code, absmax_offset) = calls[0]
    # Nested mapping (§1.5): float scales from state2, the uint8 first-level absmax as indices.
    assert absmax is state.state2.absmax and absmax_8bit is state.absmax
    assert absmax_code is state.state2.code and absmax_offset is state.offset
    assert list(shape) == [16, 64] and blocksize == 64 and qt == "fp4" and B.shape == (512, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_eager_streaming_path_equals_the_op(device, nested):
    # Eager inference with few rows calls the streaming kernel directly; the op must give the same bytes.
    packed, state = F.quantize_4bit(randn((96, 128), torch.float16, device), compress_statistics=nested,
                                    quant_type="nf4")
    x = randn((4, 128), torch.float16, device, seed=3)
    bias = randn((96,), torch.float16, device, seed=4)
    with torch.no_grad():
        eager = bnb.matmul_4bit(x, packed, state, bias=bias)
    if nested:
        ref = torch.ops.bitsandbytes.gemm_4bit(x, packed.view(-1, 1), [96, 128], state.state2.absmax, 64, "nf4", bias,
                                               state.absmax, state.state2.code, state.offset)
    else:
        ref = torch.ops.bitsandbytes.gemm_4bit(x, packed.view(-1, 1), [96, 128], state.absmax, 64, "nf4", bias)
    assert torch.equal(eager, ref)


# ---- Linear4bit --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("storage", STORAGES, ids=dtype_id)
def test_linear4bit_forward_matches_oracle(device, quant_type, nested, storage):
    layer = _quantized_linear(40, 130, quant_type, nested, device, storage=storage)
    w = layer.weight
    assert w.bnb_quantized and w.dtype == storage and w.device.type == device
    assert w.shape == ((40 * 130 + 1) // (2 * storage.itemsize), 1)
    assert layer.quant_state is w.quant_state and w.quant_state.absmax.device.type == device
    x = randn((3, 130), torch.bfloat16, device, seed=4)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and layer.compute_dtype == torch.bfloat16
    assert _rel_err(out, _oracle(x, w.data, w.quant_state, layer.bias)) < REL_TOL[torch.bfloat16]


def test_linear_nf4_fp4_fix_the_quant_type():
    assert bnb.nn.LinearNF4(8, 4).weight.quant_type == "nf4"
    assert bnb.nn.LinearFP4(8, 4).weight.quant_type == "fp4"
    assert bnb.nn.Linear4bit(8, 4).weight.quant_type == "fp4"
    with pytest.raises(TypeError):
        bnb.nn.LinearNF4(8, 4, quant_type="fp4")
    layer = bnb.nn.Linear4bit(8, 4)
    assert isinstance(layer, torch.nn.Linear) and type(layer.weight).__name__ == "Params4bit"
    assert layer.weight.module is layer and layer.quant_storage == torch.uint8
    assert layer.compute_dtype is None and layer.compute_type_is_set is False and layer.quant_state is None
    assert layer.support_avx512bf16_for_cpu is False


@pytest.mark.parametrize("in_dtype", FLOAT_DTYPES, ids=dtype_id)
def test_linear4bit_compute_dtype_from_input(in_dtype, caplog):
    layer = _quantized_linear(16, 64, "nf4", True, "cpu", dtype=torch.float32)
    x = randn((4, 64), in_dtype, seed=1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = layer(x)
    assert out.dtype == in_dtype
    warned = [r for r in caplog.records if r.name == LOGGER and "slow inference" in r.getMessage()]
    if in_dtype == torch.float16:
        # Computes in the input's fp16 (no fp32 upcast) but says that fp32 was the configured default.
        assert layer.compute_dtype is None and len(warned) == 1
        assert warned[0].getMessage().endswith("This will lead to slow inference or training speed.")
    else:
        assert layer.compute_dtype == in_dtype and not warned
    # The bias follows the input dtype, in place.
    assert layer.bias.dtype == in_dtype
    assert _rel_err(out, _oracle(x, layer.weight.data, layer.quant_state, layer.bias)) < REL_TOL[in_dtype]


def test_linear4bit_single_row_fp16_warning_text(caplog):
    layer = _quantized_linear(16, 64, "nf4", False, "cpu")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        layer(randn((1, 1, 64), torch.float16))
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.getMessage().endswith("This will lead to slow inference.")
    assert "torch.float16" in record.getMessage()


def test_linear4bit_explicit_compute_dtype_casts_input_and_back():
    layer = bnb.nn.Linear4bit(64, 16, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    assert layer.compute_type_is_set
    x = randn((3, 64), torch.bfloat16, seed=1)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and layer.compute_dtype == torch.float32
    ref = _oracle(x.float(), layer.weight.data, layer.quant_state, layer.bias.float())
    assert _rel_err(out, ref) < REL_TOL[torch.bfloat16]


def test_linear4bit_training_gradients_reach_input_and_bias():
    layer = _quantized_linear(16, 64, "nf4", True, "cpu", dtype=torch.float32)
    layer.bias.requires_grad_(True)
    x = randn((4, 64), torch.float32, seed=1).requires_grad_()
    layer(x).pow(2).sum().backward()
    assert x.grad is not None and layer.bias.grad is not None and layer.weight.grad is None
    w = F.dequantize_4bit(layer.weight.data, layer.quant_state).double()
    y = x.detach().double() @ w.T + layer.bias.detach().double()
    assert _rel_err(x.grad, (2 * y) @ w) < REL_TOL[torch.float32]
    assert _rel_err(layer.bias.grad, (2 * y).sum(0)) < REL_TOL[torch.float32]


def test_linear4bit_recovers_lost_quant_state():
    layer = _quantized_linear(16, 64, "fp4", True, "cpu")
    x = randn((2, 64), torch.float16, seed=1)
    expected = layer(x)
    # What FSDP-style wrappers do: replace the parameter by a plain one holding the packed data.
    layer.weight = torch.nn.Parameter(layer.weight.data, requires_grad=False)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert type(layer.weight).__name__ == "Params4bit" and layer.weight.quant_state is layer.quant_state


def test_linear4bit_unquantized_forward_is_a_clear_error():
    layer = bnb.nn.Linear4bit(64, 16)
    with pytest.raises(RuntimeError, match="not quantized"):
        layer(torch.randn(2, 64))


# ---- serialization (§2.1) ----------------------------------------------------------------------


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16], ids=dtype_id)
def test_state_dict_layout(quant_type, nested, storage):
    n, k = 30, 70
    layer = _quantized_linear(n, k, quant_type, nested, "cpu", dtype=torch.bfloat16, storage=storage)
    sd = torch.nn.Sequential(layer).state_dict()
    p = "0.weight"
    expected = [p, "0.bias", f"{p}.absmax", f"{p}.quant_map"]
    if nested:
        expected += [f"{p}.nested_absmax", f"{p}.nested_quant_map"]
    expected += [f"{p}.quant_state.bitsandbytes__{quant_type}"]
    assert list(sd) == expected
    nblocks = -(-n * k // 64)
    assert sd[p].dtype == storage and sd[p].shape == ((n * k + 1) // (2 * storage.itemsize), 1)
    assert type(sd[p]) is torch.Tensor
    assert sd[f"{p}.absmax"].dtype == (torch.uint8 if nested else torch.float32)
    assert sd[f"{p}.absmax"].shape == (nblocks,)
    torch.testing.assert_close(sd[f"{p}.quant_map"], F.get_4bit_type(quant_type, device="cpu"), rtol=0, atol=0)
    if nested:
        assert sd[f"{p}.nested_absmax"].dtype == torch.float32 and sd[f"{p}.nested_absmax"].shape == (-(-nblocks // 256),)
        assert sd[f"{p}.nested_quant_map"].shape == (256,)
        assert sd[f"{p}.nested_quant_map"].data_ptr() != layer.quant_state.state2.code.data_ptr()
    blob = sd[f"{p}.quant_state.bitsandbytes__{quant_type}"]
    assert blob.dtype == torch.uint8 and blob.dim() == 1
    text = bytes(blob.tolist()).decode("utf-8")
    fields = json.loads(text)
    want = {"quant_type": quant_type, "blocksize": 64, "dtype": "bfloat16", "shape": [n, k]}
    if nested:
        want.update({"nested_blocksize": 256, "nested_dtype": "float32",
                     "nested_offset": layer.quant_state.offset.item()})
    assert list(fields) == list(want) and fields == want
    assert text == json.dumps(want)


def test_state_dict_is_small():
    layer = _quantized_linear(300, 400, "nf4", True, "cpu")
    ref = torch.nn.Linear(400, 300, dtype=torch.float16)

    def nbytes(sd):
        return sum(v.numel() * v.element_size() for v in sd.values())

    assert nbytes(layer.state_dict()) < 0.29 * nbytes(ref.state_dict())


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("storage", STORAGES, ids=dtype_id)
def test_round_trip_through_from_prequantized(nested, storage, tmp_path):
    layer = _quantized_linear(24, 96, "nf4", nested, "cpu", storage=storage)
    x = randn((3, 96), torch.float16, seed=5)
    expected = layer(x)
    path = tmp_path / "sd.pt"
    torch.save(layer.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    # The transformers loading path: weight and bias apart, the rest as quantized_stats.
    fresh = bnb.nn.Linear4bit(96, 24, quant_type="fp4", compress_statistics=not nested, device="meta")
    stats = {k: v for k, v in sd.items() if k.startswith("weight.")}
    fresh.weight = bnb.nn.Params4bit.from_prequantized(sd["weight"], stats, device="cpu", module=fresh)
    fresh.bias = torch.nn.Parameter(sd["bias"])
    assert fresh.weight.quant_type == "nf4" and fresh.weight.compress_statistics == nested
    assert fresh.weight.quant_storage == storage and fresh.quant_state is fresh.weight.quant_state
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    assert list(fresh.state_dict()) == list(sd)
    for key in sd:
        # Bit comparison: float-typed packed storage can hold NaN bit patterns.
        assert torch.equal(fresh.state_dict()[key].view(torch.uint8), sd[key].view(torch.uint8)), key
    # load_state_dict into a layer that was never quantized rebuilds the weight the same way.
    other = bnb.nn.Linear4bit(96, 24, quant_type="nf4")
    other.load_state_dict(sd)
    torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


# ---- Embedding4bit -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls, quant_type", [(bnb.nn.EmbeddingNF4, "nf4"), (bnb.nn.EmbeddingFP4, "fp4")])
@pytest.mark.parametrize("dim", [128, 100], ids=["row-gather", "full-dequant"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_embedding4bit(cls, quant_type, dim, dtype, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        emb = cls(50, dim, dtype=dtype)
    warned = [r for r in caplog.records if "not divisible by block size" in r.getMessage()]
    assert len(warned) == (0 if dim % 64 == 0 else 1)
    table = emb.weight.data.clone()
    emb = emb.to("cpu")
    assert emb.weight.quant_type == quant_type and emb.weight.quant_state.nested is False
    idx = torch.tensor([[0, 49, 7], [7, 3, 0]])
    out = emb(idx)
    ref = F.dequantize_4bit(emb.weight.data, emb.weight.quant_state)[idx]
    assert out.dtype == dtype and out.shape == (2, 3, dim)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # Loose quantization-error cap (the widest gap between adjacent codes is 1/3 of absmax, fp4 4..6 of 6).
    assert ((out.float() - table[idx].float()).abs() <= table.float().abs().max() / 3 + 1e-3).all()
    with pytest.raises(NotImplementedError):
        emb.state_dict()


def test_embedding4bit_generic_quant_storage():
    emb = bnb.nn.Embedding4bit(10, 64, quant_type="nf4", quant_storage=torch.float32).to("cpu")
    assert emb.weight.dtype == torch.float32
    idx = torch.tensor([9, 1])
    torch.testing.assert_close(emb(idx), F.dequantize_4bit(emb.weight.data, emb.weight.quant_state)[idx],
                               rtol=0, atol=0)


# ---- parametrize (§1.7) ------------------------------------------------------------------------


class _Experts(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(randn((4, 32, 64), torch.float32))
        self.not_param = torch.zeros(3)
        self.reads = 0

    def forward(self, x):
        return torch.einsum("bk,enk->ben", x, self.w) + self.w.sum()


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_parametrize_replaces_and_dequantizes(nested):
    m = _Experts()
    original = m.w.detach().clone()
    bnb_parametrize.replace_parameter_4bit(m, "w", compress_statistics=nested, quant_type="nf4")
    assert torch.nn.utils.parametrize.is_parametrized(m, "w")
    packed = m.parametrizations.w.original
    assert packed.dtype == torch.uint8 and packed.requires_grad is False
    qs = m.parametrizations.w[0].quant_state
    torch.testing.assert_close(m.w, F.dequantize_4bit(packed, qs), rtol=0, atol=0)
    assert m.w.shape == original.shape and (m.w - original).abs().max() < original.abs().max() / 4
    x = randn((2, 64), torch.float32, seed=1)
    out = m(x)
    assert out.shape == (2, 4, 32)
    assert torch.nn.utils.parametrize._cache_enabled == 0 and torch.nn.utils.parametrize._cache == {}
    sd = m.state_dict()
    keys = ["w", "w.absmax", "w.quant_map"] + (["w.nested_absmax", "w.nested_quant_map"] if nested else [])
    assert list(sd) == keys + ["w.quant_state.bitsandbytes__nf4"]
    # Prequantized path on a fresh module holding the packed data.
    fresh = _Experts()
    fresh.w = torch.nn.Parameter(sd["w"], requires_grad=False)
    bnb_parametrize.replace_parameter_4bit_prequantized(
        fresh, "w", {k[2:]: v for k, v in sd.items() if k.startswith("w.")}, device="cpu")
    torch.testing.assert_close(fresh(x), out, rtol=0, atol=0)


def test_parametrize_errors_and_cache_counter_on_exception():
    m = _Experts()
    with pytest.raises(AttributeError, match="missing"):
        bnb_parametrize.replace_parameter_4bit(m, "missing")
    with pytest.raises(TypeError, match="not_param"):
        bnb_parametrize.replace_parameter_4bit(m, "not_param")
    bnb_parametrize.replace_parameter_4bit(m, "w")
    with pytest.raises(RuntimeError):
        m(torch.randn(2, 5))  # wrong K: einsum fails inside forward
    assert torch.nn.utils.parametrize._cache_enabled == 0


# ---- torch.compile ------------------------------------------------------------------------------


@pytest.mark.slow
def test_compile_fullgraph_linear4bit_cpu():
    torch._dynamo.reset()
    model = torch.nn.Sequential(bnb.nn.LinearNF4(64, 32), torch.nn.GELU(), bnb.nn.LinearNF4(32, 16)).to("cpu")
    x = randn((4, 64), torch.float32, seed=1)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_linear4bit_cpu_light_backends(backend):
    torch._dynamo.reset()
    model = torch.nn.Sequential(bnb.nn.LinearNF4(64, 32, compute_dtype=torch.float32),
                                torch.nn.ReLU(), bnb.nn.LinearFP4(32, 16, compute_dtype=torch.float32)).to("cpu")
    x = randn((4, 64), torch.float32, seed=1)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(x), eager, rtol=0, atol=0)
    # Training-mode compile (grad path through MatMul4Bit) as well.
    xg = x.clone().requires_grad_()
    compiled(xg).sum().backward()
    xe = x.clone().requires_grad_()
    model(xe).sum().backward()
    torch.testing.assert_close(xg.grad, xe.grad, rtol=1e-6, atol=1e-6)


# ---- CUDA ---------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
def test_linear4bit_cuda_quantizes_on_move_and_matches_cpu(dtype):
    layer = _quantized_linear(64, 256, "nf4", True, "cpu", dtype=dtype)
    cpu_sd = layer.state_dict()
    x = randn((5, 256), dtype, seed=1)
    cuda_layer = _quantized_linear(64, 256, "nf4", True, "cuda", dtype=dtype)
    assert cuda_layer.weight.device.type == "cuda" and cuda_layer.quant_state.absmax.is_cuda
    assert torch.equal(cuda_layer.state_dict()["weight"].cpu(), cpu_sd["weight"])
    out = cuda_layer(x.cuda())
    assert _rel_err(out, _oracle(x, layer.weight.data, layer.quant_state, layer.bias)) < REL_TOL[dtype]
    # And back: the quant_state follows the data.
    back = cuda_layer.cpu()
    assert back.weight.device.type == "cpu" and back.quant_state.absmax.device.type == "cpu"


# ---- empty inputs, out=, and failed calls or loads that must leave the layer unchanged --------------------


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("m", [3, 400])
def test_matmul_4bit_k0_is_zeros_plus_bias(grad, m):
    # A sum over K = 0 terms is 0: the product is the bias broadcast over the rows (float64 oracle).
    packed, state = F.quantize_4bit(torch.empty(32, 0), quant_type="nf4")
    bias = randn((32,), torch.float32, seed=3)
    A = torch.empty(m, 0).fill_(float("nan"))
    if grad:
        A.requires_grad_(True)
    y = bnb.matmul_4bit(A, packed.t(), state, bias=bias)
    ref = torch.zeros(m, 32, dtype=torch.float64) + bias.double()
    assert y.shape == (m, 32) and torch.equal(y.double(), ref)
    assert torch.equal(bnb.matmul_4bit(A.detach(), packed, state).double(), torch.zeros(m, 32, dtype=torch.float64))


def test_linear4bit_with_no_input_features_returns_the_bias():
    layer = bnb.nn.LinearNF4(0, 32)
    with torch.no_grad():
        layer.bias.copy_(randn((32,), torch.float32, seed=4))
    layer = layer.to("cpu")
    for _ in range(2):  # the first call sets the compute dtype, the second takes the fast path
        y = layer(torch.randn(2, 0))
        assert torch.equal(y.double(), layer.bias.detach().double().expand(2, 32))


def test_matmul_4bit_out_is_validated_before_computing():
    layer = _quantized_linear(32, 64, "nf4", False, "cpu", dtype=torch.float32)
    packed, state = layer.weight, layer.weight.quant_state
    A = randn((3, 64), torch.float32, seed=5)
    for out, exc in [(torch.zeros(2, 3, 32), ValueError), (torch.zeros(3, 33), ValueError),
                     (torch.zeros(3, 32, dtype=torch.float16), TypeError),
                     (torch.zeros(3, 32, dtype=torch.int64), TypeError)]:
        before = out.clone()
        with pytest.raises(exc, match="out"):
            bnb.matmul_4bit(A, packed, state, out=out)
        assert torch.equal(out, before)
    out = torch.zeros(32, 3).t()  # any strides: the result is copied in
    assert bnb.matmul_4bit(A, packed, state, out=out) is out
    assert _rel_err(out, _oracle(A, packed, state)) < REL_TOL[torch.float32]


@pytest.mark.parametrize("x", [torch.ones(2, 64, dtype=torch.long), torch.randn(2, 65, dtype=torch.float16)],
                         ids=["int64", "wrong_K"])
def test_failed_linear4bit_forward_leaves_the_module_unchanged(x):
    layer = _quantized_linear(32, 64, "nf4", True, "cpu", dtype=torch.float32)
    bias_before = layer.bias.detach().clone()
    with pytest.raises((TypeError, ValueError)) as info:
        layer(x)
    if x.dtype == torch.long:
        assert info.type is TypeError and "floating-point" in str(info.value)
    assert layer.bias.dtype == torch.float32 and torch.equal(layer.bias.detach(), bias_before)
    assert layer.compute_dtype is None and layer.compute_type_is_set is False
    # and a good call afterwards behaves as on a fresh layer (float64 oracle)
    good = randn((2, 64), torch.float16, seed=6)
    y = layer(good)
    assert y.dtype == torch.float16 and layer.bias.dtype == torch.float16
    assert _rel_err(y, _oracle(good, layer.weight, layer.weight.quant_state, layer.bias)) < REL_TOL[torch.float16]


def test_loading_a_4bit_checkpoint_of_another_shape_fails_and_keeps_the_weight():
    src = _quantized_linear(16, 32, "nf4", True, "cpu", dtype=torch.float32)
    dst = _quantized_linear(48, 64, "nf4", True, "cpu", dtype=torch.float32)
    weight, state = dst.weight, dst.quant_state
    sd = {k: v for k, v in src.state_dict().items() if k != "bias"}
    with pytest.raises(RuntimeError, match=r"size mismatch for weight.*\[16, 32\].*\[48, 64\]"):
        dst.load_state_dict(sd, strict=False)
    assert dst.weight is weight and dst.quant_state is state and dst.weight.quant_state.shape == (48, 64)
    # a matching weight with a bad bias: the load fails as a whole, the weight stays
    good = _quantized_linear(48, 64, "fp4", True, "cpu", dtype=torch.float32).state_dict()
    good["bias"] = torch.zeros(5)
    with pytest.raises(RuntimeError, match="size mismatch for bias"):
        dst.load_state_dict(good)
    assert dst.weight is weight and dst.weight.quant_type == "nf4"


def test_embedding4bit_refuses_negative_indices():
    emb = bnb.nn.EmbeddingNF4(10, 64).to("cpu")
    ref = torch.nn.Embedding(10, 64)
    for idx in (torch.tensor([-1]), torch.tensor([3, -10]), torch.tensor([10])):
        with pytest.raises(IndexError):
            ref(idx)
        with pytest.raises(IndexError):
            emb(idx)
    # in-range indices still gather the dequantized rows (oracle: the full dequantized table)
    table = F.dequantize_4bit(emb.weight.data, emb.weight.quant_state)
    idx = torch.tensor([[9, 0], [3, 3]])
    assert torch.equal(emb(idx), table[idx])

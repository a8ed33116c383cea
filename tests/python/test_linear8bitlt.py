"""Int8Params, Linear8bitLt and Embedding8bit: lifecycle, serialization and device moves
(compat.md §1.6, §2.2, §7).

Oracles: the row-wise quantization of the fp16 weight (oracles.int8_vectorwise_ref) for CB/SCB,
bit-exact; layer outputs against the LLM.int8() formula in float64 (test_matmul8bit.py holds the
numerics in detail, here only a relative-norm bound per dtype).
"""

import copy
import io
import pickle

import pytest
import torch

import bitsandbytes as bnb
import oracles as O
from bitsandbytes.nn import Embedding8bit, Int8Params, Linear8bitLt
from helpers import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda, randn

THRESHOLD = 6.0
REL_TOL = {torch.float32: 2e-3, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _rel_err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _fp_linear(k=96, n=40, dtype=torch.float16, bias=True, seed=1):
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n, bias=bias).to(dtype)


def _int8_from(fp, threshold=0.0, has_fp16_weights=False):
    layer = Linear8bitLt(fp.in_features, fp.out_features, bias=fp.bias is not None,
                         has_fp16_weights=has_fp16_weights, threshold=threshold)
    layer.load_state_dict(fp.state_dict())
    return layer


def _layer_oracle(x, CB, SCB, bias, threshold):
    """LLM.int8() of x with the int8 weight (CB, SCB), float64."""
    x2 = x.detach().reshape(-1, x.shape[-1]).cpu()
    CA, SCA, cols = O.int8_vectorwise_ref(x2, threshold)
    out = (CA.double() @ CB.double().t()) * SCA.double()[:, None] * SCB.double()[None, :] / 127.0**2
    if cols is not None and cols.numel():
        out += x2[:, cols].double() @ (CB[:, cols].double() * SCB.double()[:, None] / 127).to(x.dtype).double().t()
    if bias is not None:
        out += bias.detach().cpu().double()
    return out.reshape(*x.shape[:-1], CB.shape[0])


def _inputs(shape, dtype, device, outliers=True, seed=3):
    x = randn(shape, torch.float32, seed=seed)
    if outliers:
        x.view(-1, shape[-1])[:, 5] = 8.0
    return x.to(dtype).to(device)


# ---- Int8Params ---------------------------------------------------------------------------------------


def test_int8params_constructor_roundtrips_its_dict():
    w = randn((6, 8), torch.float16)
    p = Int8Params(w, requires_grad=False, has_fp16_weights=False)
    assert set(p.__dict__) == {"CB", "SCB", "has_fp16_weights"}
    # transformers rebuilds parameters as Cls(tensor, requires_grad=..., **old.__dict__), with its own markers.
    p._is_hf_initialized = True
    q = Int8Params(p.data, requires_grad=False, **p.__dict__)
    assert isinstance(q, Int8Params) and isinstance(q, torch.nn.Parameter)
    assert q.has_fp16_weights is False and q.CB is None and q.SCB is None
    assert set(q.__dict__) == {"CB", "SCB", "has_fp16_weights"}
    assert Int8Params().shape == (0,)
    # An int8 tensor cannot require gradients: an int8 weight is frozen whatever was asked.
    assert Int8Params(torch.zeros(2, 3, dtype=torch.int8)).requires_grad is False


@pytest.mark.parametrize("device", DEVICES)
def test_int8params_quantizes_on_move(device):
    w = randn((10, 33), torch.float32, seed=4)
    p = Int8Params(w.clone(), requires_grad=False)
    q = p.to(device)
    CB, SCB, _ = O.int8_vectorwise_ref(w.half())
    assert q.dtype == torch.int8 and q.device.type == device and q.shape == (10, 33)
    assert q.CB is not None and q.CB.data_ptr() == q.data_ptr()
    assert torch.equal(q.data.cpu(), CB)
    assert q.SCB.dtype == torch.float32 and q.SCB.device.type == device and torch.equal(q.SCB.cpu(), SCB)
    # A move of an already quantized weight keeps its bytes and scales.
    r = q.to(device)
    assert torch.equal(r.data.cpu(), CB) and torch.equal(r.SCB.cpu(), SCB) and r.CB.data_ptr() == r.data_ptr()
    # A dtype cast would turn codes into values: the int8 rows keep their storage.
    assert q.to(torch.float16).dtype == torch.int8


def test_int8params_meta_and_fp16_weights_do_not_quantize():
    p = Int8Params(torch.empty(4, 8, device="meta"), requires_grad=False)
    assert p.to("meta").dtype == torch.float32
    f = Int8Params(randn((4, 8), torch.float16), requires_grad=True, has_fp16_weights=True)
    g = f.to("cpu")
    assert g.dtype == torch.float16 and g.SCB is None and g.requires_grad and isinstance(g, Int8Params)


@pytest.mark.parametrize("device", DEVICES)
def test_int8params_deepcopy_and_pickle(device):
    p = Int8Params(randn((12, 16), torch.float16), requires_grad=False).to(device)
    for clone in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert type(clone) is Int8Params and set(clone.__dict__) == set(p.__dict__)
        assert clone.data_ptr() != p.data_ptr()
        assert torch.equal(clone.data, p.data) and torch.equal(clone.SCB, p.SCB)
        assert clone.CB.data_ptr() == clone.data_ptr(), "CB stays the parameter's own data"
        assert clone.has_fp16_weights is False and clone.requires_grad is False
    buf = io.BytesIO()
    torch.save(p, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is Int8Params and torch.equal(loaded.SCB, p.SCB) and torch.equal(loaded.data, p.data)


# ---- Linear8bitLt lifecycle ---------------------------------------------------------------------------


def test_linear8bitlt_construction():
    layer = Linear8bitLt(32, 16, has_fp16_weights=False, threshold=THRESHOLD, index=3)
    assert isinstance(layer, torch.nn.Linear) and isinstance(layer.weight, Int8Params)
    assert layer.weight.requires_grad is False and layer.weight.has_fp16_weights is False
    assert layer.state.threshold == THRESHOLD and layer.state.has_fp16_weights is False and layer.state.use_pool
    assert layer.index == 3
    trainable = Linear8bitLt(32, 16)
    assert trainable.state.has_fp16_weights is True and trainable.weight.requires_grad
    assert trainable.state.use_pool is False and trainable.state.threshold == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD], ids=["t0", "t6"])
def test_quantized_layer_forward(device, dtype, threshold):
    fp = _fp_linear(dtype=dtype)
    layer = _int8_from(fp, threshold).to(device).eval()
    CB, SCB, _ = O.int8_vectorwise_ref(fp.weight.detach().half())
    assert layer.weight.dtype == torch.int8 and torch.equal(layer.weight.data.cpu(), CB)
    assert torch.equal(layer.weight.SCB.cpu(), SCB)
    x = _inputs((2, 5, 96), dtype, device, outliers=threshold > 0)
    out = layer(x)
    assert out.shape == (2, 5, 40) and out.dtype == dtype and out.device.type == device
    assert _rel_err(out, _layer_oracle(x, CB, SCB, fp.bias.to(dtype), threshold)) < REL_TOL[dtype]
    assert _rel_err(out, fp.to(device)(x)) < 0.03  # close to the float layer
    # The first forward hands CB/SCB over to the matmul state; the weight's data is that CB.
    assert layer.weight.CB is None and layer.weight.SCB is None
    assert layer.state.CB.data_ptr() == layer.weight.data_ptr() and torch.equal(layer.state.SCB.cpu(), SCB)
    if threshold > 0:
        assert layer.state.idx.cpu().tolist() == [5]
    torch.testing.assert_close(layer(x), out, rtol=0, atol=0)


def test_unmoved_layer_quantizes_on_first_forward_on_cpu():
    fp = _fp_linear(dtype=torch.bfloat16)
    layer = _int8_from(fp, THRESHOLD).eval()
    assert layer.weight.dtype == torch.float32  # nothing quantized before a move or a forward
    x = _inputs((4, 96), torch.bfloat16, "cpu")
    out = layer(x)
    CB, SCB, _ = O.int8_vectorwise_ref(fp.weight.detach().half())
    assert layer.weight.dtype == torch.int8 and torch.equal(layer.weight.data, CB)
    assert torch.equal(layer.state.SCB, SCB)
    assert _rel_err(out, _layer_oracle(x, CB, SCB, fp.bias, THRESHOLD)) < REL_TOL[torch.bfloat16]
    assert set(layer.state_dict()) == {"weight", "bias", "SCB", "weight_format"}


@pytest.mark.parametrize("device", DEVICES)
def test_training_mode_forward_and_input_gradient(device):
    # A frozen int8 layer in training mode (LoRA-style): gradients reach the input, not the weight.
    fp = _fp_linear(dtype=torch.float32)
    layer = _int8_from(fp, THRESHOLD).to(device).train()
    x = _inputs((6, 96), torch.float32, device).requires_grad_(True)
    out = layer(x)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert layer.weight.grad is None and layer.bias.grad is not None
    w = layer.state.CB.cpu().double() * layer.state.SCB.cpu().double()[:, None] / 127
    grad = 2 * out.detach().cpu().double()
    assert _rel_err(x.grad, grad @ w) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_weights_training_reduces_loss(device):
    torch.manual_seed(0)
    layer = Linear8bitLt(32, 8, has_fp16_weights=True).to(device)
    assert layer.weight.dtype == torch.float32 and layer.weight.requires_grad
    x = torch.randn(64, 32, device=device)
    y = x @ torch.randn(32, 8, device=device)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert layer.weight.dtype == torch.float32 and layer.weight.grad is not None
    assert losses[-1] < 0.5 * losses[0]
    assert "SCB" not in layer.state_dict()  # a float weight saves no int8 statistics


def test_bias_follows_input_dtype():
    layer = _int8_from(_fp_linear(dtype=torch.float32)).to("cpu").eval()
    out = layer(randn((3, 96), torch.bfloat16))
    assert out.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16


def test_module_half_keeps_int8_weight():
    layer = _int8_from(_fp_linear(dtype=torch.float32)).to("cpu")
    scb = layer.weight.SCB.clone()
    layer.half()
    assert layer.weight.dtype == torch.int8 and layer.weight.SCB.dtype == torch.float32
    assert torch.equal(layer.weight.SCB, scb) and layer.bias.dtype == torch.float16


# ---- state dict -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("after_forward", [False, True], ids=["fresh", "after-forward"])
def test_state_dict_layout(device, after_forward):
    fp = _fp_linear()
    layer = _int8_from(fp, THRESHOLD).to(device)
    if after_forward:
        layer.eval()(_inputs((3, 96), torch.float16, device))
    sd = layer.state_dict()
    assert list(sd) == ["weight", "bias", "SCB", "weight_format"]
    CB, SCB, _ = O.int8_vectorwise_ref(fp.weight.detach().half())
    assert type(sd["weight"]) is torch.Tensor and sd["weight"].dtype == torch.int8 and sd["weight"].shape == (40, 96)
    assert torch.equal(sd["weight"].cpu(), CB)
    assert sd["SCB"].dtype == torch.float32 and torch.equal(sd["SCB"].cpu(), SCB)
    fmt = sd["weight_format"]
    assert fmt.dtype == torch.uint8 and fmt.dim() == 0 and fmt.item() == 0
    # A nested prefix and keep_vars.
    model = torch.nn.Sequential(layer)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "0.SCB", "0.weight_format"}
    assert isinstance(layer.state_dict(keep_vars=True)["weight"], Int8Params)


def test_unquantized_layers_save_no_int8_statistics():
    assert set(_int8_from(_fp_linear()).state_dict()) == {"weight", "bias"}
    assert set(Linear8bitLt(8, 4, has_fp16_weights=True).to("cpu").state_dict()) == {"weight", "bias"}


def test_int8_state_dict_is_less_than_half_of_fp32():
    fp = _fp_linear(k=400, n=300, dtype=torch.float32)
    layer = _int8_from(fp).to("cpu")

    def size(sd):
        buf = io.BytesIO()
        torch.save(sd, buf)
        return buf.tell()

    assert size(layer.state_dict()) < 0.5 * size(fp.state_dict())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("after_forward", [False, True], ids=["fresh", "after-forward"])
@torch.no_grad()  # inference on both sides: the same kernels, so equal bytes
def test_load_prequantized_checkpoint(device, after_forward):
    src = _int8_from(_fp_linear(seed=1), THRESHOLD).to(device).eval()
    x = _inputs((4, 96), torch.float16, device)
    expected = src(x)
    sd = {k: v.cpu() for k, v in src.state_dict().items()}
    dst = _int8_from(_fp_linear(seed=2), THRESHOLD).to(device).eval()  # other weights, quantized
    if after_forward:
        dst(x)
    result = dst.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(dst.weight.data.cpu(), sd["weight"])
    assert torch.equal(dst._scb().cpu(), sd["SCB"])
    torch.testing.assert_close(dst(x), expected, rtol=0, atol=0)
    # Non-strict loading reads SCB as well.
    other = _int8_from(_fp_linear(seed=3), THRESHOLD).to(device).eval()
    other.load_state_dict(sd, strict=False)
    torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()  # inference on both sides: the same kernels, so equal bytes
def test_parameters_rebuilt_like_transformers(device):
    # transformers builds the layer on "meta", then replaces its weight by
    # Int8Params(tensor, requires_grad=False, **old.__dict__).to(device) and, for a pre-quantized
    # checkpoint, sets weight.SCB afterwards.
    fp = _fp_linear(seed=4)
    src = _int8_from(fp, THRESHOLD).to(device).eval()
    x = _inputs((4, 96), torch.float16, device)
    expected = src(x)
    sd = {k: v.cpu() for k, v in src.state_dict().items()}
    for prequantized in (False, True):
        layer = Linear8bitLt(96, 40, has_fp16_weights=False, threshold=THRESHOLD, device="meta")
        old = layer.weight
        assert old.device.type == "meta" and old.dtype == torch.float32  # never quantized on meta
        data = sd["weight"] if prequantized else fp.weight.detach().cpu()
        layer._parameters["weight"] = Int8Params(data, requires_grad=False, **old.__dict__).to(device)
        if prequantized:
            layer.weight.SCB = sd["SCB"].to(device)
        layer.bias = torch.nn.Parameter(fp.bias.detach().to(device), requires_grad=False)
        layer.eval()
        assert layer.weight.dtype == torch.int8 and torch.equal(layer.weight.data.cpu(), sd["weight"])
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
        assert list(layer.state_dict()) == ["weight", "bias", "SCB", "weight_format"]


def test_load_float_checkpoint_into_quantized_layer_requantizes():
    fp = _fp_linear(seed=5)
    layer = _int8_from(_fp_linear(seed=6)).to("cpu")
    layer.load_state_dict(fp.state_dict())
    CB, SCB, _ = O.int8_vectorwise_ref(fp.weight.detach().half())
    assert torch.equal(layer.weight.data, CB) and torch.equal(layer.weight.SCB, SCB)


def test_load_errors_have_the_spec_messages():
    sd = _int8_from(_fp_linear()).to("cpu").state_dict()
    fresh = _int8_from(_fp_linear())
    with pytest.raises(RuntimeError) as err:
        fresh.load_state_dict(sd)
    assert str(err.value) == ("Loading a quantized checkpoint into non-quantized Linear8bitLt is not supported. "
                              "Please call module.cuda() before module.load_state_dict()")
    target = _int8_from(_fp_linear()).to("cpu")
    with pytest.raises(ValueError) as err:
        target.load_state_dict({**sd, "weight_format": torch.tensor(1, dtype=torch.uint8)})
    assert str(err.value) == "Expected supported weight format - got 1"
    with pytest.raises(ValueError) as err:
        target.load_state_dict({**sd, "weight_format": "col_turing"})
    assert str(err.value) == "Only 'row' weight format is supported, got col_turing"
    # The string form and an absent format are both row-major.
    target.load_state_dict({**sd, "weight_format": "row"})
    target.load_state_dict({k: v for k, v in sd.items() if k != "weight_format"})


# ---- copies and pickling ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("after_forward", [False, True], ids=["fresh", "after-forward"])
def test_module_deepcopy_and_pickle(device, after_forward):
    layer = _int8_from(_fp_linear(), THRESHOLD).to(device).eval()
    x = _inputs((3, 96), torch.float16, device)
    if after_forward:
        layer(x)
    expected = layer(x)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), torch.load(buf, weights_only=False)):
        assert type(clone.weight) is Int8Params and set(clone.weight.__dict__) == set(layer.weight.__dict__)
        assert clone.weight.data_ptr() != layer.weight.data_ptr()
        torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)
        sd, ref = clone.state_dict(), layer.state_dict()
        assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) for k in sd)
        # The copy's loads land in the copy only.
        with torch.no_grad():
            clone.load_state_dict({**sd, "SCB": sd["SCB"] * 2})
        assert torch.equal(layer.state_dict()["SCB"], ref["SCB"])
        assert _rel_err(clone(x) - clone.bias, 2 * (expected - layer.bias)) < 2e-3


# ---- device moves ---------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("after_forward", [False, True], ids=["fresh", "after-forward"])
def test_device_moves_both_ways_keep_bytes(after_forward):
    fp = _fp_linear()
    layer = _int8_from(fp, THRESHOLD).cuda().eval()
    x = _inputs((3, 96), torch.float16, "cuda")
    expected = layer(x) if after_forward else None
    sd = {k: v.cpu().clone() for k, v in layer.state_dict().items()}

    def check(device):
        assert layer.weight.device.type == device and layer.weight.dtype == torch.int8
        now = layer.state_dict()
        assert torch.equal(now["weight"].cpu(), sd["weight"]) and torch.equal(now["SCB"].cpu(), sd["SCB"])
        assert now["SCB"].device.type == device
        for t in (layer.weight.CB, layer.weight.SCB, layer.state.CB, layer.state.SCB):
            assert t is None or t.device.type == device

    layer.to("cpu")
    check("cpu")
    layer.cpu().eval()(x.cpu())  # runs on CPU too
    layer.to("cuda")
    check("cuda")
    # Moves of a parent module (which never call the child's .to()) carry the state too.
    model = torch.nn.Sequential(layer).cpu()
    check("cpu")
    model.cuda()
    check("cuda")
    if expected is not None:
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


@needs_cuda
def test_load_prequantized_checkpoint_written_on_cpu_into_cuda_layer():
    src = _int8_from(_fp_linear(), THRESHOLD).to("cpu")
    dst = _int8_from(_fp_linear(seed=9), THRESHOLD).cuda()
    dst.load_state_dict(src.state_dict())
    assert dst.weight.device.type == "cuda" and dst.weight.SCB.device.type == "cuda"
    assert torch.equal(dst.weight.data.cpu(), src.weight.data) and torch.equal(dst.weight.SCB.cpu(), src.weight.SCB)


# ---- Embedding8bit ------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("rows", [1, 16, 96])
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
@torch.no_grad()
def test_stacked_layers_in_a_cuda_graph_equal_eager(threshold, rows):
    """Few-row calls run as a chain of kernels that may start before their predecessor ends (each waits
    for the results it reads); many-row calls with outliers pack the outlier columns on a side stream
    while the GEMM runs (a fork and join inside the capture): two layers in a row, eager and replayed
    from a CUDA graph with new input data, give the same bytes, and match the float64 formula of the
    first layer."""
    torch.manual_seed(3)
    k, n = 512, 768
    layers = []
    for i in range(2):
        w = torch.randn(n if i == 0 else k, k if i == 0 else n) * 0.05
        layer = Linear8bitLt(w.shape[1], w.shape[0], bias=True, has_fp16_weights=False, threshold=threshold)
        layer.weight = Int8Params(w.half(), requires_grad=False, has_fp16_weights=False)
        layer.bias = torch.nn.Parameter(torch.randn(w.shape[0]).half() * 0.1, requires_grad=False)
        layers.append(layer.cuda().eval())

    def inputs(seed):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)).half()
        x[:, 7] *= 40  # outlier columns for the threshold-6 layers
        x[:, 100] *= -30
        return x.cuda()

    static_x = inputs(0)
    for _ in range(2):  # warm-up on the capture stream's side
        layers[1](layers[0](static_x))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = layers[1](layers[0](static_x))
    for seed in (1, 2):
        x = inputs(seed)
        static_x.copy_(x)
        graph.replay()
        eager = layers[1](layers[0](x))
        torch.cuda.synchronize()
        assert torch.equal(static_out, eager)
        first = layers[0](x)
        ref = _layer_oracle(x, layers[0].state.CB.cpu(), layers[0].state.SCB.cpu(), layers[0].bias, threshold)
        assert _rel_err(first, ref) < REL_TOL[torch.float16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_embedding8bit(device, dtype):
    emb = Embedding8bit(50, 24, dtype=dtype)
    table = emb.weight.detach().clone()
    emb = emb.to(device)
    CB, SCB, _ = O.int8_vectorwise_ref(table.half())
    assert emb.weight.dtype == torch.int8 and torch.equal(emb.weight.data.cpu(), CB)
    idx = torch.tensor([[0, 3, 49], [7, 7, 1]], device=device)
    out = emb(idx)
    assert out.shape == (2, 3, 24) and out.dtype == dtype and out.device.type == device
    ref = (CB.double() * SCB.double()[:, None] / 127)[idx.cpu()]
    # Dequantized in float32 (one rounding of the product), then cast to the table's dtype.
    rtol = {torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(out.double().cpu(), ref, rtol=rtol, atol=1e-7)
    assert _rel_err(out, table.double()[idx.cpu()]) < 0.02
    assert emb(torch.empty(0, dtype=torch.long, device=device)).shape == (0, 24)


def test_embedding8bit_errors():
    emb = Embedding8bit(10, 8)
    with pytest.raises(RuntimeError, match="not quantized"):
        emb(torch.tensor([1]))
    with pytest.raises(NotImplementedError):
        emb.to("cpu").state_dict()


def test_exports():
    import bitsandbytes.nn.modules as modules

    for name in ("Int8Params", "Linear8bitLt", "Embedding8bit"):
        assert getattr(bnb.nn, name) is getattr(modules, name)
        assert name in bnb.nn.__all__
    assert callable(modules.maybe_rearrange_weight)


# ---- refused calls and loads leave the layer as it was ----------------------------------------------------------


@pytest.mark.parametrize("threshold", [float("nan"), -1.0, float("inf")], ids=str)
def test_invalid_threshold_is_refused_at_construction(threshold):
    with pytest.raises(ValueError, match="threshold"):
        Linear8bitLt(8, 4, has_fp16_weights=False, threshold=threshold)


def _layer_snapshot(layer):
    """Everything a forward or a load may change: weight data and dtype, bias, CB/SCB of weight and state."""
    def copy(t):
        return None if t is None else (t.detach().cpu().clone(), t.dtype, tuple(t.shape))
    w = layer.weight
    return [copy(w.data), copy(layer.bias), copy(getattr(w, "CB", None)), copy(getattr(w, "SCB", None)),
            copy(layer.state.CB), copy(layer.state.SCB), w.requires_grad]


def _same_snapshot(a, b):
    for x, y in zip(a, b):
        if isinstance(x, tuple) and isinstance(y, tuple):
            if x[1:] != y[1:] or not torch.equal(x[0], y[0]):
                return False
        elif x != y:
            return False
    return True


BAD_FORWARD_INPUTS = {
    "int64": lambda d: torch.ones(2, 96, dtype=torch.int64, device=d),  # the bias would be cast to int64
    "float64": lambda d: torch.ones(2, 96, dtype=torch.float64, device=d),
    "wrong-K": lambda d: torch.ones(2, 95, dtype=torch.float16, device=d),
    "0-dim": lambda d: torch.tensor(1.0, dtype=torch.float16, device=d),
    "meta": lambda d: torch.ones(2, 96, dtype=torch.float16, device="meta"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", list(BAD_FORWARD_INPUTS))
@pytest.mark.parametrize("layout", ["moved", "unmoved", "after-forward", "fp16-weights"])
def test_refused_forward_leaves_the_layer_unchanged(device, bad, layout):
    """A forward that fails on its input must not quantize the weight, hand CB/SCB over to the state or cast
    the bias in place first."""
    if layout == "unmoved" and device != "cpu":
        pytest.skip("an unmoved layer lives on the CPU")
    layer = _int8_from(_fp_linear(), THRESHOLD, has_fp16_weights=layout == "fp16-weights")
    if layout != "unmoved":
        layer = layer.to(device)
    if layout == "after-forward":
        layer(_inputs((3, 96), torch.float16, device))
    for training in (False, True):
        layer.train(training)
        before = _layer_snapshot(layer)
        with pytest.raises((TypeError, ValueError)):
            layer(BAD_FORWARD_INPUTS[bad](device))
        assert _same_snapshot(before, _layer_snapshot(layer))
    # and it still works
    layer.eval()
    assert torch.isfinite(layer(_inputs((3, 96), torch.float16, device))).all()


def _torch_size_mismatch(key, incoming_shape, own_shape):
    """torch's own message for a parameter of the wrong shape (from a plain Linear)."""
    plain = torch.nn.Linear(own_shape[-1] if key == "weight" else 1, own_shape[0])
    sd = dict(plain.state_dict())
    sd[key] = torch.zeros(incoming_shape)
    with pytest.raises(RuntimeError) as err:
        plain.load_state_dict(sd)
    return next(line.strip() for line in str(err.value).splitlines() if "size mismatch" in line)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("after_forward", [False, True], ids=["fresh", "after-forward"])
@pytest.mark.parametrize("key, shape", [("SCB", (39,)), ("SCB", (1,)), ("SCB", (40, 1)), ("weight", (40, 95)),
                                        ("weight", (41, 96)), ("bias", (39,))], ids=str)
def test_load_with_a_wrong_shape_reports_it_like_torch_and_loads_nothing(device, strict, after_forward, key, shape):
    src = _int8_from(_fp_linear(seed=1)).to("cpu")
    sd = dict(src.state_dict())
    sd[key] = torch.ones(shape, dtype=sd[key].dtype)
    dst = _int8_from(_fp_linear(seed=2)).to(device).eval()
    if after_forward:
        dst(_inputs((2, 96), torch.float16, device))
    before = _layer_snapshot(dst)
    with pytest.raises(RuntimeError) as err:
        dst.load_state_dict(sd, strict=strict)  # (a size mismatch fails even a non-strict load, as in torch)
    if key == "SCB":
        want = (f"size mismatch for SCB: copying a param with shape {torch.Size(shape)} from checkpoint, the shape in "
                f"current model is {torch.Size([40])}.")
    else:
        want = _torch_size_mismatch(key, shape, tuple(getattr(dst, key).shape))
    assert want in str(err.value)
    assert _same_snapshot(before, _layer_snapshot(dst)), "no part of the layer may be loaded"


def test_quantized_checkpoint_into_unquantized_layer_changes_nothing():
    sd = _int8_from(_fp_linear(seed=1)).to("cpu").state_dict()
    fresh = _int8_from(_fp_linear(seed=2))
    before = _layer_snapshot(fresh)
    with pytest.raises(RuntimeError, match="non-quantized"):
        fresh.load_state_dict(sd)
    assert _same_snapshot(before, _layer_snapshot(fresh)), "the float weight must not receive int8 codes"
    assert fresh.weight.is_floating_point()


@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()
def test_int8_rows_without_their_scales_report_scb_missing(device):
    src = _int8_from(_fp_linear(seed=1), THRESHOLD).to(device).eval()
    sd = {k: v.cpu() for k, v in src.state_dict().items()}
    rows_only = {k: v for k, v in sd.items() if k != "SCB"}
    dst = _int8_from(_fp_linear(seed=2), THRESHOLD).to(device).eval()
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "SCB"'):
        dst.load_state_dict(rows_only)
    result = dst.load_state_dict(rows_only, strict=False)
    assert result.missing_keys == ["SCB"]
    # the scales may come in another part of the checkpoint
    assert dst.load_state_dict({"SCB": sd["SCB"]}, strict=False).missing_keys == ["weight", "bias"]
    x = _inputs((4, 96), torch.float16, device)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


# ---- non-finite inputs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [1, 5, 40])
@torch.no_grad()
def test_layer_rows_with_infinities_come_out_non_finite_only_there(device, rows):
    layer = _int8_from(_fp_linear(seed=3)).to(device).eval()  # threshold 0: an infinity stays in its row
    x = _inputs((rows, 96), torch.float16, device, outliers=False)
    clean = layer(x)
    x[0, 10] = float("inf")
    out = layer(x)
    assert torch.isnan(out[0]).all()
    assert torch.equal(out[1:], clean[1:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
@pytest.mark.parametrize("rows", [1, 5, 40])
@torch.no_grad()
def test_layer_rows_with_nan_come_out_nan(device, threshold, rows):
    layer = _int8_from(_fp_linear(seed=3), threshold).to(device).eval()
    x = _inputs((rows, 96), torch.float16, device, outliers=False)
    x[0, 10] = float("nan")
    out = layer(x)
    assert torch.isnan(out[0]).all()
    assert torch.isfinite(out[1:]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_set_by_hand_to_nan_is_refused_before_the_layer_changes(device):
    layer = _int8_from(_fp_linear(), THRESHOLD).to(device).eval()
    layer(_inputs((3, 96), torch.float16, device))  # (a checked call first: the next one could skip the checks)
    layer.state.threshold = float("nan")
    before = _layer_snapshot(layer)
    with pytest.raises(ValueError, match="threshold"):
        layer(_inputs((3, 96), torch.float32, device))  # a float32 input: the bias would be cast to it
    assert _same_snapshot(before, _layer_snapshot(layer))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k, n", [(0, 4), (4, 0)], ids=["no-inputs", "no-outputs"])
def test_layers_without_inputs_or_outputs_quantize_run_and_round_trip(device, k, n):
    """An empty weight quantizes on the move like any other (to rows and scales with no values), so the
    layer saves the int8 format and a fresh layer moved the same way loads it. Its output is the bias."""
    layer = Linear8bitLt(k, n, has_fp16_weights=False).to(device)
    assert layer.weight.dtype == torch.int8 and layer._scb().shape == (n,)
    for training in (False, True):
        layer.train(training)
        y = layer(torch.randn(3, k, device=device))
        assert y.shape == (3, n) and torch.equal(y, layer.bias.detach().expand(3, n))
    sd = layer.state_dict()
    assert list(sd) == ["weight", "bias", "SCB", "weight_format"]
    fresh = Linear8bitLt(k, n, has_fp16_weights=False).to(device)
    assert not fresh.load_state_dict(sd).missing_keys
    assert torch.equal(fresh.bias, layer.bias)
    assert Int8Params(requires_grad=False).to(device).dtype == torch.float32  # the data-less placeholder stays

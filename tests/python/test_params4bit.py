"""Params4bit lifecycle (compat.md §1.6, §2.1, §6 item 11, §7): constructor contract, lazy
quantization on a device move, pickle / deepcopy / copy, chunk / split, property proxies,
from_prequantized.

Oracle for the quantized data: F.quantize_4bit of the same float weight (bit-identical bytes).
"""

import copy
import io
import pickle

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.nn import Params4bit
from helpers import needs_cuda, randn

ATTRS = {"blocksize", "compress_statistics", "quant_type", "quant_state", "quant_storage", "bnb_quantized", "module"}


def _quantized(nested=True, quant_type="nf4", storage=torch.uint8, shape=(32, 64)):
    return Params4bit(randn(shape, torch.float16), compress_statistics=nested, quant_type=quant_type,
                      quant_storage=storage).to("cpu")


def _bits(t):
    return t.detach().contiguous().view(torch.uint8)


def test_constructor_defaults_and_dict_keys():
    p = Params4bit(torch.randn(4, 64))
    assert set(p.__dict__) == ATTRS
    assert p.blocksize == 64 and p.compress_statistics is True and p.quant_type == "fp4"
    assert p.quant_state is None and p.quant_storage == torch.uint8 and p.bnb_quantized is False and p.module is None
    assert p.requires_grad is False and isinstance(p, torch.nn.Parameter)
    assert Params4bit().shape == (0,)


def test_rebuild_from_own_dict_ignores_unknown_keys():
    # transformers: Cls(tensor, requires_grad=..., **old_param.__dict__) after adding its own markers.
    p = _quantized()
    p._is_hf_initialized = True
    q = Params4bit(p.data, requires_grad=False, **p.__dict__)
    assert set(q.__dict__) == ATTRS
    assert q.quant_state is p.quant_state and q.bnb_quantized and q.quant_type == "nf4"


@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16, torch.float32], ids=str)
def test_quantizes_on_first_move_with_module_backref(storage):
    layer = bnb.nn.Linear4bit(64, 32, quant_type="nf4", quant_storage=storage)
    w = layer.weight.data.clone()
    layer = layer.to("cpu")
    packed, state = F.quantize_4bit(w, compress_statistics=True, quant_type="nf4", quant_storage=storage)
    assert layer.weight.bnb_quantized and layer.weight.dtype == storage
    assert torch.equal(_bits(layer.weight), _bits(packed))
    assert layer.weight.quant_state == state and layer.quant_state is layer.weight.quant_state
    # A second move does not quantize again.
    before = _bits(layer.weight).clone()
    layer.to("cpu")
    assert torch.equal(_bits(layer.weight), before)


def test_meta_device_never_quantizes():
    p = Params4bit(torch.empty(8, 64, device="meta"), quant_type="nf4")
    q = p.to("meta")
    assert isinstance(q, Params4bit) and not q.bnb_quantized and q.device.type == "meta" and q.quant_type == "nf4"
    layer = bnb.nn.Linear4bit(64, 8, device="meta").to("meta")
    assert not layer.weight.bnb_quantized


def test_dtype_only_move_keeps_unquantized_and_does_not_touch_packed_bits():
    p = Params4bit(torch.randn(8, 64), quant_type="nf4")
    half = p.to(torch.float16)
    assert not half.bnb_quantized and half.dtype == torch.float16 and half.quant_type == "nf4"
    q = _quantized(storage=torch.bfloat16)
    moved = q.to(torch.float16)  # model.half(): packed codes must keep their bits
    assert moved.dtype == torch.bfloat16 and torch.equal(_bits(moved), _bits(q))
    layer = bnb.nn.LinearNF4(64, 32, quant_storage=torch.float32).to("cpu")
    bits = _bits(layer.weight).clone()
    layer.half()
    assert torch.equal(_bits(layer.weight), bits) and layer.weight.dtype == torch.float32


def test_quantized_move_returns_new_param_sharing_state():
    q = _quantized()
    moved = q.to("cpu")
    assert moved is not q and isinstance(moved, Params4bit) and moved.quant_state is q.quant_state
    assert moved.module is None and set(moved.__dict__) == ATTRS
    assert isinstance(q.cpu(), Params4bit)


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_pickle_round_trip(nested):
    q = _quantized(nested=nested)
    r = pickle.loads(pickle.dumps(q))
    assert type(r) is Params4bit and set(r.__dict__) == ATTRS
    assert torch.equal(r.data, q.data) and r.quant_state == q.quant_state and r.quant_state is not q.quant_state
    for key in ATTRS - {"quant_state", "module"}:
        assert getattr(r, key) == getattr(q, key)


def test_torch_save_whole_module_with_back_reference():
    layer = bnb.nn.LinearNF4(64, 16).to("cpu")
    x = randn((2, 64), torch.float32)
    expected = layer(x)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded.weight) is Params4bit and loaded.weight.module is loaded
    assert loaded.weight.quant_state is loaded.quant_state
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_deepcopy_and_copy():
    q = _quantized()
    d = copy.deepcopy(q)
    assert type(d) is Params4bit and set(d.__dict__) == ATTRS
    assert torch.equal(d.data, q.data) and d.data.data_ptr() != q.data.data_ptr()
    assert d.quant_state == q.quant_state and d.quant_state is not q.quant_state
    assert d.quant_state.absmax.data_ptr() != q.quant_state.absmax.data_ptr()
    c = copy.copy(q)
    assert type(c) is Params4bit and set(c.__dict__) == ATTRS
    assert c.data.data_ptr() == q.data.data_ptr() and c.quant_state is q.quant_state


def test_deepcopy_of_layer_rewires_module_and_shared_state():
    layer = bnb.nn.LinearFP4(64, 16).to("cpu")
    dup = copy.deepcopy(layer)
    assert dup.weight.module is dup and dup.weight.quant_state is dup.quant_state
    assert dup.quant_state is not layer.quant_state
    x = randn((3, 64), torch.float32)
    torch.testing.assert_close(dup(x), layer(x), rtol=0, atol=0)
    # Copying the lone parameter shares the owning module rather than cloning it.
    assert copy.deepcopy(layer.weight).module is layer


@pytest.mark.parametrize("how", ["torch.chunk", "torch.split", "Tensor.chunk", "Tensor.split"])
def test_chunk_and_split_keep_metadata(how):
    q = _quantized()
    q.module = "owner"
    pieces = {
        "torch.chunk": lambda: torch.chunk(q, 4, dim=0),
        "torch.split": lambda: torch.split(q, [256, 768], dim=0),
        "Tensor.chunk": lambda: q.chunk(4),
        "Tensor.split": lambda: q.split(256),
    }[how]()
    assert sum(p.shape[0] for p in pieces) == q.shape[0]
    for piece in pieces:
        assert type(piece) is Params4bit and set(piece.__dict__) == ATTRS
        for key in ATTRS:
            assert getattr(piece, key) is getattr(q, key) or getattr(piece, key) == getattr(q, key)
    assert torch.equal(torch.cat([p.data for p in pieces]), q.data)


def test_other_torch_functions_return_plain_tensors():
    q = _quantized()
    assert type(q.t()) is torch.Tensor and type(q.view(-1)) is torch.Tensor and type(q.detach()) is torch.Tensor


def test_property_proxies_and_unknown_attribute():
    q = _quantized(nested=True)
    qs = q.quant_state
    assert q.absmax is qs.absmax and q.code is qs.code and q.quant_map is qs.code
    assert q.offset is qs.offset and q.state2 is qs.state2
    assert q.nested_absmax is qs.state2.absmax and q.nested_blocksize == 256
    assert q.nested_quant_map is qs.state2.code and q.nested_dtype == torch.float32 and q.nested_offset is qs.offset
    for name in ("absmax", "code", "nested_absmax", "state2"):
        assert isinstance(getattr(Params4bit, name), property)
    plain = _quantized(nested=False)
    assert plain.state2 is None and plain.nested_absmax is None and plain.nested_offset is None
    with pytest.raises(AttributeError, match="no_such_thing"):
        q.no_such_thing


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_from_prequantized(nested):
    q = _quantized(nested=nested, quant_type="fp4", storage=torch.float16)
    stats = {f"weight.{k}": v for k, v in q.quant_state.as_dict(packed=True).items()}
    owner = torch.nn.Module()
    r = Params4bit.from_prequantized(q.data, stats, device="cpu", module=owner)
    assert type(r) is Params4bit and set(r.__dict__) == ATTRS
    assert r.bnb_quantized and r.quant_storage == torch.float16 and r.quant_type == "fp4"
    assert r.compress_statistics == nested and r.blocksize == 64 and r.requires_grad is False
    assert r.quant_state == q.quant_state and owner.quant_state is r.quant_state and r.module is owner
    torch.testing.assert_close(F.dequantize_4bit(r.data, r.quant_state), F.dequantize_4bit(q.data, q.quant_state),
                               rtol=0, atol=0)


@needs_cuda
def test_cuda_moves_both_ways():
    p = Params4bit(randn((32, 64), torch.float16), quant_type="nf4")
    c = p.cuda()
    assert c.bnb_quantized and c.is_cuda and c.quant_state.absmax.is_cuda and c.quant_state.state2.absmax.is_cuda
    cpu_ref = _quantized(nested=True, quant_type="nf4")
    assert torch.equal(c.data.cpu(), cpu_ref.data)
    back = c.cpu()
    assert back.device.type == "cpu" and back.quant_state.absmax.device.type == "cpu"
    assert torch.equal(back.data, cpu_ref.data)
    again = back.to("cuda")
    assert again.is_cuda and again.quant_state.code.is_cuda


def test_quantizing_a_weight_that_requires_grad_says_why_it_fails():
    w = randn((32, 64), torch.float32)
    p = Params4bit(w.clone(), requires_grad=True, quant_type="nf4")
    with pytest.raises(RuntimeError, match="requires_grad=True.*frozen"):
        p.to("cpu")
    assert p.bnb_quantized is False and torch.equal(p.data, w)  # nothing was quantized
    q = p.requires_grad_(False).to("cpu")
    ref, _ = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)  # oracle: the same bytes
    assert q.bnb_quantized and torch.equal(q.data, ref)

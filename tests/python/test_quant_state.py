"""QuantState: fields, serialized form, from_dict, .to, equality, legacy access (compat.md §1.3, §2.1)."""

import copy
import json
import pickle

import pytest
import torch

import bitsandbytes.functional as F
from bitsandbytes.functional import QuantState
from helpers import FLOAT_DTYPES, dtype_id, needs_cuda, randn

DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def _state(quant_type="nf4", dtype=torch.float16, nested=False, shape=(30, 64), device="cpu", blocksize=64):
    x = randn(shape, dtype, device, seed=1) * 2
    return F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=nested)


def _blob_text(t: torch.Tensor) -> str:
    assert t.dtype == torch.uint8 and t.dim() == 1
    return bytes(t.tolist()).decode("utf-8")


# ---- as_dict -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_packed_dict_plain(quant_type, dtype):
    _, qs = _state(quant_type, dtype, shape=(30, 64))
    d = qs.as_dict(packed=True)
    key = f"quant_state.bitsandbytes__{quant_type}"
    assert list(d) == ["absmax", "quant_map", key]
    assert d["absmax"].dtype == torch.float32 and d["absmax"].shape == (30,)
    assert torch.equal(d["quant_map"], F.get_4bit_type(quant_type, device="cpu"))
    expected = f'{{"quant_type": "{quant_type}", "blocksize": 64, "dtype": "{DTYPE_NAMES[dtype]}", "shape": [30, 64]}}'
    assert _blob_text(d[key]) == expected


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_packed_dict_nested(quant_type):
    _, qs = _state(quant_type, torch.bfloat16, nested=True, shape=(300, 64))
    d = qs.as_dict(packed=True)
    key = f"quant_state.bitsandbytes__{quant_type}"
    assert list(d) == ["absmax", "quant_map", "nested_absmax", "nested_quant_map", key]
    assert d["absmax"].dtype == torch.uint8 and d["absmax"].shape == (300,)
    assert d["nested_absmax"].dtype == torch.float32 and d["nested_absmax"].shape == (2,)
    assert d["nested_quant_map"].dtype == torch.float32 and d["nested_quant_map"].shape == (256,)
    assert torch.equal(d["nested_quant_map"], F.create_dynamic_map(signed=True))
    # saved as a clone, not sharing storage with the live state
    assert d["nested_quant_map"].data_ptr() != qs.state2.code.data_ptr()
    offset = qs.offset.item()
    expected = (
        f'{{"quant_type": "{quant_type}", "blocksize": 64, "dtype": "bfloat16", "shape": [300, 64], '
        f'"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": {offset!r}}}'
    )
    assert _blob_text(d[key]) == expected
    assert isinstance(json.loads(_blob_text(d[key]))["nested_offset"], float)


def test_unpacked_dict():
    _, qs = _state("fp4", torch.float32, nested=True, shape=(300, 64))
    d = qs.as_dict()
    assert list(d) == ["quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape", "nested_absmax",
                       "nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset"]
    assert d["quant_type"] == "fp4" and d["blocksize"] == 64 and d["dtype"] == "float32"
    assert tuple(d["shape"]) == (300, 64)
    assert d["nested_blocksize"] == 256 and d["nested_dtype"] == "float32"
    assert d["nested_offset"] == qs.offset.item()
    assert set(d) <= set(QuantState.valid_qs_keys)


def test_8bit_state_never_packs():
    _, qs = F.quantize_blockwise(torch.randn(100), blocksize=64)
    assert qs.quant_type is None
    d = qs.as_dict(packed=True)
    assert not any("quant_state" in k for k in d)
    assert "absmax" in d


def test_class_attributes():
    assert tuple(QuantState.valid_quant_types) == ("fp4", "nf4")
    assert list(QuantState.valid_qs_type_keys) == ["bitsandbytes__fp4", "bitsandbytes__nf4"]
    for k in ["absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type", "blocksize",
              "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]:
        assert k in QuantState.valid_qs_keys


# ---- from_dict --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("prefix", ["", "layer.weight.", "model.layers.0.mlp.down_proj.weight."])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_from_dict_round_trip(nested, prefix, quant_type):
    packed, qs = _state(quant_type, torch.float16, nested=nested, shape=(300, 64))
    sd = {prefix + k: v for k, v in qs.as_dict(packed=True).items()}
    qs2 = QuantState.from_dict(sd, device=torch.device("cpu"))
    assert qs2 == qs
    assert qs2.shape == torch.Size([300, 64]) and isinstance(qs2.shape, torch.Size)
    assert qs2.dtype == torch.float16 and qs2.blocksize == 64 and qs2.quant_type == quant_type
    assert qs2.nested is nested
    if nested:
        assert qs2.offset.dim() == 0 and qs2.offset.dtype == torch.float32
        assert qs2.offset.item() == qs.offset.item()
        assert qs2.state2.blocksize == 256 and qs2.state2.dtype == torch.float32
    assert torch.equal(F.dequantize_4bit(packed, qs2), F.dequantize_4bit(packed, qs))


def test_from_dict_unpacked_form():
    packed, qs = _state("nf4", torch.bfloat16, nested=True, shape=(300, 64))
    qs2 = QuantState.from_dict(qs.as_dict(packed=False), device="cpu")
    assert qs2 == qs
    assert torch.equal(F.dequantize_4bit(packed, qs2), F.dequantize_4bit(packed, qs))


def test_from_dict_missing_quant_state_key():
    _, qs = _state()
    d = qs.as_dict(packed=True)
    d.pop("quant_state.bitsandbytes__nf4")
    with pytest.raises(ValueError):
        QuantState.from_dict(d, device="cpu")


def test_from_dict_multiple_quant_state_keys():
    _, qs = _state("nf4")
    _, qs_fp4 = _state("fp4")
    d = {f"a.{k}": v for k, v in qs.as_dict(packed=True).items()}
    d["b.quant_state.bitsandbytes__fp4"] = qs_fp4.as_dict(packed=True)["quant_state.bitsandbytes__fp4"]
    with pytest.raises(ValueError):
        QuantState.from_dict(d, device="cpu")


def test_from_dict_wrong_quant_state_suffix():
    _, qs = _state("nf4")
    d = qs.as_dict(packed=True)
    d["quant_state.bitsandbytes__int4"] = d.pop("quant_state.bitsandbytes__nf4")
    with pytest.raises(ValueError):
        QuantState.from_dict(d, device="cpu")


def test_from_dict_unknown_key():
    _, qs = _state("nf4")
    d = {f"layer.weight.{k}": v for k, v in qs.as_dict(packed=True).items()}
    d["layer.weight.surprise"] = torch.zeros(1)
    with pytest.raises(ValueError, match="surprise"):
        QuantState.from_dict(d, device="cpu")


@needs_cuda
def test_from_dict_to_cuda():
    packed, qs = _state("nf4", nested=True, shape=(300, 64))
    qs2 = QuantState.from_dict(qs.as_dict(packed=True), device=torch.device("cuda"))
    for t in (qs2.absmax, qs2.code, qs2.offset, qs2.state2.absmax, qs2.state2.code):
        assert t.device.type == "cuda"
    assert torch.equal(F.dequantize_4bit(packed.cuda(), qs2).cpu(), F.dequantize_4bit(packed, qs))


# ---- .to ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["meta", pytest.param("cuda", marks=needs_cuda)])
def test_to_moves_in_place(target):
    _, qs = _state("nf4", nested=True, shape=(300, 64))
    ident = id(qs)
    state2 = qs.state2
    ret = qs.to(target)
    assert ret is None or ret is qs
    assert id(qs) == ident and qs.state2 is state2
    for t in (qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code):
        assert t.device.type == target
    assert qs.shape == (300, 64) and qs.blocksize == 64 and qs.dtype == torch.float16


@needs_cuda
def test_to_cuda_and_back_keeps_values():
    packed, qs = _state("fp4", nested=True, shape=(300, 64))
    ref = copy.deepcopy(qs)
    qs.to("cuda")
    assert torch.equal(F.dequantize_4bit(packed.cuda(), qs).cpu(), F.dequantize_4bit(packed, ref))
    qs.to("cpu")
    assert qs == ref


# ---- equality --------------------------------------------------------------------------------------------------


def test_equality():
    _, qs = _state("nf4", nested=True, shape=(300, 64))
    same = copy.deepcopy(qs)
    assert qs == same

    def changed(**kw):
        other = copy.deepcopy(qs)
        for k, v in kw.items():
            setattr(other, k, v)
        return other

    assert qs == changed(absmax=qs.absmax.clone())
    assert qs != changed(blocksize=128)
    assert qs != changed(quant_type="fp4")
    assert qs != changed(dtype=torch.float32)
    assert qs != changed(shape=torch.Size([64, 300]))
    assert qs != changed(offset=qs.offset + 1e-3)
    assert qs != changed(absmax=qs.absmax.clone().fill_(0))
    s2 = copy.deepcopy(qs.state2)
    s2.absmax = s2.absmax + 1.0
    assert qs != changed(state2=s2)
    assert qs != "not a QuantState"


def test_equality_tolerance_on_absmax():
    _, qs = _state("nf4")
    near = copy.deepcopy(qs)
    near.absmax = qs.absmax + 5e-7
    far = copy.deepcopy(qs)
    far.absmax = qs.absmax + 1e-3
    assert qs == near
    assert qs != far


def test_plain_is_not_equal_to_nested():
    x = randn((300, 64), torch.float16)
    _, plain = F.quantize_4bit(x, quant_type="nf4")
    _, nested = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
    assert plain != nested


# ---- legacy access / attribute protocol ---------------------------------------------------------------------


def test_getitem_legacy_list_plain():
    _, qs = _state("fp4", torch.bfloat16)
    assert qs[0] is qs.absmax
    assert qs[1] == qs.shape
    assert qs[2] == torch.bfloat16
    assert qs[3] == 64
    assert qs[4] is None
    assert qs[5] == "fp4"


def test_getitem_legacy_list_nested():
    _, qs = _state("nf4", nested=True, shape=(300, 64))
    offset, state2 = qs[4]
    assert offset is qs.offset and state2 is qs.state2
    assert qs[5] == "nf4"


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_getattr_packed_key(quant_type):
    _, qs = _state(quant_type, nested=True, shape=(300, 64))
    blob = getattr(qs, f"bitsandbytes__{quant_type}")
    assert torch.equal(blob, qs.as_dict(packed=True)[f"quant_state.bitsandbytes__{quant_type}"])
    other = "fp4" if quant_type == "nf4" else "nf4"
    with pytest.raises(AttributeError):
        getattr(qs, f"bitsandbytes__{other}")


def test_getattr_unknown_attribute():
    _, qs = _state()
    with pytest.raises(AttributeError, match="no_such_field"):
        qs.no_such_field
    assert not hasattr(qs, "bitsandbytes__int4")


def test_pickle_and_deepcopy_round_trip():
    packed, qs = _state("nf4", nested=True, shape=(300, 64))
    for clone in (pickle.loads(pickle.dumps(qs)), copy.deepcopy(qs), copy.copy(qs)):
        assert isinstance(clone, QuantState)
        assert clone == qs
        assert torch.equal(F.dequantize_4bit(packed, clone), F.dequantize_4bit(packed, qs))


def test_constructor_fields():
    absmax = torch.ones(4)
    qs = QuantState(absmax, shape=torch.Size([4, 64]), code=torch.zeros(16), blocksize=64, quant_type="nf4",
                    dtype=torch.float16)
    assert qs.absmax is absmax and qs.nested is False and qs.offset is None and qs.state2 is None
    nested = QuantState(absmax, state2=QuantState(torch.ones(1)), offset=torch.tensor(0.5))
    assert nested.nested is True


def test_to_keeps_missing_fields_missing():
    # A state built from absmax alone (dequantize_4bit without quant_state) has no code book.
    absmax = torch.rand(4)
    state = QuantState(absmax=absmax, shape=(4, 64), blocksize=64, quant_type="nf4", dtype=torch.float32)
    state.to("cpu")
    assert state.code is None and torch.equal(state.absmax, absmax)

"""Code books: dynamic / linear / fp8 / normal maps, 4-bit tables, quantile estimation (compat.md §1.3, §1.4.1)."""

import sys

import pytest
import torch

import bitsandbytes.functional as F
import oracles as O
from helpers import DEVICES, FLOAT_DTYPES, HAS_CUDA, dtype_id, randn

# ---- dynamic map -------------------------------------------------------------------------------------------


def test_dynamic_map_signed_facts():
    code = F.create_dynamic_map(signed=True)
    assert code.dtype == torch.float32 and code.shape == (256,)
    assert torch.all(code[1:] >= code[:-1]), "must be sorted ascending"
    assert code[0].item() == pytest.approx(-0.99296875, abs=1e-7)
    assert code[127].item() == 0.0
    assert code[255].item() == 1.0
    assert not torch.any(code == -1.0), "the signed map has no -1.0"
    assert code.abs()[code != 0].min().item() == pytest.approx(5.5e-7, rel=1e-5)


def test_dynamic_map_signed_matches_definition():
    assert torch.equal(F.create_dynamic_map(signed=True), O.dynamic_map_reference(signed=True))


def test_dynamic_map_unsigned_facts_and_definition():
    code = F.create_dynamic_map(signed=False)
    assert code.dtype == torch.float32 and code.shape == (256,)
    assert code[0].item() == 0.0 and code[255].item() == 1.0
    assert torch.all(code[1:] >= code[:-1])
    assert torch.all(code >= 0)
    assert torch.equal(code, O.dynamic_map_reference(signed=False))


def test_default_code_is_cached_signed_dynamic_map():
    F.quantize_blockwise(torch.randn(64), blocksize=64)
    assert torch.equal(F.name2qmap["dynamic"].cpu(), O.dynamic_map_reference(signed=True))


# ---- linear map ----------------------------------------------------------------------------------------------


def test_linear_map_signed_8bit_with_zero():
    code = F.create_linear_map(signed=True, total_bits=8, add_zero=True)
    assert code.shape == (256,) and code.dtype == torch.float32
    # 255 evenly spaced values on [-1, 1] (so 0 is a code) plus one padding zero.
    ref = torch.linspace(-1, 1, 255, dtype=torch.float64)
    ref = torch.cat([ref[:127], torch.zeros(1, dtype=torch.float64), ref[127:]])
    torch.testing.assert_close(code.double(), ref, rtol=0, atol=1e-7)
    assert code[0].item() == -1.0 and code[-1].item() == 1.0
    assert torch.all(code[1:] >= code[:-1])


def test_linear_map_signed_8bit_without_zero():
    code = F.create_linear_map(signed=True, total_bits=8, add_zero=False)
    torch.testing.assert_close(code.double(), torch.linspace(-1, 1, 256, dtype=torch.float64), rtol=0, atol=1e-7)


def test_linear_map_unsigned():
    code = F.create_linear_map(signed=False, total_bits=8)
    torch.testing.assert_close(code.double(), torch.linspace(0, 1, 256, dtype=torch.float64), rtol=0, atol=1e-7)


def test_linear_map_4bit_is_zero_padded_in_the_middle():
    code = F.create_linear_map(signed=True, total_bits=4)
    assert code.shape == (256,)
    vals = torch.linspace(-1, 1, 15, dtype=torch.float64)
    ref = torch.cat([vals[:7], torch.zeros(241, dtype=torch.float64), vals[7:]])
    torch.testing.assert_close(code.double(), ref, rtol=0, atol=1e-7)
    # "still sorted" up to float32 rounding of linspace's midpoint (which lands at about -4e-8)
    assert torch.all(code[1:] - code[:-1] >= -1e-7)


# ---- fp8 map -------------------------------------------------------------------------------------------------


def _small_float_values(exponent_bits, precision_bits, signed):
    """All magnitudes of the format: subnormals m/2^P * 2^-bias, normals (1 + m/2^P) * 2^(bias + 1 - e)."""
    bias = 2 ** (exponent_bits - 1)
    mags = []
    for e in range(2**exponent_bits):
        for m in range(2**precision_bits):
            frac = m / 2**precision_bits
            mags.append(frac * 2.0**-bias if e == 0 else (1 + frac) * 2.0 ** (bias + 1 - e))
    vals = mags + ([-v for v in mags] if signed else [])
    vals += [0.0] * (256 - len(vals))
    t = torch.tensor(sorted(vals), dtype=torch.float64)
    return t / t.max()


@pytest.mark.parametrize(
    "signed,exponent_bits,precision_bits,total_bits",
    [(True, 5, 2, 8), (True, 4, 3, 8), (True, 3, 4, 8), (False, 4, 4, 8), (True, 2, 1, 4)],
    ids=["e5m2", "e4m3", "e3m4", "unsigned_e4m4", "e2m1_4bit"],
)
def test_fp8_map(signed, exponent_bits, precision_bits, total_bits):
    code = F.create_fp8_map(signed, exponent_bits, precision_bits, total_bits)
    assert code.shape == (256,) and code.dtype == torch.float32
    assert torch.all(code[1:] >= code[:-1])
    assert code.max().item() == 1.0
    if signed:
        assert code.min().item() == -1.0
        assert torch.equal(code, -code.flip(0))
    else:
        assert code.min().item() == 0.0
    ref = _small_float_values(exponent_bits, precision_bits, signed)
    torch.testing.assert_close(code.double(), ref, rtol=1e-6, atol=1e-12)


def test_fp8_map_rejects_inconsistent_bit_counts():
    with pytest.raises((ValueError, AssertionError)):
        F.create_fp8_map(True, 4, 4, 8)


# ---- normal map (NF4 construction) ----------------------------------------------------------------------------


def test_normal_map_contains_the_nf4_values():
    pytest.importorskip("scipy")
    code = F.create_normal_map()
    assert code.shape == (256,) and code.dtype == torch.float32
    assert torch.all(code[1:] >= code[:-1])
    assert code[0].item() == -1.0 and code[-1].item() == 1.0
    nonzero = code[code != 0]
    nf4 = torch.tensor(O.NF4_TABLE, dtype=torch.float32)
    torch.testing.assert_close(nonzero, nf4[nf4 != 0], rtol=0, atol=2e-7)
    assert int((code == 0).sum()) == 256 - 15


def test_normal_map_without_extra_value_is_symmetric():
    pytest.importorskip("scipy")
    code = F.create_normal_map(use_extra_value=False)
    assert code.shape == (256,)
    nonzero = code[code != 0]
    assert nonzero.numel() == 14
    torch.testing.assert_close(nonzero, -nonzero.flip(0), rtol=0, atol=1e-7)
    assert code[-1].item() == 1.0


def test_normal_map_without_scipy_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # makes `from scipy.stats import norm` fail
    with pytest.raises(ImportError):
        F.create_normal_map()


# ---- 4-bit types -----------------------------------------------------------------------------------------------


def test_get_4bit_type_nf4_is_spec_table():
    t = F.get_4bit_type("nf4", device="cpu")
    assert t.dtype == torch.float32 and t.shape == (16,)
    assert torch.equal(t, torch.tensor(O.NF4_TABLE, dtype=torch.float32))


def test_get_4bit_type_fp4_is_spec_table_in_bit_pattern_order():
    t = F.get_4bit_type("fp4", device="cpu")
    assert t.dtype == torch.float32 and t.shape == (16,)
    assert torch.equal(t, torch.tensor(O.FP4_TABLE, dtype=torch.float32))
    # bit 3 is the sign: entry i + 8 is the negation of entry i
    assert torch.equal(t[8:], -t[:8])
    assert t[3].item() == 1.0 and t[11].item() == -1.0


def test_get_4bit_type_int4():
    t = F.get_4bit_type("int4", device="cpu")
    assert t.shape == (16,) and t.abs().max().item() == 1.0
    ints = t * 7
    assert torch.equal(ints, ints.round())
    assert sorted(ints.round().tolist()) == sorted([float(i) for i in range(-7, 8)] + [0.0])


def test_get_4bit_type_af4_blocksize_64():
    t = F.get_4bit_type("af4", device="cpu", blocksize=64)
    assert t.shape == (16,)
    assert t.max().item() == 1.0 and t.min().item() == -1.0
    assert (t == 0).sum().item() == 1
    d = t[1:] - t[:-1]
    assert torch.all(d > 0) or torch.all(d < 0), "af4 values are strictly monotone"


@pytest.mark.parametrize("blocksize", [32, 128, 4096])
def test_get_4bit_type_af4_other_blocksize_not_implemented(blocksize):
    with pytest.raises(NotImplementedError):
        F.get_4bit_type("af4", device="cpu", blocksize=blocksize)


def test_get_4bit_type_unknown_name():
    with pytest.raises((NotImplementedError, ValueError)):
        F.get_4bit_type("nf5", device="cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_get_4bit_type_device(device):
    assert F.get_4bit_type("nf4", device=device).device.type == device


def test_get_4bit_type_default_device_is_cuda_when_present():
    t = F.get_4bit_type("nf4")
    assert t.device.type == ("cuda" if HAS_CUDA else "cpu")


# ---- quantile estimation ---------------------------------------------------------------------------------------


def _quantile_ref(x, offset=1 / 512):
    p = torch.linspace(offset, 1 - offset, 256, dtype=torch.float64)
    return torch.quantile(x.detach().cpu().double().reshape(-1), p, interpolation="linear")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [256, 1000, 65537])
def test_estimate_quantiles_vs_torch_quantile(device, dtype, n):
    x = randn((n,), dtype, device, seed=n)
    q = F.estimate_quantiles(x)
    assert q.shape == (256,) and q.dtype == torch.float32 and q.device.type == device
    torch.testing.assert_close(q.cpu().double(), _quantile_ref(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("offset", [0.01, 0.1])
def test_estimate_quantiles_offset(offset):
    x = randn((5000,), torch.float32, seed=3) * 4 + 1
    q = F.estimate_quantiles(x, offset=offset)
    torch.testing.assert_close(q.double(), _quantile_ref(x, offset), rtol=1e-6, atol=1e-6)


def test_estimate_quantiles_uniform_data_is_linear():
    x = torch.arange(10000, dtype=torch.float32)
    q = F.estimate_quantiles(x)
    p = torch.linspace(1 / 512, 1 - 1 / 512, 256, dtype=torch.float64)
    torch.testing.assert_close(q.double(), p * 9999, rtol=1e-6, atol=1e-3)


def test_estimate_quantiles_num_quantiles_and_out():
    x = randn((4096,), torch.float32, seed=5)
    full = _quantile_ref(x)
    q16 = F.estimate_quantiles(x, num_quantiles=16)
    idx = torch.linspace(0, 255, 16).long()
    torch.testing.assert_close(q16.double(), full[idx], rtol=1e-6, atol=1e-6)
    out = torch.empty(256)
    r = F.estimate_quantiles(x, out=out)
    assert r is out
    torch.testing.assert_close(out.double(), full, rtol=1e-6, atol=1e-6)


def test_estimate_quantiles_needs_256_values():
    with pytest.raises(NotImplementedError):
        F.estimate_quantiles(torch.randn(255))


def test_create_quantile_map():
    x = randn((20000,), torch.float32, seed=7)
    code = F.create_quantile_map(x)
    assert code.shape == (256,) and code.dtype == torch.float32
    assert torch.all(code[1:] >= code[:-1])
    assert code.abs().max().item() == 1.0
    assert (code == 0).any()
    # 255 data quantiles (evenly subsampled from the 256 estimates) plus 0, normalised by max |v|.
    full = _quantile_ref(x)
    qs = full[torch.linspace(0, 255, 255).long()].tolist() + [0.0]
    ref = torch.tensor(sorted(qs), dtype=torch.float64)
    ref = ref / ref.abs().max()
    torch.testing.assert_close(code.double(), ref, rtol=1e-5, atol=1e-6)

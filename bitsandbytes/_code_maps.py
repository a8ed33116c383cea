"""Code books: the 256-entry maps used by 8-bit blockwise quantization and the 16-entry 4-bit types.

The 4-bit tables the kernels use (NF4, FP4) are read from the native library, where they are
defined once; the generic map constructors below build code books from their definitions.
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch

from . import _native


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """Dynamic (exponent + linear fraction) map: for each exponent 10^(i - max_exponent_bits + 1),
    the midpoints of an even split of [0.1, 1]; plus 0 and 1.0; zero-padded to 256 and sorted."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        )
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data.append(0)
    data.append(1.0)
    if len(data) > 256:
        raise ValueError(f"a dynamic map with these parameters has {len(data)} entries, more than 256")
    data += [0] * (256 - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def create_linear_map(signed: bool = True, total_bits: int = 8, add_zero: bool = True) -> torch.Tensor:
    """Evenly spaced values over [-1, 1] (signed) or [0, 1]; fewer than 8 bits are zero-padded in the middle."""
    sign = -1.0 if signed else 0.0
    total_values = 2**total_bits
    if add_zero or total_bits < 8:
        # An odd count puts 0 exactly on a code for the signed map.
        total_values = 2**total_bits if not signed else 2**total_bits - 1
    values = torch.linspace(sign, 1.0, total_values)
    gap = 256 - values.numel()
    if gap == 0:
        return values
    half = values.numel() // 2
    return torch.tensor(values[:half].tolist() + [0] * gap + values[half:].tolist(), dtype=torch.float32)


def create_normal_map(offset: float = 0.9677083, use_extra_value: bool = True) -> torch.Tensor:
    """NF4-style map from quantiles of N(0, 1), normalised to [-1, 1], zero-padded to 256 (needs scipy)."""
    try:
        from scipy.stats import norm
    except ImportError as e:
        raise ImportError("create_normal_map needs scipy: pip install scipy") from e
    if use_extra_value:
        v1 = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1]).tolist()  # one more positive value
        v2 = [0] * (256 - 15)
    else:
        v1 = norm.ppf(torch.linspace(offset, 0.5, 8)[:-1]).tolist()
        v2 = [0] * (256 - 14)
    v3 = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1])).tolist()
    values = torch.tensor(v1 + v2 + v3, dtype=torch.float32).sort().values
    return values / values.max()


def create_fp8_map(signed: bool = True, exponent_bits: int = 5, precision_bits: int = 2, total_bits: int = 8) -> torch.Tensor:
    """All values of a small float format (subnormals included), sorted, normalised by the maximum."""
    has_sign = 1 if signed else 0
    if exponent_bits + precision_bits != total_bits - has_sign:
        raise ValueError(
            f"exponent_bits ({exponent_bits}) + precision_bits ({precision_bits}) must equal "
            f"total_bits ({total_bits}) minus the sign bit ({has_sign})"
        )
    bias = 2 ** (exponent_bits - 1)
    values = []
    for evalue in range(2**exponent_bits):
        for bit_pattern in itertools.product([0, 1], repeat=precision_bits):
            value = 1 if evalue != 0 else 0
            for i, pval in enumerate(bit_pattern):
                value += pval * 2 ** -(i + 1)
            value = value * 2**-bias if evalue == 0 else value * 2 ** -(evalue - bias - 1)
            values.append(value)
            if signed:
                values.append(-value)
    values.sort()
    values += [0] * (256 - len(values))
    values.sort()
    code = torch.tensor(values, dtype=torch.float32)
    return code / code.max()


# 4-bit types that are data only (no kernel uses them), normalised like the others.
_INT4 = [7, 6, 5, 4, 3, 2, 1, 0, -0.0, -1, -2, -3, -4, -5, -6, -7]
# AF4 for blocksize 64 (abnormal-float values published for that block size), ascending.
_AF4_64 = [
    -1.0, -0.69441008, -0.51243739, -0.3736951, -0.25607552, -0.14982478, -0.04934812, 0.0,
    0.04273164, 0.12934483, 0.21961274, 0.31675666, 0.42563882, 0.55496234, 0.72424863, 1.0,
]


def get_4bit_type(typename: str, device=None, blocksize: int = 64) -> torch.Tensor:
    """The 16 values of a 4-bit type in code order, normalised to max |v| = 1.

    nf4 / fp4 come from the native library (the tables the kernels use); fp4 is in bit-pattern
    order, not sorted. af4 exists for blocksize 64 only.
    """
    if device is None:
        device = "cuda"
    if typename in ("nf4", "fp4"):
        data = _native.cpu_library().code_table_4bit(typename)
    elif typename == "int4":
        data = _INT4
    elif typename == "af4":
        if blocksize != 64:
            raise NotImplementedError(f"af4 is defined for blocksize 64 only, got {blocksize}")
        data = _AF4_64[::-1]
    else:
        raise NotImplementedError(f"4-bit type {typename!r} is not one of nf4, fp4, int4, af4")
    t = torch.tensor(data, dtype=torch.float32)
    t = t / t.abs().max()
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return t  # the default device is cuda; fall back to CPU on machines without one
    return t.to(device)


def estimate_quantiles(A: torch.Tensor, out: Optional[torch.Tensor] = None, offset: float = 1 / 512,
                       num_quantiles: int = 256) -> torch.Tensor:
    """Quantiles of A at probabilities linspace(offset, 1 - offset, 256) (native kernel), optionally
    subsampled to `num_quantiles` evenly spaced ones."""
    from .backends.native import estimate_quantiles as native_quantiles

    if A.numel() < 256:
        raise NotImplementedError(
            f"estimate_quantiles needs at least 256 values; A has {A.numel()} (shape {tuple(A.shape)})"
        )
    if not 1 <= num_quantiles <= 256:
        raise ValueError(f"num_quantiles must be in [1, 256], got {num_quantiles}")
    q = native_quantiles(A, offset)
    if num_quantiles < 256:
        idx = torch.linspace(0, 255, num_quantiles, device=q.device).long()
        q = q[idx]
    if out is not None:
        out.copy_(q)
        return out
    return q


def create_quantile_map(A: torch.Tensor, total_bits: int = 8) -> torch.Tensor:
    """A code book from the data's own quantiles (2^bits - 1 of them plus 0), normalised to max |v| = 1."""
    q = estimate_quantiles(A, num_quantiles=2**total_bits - 1).tolist()
    q.append(0)
    q += [0] * (256 - len(q))
    q.sort()
    code = torch.tensor(q, dtype=torch.float32)
    return code / code.abs().max()

"""Independent reference implementations written from the format definitions in the compat spec.

Nothing here calls bitsandbytes: every function is plain torch (float32 where the spec says the
kernels compute in float32, float64 where an exact reference value is needed).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

# ---- spec tables (compat.md §1.4.1 / §1.4.2), transcribed -------------------------------------------------

NF4_TABLE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]

# Thresholds t_k (ascending) such that x > t_k selects code k (k = 1..15), else code 0.
# Kept as the spec's decimal strings: kernels compare against float32 constants written as these
# decimals, i.e. the decimal rounded once, directly to float32 (see f32_from_decimal).
NF4_THRESHOLDS_DEC = [
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
    "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
    "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
    "0.5016634166240692", "0.6427869200706482", "0.8614784181118011",
]


def f32_from_decimal(text: str) -> float:
    """The float32 nearest to the exact decimal value (ties to even), as a C ``1.234f`` literal.

    Not float32(float(text)): that rounds twice, and the NF4 thresholds are midpoints of float32
    codes, exactly where double rounding picks the other neighbour.
    """
    exact = Fraction(text)
    d = torch.tensor(float(exact), dtype=torch.float64)
    base = d.to(torch.float32)
    cands = [base, torch.nextafter(base, torch.tensor(-math.inf)), torch.nextafter(base, torch.tensor(math.inf))]

    def key(c):
        v = c.item()
        odd = int(c.view(torch.int32).item()) & 1
        return (abs(Fraction(v) - exact), odd)

    return min(cands, key=key).item()


NF4_THRESHOLDS = [f32_from_decimal(t) for t in NF4_THRESHOLDS_DEC]

# FP4 magnitudes by low 3 bits (values of the 2-exp/1-mantissa format divided by 12).
_FP4_LOW = [0.0, 0.0625 / 12, 8 / 12, 1.0, 4 / 12, 6 / 12, 2 / 12, 3 / 12]
FP4_TABLE = _FP4_LOW + [-v for v in _FP4_LOW]  # bit-pattern order; bit 3 = sign

# (threshold, low bits) in the order the spec lists them: the first |x| > threshold wins.
FP4_RULES = [
    (f32_from_decimal(t), bits)
    for t, bits in [("0.8333333", 0b011), ("0.583333", 0b010), ("0.4166667", 0b101), ("0.29166667", 0b100),
                    ("0.20833333", 0b111), ("0.0859375", 0b110), ("0.00260417", 0b001)]
]

INT8_DEQUANT_MULTIPLIER = 7.874015718698502e-3  # 1/127 as the spec states it


def dynamic_map_reference(signed: bool = True) -> torch.Tensor:
    """create_dynamic_map(signed) from its definition in compat.md §1.3 (8 bits, 7 exponent bits)."""
    data = []
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        b = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (b[:-1] + b[1:]) / 2.0
        scale = 10 ** (i - 6)  # applied to the float32 midpoints (float32 arithmetic)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


# ---- 8-bit blockwise -------------------------------------------------------------------------------------


def _blocks(x: torch.Tensor, blocksize: int):
    flat = x.detach().reshape(-1).float().cpu()
    n = flat.numel()
    nb = -(n // -blocksize)
    padded = torch.zeros(nb * blocksize, dtype=torch.float32)
    padded[:n] = flat
    return padded.view(nb, blocksize), n


def blockwise_absmax(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    blocks, _ = _blocks(x, blocksize)
    return blocks.abs().amax(dim=1) if blocks.numel() else torch.zeros(0)


# Below these block / row maxima the scale is 0, as for an all-zero block (csrc/core/formats.h): 1 / absmax
# would overflow float32 below 2^-128, and 127 / absmax a little below 2^-121.
SMALLEST_SCALED_ABSMAX = 2.0**-126
SMALLEST_INT8_ABSMAX = 2.0**-121


def scaled_blocks(x: torch.Tensor, blocksize: int):
    """(v [nb, bs] = x * (1/absmax) in float32, v = 0 where absmax < 2^-126 (0 included), absmax [nb], n)."""
    blocks, n = _blocks(x, blocksize)
    absmax = blocks.abs().amax(dim=1) if blocks.numel() else torch.zeros(0)
    scaled = absmax >= SMALLEST_SCALED_ABSMAX
    safe = torch.where(scaled, absmax, torch.ones_like(absmax))
    inv = torch.where(scaled, torch.ones_like(absmax).div(safe), torch.zeros_like(absmax))  # float32 1/absmax
    return blocks * inv[:, None], absmax, n


def quantize_blockwise_ref(x: torch.Tensor, code: torch.Tensor, blocksize: int):
    """(uint8 indices shaped like x, float32 absmax [ceil(n/bs)]): nearest code by the midpoint rule."""
    code = code.detach().float().cpu()
    v, absmax, n = scaled_blocks(x, blocksize)
    mid = (code[:-1] + code[1:]) / 2  # float32 midpoints
    idx = torch.bucketize(v.reshape(-1), mid, right=False)[:n]
    return idx.to(torch.uint8).reshape(x.shape), absmax


def nearest_code_excess(x: torch.Tensor, q: torch.Tensor, code: torch.Tensor, blocksize: int):
    """Nearest-value oracle for a code in any order, in float64: for each element, how much farther the
    chosen entry code[q] lies from v = x * (1/absmax) (the float32 value the kernels search) than the
    nearest entry of the code, and the bound that float32 midpoints allow for that excess.

    A midpoint (a + b) / 2 rounded to float32 is off by at most ulp(a + b) / 4, which moves the choice
    only for v within that distance of it, and the excess is then at most 2^-24 (|a| + |b|), a and b
    being the chosen and the nearest entry. Returns (excess [n], bound [n]), both float64.
    """
    v, _, n = scaled_blocks(x, blocksize)
    v = v.reshape(-1)[:n].double()
    code = code.detach().double().cpu()
    chosen = code[q.reshape(-1).cpu().long()]
    distance = (v[:, None] - code[None, :]).abs()
    nearest = code[distance.argmin(dim=1)]
    excess = (v - chosen).abs() - distance.min(dim=1).values
    bound = 2.0**-24 * (chosen.abs() + nearest.abs()) + 2.0**-149
    return excess, bound


def dequantize_blockwise_ref(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int,
                             dtype: torch.dtype) -> torch.Tensor:
    """code[q] * absmax[i // bs] in float32, then cast."""
    flat = q.detach().reshape(-1).cpu().long()
    code = code.detach().float().cpu()
    absmax = absmax.detach().float().cpu()
    scale = absmax[torch.arange(flat.numel()) // blocksize] if flat.numel() else torch.zeros(0)
    return (code[flat] * scale).to(dtype).reshape(q.shape)


# ---- 4-bit ----------------------------------------------------------------------------------------------


def nf4_codes(v: torch.Tensor) -> torch.Tensor:
    """Code index for scaled values v (float32) via the strict '>' threshold list."""
    codes = torch.zeros(v.shape, dtype=torch.int64)
    for t in NF4_THRESHOLDS:  # float32-exact values: the comparison is the float32 one
        codes += (v.float() > torch.tensor(t, dtype=torch.float32)).long()
    return codes


def fp4_codes(v: torch.Tensor) -> torch.Tensor:
    a = v.abs()
    low = torch.zeros(v.shape, dtype=torch.int64)
    decided = torch.zeros(v.shape, dtype=torch.bool)
    for t, bits in FP4_RULES:
        hit = (a.float() > torch.tensor(t, dtype=torch.float32)) & ~decided
        low[hit] = bits
        decided |= hit
    return low + 8 * (v < 0).long()


def quantize_4bit_ref(x: torch.Tensor, blocksize: int, quant_type: str):
    """(packed uint8 [(n+1)//2] with element 2j in the high nibble, codes [n], absmax [nb])."""
    v, absmax, n = scaled_blocks(x, blocksize)
    flat = v.reshape(-1)[:n]
    codes = nf4_codes(flat) if quant_type == "nf4" else fp4_codes(flat)
    padded = torch.zeros(2 * ((n + 1) // 2), dtype=torch.int64)
    padded[:n] = codes
    packed = (padded[0::2] << 4) | padded[1::2]
    return packed.to(torch.uint8), codes, absmax


def dequantize_4bit_ref(codes: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str,
                        shape, dtype: torch.dtype) -> torch.Tensor:
    table = torch.tensor(NF4_TABLE if quant_type == "nf4" else FP4_TABLE, dtype=torch.float32)
    n = codes.numel()
    scale = absmax.float().cpu()[torch.arange(n) // blocksize] if n else torch.zeros(0)
    return (table[codes.cpu()] * scale).to(dtype).reshape(shape)


def unpack_nibbles(packed_bytes: torch.Tensor, n: int) -> torch.Tensor:
    b = packed_bytes.reshape(-1).cpu().long()
    out = torch.stack([b >> 4, b & 0xF], dim=1).reshape(-1)
    return out[:n]


# ---- int8 ------------------------------------------------------------------------------------------------


def int8_vectorwise_ref(x: torch.Tensor, threshold: float = 0.0):
    """(int8 like x, row absmax f32 [rows], outlier columns int64 or None) per compat.md §1.4.4."""
    cols = x.shape[-1]
    rows2d = x.detach().reshape(-1, cols).float().cpu()
    if threshold > 0:
        mask = rows2d.abs() >= threshold
        kept = rows2d.masked_fill(mask, 0.0)
    else:
        mask = None
        kept = rows2d
    absmax = kept.abs().amax(dim=1) if cols else torch.zeros(rows2d.shape[0])
    # float32 127 / absmax as a true division (``127.0 / tensor`` is computed as 127 * reciprocal).
    scaled = absmax >= SMALLEST_INT8_ABSMAX
    safe = torch.where(scaled, absmax, torch.ones_like(absmax))
    scale = torch.where(scaled, torch.full_like(absmax, 127.0).div(safe), torch.zeros_like(absmax))
    q = torch.round(kept * scale[:, None])
    outliers = None
    if mask is not None:
        outliers = torch.nonzero(mask.any(dim=0)).reshape(-1).to(torch.int64)
        if rows2d.shape[0] > 1 and outliers.numel():
            q[:, outliers] = 0
    return q.to(torch.int8).reshape(x.shape), absmax, outliers


def int8_colwise_ref(x: torch.Tensor, threshold: float = 0.0):
    """(col int8 like x, col absmax f32 [cols]): outliers (|x| >= threshold) masked to 0 first."""
    cols = x.shape[-1]
    a = x.detach().reshape(-1, cols).float().cpu()
    if threshold > 0:
        a = a.masked_fill(a.abs() >= threshold, 0.0)
    absmax = a.abs().amax(dim=0)
    scaled = absmax >= SMALLEST_INT8_ABSMAX
    q = torch.round(a * 127.0 / torch.where(scaled, absmax, torch.ones_like(absmax))[None, :])
    q = torch.where(scaled[None, :], q, torch.zeros_like(q))
    return q.to(torch.int8).reshape(x.shape), absmax


def num_blocks(n: int, blocksize: int) -> int:
    return math.ceil(n / blocksize)

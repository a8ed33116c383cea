"""Argument checks shared by the public functions and the op kernels.

Every check raises the exception type users expect (TypeError for a wrong dtype, ValueError
for a wrong value, shape or device) with a message naming the argument and what was received.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)
QUANT_TYPES_4BIT = ("nf4", "fp4")
# Dtypes a packed 4-bit tensor may be stored as (its bytes reinterpreted; FSDP wants float storage).
QUANT_STORAGES_4BIT = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
_FLOAT32_MAX = torch.finfo(torch.float32).max  # larger thresholds become infinity in the kernels
# Second-level block of double-quantized 4-bit scales (fixed by the gemm_4bit op contract).
NESTED_BLOCKSIZE_4BIT = 256


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def dtype_in(name: str, t: torch.Tensor, allowed: Iterable[torch.dtype]) -> None:
    allowed = tuple(allowed)
    if t.dtype not in allowed:
        raise TypeError(f"{name} must have dtype {_names(allowed)}; got {t.dtype} (shape {tuple(t.shape)})")


def float_dtype(name: str, dtype: torch.dtype) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of {_names(FLOAT_DTYPES)}; got {dtype}")


def storage_device(t: torch.Tensor) -> torch.device:
    """The device whose kernels read `t`: cuda:page_deviceid for a paged tensor, else t.device.

    A paged tensor is typed as a CPU tensor (its memory is host-addressable managed memory), but
    the kernels that use it run on the GPU it was allocated for.
    """
    if getattr(t, "is_paged", False):
        return torch.device("cuda", t.page_deviceid)
    return t.device


def same_device(reference_name: str, reference: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    ref_device = storage_device(reference)
    for name, t in others.items():
        if t is not None and storage_device(t) != ref_device:
            raise ValueError(
                f"{name} is on {storage_device(t)} but {reference_name} is on {ref_device}: "
                "all tensors of one call must be on the same device"
            )


def numel(name: str, t: torch.Tensor, expected: int) -> None:
    if t.numel() != expected:
        raise ValueError(f"{name} must have {expected} elements; got {t.numel()} (shape {tuple(t.shape)})")


def out_tensor(name: str, out: torch.Tensor, shape, dtype: torch.dtype, device: torch.device,
               contiguous: bool = True) -> None:
    """`contiguous=False` for outputs that receive a copy_ (any strides) rather than a kernel's write."""
    tensor(name, out)
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}; got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(out.shape)}")
    if out.device != device:
        raise ValueError(f"{name} is on {out.device} but the inputs are on {device}")
    if contiguous and not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is written in place); got strides {out.stride()}")


def int8_threshold(threshold) -> float:
    """The LLM.int8() outlier threshold as a float: finite and >= 0 (0 = no outlier decomposition).

    A NaN would compare false everywhere (no outliers on one path, a dynamic outlier list on another),
    a negative value would make every value an outlier, and the kernels compare in float32, where
    infinity would make only infinite values outliers: each is refused rather than interpreted."""
    if type(threshold) is float and 0.0 <= threshold <= _FLOAT32_MAX:  # (NaN fails both comparisons)
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a float; got {type(threshold).__name__}")
    threshold = float(threshold)
    if not (math.isfinite(threshold) and 0.0 <= threshold <= _FLOAT32_MAX):
        raise ValueError(f"threshold must be finite and >= 0 (0 disables outlier columns); got {threshold}")
    return threshold


def blocksize_8bit(blocksize) -> None:
    if not isinstance(blocksize, int) or isinstance(blocksize, bool):
        raise TypeError(f"blocksize must be an int; got {type(blocksize).__name__}")
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive; got {blocksize}")


def blocksize_4bit(blocksize) -> None:
    if blocksize not in BLOCKSIZES_4BIT:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES_4BIT} for 4-bit quantization; got {blocksize}")


def quant_type_4bit(quant_type) -> None:
    if quant_type not in QUANT_TYPES_4BIT:
        raise ValueError(f"quant_type must be 'nf4' or 'fp4'; got {quant_type!r}")


def code_book(code: torch.Tensor, name: str = "code") -> None:
    tensor(name, code)
    dtype_in(name, code, (torch.float32,))
    numel(name, code, 256)


def quant_storage_4bit(quant_storage, n: int) -> None:
    """quant_storage must be one of QUANT_STORAGES_4BIT, and the packed shape the format fixes,
    [(n + 1) // (2 * itemsize), 1], must hold all n codes: with wider storage that shape rounds down
    and would silently drop the last values (e.g. n = 10 in float32 storage gives 4 bytes, not 5)."""
    if not isinstance(quant_storage, torch.dtype):
        raise TypeError(f"quant_storage must be a torch.dtype; got {quant_storage!r}")
    if quant_storage not in QUANT_STORAGES_4BIT:
        raise TypeError(f"quant_storage must be one of {_names(QUANT_STORAGES_4BIT)}; got {quant_storage}")
    itemsize = quant_storage.itemsize
    if (n + 1) // (2 * itemsize) * itemsize < (n + 1) // 2:
        raise ValueError(
            f"{n} 4-bit values do not fit the packed shape [(n + 1) // {2 * itemsize}, 1] of quant_storage "
            f"{quant_storage} (the last values would be dropped): use uint8 storage, or pad to a number of values "
            f"whose {(n + 1) // 2} packed bytes are a multiple of {itemsize}"
        )


def packed_4bit(name: str, packed: torch.Tensor, n: int) -> None:
    """`packed` holds exactly the [(n + 1) // (2 * itemsize)] elements quantize_4bit makes for n values:
    fewer would be read out of bounds, more means it belongs to another weight (or is not packed at all)."""
    dtype_in(name, packed, QUANT_STORAGES_4BIT)
    itemsize = packed.element_size()
    expected = (n + 1) // (2 * itemsize)
    if packed.numel() != expected or expected * itemsize < (n + 1) // 2:
        raise ValueError(
            f"{name} must be a packed 4-bit tensor of {expected} {packed.dtype} elements for {n} values "
            f"({(n + 1) // 2} bytes); got {packed.numel()} elements (shape {tuple(packed.shape)}): it does not "
            "belong to this shape"
        )


def scales_4bit(n: int, blocksize: int, absmax: torch.Tensor, absmax_8bit: Optional[torch.Tensor] = None,
                absmax_code: Optional[torch.Tensor] = None, absmax_offset: Optional[torch.Tensor] = None) -> None:
    """The block scales of n 4-bit values: float32 absmax [ceil(n / blocksize)], or double-quantized as
    uint8 absmax_8bit [nblocks] + float32 absmax [ceil(nblocks / 256)] + absmax_code f32 [256] + absmax_offset
    (one float32). Kernels index them by block without bounds checks, so the counts must be exact."""
    nblocks = -(n // -blocksize)
    tensor("absmax", absmax)
    dtype_in("absmax", absmax, (torch.float32,))
    if absmax_8bit is None:
        numel("absmax", absmax, nblocks)
        return
    if absmax_code is None or absmax_offset is None:
        raise ValueError("absmax_8bit needs absmax_code and absmax_offset (double-quantized statistics)")
    tensor("absmax_8bit", absmax_8bit)
    dtype_in("absmax_8bit", absmax_8bit, (torch.uint8,))
    numel("absmax_8bit", absmax_8bit, nblocks)
    numel("absmax", absmax, -(nblocks // -NESTED_BLOCKSIZE_4BIT))
    code_book(absmax_code, "absmax_code")
    tensor("absmax_offset", absmax_offset)
    dtype_in("absmax_offset", absmax_offset, (torch.float32,))
    numel("absmax_offset", absmax_offset, 1)


def shape_4bit_weight(name: str, shape) -> tuple:
    """(N, K) of a 2-D weight shape with non-negative sizes."""
    if shape is None or len(shape) != 2 or any(int(s) < 0 for s in shape):
        got = None if shape is None else list(shape)
        raise ValueError(f"{name} must be a 2-D weight shape [N, K] with sizes >= 0; got {got}")
    return int(shape[0]), int(shape[1])

"""Argument checks shared by the public functions and the op kernels.

Every check raises the exception type users expect (TypeError for a wrong dtype, ValueError
for a wrong value, shape or device) with a message naming the argument and what was received.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)
QUANT_TYPES_4BIT = ("nf4", "fp4")


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


def out_tensor(name: str, out: torch.Tensor, shape, dtype: torch.dtype, device: torch.device) -> None:
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}; got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(out.shape)}")
    if out.device != device:
        raise ValueError(f"{name} is on {out.device} but the inputs are on {device}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is written in place); got strides {out.stride()}")


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


def code_book(code: torch.Tensor) -> None:
    tensor("code", code)
    dtype_in("code", code, (torch.float32,))
    numel("code", code, 256)

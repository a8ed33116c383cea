"""Kernels for CPU and CUDA tensors: allocate outputs, validate, call the native library.

Only tensor plumbing happens here; every computation runs in the native core. Calls use the
caller's current CUDA stream and never synchronise the host (except int8 outlier extraction,
whose output size depends on the data, exactly like torch.nonzero).
"""

from __future__ import annotations

import ctypes as ct
import threading
from typing import Optional

import torch

from .. import _native, _validate as check
from .._ops import packed_4bit_shape

_DEVICES = ("cpu", "cuda")

_DTYPE_CODES = {
    torch.float32: _native.DTYPE_FLOAT32,
    torch.float16: _native.DTYPE_FLOAT16,
    torch.bfloat16: _native.DTYPE_BFLOAT16,
}


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


# The caller's current CUDA stream as a raw handle. torch.cuda.current_stream() builds a Python
# Stream object per call (several microseconds of host time per op); the raw query does not.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


_loaded: dict = {}  # device type -> its native library (a library, once loaded, stays for the process)


def library(device: torch.device):
    """The native library for `device`'s type; a dict lookup after the first call."""
    lib = _loaded.get(device.type)
    if lib is None:
        lib = _loaded[device.type] = _native.library_for(device)
    return lib


def _exec(device: torch.device) -> tuple:
    """(library, device index, stream handle) for a call on `device`."""
    lib = library(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = _raw_stream(index) if _raw_stream is not None else torch.cuda.current_stream(index).cuda_stream
        return lib, index, stream
    return lib, -1, None


def _register(name: str):
    return torch.library.register_kernel(f"bitsandbytes::{name}", _DEVICES)


def _dense(name: str, t: torch.Tensor) -> torch.Tensor:
    """A contiguous view or copy: kernels read flat row-major memory."""
    return t if t.is_contiguous() else t.contiguous()


def _float_input(name: str, A: torch.Tensor) -> torch.Tensor:
    check.dtype_in(name, A, check.FLOAT_DTYPES)
    return _dense(name, A)


def _code_on(code: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    check.code_book(code)
    check.same_device("A", A, code=code)
    return _dense("code", code)


# ---- 8-bit blockwise ------------------------------------------------------------------------------


@_register("quantize_blockwise")
def _(A: torch.Tensor, code: torch.Tensor, blocksize: int):
    check.blocksize_8bit(blocksize)
    A = _float_input("A", A)
    code = _code_on(code, A)
    n = A.numel()
    out = torch.empty_like(A, dtype=torch.uint8)
    absmax = torch.empty(-(n // -blocksize), device=A.device, dtype=torch.float32)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_quantize_blockwise", _ptr(A), _DTYPE_CODES[A.dtype], _ptr(code), _ptr(out), _ptr(absmax), n,
             blocksize, dev, stream)
    return out, absmax


def _dequantize_blockwise_into(A, absmax, code, blocksize, dtype, out):
    check.blocksize_8bit(blocksize)
    check.dtype_in("A", A, (torch.uint8,))
    check.float_dtype("dtype", dtype)
    check.dtype_in("absmax", absmax, (torch.float32,))
    check.same_device("A", A, absmax=absmax)
    A = _dense("A", A)
    code = _code_on(code, A)
    absmax = _dense("absmax", absmax)
    n = A.numel()
    check.numel("absmax", absmax, -(n // -blocksize))
    check.out_tensor("out", out, A.shape, dtype, A.device)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_dequantize_blockwise", _ptr(A), _ptr(code), _ptr(absmax), _ptr(out), _DTYPE_CODES[dtype], n,
             blocksize, dev, stream)


@_register("dequantize_blockwise")
def _(A, absmax, code, blocksize, dtype):
    check.dtype_in("A", A, (torch.uint8,))
    check.float_dtype("dtype", dtype)
    out = torch.empty(A.shape, device=A.device, dtype=dtype)
    _dequantize_blockwise_into(A, absmax, code, blocksize, dtype, out)
    return out


@_register("dequantize_blockwise.out")
def _(A, absmax, code, blocksize, dtype, out):
    _dequantize_blockwise_into(A, absmax, code, blocksize, dtype, out)


# ---- 4-bit ---------------------------------------------------------------------------------------------


@_register("quantize_4bit")
def _(A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype):
    check.blocksize_4bit(blocksize)
    check.quant_type_4bit(quant_type)
    A = _float_input("A", A)
    n = A.numel()
    check.quant_storage_4bit(quant_storage, n)  # (so the packed shape below holds every code)
    absmax = torch.empty(-(n // -blocksize), device=A.device, dtype=torch.float32)
    # Packed bytes are written into a uint8 buffer sized for the storage dtype, then reinterpreted,
    # so every quant_storage holds identical bytes.
    shape = packed_4bit_shape(n, quant_storage)
    storage = torch.empty(shape[0] * quant_storage.itemsize, device=A.device, dtype=torch.uint8)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_quantize_4bit", _ptr(A), _DTYPE_CODES[A.dtype], _native.QUANT_TYPES[quant_type], _ptr(storage),
             _ptr(absmax), n, blocksize, dev, stream)
    packed = storage[: shape[0] * quant_storage.itemsize].view(quant_storage).view(shape)
    return packed, absmax


def _dequantize_4bit_into(A, absmax, blocksize, quant_type, shape, dtype, out):
    check.blocksize_4bit(blocksize)
    check.quant_type_4bit(quant_type)
    check.float_dtype("dtype", dtype)
    check.same_device("A", A, absmax=absmax)
    n = 1
    for s in shape:
        if int(s) < 0:
            raise ValueError(f"shape must have sizes >= 0; got {list(shape)}")
        n *= int(s)
    check.packed_4bit("A", A, n)
    check.scales_4bit(n, blocksize, absmax)
    A = _dense("A", A)
    packed = A.view(torch.uint8).reshape(-1)
    absmax = _dense("absmax", absmax)
    check.out_tensor("out", out, tuple(shape), dtype, A.device)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_dequantize_4bit", _ptr(packed), _ptr(absmax), _native.QUANT_TYPES[quant_type], _ptr(out),
             _DTYPE_CODES[dtype], n, blocksize, dev, stream)


@_register("dequantize_4bit")
def _(A, absmax, blocksize, quant_type, shape, dtype):
    check.float_dtype("dtype", dtype)
    out = torch.empty(shape, device=A.device, dtype=dtype)
    _dequantize_4bit_into(A, absmax, blocksize, quant_type, shape, dtype, out)
    return out


@_register("dequantize_4bit.out")
def _(A, absmax, blocksize, quant_type, shape, dtype, out):
    _dequantize_4bit_into(A, absmax, blocksize, quant_type, shape, dtype, out)


# ---- LLM.int8() quantization ------------------------------------------------------------------------------


def _rows_cols(A: torch.Tensor) -> tuple:
    if A.dim() == 0:
        raise ValueError("A must have at least one dimension (rows are all leading dimensions, columns the last)")
    cols = A.shape[-1]
    if cols:
        return A.numel() // cols, cols
    rows = 1
    for d in A.shape[:-1]:  # an empty last dimension: numel // cols cannot say how many rows
        rows *= int(d)
    return rows, cols


_flag_buffers = threading.local()


def _outlier_flags(device: torch.device, stream, cols: int) -> tuple:
    """(flags, tag): a [cols] uint8 flag buffer kept per thread, device and stream, and the tag (1..255)
    this call's outlier columns get in it. Each call takes the next tag, so flags left by earlier calls
    never match and the buffer is not cleared per call (no clearing queued before the kernel); it is
    cleared on the stream only when the tag wraps. Stream order makes the reuse safe: a call has listed
    its flags before the next call on that stream writes any."""
    buffers = _flag_buffers.__dict__.setdefault("by_stream", {})
    key = (device, stream)
    entry = buffers.get(key)
    if entry is None or entry[0].numel() != cols:
        entry = [torch.zeros(cols, device=device, dtype=torch.uint8), 0]
        buffers[key] = entry
    tag = entry[1] + 1
    if tag > 255:
        entry[0].zero_()
        tag = 1
    entry[1] = tag  # taken before the call: a call that fails midway leaves flags no later tag matches
    return entry[0], tag


def _outlier_columns(flags: torch.Tensor, tag: int, zero_in: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sorted int64 indices of the columns whose flag equals tag, on the flags' device; with zero_in
    (an int8 [rows, cols] matrix) those columns of it are zeroed as well.

    The list's length depends on the data, so the host must wait for the flags either way. The native
    library lists the columns, zeroes them and hands the count to the host with a single wait after
    queueing all of it (on CUDA a kernel writes the count into pinned host memory), so nothing is
    launched after the wait and the device does the zeroing while the host waits."""
    count = ct.c_int64(0)
    columns = torch.empty(flags.numel(), device=flags.device, dtype=torch.int64)
    rows = 0 if zero_in is None else zero_in.shape[0]
    lib, dev, stream = _exec(flags.device)
    lib.call("bnb_int8_outlier_columns", flags.data_ptr(), tag, rows, flags.numel(), _ptr(zero_in),
             columns.data_ptr(), ct.byref(count), dev, stream)
    # Shrunk in place (the host waits here, so every microsecond counts): cheaper than a slice's new view.
    return columns.resize_(count.value)


@_register("int8_vectorwise_quant")
def _(A: torch.Tensor, threshold: float = 0.0):
    A = _float_input("A", A)
    threshold = check.int8_threshold(threshold)  # (before the early return below, which skips the library's check)
    rows, cols = _rows_cols(A)
    out = torch.empty_like(A, dtype=torch.int8)
    row_stats = torch.empty(rows, device=A.device, dtype=torch.float32)
    if threshold > 0.0 and rows == 0:  # no values, so no outlier columns
        return out, row_stats, torch.empty(0, device=A.device, dtype=torch.int64)
    lib, dev, stream = _exec(A.device)
    flags, tag = _outlier_flags(A.device, stream, cols) if threshold > 0.0 else (None, 0)
    lib.call("bnb_int8_vectorwise_quant", _ptr(A), _DTYPE_CODES[A.dtype], rows, cols, float(threshold), _ptr(out),
             _ptr(row_stats), _ptr(flags), tag, dev, stream)
    if flags is None:
        return out, row_stats, None
    outlier_cols = _outlier_columns(flags, tag, out.view(rows, cols) if rows > 1 else None)
    return out, row_stats, outlier_cols


@_register("int8_double_quant")
def _(A: torch.Tensor, threshold: float = 0.0):
    A = _float_input("A", A)
    threshold = check.int8_threshold(threshold)
    out_row, row_stats, outlier_cols = torch.ops.bitsandbytes.int8_vectorwise_quant(A, threshold)
    rows, cols = _rows_cols(A)
    out_col = torch.empty_like(A, dtype=torch.int8)
    col_stats = torch.empty(cols, device=A.device, dtype=torch.float32)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_int8_colwise_quant", _ptr(A), _DTYPE_CODES[A.dtype], rows, cols, float(threshold), _ptr(out_col),
             _ptr(col_stats), dev, stream)
    return out_row, out_col, row_stats, col_stats, outlier_cols


def estimate_quantiles(A: torch.Tensor, offset: float) -> torch.Tensor:
    """256 quantiles of A (float32), computed by the native library of A's device."""
    A = _float_input("A", A)
    out = torch.empty(256, device=A.device, dtype=torch.float32)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_estimate_quantiles", _ptr(A), _DTYPE_CODES[A.dtype], A.numel(), float(offset), _ptr(out), dev,
             stream)
    return out

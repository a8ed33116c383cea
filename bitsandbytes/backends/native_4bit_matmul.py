"""gemm_4bit / gemv_4bit for CPU and CUDA tensors.

Three paths, chosen by shape: for few activation rows the native kernel streams the 4-bit weight and
never materialises it (CPU: up to 128 rows, any shape; CUDA: up to 16 rows of fp16/bf16 with K a
multiple of 256 and of the blocksize, on tensor cores); on Hopper GPUs 17..4096 rows go to a native
warpgroup tensor-core GEMM that expands the codes on the way (fp16/bf16, K a multiple of 64 and of
the blocksize, N of 8); otherwise the weight is expanded once by the native dequantize_4bit kernel
into the activation dtype and multiplied by the platform BLAS (cuBLAS on CUDA, oneDNN/MKL on CPU).
Double-quantized block scales are decoded inside the native product kernels.
"""

from __future__ import annotations

import weakref
from typing import Optional, Sequence

import torch

from .. import _native, _validate as check
from .native import _DEVICES, _DTYPE_CODES, _exec, _ptr, _raw_stream, library

ops = torch.ops.bitsandbytes


# Up to this many activation rows the CUDA kernel streams the 4-bit weight (one m16 tensor-core tile).
CUDA_STREAMING_MAX_ROWS = 16
CUDA_STREAMING_K_MULTIPLE = 256  # K columns per work unit of the CUDA kernel
CUDA_STREAMING_MIN_BLOCKSIZE = 64  # a quantization block must cover one 64-column mma group

# Devices whose GPU lacks the kernel's tensor-core instructions (compute capability < 8.0).
_no_cuda_streaming: set = set()

# Above CUDA_STREAMING_MAX_ROWS, the Hopper kernel (compute capability 9.0, library built with sm_90a):
# K in tiles of 64 inside one quantization block, output rows written 8 elements at a time.
CUDA_TENSOR_CORE_K_MULTIPLE = 64
CUDA_TENSOR_CORE_N_MULTIPLE = 8
# Beyond this many rows, expanding the weight once and multiplying with cuBLAS is faster (H100, K = 8192;
# the native kernel's header has the figures).
CUDA_TENSOR_CORE_MAX_ROWS = 4096
# Devices where it is not available (other GPUs, or a library without the sm_90a image).
_no_cuda_tensor_core: set = set()

# Up to these many activation rows the CPU streams the 4-bit weight (register-tiled dot products over
# decoded rows); beyond them it expands the weight once and multiplies with torch's BLAS. Crossovers measured
# at K = N = 4096 on 2 cores, the two paths alternating in one process:
# - AMD EPYC (AVX-512 with BF16, no AMX): float32 streams faster up to 384 rows (28 / 55 / 89 ms against 40 /
#   74 / 100 ms at M = 128 / 256 / 384); float16 at every M measured (torch has no fast float16 GEMM there: 60 /
#   144 / 440 ms against 211 / 467 / 913 ms at M = 256 / 512 / 1024); bfloat16 up to about 192 rows (22 against
#   22 ms at 192, 28 against 27 at 256).
# - Intel Xeon with AMX (from Sapphire Rapids on, whose BLAS is fast in every dtype): bfloat16 streams on the
#   tiles faster up to 512 rows (8.3 / 16.4 / 50.2 ms against 11.7 / 16.1 / 23.7 ms at M = 256 / 512 / 1024);
#   float32 loses from about 128 rows (13.9 against 18.3 ms at 64, 29.3 against 24.5 at 128), float16 from
#   about 64 (9.3 against 11.0 ms at 32, 15.1 against 14.2 at 64).
CPU_STREAMING_MAX_ROWS = {torch.float32: 256, torch.float16: 1024, torch.bfloat16: 128}
CPU_AMX_STREAMING_MAX_ROWS = {torch.float32: 96, torch.float16: 64, torch.bfloat16: 256}
_cpu_amx_bf16 = None  # whether the CPU library multiplies bfloat16 on AMX tiles (asked once)


def _cpu_streaming_max_rows(dtype: torch.dtype) -> int:
    global _cpu_amx_bf16
    if _cpu_amx_bf16 is None:
        try:
            _cpu_amx_bf16 = "amx_bf16" in _native.cpu_library().info().get("products", [])
        except Exception:  # the streaming call itself reports a missing library
            _cpu_amx_bf16 = False
    limits = CPU_AMX_STREAMING_MAX_ROWS if _cpu_amx_bf16 else CPU_STREAMING_MAX_ROWS
    return limits.get(dtype, 128)


def _streaming(A, B, shapeB, absmax, blocksize: int, quant_type: str, bias, nested=None):
    """out = A @ W.T (+ bias) by the native kernel, reading W as packed codes. nested =
    (absmax_8bit, absmax_code, absmax_offset) for double-quantized scales (absmax = second level)."""
    N, K = shapeB  # (B, the scales and bias were checked against shapeB by the caller: _check_weight)
    A2 = A.reshape(-1, K).contiguous()
    packed = B.contiguous().view(torch.uint8).reshape(-1)
    q, code, offset = (None, None, None) if nested is None else (t.contiguous() for t in nested)
    if bias is not None:
        bias = bias.contiguous()
    out = torch.empty(A2.shape[0], N, device=A.device, dtype=A.dtype)
    lib, dev, stream = _exec(A.device)
    lib.call("bnb_gemm_4bit", _ptr(A2), _DTYPE_CODES[A.dtype], A2.shape[0], K, _ptr(packed),
             _ptr(absmax.contiguous()), _ptr(q), _ptr(code), _ptr(offset), _native.QUANT_TYPES[quant_type], N,
             blocksize, _ptr(bias), _ptr(out), dev, stream)
    return out.reshape(*A.shape[:-1], N)


def _cuda_kernel_serves(dtype: torch.dtype, K: int, blocksize: int) -> bool:
    """The shapes and dtypes the CUDA streaming kernel takes (the rest go to dequantize + GEMM)."""
    return (dtype in (torch.float16, torch.bfloat16) and blocksize >= CUDA_STREAMING_MIN_BLOCKSIZE
            and K % CUDA_STREAMING_K_MULTIPLE == 0 and K % blocksize == 0)


def _use_tensor_core(A: torch.Tensor, N: int, blocksize: int) -> bool:
    K = A.shape[-1]
    rows = A.numel() // K if K else 0
    return (A.device.type == "cuda" and CUDA_STREAMING_MAX_ROWS < rows <= CUDA_TENSOR_CORE_MAX_ROWS
            and A.device not in _no_cuda_tensor_core
            and A.dtype in (torch.float16, torch.bfloat16) and blocksize >= CUDA_TENSOR_CORE_K_MULTIPLE
            and K % CUDA_TENSOR_CORE_K_MULTIPLE == 0 and K % blocksize == 0 and N % CUDA_TENSOR_CORE_N_MULTIPLE == 0)


def _try_tensor_core(A, B, shapeB, absmax, blocksize, quant_type, bias, nested=None):
    """The Hopper kernel's result, or None where it cannot run (the caller dequantizes and multiplies)."""
    try:
        return _streaming(A, B, shapeB, absmax, blocksize, quant_type, bias, nested)
    except NotImplementedError:
        A2 = A.reshape(-1, A.shape[-1]).contiguous()
        if A2.data_ptr() % 16 == 0 and B.data_ptr() % 16 == 0:
            _no_cuda_tensor_core.add(A.device)  # not the data's layout: the device or the build lacks it
        return None


def _use_streaming(A: torch.Tensor, blocksize: int) -> bool:
    K = A.shape[-1]
    rows = A.numel() // K if K else 0
    if A.device.type == "cpu":
        return 0 < rows <= _cpu_streaming_max_rows(A.dtype)
    return (A.device.type == "cuda" and 0 < rows <= CUDA_STREAMING_MAX_ROWS and A.device not in _no_cuda_streaming
            and _cuda_kernel_serves(A.dtype, K, blocksize))


def _kernel_alignment_ok(A, B, absmax, nested) -> bool:
    """The alignments the CUDA kernel's vector loads need (fresh allocations have them)."""
    return (A.is_contiguous() and A.data_ptr() % 16 == 0 and B.data_ptr() % 8 == 0 and absmax.data_ptr() % 16 == 0
            and (nested is None or nested[0].data_ptr() % 4 == 0))


def _try_streaming(A, B, shapeB, absmax, blocksize, quant_type, bias, nested=None):
    """The streaming kernel's result, or None where the device cannot run it (older GPUs, unaligned
    views): the caller then takes the dequantize + GEMM path."""
    try:
        return _streaming(A, B, shapeB, absmax, blocksize, quant_type, bias, nested)
    except NotImplementedError:
        if A.device.type == "cuda" and _kernel_alignment_ok(A, B, absmax, nested):
            _no_cuda_streaming.add(A.device)  # not the data's layout: the GPU itself lacks the kernel
        return None


def _weight(B, absmax, blocksize: int, quant_type: str, shapeB: Sequence[int], dtype: torch.dtype):
    if len(shapeB) != 2:
        raise ValueError(f"shapeB must be 2-D [N, K]; got {list(shapeB)}")
    return ops.dequantize_4bit(B, absmax, blocksize, quant_type, list(shapeB), dtype)


def _check_activations(A: torch.Tensor, shapeB: Sequence[int], bias: Optional[torch.Tensor]) -> None:
    N, K = check.shape_4bit_weight("shapeB", shapeB)
    check.dtype_in("A", A, check.FLOAT_DTYPES)
    if A.dim() == 0 or A.shape[-1] != K:
        raise ValueError(f"A [..., K] must match shapeB [N, K]; got {tuple(A.shape)} and {list(shapeB)}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"bias must be 1-D with N = {N} elements; got shape {tuple(bias.shape)}")
        # Every path adds it in A's dtype (the streaming kernel reads it as such; torch's linear would
        # otherwise raise its own RuntimeError on larger inputs only).
        check.dtype_in("bias", bias, (A.dtype,))
        check.same_device("A", A, bias=bias)


def _check_weight(B, shapeB, absmax, blocksize: int, nested=None) -> None:
    """B holds exactly the packed codes of shapeB and the scales have the dtypes and counts the kernels index
    without bounds checks; nested = (absmax_8bit, absmax_code, absmax_offset) for double-quantized scales."""
    N, K = check.shape_4bit_weight("shapeB", shapeB)
    check.blocksize_4bit(blocksize)
    check.tensor("B", B)
    check.packed_4bit("B", B, N * K)
    check.scales_4bit(N * K, blocksize, absmax, *(nested or ()))


@torch.library.register_kernel("bitsandbytes::gemm_4bit", _DEVICES)
def _(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    _check_activations(A, shapeB, bias)
    check.same_device("A", A, B=B, absmax=absmax, absmax_8bit=absmax_8bit, absmax_code=absmax_code,
                      absmax_offset=absmax_offset)
    check.quant_type_4bit(quant_type)
    nested = None
    if absmax_8bit is not None:
        # Double-quantized statistics: block scale = code[q] * absmax2[i // 256] + offset.
        nested = (absmax_8bit, absmax_code, absmax_offset)
    _check_weight(B, shapeB, absmax, blocksize, nested)
    if nested is not None:
        nested = (absmax_8bit, absmax_code, absmax_offset.reshape(1))
    if _use_streaming(A, blocksize):
        out = _try_streaming(A, B, shapeB, absmax, blocksize, quant_type, bias, nested)
        if out is not None:
            return out
    elif _use_tensor_core(A, shapeB[0], blocksize):
        out = _try_tensor_core(A, B, shapeB, absmax, blocksize, quant_type, bias, nested)
        if out is not None:
            return out
    scales = absmax
    if nested is not None:
        scales = ops.dequantize_blockwise(absmax_8bit, absmax, absmax_code, 256, torch.float32)
        scales += absmax_offset
    weight = _weight(B, scales, blocksize, quant_type, shapeB, A.dtype)
    return torch.nn.functional.linear(A, weight, bias)



_host_tables: dict = {}  # "nf4" / "fp4" -> the 16-entry table on the CPU (the kernels' own, asked once)
# id(code) -> (weak reference to code, its version counter, "nf4" / "fp4"): a table already told apart is not
# copied to the host again, so a repeated gemv_4bit with the same state's code does not wait for the GPU.
# An in-place change of the table bumps its version and it is compared again.
_known_tables: dict = {}

# A code table read from a checkpoint equals get_4bit_type's up to float rounding of its serialiser.
_CODE_TABLE_ATOL = 1e-6


def _quant_type_of(code: torch.Tensor) -> str:
    """nf4 or fp4 for a 16-entry table equal to one of them; any other table is refused, since the kernels
    only decode these two. The comparison runs on the host, once per table (and again after it is changed
    in place): a CUDA table is copied to the host the first time it is seen."""
    check.tensor("code", code)
    check.dtype_in("code", code, (torch.float32,))
    check.numel("code", code, 16)
    known = _known_tables.get(id(code))
    if known is not None and known[0]() is code and known[1] == code._version:
        return known[2]
    if not _host_tables:
        from .._code_maps import get_4bit_type
        for name in check.QUANT_TYPES_4BIT:
            _host_tables[name] = get_4bit_type(name, device="cpu")
    values = code.reshape(16) if code.device.type == "cpu" else code.reshape(16).to("cpu")
    for name, table in _host_tables.items():
        if torch.allclose(values, table, rtol=0.0, atol=_CODE_TABLE_ATOL):
            key = id(code)
            # The entry leaves with the table (the callback), so the dict does not grow with dead tables.
            _known_tables[key] = (weakref.ref(code, lambda _ref: _known_tables.pop(key, None)), code._version, name)
            return name
    raise ValueError(f"code must be the nf4 or fp4 table (get_4bit_type); got {values.tolist()}")


def _gemv(A, B, shapeB, absmax, code, blocksize):
    _check_activations(A, shapeB, None)
    check.same_device("A", A, B=B, absmax=absmax, code=code)
    quant_type = _quant_type_of(code)
    _check_weight(B, shapeB, absmax, blocksize)
    if _use_streaming(A, blocksize):
        out = _try_streaming(A, B, shapeB, absmax, blocksize, quant_type, None)
        if out is not None:
            return out
    weight = _weight(B, absmax, blocksize, quant_type, shapeB, A.dtype)
    return torch.nn.functional.linear(A, weight)


@torch.library.register_kernel("bitsandbytes::gemv_4bit", _DEVICES)
def _(A, B, shapeB, absmax, code, blocksize):
    return _gemv(A, B, shapeB, absmax, code, blocksize)


@torch.library.register_kernel("bitsandbytes::gemv_4bit.out", _DEVICES)
def _(A, B, shapeB, absmax, code, blocksize, out):
    result = _gemv(A, B, shapeB, absmax, code, blocksize)
    check.out_tensor("out", out, result.shape, A.dtype, A.device)
    out.copy_(result)


# ---- eager fast path ------------------------------------------------------------------------------------
# At a few activation rows the 4-bit product of a large layer takes ~10-20 us on a GPU, less than
# one trip through the op dispatcher and the generic argument checks above costs on the host (on a
# slow host of the GPU machine an eager Linear4bit call through the op took 128-160 us at K = N = 8192,
# M = 512, whose kernel takes 97-103 us: even there the GPU waited for the host).
# When the host is slower than the GPU the GPU idles between layers, so eager inference calls the
# native product directly (streaming kernel or, above 16 rows, the Hopper kernel) with the weight's
# arguments prepared once per QuantState. Traced or compiled code, tensor subclasses and dispatch modes
# keep using the op.

def _scale_tensors(quant_state) -> tuple:
    """The tensors holding a weight's block scales, in the kernel's argument order (scales, codes, code book,
    offset for double-quantized ones)."""
    if quant_state.nested:
        state2 = quant_state.state2
        return (state2.absmax, quant_state.absmax, state2.code, quant_state.offset)
    return (quant_state.absmax,)


def _weight_args(B: torch.Tensor, quant_state) -> Optional[tuple]:
    """(packed, scales, q, code, offset) pointers of a 4-bit weight, or None if the kernel cannot read it
    (the op then handles the call). A weight the op would refuse raises the op's error here."""
    N, K = quant_state.shape
    if quant_state.nested and (quant_state.state2.blocksize != 256 or quant_state.offset is None):
        return None
    tensors = _scale_tensors(quant_state)
    if any(not isinstance(t, torch.Tensor) or t.device != B.device for t in tensors):
        return None
    check.quant_type_4bit(quant_state.quant_type)
    _check_weight(B, (N, K), tensors[0], quant_state.blocksize, tensors[1:] or None)
    packed = B.view(torch.uint8) if B.dtype != torch.uint8 else B
    if not packed.is_contiguous() or any(not t.is_contiguous() for t in tensors):
        return None
    ptrs = tuple(t.data_ptr() for t in tensors)
    if B.device.type == "cuda" and (packed.data_ptr() % 8 or ptrs[0] % 16 or (len(ptrs) == 4 and ptrs[1] % 4)):
        return None  # the CUDA kernel's vector loads need these alignments (fresh allocations have them)
    return (packed.data_ptr(), *ptrs) if len(ptrs) == 4 else (packed.data_ptr(), ptrs[0], None, None, None)


def _streaming_plan(A: torch.Tensor, B: torch.Tensor, b_device: torch.device, quant_state, key: tuple) -> tuple:
    """What a direct call with A's device and dtype needs, checked once per weight: (key, None) when the
    native kernels cannot serve it, else (key, the weight's kernel arguments, K, N, most rows, cuda index or
    -1, device type). The arguments hold raw pointers: QuantState keeps the plan out of pickles and copies."""
    device = A.device
    shape = list(quant_state.shape) if quant_state.shape is not None else []
    blocksize = quant_state.blocksize
    if len(shape) != 2 or b_device != device or device.type not in _DEVICES or A.dtype not in _DTYPE_CODES:
        return (key, None)
    N, K = shape
    if not K:
        return (key, None)
    if device.type == "cuda" and not _cuda_kernel_serves(A.dtype, K, blocksize):
        return (key, None)
    args = _weight_args(B, quant_state)
    if args is None:
        return (key, None)
    index, max_rows = -1, _cpu_streaming_max_rows(A.dtype)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        max_rows = CUDA_STREAMING_MAX_ROWS
        # More rows go to the Hopper kernel through the same entry (the library picks it by M; its TMA reads
        # need the codes 16-byte aligned), so that they skip the op's host time too (see above).
        if N % CUDA_TENSOR_CORE_N_MULTIPLE == 0 and args[0] % 16 == 0:
            max_rows = CUDA_TENSOR_CORE_MAX_ROWS
    packed, scales, q, code, offset = args
    weight = _native.Gemm4bitWeight(packed, scales, q, code, offset, K, N, blocksize,
                                    _native.QUANT_TYPES[quant_state.quant_type], _DTYPE_CODES[A.dtype], index, 0)
    return (key, weight, K, N, max_rows, index, device.type)


_gemm_entries: dict = {}  # device type -> (its native library, that library's bnb_gemm_4bit_with_weight)


def gemm_4bit_direct(A: torch.Tensor, B: torch.Tensor, quant_state, bias: Optional[torch.Tensor]):
    """``A @ dequant(B).T + bias`` by the native kernels, or None when the op must handle the call."""
    if (type(A) is not torch.Tensor or torch.compiler.is_compiling()
            or torch.utils._python_dispatch._get_current_dispatch_mode() is not None):
        return None
    with torch._C.DisableTorchFunctionSubclass():  # B may be a Params4bit: skip its torch-function hook
        b_ptr, b_bytes, b_dense = B.data_ptr(), B.nbytes, B.is_contiguous()
    device = A.device
    # Everything the plan was checked against is in the key: every tensor the kernel reads (a state whose
    # pieces were replaced, or moved and given back other addresses, is planned again rather than read through
    # stale pointers) and B's size in bytes and layout (a slice or strided view at the same address is checked
    # again, and refused). The state's shape, blocksize, quant_type and dtype are not: assigning any of them
    # drops the plan (QuantState.__setattr__), which costs this per-call path nothing.
    if quant_state.nested:  # (written out: the key is built on every call)
        state2 = quant_state.state2
        key = (b_ptr, b_bytes, b_dense, device, A.dtype, state2.absmax.data_ptr(), quant_state.absmax.data_ptr(),
               state2.code.data_ptr(), quant_state.offset.data_ptr())
    else:
        key = (b_ptr, b_bytes, b_dense, device, A.dtype, quant_state.absmax.data_ptr())
    plan = quant_state.__dict__.get("_streaming_plan")
    if plan is None or plan[0] != key:
        # (B's device is asked only here: the plan checked it, and another device's B has another address.)
        with torch._C.DisableTorchFunctionSubclass():
            b_device = B.device
        plan = _streaming_plan(A, B, b_device, quant_state, key)
        quant_state.__dict__["_streaming_plan"] = plan
    weight = plan[1]
    if weight is None:
        return None
    _, _, K, N, max_rows, index, device_type = plan
    if A.dim() == 0 or A.shape[-1] != K or not A.is_contiguous():
        return None
    rows = A.numel() // K
    few_rows = rows <= CUDA_STREAMING_MAX_ROWS
    if not 0 < rows <= max_rows or (index >= 0 and (A.data_ptr() % 16 or device in (
            _no_cuda_streaming if few_rows else _no_cuda_tensor_core))):
        return None
    if bias is not None and (bias.dtype != A.dtype or bias.device != device or not bias.is_contiguous()
                             or bias.dim() != 1 or bias.numel() != N):
        return None
    out = A.new_empty((*A.shape[:-1], N))  # (A's device and dtype; 0.3 us less than torch.empty with both named)
    stream = (_raw_stream(index) if _raw_stream is not None else torch.cuda.current_stream(index).cuda_stream) \
        if index >= 0 else None
    entry = _gemm_entries.get(device_type)
    if entry is None:
        lib = library(device)
        entry = _gemm_entries[device_type] = (lib, lib.entry("bnb_gemm_4bit_with_weight"))
    lib, fn = entry
    # Six arguments cross the ABI, the weight's as one prepared struct (sixteen separate ones cost the host
    # about a microsecond more per call).
    args = (weight, A.data_ptr(), rows, None if bias is None else bias.data_ptr(), out.data_ptr(), stream)
    status = fn(*args)
    if status != _native.STATUS_OK:
        try:
            lib.finish(status, fn, args)
        except NotImplementedError:
            # A, the codes and out are aligned as the kernels need (checked above, fresh output): the GPU or the
            # build lacks the kernel for this many rows.
            if index >= 0:
                (_no_cuda_streaming if few_rows else _no_cuda_tensor_core).add(device)
            return None
    return out

"""Optimizer updates and paged (CUDA unified) memory for bitsandbytes.functional.

The per-tensor updates go through ``torch.ops.bitsandbytes.optimizer_update_*`` so that
downstream code and torch.compile see the registry ops. Two cases reach the native library
directly instead, because the registry schemas cannot express them:

* the trust ratio (LAMB / LARS, ``max_unorm > 0``) of 8-bit states: the 8-bit op has no
  ``max_unorm`` / ``param_norm`` / ``unorm_vec`` arguments;
* paged state tensors: they are CPU-typed tensors over managed memory that the GPU reads, so
  torch's device of the tensor is not the device the update runs on (see ``storage_device``).

The fused multi-tensor step (``multi_tensor_update``) is a thin wrapper of
``bnb_optimizer_update_multi`` used by the optimizer classes.
"""

from __future__ import annotations

import ctypes as ct
import math
import threading
import warnings
import weakref
from typing import Optional

import numpy as np
import torch

from . import _native, _validate as check
from ._validate import storage_device
from .backends.native import _DTYPE_CODES, _exec, _ptr
from .backends.native_optim import TWO_STATE as _TWO_STATE_RULES, check_update_tensors, native_rule

__all__ = [
    "FIRST_CUDA_DEVICE",
    "GlobalPageManager",
    "get_paged",
    "prefetch_tensor",
    "fill",
    "_mul",
    "optimizer_update_32bit",
    "optimizer_update_8bit_blockwise",
    "storage_device",
    "paged_support",
]

FIRST_CUDA_DEVICE = torch.device("cuda", 0)

# The 8-bit states are quantized in blocks of this many elements (include/bnb/optim.h).
OPTIM_8BIT_BLOCKSIZE = 256


# ---- devices -------------------------------------------------------------------------------------------


def _check_same_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    """All given tensors live on one device (paged ones count as their GPU); returns it.

    CPU tensors are accepted here (the CPU backend runs every update); mixing devices raises the
    RuntimeError of ``is_on_gpu``.
    """
    devices = {}
    for name, t in tensors.items():
        if t is not None:
            devices.setdefault(storage_device(t), []).append(name)
    if len(devices) > 1:
        where = "; ".join(f"{', '.join(names)} on {dev}" for dev, names in devices.items())
        raise RuntimeError(f"all tensors of an optimizer update must be on the same device, got: {where}")
    if not devices:
        raise ValueError("no tensors given")
    return next(iter(devices))


def _hparams(lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale, max_unorm, param_norm, step, skip_zeros):
    return _native.OptimizerHparams(float(lr), float(beta1), float(beta2), float(beta3), float(alpha), float(eps),
                                    float(weight_decay), float(gnorm_scale), float(max_unorm), float(param_norm),
                                    int(step), int(bool(skip_zeros)))


def _param_norm(p: torch.Tensor, max_unorm: float) -> float:
    # The trust ratio compares the update norm with ||p||; the hparams struct carries it by value,
    # so this one read back to the host is inherent to LAMB / LARS.
    if max_unorm <= 0.0:
        return 0.0
    return float(torch.linalg.vector_norm(p.detach(), dtype=torch.float32))


# ---- per-tensor updates --------------------------------------------------------------------------------


def _check_update_tensors(rule, g, p, state1, state2, state_dtype):
    for name, t in (("g", g), ("p", p), ("state1", state1)):
        check.tensor(name, t)
    check_update_tensors(rule, g, p, state1, state2, state_dtype)


def _check_unorm(unorm_vec, max_unorm):
    if max_unorm < 0:
        raise ValueError(f"max_unorm must be >= 0; got {max_unorm}")
    if max_unorm > 0:
        if unorm_vec is None:
            raise ValueError("max_unorm > 0 needs unorm_vec (a float32 tensor of one element)")
        check.dtype_in("unorm_vec", unorm_vec, (torch.float32,))
        check.numel("unorm_vec", unorm_vec, 1)


def optimizer_update_32bit(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    beta1: float,
    eps: float,
    step: int,
    lr: float,
    state2: Optional[torch.Tensor] = None,
    beta2: float = 0.0,
    beta3: float = 0.0,
    alpha: float = 0.0,
    weight_decay: float = 0.0,
    gnorm_scale: float = 1.0,
    unorm_vec: Optional[torch.Tensor] = None,
    max_unorm: float = 0.0,
    skip_zeros: bool = False,
) -> None:
    """One in-place optimizer step with float32 states (update rules in include/bnb/optim.h).

    ``step`` is the 1-based step number after incrementing. With ``max_unorm > 0`` the update is
    scaled so that ||update|| <= max_unorm * ||p|| (LAMB / LARS); ``unorm_vec`` receives the
    squared update norm.
    """
    rule = native_rule(optimizer_name)
    _check_update_tensors(rule, g, p, state1, state2, torch.float32)
    _check_unorm(unorm_vec, max_unorm)
    _check_same_device(g=g, p=p, state1=state1, state2=state2, unorm_vec=unorm_vec)
    torch.ops.bitsandbytes.optimizer_update_32bit(
        optimizer_name, g, p, state1, state2, unorm_vec if max_unorm > 0 else None, float(max_unorm),
        _param_norm(p, max_unorm), float(beta1), float(beta2), float(beta3), float(alpha), float(eps),
        float(weight_decay), int(step), float(lr), float(gnorm_scale), bool(skip_zeros))


def optimizer_update_8bit_blockwise(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: Optional[torch.Tensor],
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    step: int,
    lr: float,
    qmap1: torch.Tensor,
    qmap2: Optional[torch.Tensor],
    absmax1: torch.Tensor,
    absmax2: Optional[torch.Tensor],
    weight_decay: float = 0.0,
    gnorm_scale: float = 1.0,
    skip_zeros: bool = False,
    *,
    unorm_vec: Optional[torch.Tensor] = None,
    max_unorm: float = 0.0,
) -> None:
    """One in-place optimizer step with blockwise 8-bit states (blocks of 256, qmap * absmax).

    ``qmap1`` is the signed dynamic map of the first state, ``qmap2`` the unsigned map of the second;
    absmax is recomputed every step. The keyword-only ``unorm_vec`` / ``max_unorm`` enable the
    trust ratio (LAMB / LARS), which the registry op cannot express, so such calls go to the native
    library directly.
    """
    rule = native_rule(optimizer_name)
    two = rule in _TWO_STATE_RULES
    _check_update_tensors(rule, g, p, state1, state2, torch.uint8)
    _check_unorm(unorm_vec, max_unorm)
    n = p.numel()
    blocks = -(n // -OPTIM_8BIT_BLOCKSIZE)
    for name, t, size in (("qmap1", qmap1, 256), ("absmax1", absmax1, 2 * blocks if rule == "ademamix" else blocks),
                          ("qmap2", qmap2 if two else None, 256), ("absmax2", absmax2 if two else None, blocks)):
        if t is None:
            if name.endswith("1") or two:
                raise ValueError(f"the {rule} update needs {name}")
            continue
        check.tensor(name, t)
        check.dtype_in(name, t, (torch.float32,))
        check.numel(name, t, size)
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous; got strides {t.stride()}")
    device = _check_same_device(g=g, p=p, state1=state1, state2=state2, qmap1=qmap1, qmap2=qmap2, absmax1=absmax1,
                                absmax2=absmax2, unorm_vec=unorm_vec)
    if max_unorm <= 0:
        torch.ops.bitsandbytes.optimizer_update_8bit_blockwise(
            optimizer_name, g, p, state1, state2, float(beta1), float(beta2), float(beta3), float(alpha), float(eps),
            int(step), float(lr), qmap1, qmap2, absmax1, absmax2, float(weight_decay), float(gnorm_scale),
            bool(skip_zeros))
        return
    hp = _hparams(lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale, max_unorm,
                  _param_norm(p, max_unorm), step, skip_zeros)
    g = g.contiguous()
    lib, dev, stream = _exec(device)
    lib.call("bnb_optimizer_update_8bit_blockwise", _native.OPTIMIZERS[rule], ct.byref(hp), _ptr(p),
             _DTYPE_CODES[p.dtype], _ptr(g), _DTYPE_CODES[g.dtype], _ptr(state1), _ptr(state2 if two else None),
             _ptr(qmap1), _ptr(qmap2 if two else None), _ptr(absmax1), _ptr(absmax2 if two else None),
             _ptr(unorm_vec if max_unorm > 0 else None), n, dev, stream)


# ---- fused multi-tensor step ---------------------------------------------------------------------------

# A table of bnb_optimizer_tensor_t rows as int64 columns: the struct is seven 8-byte fields
# (six pointers and n) without padding, so a C-contiguous int64 array [count, 7] has its layout
# and whole columns of pointers can be written at once.
MULTI_COLUMNS = ("p", "g", "state1", "state2", "absmax1", "absmax2", "n")
assert ct.sizeof(_native.OptimizerTensor) == 8 * len(MULTI_COLUMNS)
assert [f[0] for f in _native.OptimizerTensor._fields_] == list(MULTI_COLUMNS)


def multi_tensor_update(rule: str, hparams: _native.OptimizerHparams, state_bits: int, p_dtype: torch.dtype,
                        g_dtype: torch.dtype, qmap1: Optional[torch.Tensor], qmap2: Optional[torch.Tensor],
                        table: np.ndarray, device: torch.device) -> None:
    """Run one fused step over the rows of `table` (int64 [count, 7], see MULTI_COLUMNS).

    All rows share the rule, hyper-parameters, dtypes, state layout and device. One native call:
    the CUDA backend copies the table to device memory and updates every tensor in one launch (in
    launches of BNB_OPTIM_MULTI_MAX_TENSORS (bnb/optim.h) tensors carried by value while the stream is being
    captured into a CUDA graph). Nothing here reads device memory, so the call never synchronises
    the host.
    """
    lib, dev, stream = _exec(device)
    code = _native.OPTIMIZERS[rule]
    p_code, g_code = _DTYPE_CODES[p_dtype], _DTYPE_CODES[g_dtype]
    q1 = qmap1.data_ptr() if state_bits == 8 else None
    q2 = qmap2.data_ptr() if state_bits == 8 and qmap2 is not None else None
    lib.call("bnb_optimizer_update_multi", code, ct.byref(hparams), state_bits, p_code, g_code, q1, q2,
             table.ctypes.data, table.shape[0], dev, stream)


# ---- paged memory ---------------------------------------------------------------------------------------

_paged_warned = set()
_paged_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    with _paged_lock:
        if key in _paged_warned:
            return
        _paged_warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def paged_support(device=FIRST_CUDA_DEVICE) -> dict:
    """What the CUDA backend reports about paged memory on `device`:
    ``{"concurrent": bool, "free_bytes": int, "total_bytes": int}``."""
    device = torch.device(device)
    index = device.index if device.index is not None else 0
    lib = _native.cuda_library()
    concurrent, free, total = ct.c_int32(0), ct.c_int64(0), ct.c_int64(0)
    lib.call("bnb_paged_support", index, ct.byref(concurrent), ct.byref(free), ct.byref(total))
    return {"concurrent": bool(concurrent.value), "free_bytes": free.value, "total_bytes": total.value}


def _wrap_managed(ptr: int, nbytes: int, shape, dtype: torch.dtype, device_index: int, free) -> torch.Tensor:
    """A CPU-typed tensor over `nbytes` of managed memory at `ptr`; `free(ptr)` runs once the last
    tensor (or view) over it is gone.

    torch.from_numpy keeps the numpy array alive for as long as any tensor shares its storage, so
    a finalizer on that array frees the memory exactly when the last view dies.
    """
    holder = np.ctypeslib.as_array((ct.c_uint8 * nbytes).from_address(ptr))
    weakref.finalize(holder, free, ptr)
    numel = math.prod(shape)
    out = torch.from_numpy(holder).view(dtype)[:numel].view(shape)
    out.is_paged = True
    out.page_deviceid = device_index
    return out


def _paged_free(ptr: int) -> None:
    lib = _native.cuda_library_or_none()
    if lib is not None:
        try:
            lib.call("bnb_paged_free", ptr)
        except Exception:  # a finalizer must not raise (e.g. at interpreter exit)
            pass


def get_paged(*shape, dtype: torch.dtype = torch.float32, device=FIRST_CUDA_DEVICE) -> torch.Tensor:
    """An uninitialised tensor in CUDA unified (managed) memory that may spill to host memory.

    The result is typed as a CPU tensor with ``is_paged = True`` and ``page_deviceid`` set; the
    optimizer kernels read it on that GPU. A request above the device's free memory raises
    torch.OutOfMemoryError instead of oversubscribing. Where the GPU cannot access managed memory
    concurrently with the CPU, paging is unavailable: a warning is given once and a regular device
    tensor is returned.
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    shape = tuple(int(s) for s in shape)
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"paged memory is CUDA unified memory: device must be a CUDA device, got {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    support = paged_support(torch.device("cuda", index))
    if not support["concurrent"]:
        _warn_once(f"concurrent{index}",
                   f"bitsandbytes: GPU {index} cannot access managed memory concurrently with the CPU, so paged "
                   "optimizer states are unavailable; using regular device memory instead.")
        return torch.empty(shape, dtype=dtype, device=torch.device("cuda", index))
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    # The native allocator takes a positive size; an empty tensor still gets one element of backing.
    nbytes = max(numel, 1) * itemsize
    if nbytes > support["free_bytes"]:
        raise torch.OutOfMemoryError(
            f"bitsandbytes: paged tensor of shape {shape} ({dtype}) needs {nbytes} bytes but GPU {index} has only "
            f"{support['free_bytes']} bytes free; paged memory is never oversubscribed")
    lib = _native.cuda_library()
    out = ct.c_void_p()
    lib.call("bnb_paged_alloc", nbytes, index, ct.byref(out))
    return _wrap_managed(out.value, nbytes, shape, dtype, index, _paged_free)


def prefetch_tensor(A: torch.Tensor, to_cpu: bool = False) -> None:
    """Start migrating a paged tensor to its GPU (or to the host) on the current stream."""
    if not getattr(A, "is_paged", False):
        raise ValueError("only paged tensors (from get_paged) can be prefetched")
    device = torch.device("cuda", A.page_deviceid)
    lib, dev, stream = _exec(device)
    lib.call("bnb_paged_prefetch", A.data_ptr(), A.numel() * A.element_size(), int(bool(to_cpu)), dev, stream)


def fill(A: torch.Tensor, value: float) -> None:
    """Fill A in place (paged tensors are host-addressable, so this works for them as well)."""
    A.fill_(value)


def _mul(A: torch.Tensor, B: torch.Tensor) -> None:
    """A *= B elementwise, in place."""
    A.mul_(B)


class _LiveTensors:
    """A list-like registry of tensors that does not keep them alive (paged memory is freed when
    its last user drops it)."""

    def __init__(self):
        self._refs = []

    def _live(self):
        alive = [r() for r in self._refs]
        self._refs = [r for r, t in zip(self._refs, alive) if t is not None]
        return [t for t in alive if t is not None]

    def append(self, t: torch.Tensor) -> None:
        self._refs.append(weakref.ref(t))

    def clear(self) -> None:
        self._refs.clear()

    def __iter__(self):
        return iter(self._live())

    def __len__(self):
        return len(self._live())

    def __getitem__(self, i):
        return self._live()[i]


class GlobalPageManager:
    """Singleton registry of the paged tensors of all optimizers (``get_instance()``)."""

    _instance = None

    def __init__(self):
        raise RuntimeError("GlobalPageManager is a singleton: use GlobalPageManager.get_instance()")

    def initialize(self):
        self.paged_tensors = _LiveTensors()

    @classmethod
    def get_instance(cls):
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def prefetch_all(self, to_cpu: bool = False) -> None:
        # Newest first: the most recently created states are the likeliest to be used next.
        for t in list(self.paged_tensors)[::-1]:
            prefetch_tensor(t, to_cpu)

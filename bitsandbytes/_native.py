"""Loads the native libraries and holds the one table of their C signatures.

Each backend (CPU, CUDA) is a separate shared library exporting the same C ABI
(``include/bnb``). The CPU library must load; the CUDA library is optional: when it is
missing or unusable, CPU keeps working and every CUDA call raises one
:class:`CudaSetupError` explaining what was looked for, what was found and how to fix it.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent
LIB_DIR = PACKAGE_DIR / "lib"  # installed wheels
DEV_LIB_DIR = PACKAGE_DIR.parent / "build" / "lib"  # in-tree development builds (CMake default)
DYNAMIC_LIBRARY_SUFFIX = {"Darwin": ".dylib", "Windows": ".dll"}.get(platform.system(), ".so")

# bnb_status_t
STATUS_OK = 0
STATUS_NAMES = {
    1: "invalid argument",
    2: "unsupported",
    3: "not implemented",
    4: "device error",
    5: "out of memory",
    6: "internal error",
    7: "device not supported by this build",
}
STATUS_OUT_OF_MEMORY = 5
STATUS_DEVICE_UNSUPPORTED = 7

# bnb_dtype_t
DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_UINT8, DTYPE_INT8, DTYPE_INT32, DTYPE_INT64 = range(7)

# bnb_quant_t
QUANT_FP4, QUANT_NF4 = 1, 2
QUANT_TYPES = {"fp4": QUANT_FP4, "nf4": QUANT_NF4}

ABI_VERSION = 3

# bnb_optimizer_t
OPTIMIZERS = {"adam": 1, "momentum": 2, "rmsprop": 3, "adagrad": 4, "lion": 5, "ademamix": 6}


class OptimizerHparams(ct.Structure):
    """Mirror of bnb_optimizer_hparams_t (include/bnb/optim.h)."""

    _fields_ = [
        ("lr", ct.c_float),
        ("beta1", ct.c_float),
        ("beta2", ct.c_float),
        ("beta3", ct.c_float),
        ("alpha", ct.c_float),
        ("eps", ct.c_float),
        ("weight_decay", ct.c_float),
        ("gnorm_scale", ct.c_float),
        ("max_unorm", ct.c_float),
        ("param_norm", ct.c_float),
        ("step", ct.c_int32),
        ("skip_zeros", ct.c_int32),
    ]



class OptimizerTensor(ct.Structure):
    """Mirror of bnb_optimizer_tensor_t: one tensor of a fused multi-tensor step."""

    _fields_ = [
        ("p", ct.c_void_p),
        ("g", ct.c_void_p),
        ("state1", ct.c_void_p),
        ("state2", ct.c_void_p),
        ("absmax1", ct.c_void_p),
        ("absmax2", ct.c_void_p),
        ("n", ct.c_int64),
    ]


class Gemm4bitWeight(ct.Structure):
    """Mirror of bnb_gemm_4bit_weight_t: a 4-bit weight's arguments of bnb_gemm_4bit, filled once."""

    _fields_ = [
        ("packed", ct.c_void_p),
        ("absmax", ct.c_void_p),
        ("absmax_q", ct.c_void_p),
        ("absmax_code", ct.c_void_p),
        ("absmax_offset", ct.c_void_p),
        ("K", ct.c_int64),
        ("N", ct.c_int64),
        ("blocksize", ct.c_int64),
        ("qtype", ct.c_int32),
        ("a_dtype", ct.c_int32),
        ("device", ct.c_int32),
        ("reserved", ct.c_int32),
    ]


_p, _f, _i32, _i64, _u8p = ct.c_void_p, ct.c_float, ct.c_int32, ct.c_int64, ct.c_void_p
_stream = (_i32, _p)  # device, stream: the tail of every op

# The one table of C signatures: name -> (restype, argtypes).
SIGNATURES = {
    "bnb_last_error": (ct.c_char_p, ()),
    "bnb_version": (ct.c_char_p, ()),
    "bnb_abi_version": (_i32, ()),
    "bnb_backend_name": (ct.c_char_p, ()),
    "bnb_backend_info": (_i32, (ct.c_char_p, _i64, ct.POINTER(_i64))),
    "bnb_code_table_4bit": (_i32, (_i32, _p)),
    "bnb_quantize_blockwise": (_i32, (_p, _i32, _p, _p, _p, _i64, _i64, *_stream)),
    "bnb_dequantize_blockwise": (_i32, (_p, _p, _p, _p, _i32, _i64, _i64, *_stream)),
    "bnb_quantize_4bit": (_i32, (_p, _i32, _i32, _p, _p, _i64, _i64, *_stream)),
    "bnb_dequantize_4bit": (_i32, (_p, _p, _i32, _p, _i32, _i64, _i64, *_stream)),
    "bnb_int8_vectorwise_quant": (_i32, (_p, _i32, _i64, _i64, _f, _p, _p, _p, ct.c_uint8, *_stream)),
    "bnb_int8_outlier_columns": (_i32, (_p, ct.c_uint8, _i64, _i64, _p, _p, _p, *_stream)),
    "bnb_int8_colwise_quant": (_i32, (_p, _i32, _i64, _i64, _f, _p, _p, *_stream)),
    "bnb_estimate_quantiles": (_i32, (_p, _i32, _i64, _f, _p, *_stream)),
    "bnb_gemm_4bit": (_i32, (_p, _i32, _i64, _i64, _p, _p, _p, _p, _p, _i32, _i64, _i64, _p, _p, *_stream)),
    "bnb_gemm_4bit_with_weight": (_i32, (ct.POINTER(Gemm4bitWeight), _p, _i64, _p, _p, _p)),
    "bnb_int8_linear_matmul": (_i32, (_p, _p, _p, _i64, _i64, _i64, *_stream)),
    "bnb_int8_mm_dequant": (_i32, (_p, _p, _p, _p, _i32, _p, _i32, _i64, _i64, *_stream)),
    "bnb_int8_scaled_mm": (_i32, (_p, _p, _p, _p, _p, _i32, _p, _i32, _i64, _i64, _i64, *_stream)),
    "bnb_int8_linear": (_i32, (_p, _i32, _i64, _i64, _p, _p, _i64, _f, _p, _p, _p, *_stream)),
    "bnb_set_blas_library": (_i32, (ct.c_char_p,)),
    "bnb_set_cpu_threading_runtime": (_i32, (ct.c_char_p,)),
    "bnb_optimizer_update_32bit": (
        _i32, (_i32, ct.POINTER(OptimizerHparams), _p, _i32, _p, _i32, _p, _p, _p, _i64, *_stream)),
    "bnb_optimizer_update_8bit_blockwise": (
        _i32, (_i32, ct.POINTER(OptimizerHparams), _p, _i32, _p, _i32, _p, _p, _p, _p, _p, _p, _p, _i64, *_stream)),
    "bnb_paged_support": (_i32, (_i32, ct.POINTER(_i32), ct.POINTER(_i64), ct.POINTER(_i64))),
    "bnb_paged_alloc": (_i32, (_i64, _i32, ct.POINTER(ct.c_void_p))),
    "bnb_paged_free": (_i32, (_p,)),
    "bnb_paged_prefetch": (_i32, (_p, _i64, _i32, _i32, _p)),
    "bnb_optimizer_update_multi": (
        _i32, (_i32, ct.POINTER(OptimizerHparams), _i32, _i32, _i32, _p, _p, _p, _i64, *_stream)),
}


class NativeError(RuntimeError):
    """A native call failed; the message names the argument and value at fault."""


class CudaSetupError(RuntimeError):
    """The CUDA backend cannot be used on this machine (raised only when it is called)."""


def _error_type(status: int) -> type:
    # Invalid arguments and unsupported configurations are the caller's to fix.
    return ValueError if status in (1, 2) else (NotImplementedError if status == 3 else NativeError)


def _release_cached_cuda_memory() -> bool:
    """The CUDA library takes its scratch memory from the CUDA runtime, beside torch's caching
    allocator, which may be holding most of the device's free memory in its cache: hand that back.
    True if there was a CUDA cache to release."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return False
    torch.cuda.empty_cache()
    return True


class NativeLibrary:
    """A loaded backend library with typed entry points. ``lib.call(name, *args)`` raises on failure."""

    def __init__(self, path: Path):
        self.path = path
        self._dll = ct.CDLL(str(path), mode=ct.RTLD_LOCAL)
        for name, (restype, argtypes) in SIGNATURES.items():
            try:
                fn = getattr(self._dll, name)
            except AttributeError:
                raise OSError(f"{path} lacks the entry point {name}: it was built from another version of "
                              "bitsandbytes; rebuild it") from None
            fn.restype = restype
            fn.argtypes = list(argtypes)
        abi = self._dll.bnb_abi_version()
        if abi != ABI_VERSION:
            raise OSError(f"{path} has C ABI version {abi}, this package needs {ABI_VERSION}: rebuild the native library")
        self.name = self._dll.bnb_backend_name().decode()
        self.version = self._dll.bnb_version().decode()

    def call(self, name: str, *args) -> None:
        fn = getattr(self._dll, name)
        status = fn(*args)
        if status != STATUS_OK:
            self.finish(status, fn, args)

    def entry(self, name: str):
        """The typed C function itself, for a hot path that calls it directly and hands a failed status to
        finish() (saves the lookup and this wrapper's frame: about a microsecond per call)."""
        return getattr(self._dll, name)

    def finish(self, status: int, fn, args: tuple) -> None:
        """Raises for the failed `status` of fn(*args); a call that ran out of CUDA memory is retried once."""
        if status == STATUS_OUT_OF_MEMORY and self.name == "cuda" and _release_cached_cuda_memory():
            # Once more, now that torch has handed back what it was caching. A call that runs out of
            # memory for its scratch has written nothing the retry does not write again.
            status = fn(*args)
        if status != STATUS_OK:
            message = self._dll.bnb_last_error().decode(errors="replace")
            if status == STATUS_DEVICE_UNSUPPORTED:
                raise CudaSetupError(f"bitsandbytes: {message}\n  {cuda_setup_report()}")
            raise _error_type(status)(f"{message} [{STATUS_NAMES.get(status, status)}]")

    def info(self) -> dict:
        needed = _i64(0)
        self.call("bnb_backend_info", None, 0, ct.byref(needed))
        buf = ct.create_string_buffer(needed.value)
        self.call("bnb_backend_info", buf, needed.value, ct.byref(needed))
        return json.loads(buf.value.decode())

    def code_table_4bit(self, quant_type: str) -> list:
        out = (ct.c_float * 16)()
        self.call("bnb_code_table_4bit", QUANT_TYPES[quant_type], ct.cast(out, ct.c_void_p))
        return list(out)


def library_path(backend: str) -> Path:
    override = os.environ.get(f"BNB_{backend.upper()}_LIBRARY")
    if override:
        return Path(override)
    name = f"libbitsandbytes_{backend}{DYNAMIC_LIBRARY_SUFFIX}"
    for folder in (LIB_DIR, DEV_LIB_DIR):
        if (folder / name).exists():
            return folder / name
    return LIB_DIR / name


_lock = threading.Lock()
_libs: dict = {}
_errors: dict = {}


def _load(backend: str) -> Optional[NativeLibrary]:
    with _lock:
        if backend in _libs:
            return _libs[backend]
        path = library_path(backend)
        lib = None
        try:
            if not path.exists():
                raise OSError("no such file (the library was not built or not installed)")
            lib = NativeLibrary(path)
            if backend == "cpu":
                _share_openmp_threads(lib)
            if backend == "cuda":
                blas = _torch_cublaslt()
                if blas:
                    lib.call("bnb_set_blas_library", str(blas).encode())
        except OSError as e:
            _errors[backend] = f"could not load {path}: {e}"
        _libs[backend] = lib
        return lib


def _loaded_openmp_runtime() -> Optional[str]:
    """Path of the OpenMP runtime loaded in this process, from the process's memory map: torch's own copy
    when it has one (other libraries may have loaded another); None if there is none (or no /proc)."""
    names = ("libgomp", "libiomp5", "libomp")
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(maxsplit=1)[-1] if "/" in line else ""
                if any(Path(path).name.startswith(n) for n in names) and path not in found:
                    found.append(path)
    except OSError:
        return None
    torch_dir = f"{os.sep}torch{os.sep}"
    found.sort(key=lambda path: torch_dir not in path)  # torch's first, the rest in load order
    return found[0] if found else None


def _share_openmp_threads(lib: NativeLibrary) -> None:
    """Let the CPU library run its parallel loops on torch's OpenMP threads: torch's workers keep spinning
    for a while after each of its ops, and a pool of our own would then compete with them for the cores
    (on 2 cores that doubled the time of a quantized layer called between torch ops). BNB_NUM_THREADS
    keeps the library's own pool."""
    runtime = _loaded_openmp_runtime()
    if runtime is None or os.environ.get("BNB_NUM_THREADS"):
        return
    try:
        lib.call("bnb_set_cpu_threading_runtime", runtime.encode())
    except ValueError:  # not a runtime with the GNU OpenMP entry points: the own pool stays
        pass


def _torch_cublaslt() -> Optional[Path]:
    """The cuBLASLt that torch's CUDA build uses: in its pip dependency (nvidia/cu*/lib or
    nvidia/cublas/lib) or beside torch's own libraries. None if not found (the CUDA library then
    looks it up by name, which finds a copy already loaded in the process)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.origin:
            return None
        torch_dir = Path(spec.origin).parent
    except (ImportError, ValueError):
        return None
    patterns = ["nvidia/cu*/lib/libcublasLt.so*", "nvidia/cublas/lib/libcublasLt.so*"]
    found = [p for pattern in patterns for p in sorted(torch_dir.parent.glob(pattern), reverse=True)]
    found += sorted((torch_dir / "lib").glob("libcublasLt.so*"), reverse=True)
    return found[0] if found else None


def cpu_library() -> NativeLibrary:
    lib = _load("cpu")
    if lib is None:
        raise RuntimeError(
            f"bitsandbytes: the CPU native library is unusable ({_errors['cpu']}). "
            "Reinstall with `pip install .` from the source tree (it builds the library), or run "
            "`cmake -B build && cmake --build build` for a development checkout."
        )
    return lib


def cuda_library_or_none() -> Optional[NativeLibrary]:
    return _load("cuda")


def cuda_setup_report() -> str:
    """What was looked for, what was found and how to fix it (used by CudaSetupError and diagnostics)."""
    lines = [f"looked for: libbitsandbytes_cuda{DYNAMIC_LIBRARY_SUFFIX} in {LIB_DIR} and {DEV_LIB_DIR}"]
    err = _errors.get("cuda")
    if err:
        lines.append(f"found: {err}")
    elif _libs.get("cuda") is not None:
        try:
            info = _libs["cuda"].info()
            lines.append(
                f"found: {_libs['cuda'].path}, compiled for {info.get('compiled_archs')}, CUDA runtime "
                f"{info.get('runtime_version')}, driver {info.get('driver_version')}"
            )
        except Exception as e:  # diagnostics must never fail
            lines.append(f"found: {_libs['cuda'].path} (info unavailable: {e})")
    try:
        import torch

        lines.append(f"torch {torch.__version__}, torch CUDA runtime {torch.version.cuda}")
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                cc = torch.cuda.get_device_capability(i)
                lines.append(f"GPU {i}: {torch.cuda.get_device_name(i)} (sm_{cc[0]}{cc[1]})")
        else:
            lines.append("torch sees no CUDA device")
    except Exception as e:  # diagnostics must never fail
        lines.append(f"torch CUDA query failed: {e}")
    lines.append(
        "fix: install from source on a machine with nvcc (`pip install .` builds the CUDA library when nvcc is "
        "on PATH), or set BNB_CUDA_ARCHS to include your GPU's architecture and rebuild"
    )
    return "\n  ".join(lines)


def cuda_library() -> NativeLibrary:
    lib = cuda_library_or_none()
    if lib is None:
        raise CudaSetupError("bitsandbytes: the CUDA backend is not available.\n  " + cuda_setup_report())
    return lib


def library_for(device) -> NativeLibrary:
    """The backend library serving tensors on ``device`` (a torch.device)."""
    if device.type == "cpu":
        return cpu_library()
    if device.type == "cuda":
        return cuda_library()
    raise NotImplementedError(f"bitsandbytes has no native backend for device type {device.type!r}")

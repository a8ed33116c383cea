"""The loader's promises (import never fails, CUDA problems become one explanatory error) and the main job."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bitsandbytes
from bitsandbytes import _native

from helpers import REPO, run_python


def test_cpu_library_reports_itself():
    lib = _native.cpu_library()
    assert lib.name == "cpu"
    assert lib.version == bitsandbytes.__version__
    info = lib.info()
    assert info["backend"] == "cpu" and info["threads"] >= 1 and info["isa"] in info["isa_available"]


def test_import_survives_a_broken_cuda_library(tmp_path):
    bogus = tmp_path / "libbitsandbytes_cuda.so"
    bogus.write_bytes(b"not a shared library")
    code = (
        "import torch, bitsandbytes, bitsandbytes.functional as F\n"
        "from bitsandbytes import _native\n"
        "q, s = F.quantize_4bit(torch.randn(128), quant_type='nf4')\n"  # CPU keeps working
        "try:\n"
        "    _native.library_for(torch.device('cuda'))\n"
        "except _native.CudaSetupError as e:\n"
        "    print('ERROR:', e)\n"
    )
    result = run_python(code, {"BNB_CUDA_LIBRARY": str(bogus)})
    assert result.returncode == 0, result.stderr
    message = result.stdout
    # One error that says what was looked for, what was found and how to fix it.
    assert "ERROR: bitsandbytes: the CUDA backend is not available" in message
    assert "looked for" in message and str(bogus) in message and "fix:" in message


def test_library_override_for_cpu_is_reported(tmp_path):
    result = run_python(
        "import bitsandbytes.functional as F, torch\nF.quantize_blockwise(torch.randn(10))",
        {"BNB_CPU_LIBRARY": str(tmp_path / "missing.so")},
    )
    assert result.returncode != 0
    assert "CPU native library is unusable" in result.stderr and "missing.so" in result.stderr


def test_c_abi_error_becomes_python_exception_naming_the_argument():
    lib = _native.cpu_library()
    with pytest.raises(ValueError, match="blocksize"):
        lib.call("bnb_quantize_4bit", None, _native.DTYPE_FLOAT32, _native.QUANT_NF4, None, None, 0, 48, -1, None)
    with pytest.raises(ValueError, match="A is a null pointer"):
        lib.call("bnb_quantize_4bit", None, _native.DTYPE_FLOAT32, _native.QUANT_NF4, None, None, 10, 64, -1, None)


def test_main_job_succeeds_and_demos():
    result = subprocess.run([sys.executable, "-m", "bitsandbytes"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith(f"bitsandbytes v{bitsandbytes.__version__}")
    assert "PyTorch" in out and "Native libraries" in out
    assert "[FAIL]" not in out and out.count("[ OK ] cpu") >= 4
    assert "Demo on" in out and "nf4" in out and "AdamW8bit" in out and "optimizer memory" in out
    assert out.strip().splitlines()[-1].startswith("SUCCESS!")
    if torch.cuda.is_available():
        assert "[ OK ] cuda:0" in out


def test_library_from_another_version_is_reported_not_fatal():
    # A shared library that loads but lacks the entry points (torch's own libc10) stands for a stale build.
    candidates = sorted((Path(torch.__file__).parent / "lib").glob("libc10.*"))
    if not candidates:
        pytest.skip("no torch shared library to stand in for a stale build")
    code = (
        "import torch, bitsandbytes.functional as F\n"
        "from bitsandbytes import _native\n"
        "F.quantize_4bit(torch.randn(64), quant_type='nf4')\n"
        "assert _native.cuda_library_or_none() is None\n"
        "print('ERROR:', _native._errors['cuda'])\n"
    )
    result = run_python(code, {"BNB_CUDA_LIBRARY": str(candidates[0])})
    assert result.returncode == 0, result.stderr
    assert "lacks the entry point" in result.stdout and "rebuild" in result.stdout


class _ScriptedLibrary:
    """Stands in for a loaded library: an entry point that returns the given statuses in turn."""

    def __init__(self, *statuses):
        self.statuses = list(statuses)
        self.calls = 0

    def bnb_op(self, *args):
        self.calls += 1
        return self.statuses.pop(0)

    def bnb_last_error(self):
        return b"bnb_op: CUDA out of memory. cudaMallocAsync"


def _scripted(name: str, *statuses):
    lib = _native.NativeLibrary.__new__(_native.NativeLibrary)  # no file to load
    lib._dll, lib.name = _ScriptedLibrary(*statuses), name
    return lib


def test_cuda_out_of_memory_is_retried_once_after_torch_releases_its_cache(monkeypatch):
    released = []
    monkeypatch.setattr(_native, "_release_cached_cuda_memory", lambda: released.append(1) or True)
    lib = _scripted("cuda", _native.STATUS_OUT_OF_MEMORY, _native.STATUS_OK)
    lib.call("bnb_op", 1, 2)
    assert lib._dll.calls == 2 and released == [1]

    # Still out of memory after the release: one retry only, then the error names the cause.
    released.clear()
    lib = _scripted("cuda", _native.STATUS_OUT_OF_MEMORY, _native.STATUS_OUT_OF_MEMORY)
    with pytest.raises(_native.NativeError, match="out of memory"):
        lib.call("bnb_op")
    assert lib._dll.calls == 2 and released == [1]


def test_out_of_memory_is_not_retried_without_a_cache_to_release(monkeypatch):
    monkeypatch.setattr(_native, "_release_cached_cuda_memory", lambda: False)
    lib = _scripted("cuda", _native.STATUS_OUT_OF_MEMORY)
    with pytest.raises(_native.NativeError, match="out of memory"):
        lib.call("bnb_op")
    assert lib._dll.calls == 1
    lib = _scripted("cpu", _native.STATUS_OUT_OF_MEMORY)  # host memory: nothing torch caches for it
    with pytest.raises(_native.NativeError):
        lib.call("bnb_op")
    assert lib._dll.calls == 1


def test_cpu_loops_share_torchs_openmp_threads_and_give_the_same_bytes():
    # The CPU library runs its parallel loops on the OpenMP runtime torch loaded (so torch's spinning
    # workers serve them instead of competing with a second pool); results do not depend on which.
    lib = _native.cpu_library()
    runtime = _native._loaded_openmp_runtime()
    if runtime is None or os.environ.get("BNB_NUM_THREADS"):
        pytest.skip("no OpenMP runtime loaded by torch here (or BNB_NUM_THREADS asks for the own pool)")
    assert lib.info()["threading"] == "openmp"
    A = torch.randn(1 << 20)
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    w = torch.randn(96, 256)
    packed, state = bitsandbytes.functional.quantize_4bit(w, quant_type="nf4")

    def run():
        q, s = bitsandbytes.functional.quantize_blockwise(A, blocksize=256)
        return q, s.absmax, bitsandbytes.matmul_4bit(x, packed.t(), state)

    shared = run()
    try:
        lib.call("bnb_set_cpu_threading_runtime", b"")  # back to the library's own pool
        assert lib.info()["threading"] == "own pool"
        own = run()
    finally:
        lib.call("bnb_set_cpu_threading_runtime", runtime.encode())
    for a, b in zip(shared, own):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="OpenMP"):
        lib.call("bnb_set_cpu_threading_runtime", b"/nonexistent/libgomp.so.1")
    assert lib.info()["threading"] == "openmp"  # a refused runtime leaves the current one

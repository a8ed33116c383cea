"""The environment report: versions, native libraries and GPUs."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from .. import __version__, _native

RELATED_PACKAGES = ("accelerate", "diffusers", "numpy", "pip", "peft", "safetensors", "transformers", "triton", "trl")


def package_versions() -> dict:
    versions = {}
    for name in RELATED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def print_environment() -> dict:
    """Print the report; return the facts the self-check and the advice need."""
    print(f"bitsandbytes v{__version__}")
    print(f"Platform: {platform.platform()} ({platform.machine()})")
    print(f"Python: {sys.version.split()[0]}")
    print(f"PyTorch: {torch.__version__}; CUDA runtime (torch): {torch.version.cuda or 'none'}")
    print("Related packages: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))

    facts = {"cpu_ok": False, "cuda_lib": None, "cuda_devices": []}
    print("\nNative libraries:")
    try:
        cpu = _native.cpu_library()
        info = cpu.info()
        facts["cpu_ok"] = True
        products = ", ".join(info.get("products", [])) or "none"
        print(f"  CPU : {cpu.path}  (isa {info['isa']}, {info['threads']} threads, available {info['isa_available']}, "
              f"product instructions: {products})")
    except Exception as e:  # keep reporting whatever else we can
        print(f"  CPU : NOT LOADED: {e}")

    cuda = _native.cuda_library_or_none()
    if cuda is None:
        print(f"  CUDA: not loaded ({_native._errors.get('cuda', 'not built')})")
    else:
        info = cuda.info()
        facts["cuda_lib"] = info
        print(f"  CUDA: {cuda.path}")
        print(f"        compiled for {info.get('compiled_archs')}, CUDA runtime {info.get('runtime_version')}, "
              f"driver {info.get('driver_version')}")
        blas = _native._torch_cublaslt()
        facts["cublaslt"] = str(blas) if blas else None
        print(f"        cuBLASLt (int8 GEMM of many rows): {blas or 'looked up by name in the process (none beside torch)'}")

    if torch.cuda.is_available():
        print("\nGPUs:")
        for i in range(torch.cuda.device_count()):
            cc = torch.cuda.get_device_capability(i)
            props = torch.cuda.get_device_properties(i)
            facts["cuda_devices"].append(i)
            print(f"  cuda:{i} {props.name}, compute capability {cc[0]}.{cc[1]}, "
                  f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs")
    else:
        print("\nGPUs: none visible to PyTorch (CPU only)")
    return facts

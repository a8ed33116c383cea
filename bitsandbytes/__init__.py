"""bitsandbytes: k-bit quantization for PyTorch, backed by a C++/CUDA core.

Importing never fails on a machine without a GPU: the CUDA backend is optional and reports why
it cannot be used only when a CUDA tensor reaches it.
"""

import torch

from ._version import __version__
from . import _ops  # noqa: F401  (op schemas and fake kernels)
from .backends import native as _native_backend, native_4bit_matmul as _native_4bit_matmul  # noqa: F401
from .backends import native_optim as _native_optim  # noqa: F401  (CPU and CUDA kernels)
from .backends import native_int8_matmul as _native_int8_matmul  # noqa: F401
from . import functional, utils  # noqa: F401
from . import nn, optim, autograd  # noqa: F401

features = {"multi_backend"}
supported_torch_devices = {"cpu", "cuda"}

__pdoc__ = {"libbitsandbytes": False, "optim.optimizer.Optimizer8bit": False, "optim.optimizer.MockArgs": False}

from .autograd._functions import MatmulLtState, matmul, matmul_4bit  # noqa: E402  (§1.1 top-level exports)

"""The bitsandbytes top-level surface that transformers / accelerate probe (compat.md §1.1, §7)."""

import importlib
import importlib.metadata
import re

import pytest

import bitsandbytes as bnb


def _release_tuple(version: str):
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", version)
    assert m, f"__version__ {version!r} does not start with a release number"
    return tuple(int(p or 0) for p in m.groups())


def test_version_is_at_least_0_48():
    assert isinstance(bnb.__version__, str)
    assert _release_tuple(bnb.__version__) >= (0, 48, 0)


def test_version_matches_installed_distribution():
    try:
        dist_version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("bitsandbytes is not installed as a distribution (running from a source checkout)")
    assert bnb.__version__ == dist_version


def test_features_probe():
    assert bnb.features == {"multi_backend"}


def test_supported_torch_devices():
    assert isinstance(bnb.supported_torch_devices, set)
    assert {"cpu", "cuda"} <= bnb.supported_torch_devices


@pytest.mark.parametrize("name", ["functional", "utils", "nn", "optim", "autograd"])
def test_submodules_are_attributes(name):
    assert getattr(bnb, name) is importlib.import_module(f"bitsandbytes.{name}")


def test_import_registers_the_op_namespace():
    import torch

    assert hasattr(torch.ops.bitsandbytes, "quantize_4bit")

"""Shared pytest configuration for the Python test suite.

Markers:
  slow  -- long-running (large tensors); deselect with ``-m "not slow"``.
"""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (large tensors); deselect with -m 'not slow'")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

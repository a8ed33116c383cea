"""Autograd functions for quantized matrix multiplication."""

from ._functions import MatmulLtState, MatMul4Bit, matmul, matmul_4bit

__all__ = ["MatmulLtState", "MatMul4Bit", "matmul", "matmul_4bit"]

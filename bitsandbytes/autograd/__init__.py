"""Autograd functions for quantized matrix multiplication."""

from ._functions import MatmulLtState, MatMul4Bit, MatMul8bitFp, MatMul8bitLt, matmul, matmul_4bit

__all__ = ["MatmulLtState", "MatMul4Bit", "MatMul8bitFp", "MatMul8bitLt", "matmul", "matmul_4bit"]

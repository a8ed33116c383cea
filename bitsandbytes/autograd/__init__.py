"""Autograd functions for quantized matrix multiplication."""

"""Quantized modules (bitsandbytes.nn). The 4-bit and 8-bit layers build on bitsandbytes.functional."""

from .modules import Embedding, StableEmbedding

__all__ = ["Embedding", "StableEmbedding"]

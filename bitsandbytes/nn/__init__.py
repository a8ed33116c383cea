"""Quantized modules (bitsandbytes.nn). The 4-bit and 8-bit layers build on bitsandbytes.functional."""

from .modules import (
    Embedding,
    Embedding4bit,
    EmbeddingFP4,
    EmbeddingNF4,
    Linear4bit,
    LinearFP4,
    LinearNF4,
    Params4bit,
    StableEmbedding,
)
from .linear8bit import Embedding8bit, Int8Params, Linear8bitLt

__all__ = [
    "Embedding",
    "Embedding4bit",
    "Embedding8bit",
    "EmbeddingFP4",
    "EmbeddingNF4",
    "Int8Params",
    "Linear4bit",
    "Linear8bitLt",
    "LinearFP4",
    "LinearNF4",
    "Params4bit",
    "StableEmbedding",
]

"""Modules of bitsandbytes.nn.

Embeddings: ``Embedding`` and ``StableEmbedding`` always keep 32-bit optimizer states for their
weight (registered through GlobalOptimManager), because the rows of an embedding see sparse, rare
updates whose small moments blockwise 8-bit quantization would round away.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as torchF
from torch import Tensor

from ..optim import GlobalOptimManager

logger = logging.getLogger(__name__)

__all__ = ["Embedding", "StableEmbedding"]


def _force_32bit_optimizer_state(module: torch.nn.Module) -> None:
    GlobalOptimManager.get_instance().register_module_override(module, "weight", {"optim_bits": 32})


class StableEmbedding(torch.nn.Embedding):
    """Embedding followed by LayerNorm, with Xavier-uniform initialisation and 32-bit optimizer state.

    The layer norm runs in the default float dtype (fp16/bf16 embeddings gain its stability); the
    output is cast back to the weight's dtype.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Optional[Tensor] = None, device=None, dtype=None) -> None:
        # Keywords: torch's signature has more parameters (_freeze) between _weight and device.
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm,
                         norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=_weight,
                         device=device, dtype=dtype)
        self.norm = torch.nn.LayerNorm(embedding_dim, device=device)
        _force_32bit_optimizer_state(self)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor) -> Tensor:
        emb = torchF.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                               self.scale_grad_by_freq, self.sparse)
        emb = emb.to(torch.get_default_dtype())
        return self.norm(emb).to(self.weight.dtype)


class Embedding(torch.nn.Embedding):
    """torch.nn.Embedding with Xavier-uniform initialisation and 32-bit optimizer state."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Optional[Tensor] = None, device: Optional[torch.device] = None
                 ) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm,
                         norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=_weight,
                         device=device)
        _force_32bit_optimizer_state(self)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor) -> Tensor:
        return torchF.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                                self.scale_grad_by_freq, self.sparse)

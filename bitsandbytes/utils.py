"""Helpers used across the package and by downstream libraries."""

from __future__ import annotations

import json
from typing import Any, Dict

import torch


def pack_dict_to_tensor(source_dict: Dict[str, Any]) -> torch.Tensor:
    """JSON-encode a dict of plain values into a uint8 tensor (so it can live in a state dict)."""
    data = json.dumps(source_dict).encode("utf-8")
    return torch.tensor(list(data), dtype=torch.uint8)


def unpack_tensor_to_dict(tensor_data: torch.Tensor) -> Dict[str, Any]:
    """Inverse of pack_dict_to_tensor."""
    return json.loads(bytes(tensor_data.cpu().tolist()).decode("utf-8"))


LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {v: k for k, v in LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING.items()}


def sync_gpu(t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)

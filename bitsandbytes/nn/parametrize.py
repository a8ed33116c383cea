"""4-bit parametrization of arbitrary parameters (experimental).

Some models keep weights outside nn.Linear, e.g. the fused expert tensors of mixture-of-experts
layers. ``replace_parameter_4bit`` stores such a parameter as packed 4-bit data and registers a
torch parametrization that dequantizes it on access, so the module's code keeps reading
``module.<name>`` unchanged.

While a module's forward runs, torch's parametrization cache is switched on, so a parameter read
several times in one forward is dequantized once; the cache is dropped when the forward ends.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional

import torch
import torch.nn.utils.parametrize as P
from torch import nn

from .. import functional as F
from .._quant_state import QuantState

__all__ = ["Bnb4bitParametrization", "replace_parameter_4bit", "replace_parameter_4bit_prequantized"]

# register_state_dict_post_hook became public (and applied to state_dict()) in torch 2.5.
_HAS_STATE_DICT_POST_HOOK = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class Bnb4bitParametrization(nn.Module):
    """Maps packed 4-bit data back to the float tensor described by ``quant_state``."""

    def __init__(self, quant_state: QuantState) -> None:
        super().__init__()
        self.quant_state = quant_state

    @torch.no_grad()
    def forward(self, quantized_param: torch.Tensor) -> torch.Tensor:
        # No gradient: the 4-bit data is frozen, like Params4bit weights.
        return F.dequantize_4bit(quantized_param, self.quant_state)


def _checked_parameter(module: nn.Module, param_name: str) -> nn.Parameter:
    if not hasattr(module, param_name):
        raise AttributeError(f"Module {type(module).__name__} has no parameter {param_name!r}")
    param = getattr(module, param_name)
    if not isinstance(param, nn.Parameter):
        raise TypeError(f"{type(module).__name__}.{param_name} is a {type(param).__name__}, not an nn.Parameter")
    return param


def replace_parameter_4bit(module: nn.Module, param_name: str, compress_statistics: bool = False,
                           quant_type: str = "nf4", blocksize: Optional[int] = None) -> None:
    """Quantize ``module.<param_name>`` to 4 bits in place and dequantize it on access."""
    original = _checked_parameter(module, param_name)
    packed, quant_state = F.quantize_4bit(original.data, blocksize=blocksize,
                                          compress_statistics=compress_statistics, quant_type=quant_type)
    setattr(module, param_name, nn.Parameter(packed, requires_grad=False))
    del original
    # unsafe: the parametrization changes shape and dtype (packed [X, 1] -> the float tensor).
    P.register_parametrization(module, param_name, Bnb4bitParametrization(quant_state), unsafe=True)
    _register_parametrization_hooks(module, param_name)


def replace_parameter_4bit_prequantized(module: nn.Module, param_name: str, qs_dict: Dict[str, Any],
                                        device: torch.device) -> None:
    """Register the 4-bit parametrization for a parameter that already holds packed data
    (its statistics come in state-dict form, ``QuantState.as_dict(packed=True)``)."""
    _checked_parameter(module, param_name)
    quant_state = QuantState.from_dict(qs_dict, device=device)
    P.register_parametrization(module, param_name, Bnb4bitParametrization(quant_state), unsafe=True)
    _register_parametrization_hooks(module, param_name)


def _enable_parametrization_cache(module: nn.Module, inputs) -> None:
    # A counter, not a flag: nested parametrized modules each enable on entry.
    P._cache_enabled += 1


def _disable_parametrization_cache(module: nn.Module, inputs, output) -> None:
    P._cache_enabled = max(0, P._cache_enabled - 1)
    if not P._cache_enabled:
        P._cache = {}


def _register_parametrization_hooks(module: nn.Module, param_name: str) -> None:
    if _HAS_STATE_DICT_POST_HOOK:
        module.register_state_dict_post_hook(partial(_parametrized_state_dict_post_hook, param_name=param_name))
    module.register_forward_pre_hook(_enable_parametrization_cache)
    # always_call: the counter must come down even when the forward raises.
    module.register_forward_hook(_disable_parametrization_cache, always_call=True)


def _parametrized_state_dict_post_hook(module: nn.Module, state_dict: Dict[str, Any], prefix: str,
                                       local_metadata: Any, *, param_name: str = "weight", **kwargs) -> None:
    """Save a parametrized parameter like a Linear4bit weight: packed data under ``<name>`` plus
    its statistics under ``<name>.<key>``, instead of torch's ``parametrizations.<name>.original``."""
    original_key = f"{prefix}parametrizations.{param_name}.original"
    if original_key not in state_dict:
        return
    clean_key = f"{prefix}{param_name}"
    state_dict[clean_key] = state_dict.pop(original_key)
    for parametrization in module.parametrizations[param_name]:
        if isinstance(parametrization, Bnb4bitParametrization):
            for key, value in parametrization.quant_state.as_dict(packed=True).items():
                state_dict[f"{clean_key}.{key}"] = value

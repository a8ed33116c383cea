"""LLM.int8() modules: ``Int8Params``, ``Linear8bitLt``, ``Embedding8bit``.

``Int8Params`` is a Parameter that holds a float weight until its first move to a real device
(``.to(device)``, ``.cuda()``, ``module.to(...)``), where it becomes int8 rows ``CB`` (stored as the
parameter's data) with float32 per-row scales ``SCB`` (``W ~= CB * SCB / 127``). Quantizing on the
move lets model code build layers on CPU or "meta" and quantize while loading, as transformers does.

The CPU is a real device here: ``.to("cpu")`` of a float weight quantizes too (the CPU kernels
run LLM.int8()). That keeps one rule for every device, lets a CPU-only process load a pre-quantized
checkpoint (``module.to("cpu")`` then ``load_state_dict``) and matches loaders that build the
parameter on its final device and then call ``.to(that device)``. A weight that never saw a move
(a layer built and called directly on CPU) is quantized on the first forward instead.

Once quantized, moves keep the int8 bytes and scales unchanged in both directions.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, Optional, TypeVar, Union, overload

import torch
import torch.nn.functional as torchF
from torch import Tensor

from .. import _validate as check, functional as F
from ..autograd._functions import MatmulLtState, matmul
from ..autograd._int8_matmul import _check_inputs as check_matmul_inputs, quantize_weight
from ..backends.native_int8_matmul import int8_linear_direct

# Warnings share the logger of the 4-bit layers (the name downstream code filters on).
logger = logging.getLogger("bitsandbytes.nn.modules")

__all__ = ["Int8Params", "Linear8bitLt", "Embedding8bit", "maybe_rearrange_weight",
           "LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING", "INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING"]

# State-dict code of the weight layout. Only row-major int8 rows exist; the code is saved so that
# checkpoints stay readable by implementations that knew tiled layouts.
LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {"row": 0}
INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {v: k for k, v in LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING.items()}

# The attributes an Int8Params carries besides its data: exactly the constructor's keywords, so
# ``Int8Params(t, requires_grad=..., **old.__dict__)`` (how transformers rebuilds parameters) round-trips.
_INT8PARAMS_ATTRS = ("CB", "SCB", "has_fp16_weights")

# Pickled in place of CB when CB is the parameter's own data, so the copy shares one buffer again.
_CB_IS_DATA = "__data__"


def _rebuild_int8params(cls, data, requires_grad):
    # Pickle calls this first and __setstate__ afterwards (same scheme as Params4bit).
    return cls.__new__(cls, data=data, requires_grad=requires_grad)


def _same_buffer(a: Optional[Tensor], b: Tensor) -> bool:
    return (a is not None and a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
            and a.data_ptr() == b.data_ptr())


class Int8Params(torch.nn.Parameter):
    """A weight that quantizes itself to LLM.int8() rows on its first move to a device.

    Before quantization ``data`` is the float weight ``[out, in]``; afterwards ``data`` and ``CB``
    are the int8 rows and ``SCB`` the float32 row absmax ``[out]``. With ``has_fp16_weights=True``
    the weight stays in floating point (it trains) and is quantized on the fly by each matmul.
    """

    def __new__(cls, data: Optional[Tensor] = None, requires_grad: bool = True, has_fp16_weights: bool = False,
                CB: Optional[Tensor] = None, SCB: Optional[Tensor] = None, **kwargs) -> "Int8Params":
        # Unknown keywords are accepted and dropped: callers pass a parameter's whole __dict__, which
        # frameworks may have extended with their own markers.
        if data is None:
            data = torch.empty(0)
        # Integer tensors cannot require gradients: int8 weights are frozen whatever was asked.
        requires_grad = bool(requires_grad) and (data.is_floating_point() or data.is_complex())
        self = torch.Tensor._make_subclass(cls, data, requires_grad)
        self.CB = CB
        self.SCB = SCB
        self.has_fp16_weights = has_fp16_weights
        return self

    @property
    def is_quantized(self) -> bool:
        return self.data.dtype == torch.int8

    # -- pickling and copies --

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        if _same_buffer(state.get("CB"), self.data):
            state["CB"] = _CB_IS_DATA
        state["data"] = self.data
        state["requires_grad"] = self.requires_grad
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        data = state.pop("data")
        self.data = data
        self.requires_grad = state.pop("requires_grad")
        for key, value in state.items():
            setattr(self, key, value)
        if isinstance(getattr(self, "CB", None), str) and self.CB == _CB_IS_DATA:
            self.CB = data

    def __reduce_ex__(self, protocol):
        state = self.__getstate__()
        return _rebuild_int8params, (type(self), state["data"], state["requires_grad"]), state

    def __deepcopy__(self, memo):
        data = copy.deepcopy(self.data, memo)
        new = type(self).__new__(type(self), data=data, requires_grad=self.requires_grad,
                                 has_fp16_weights=self.has_fp16_weights)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "CB" and _same_buffer(value, self.data):
                new.CB = data  # CB is the data itself: the copy shares its own buffer the same way
            else:
                setattr(new, key, copy.deepcopy(value, memo))
        return new

    def __copy__(self):
        new = type(self).__new__(type(self), data=self.data, requires_grad=self.requires_grad)
        new.__dict__.update(self.__dict__)
        return new

    # -- device moves: the first move of a float weight to a real device quantizes --

    def _quantize(self, device: Union[str, torch.device, None]) -> "Int8Params":
        if self.has_fp16_weights:
            return self._moved(device, None, False)
        weight = self.data if device is None else self.data.to(device)
        CB, SCB = quantize_weight(weight)
        # Integer data cannot require gradients (the int8 weight is frozen).
        self.requires_grad = False
        self.data = CB
        self.CB = CB
        self.SCB = SCB
        return self

    def _moved(self, device, dtype, non_blocking) -> "Int8Params":
        quantized = self.is_quantized
        if quantized:
            dtype = None  # int8 rows are codes, not values: a dtype cast would destroy them
        data = super().to(device=device, dtype=dtype, non_blocking=non_blocking)
        new = type(self)(data, requires_grad=self.requires_grad, has_fp16_weights=self.has_fp16_weights)
        if quantized:
            # CB is the int8 data itself; a Linear8bitLt hands it (and SCB) over to its state on the next forward.
            new.CB = new.data
            scb = self.SCB
            if scb is not None and device is not None and scb.device.type != "meta":
                scb = scb.to(device, non_blocking=non_blocking)
            new.SCB = scb
        else:
            new.CB, new.SCB = self.CB, self.SCB
        return new

    @overload
    def to(self: T, device: Optional[Union[int, torch.device]] = ..., dtype: Optional[torch.dtype] = ...,
           non_blocking: bool = ...) -> T: ...

    @overload
    def to(self: T, dtype: torch.dtype, non_blocking: bool = ...) -> T: ...

    @overload
    def to(self: T, tensor: Tensor, non_blocking: bool = ...) -> T: ...

    def to(self, *args, **kwargs):
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        # (An empty weight of a layer with no inputs or outputs quantizes too, to rows and scales with no
        # values; only the placeholder of Int8Params() without data stays as it is.)
        if (device is not None and device.type != "meta" and not self.is_quantized and not self.has_fp16_weights
                and self.data.device.type != "meta" and (self.data.numel() > 0 or self.data.dim() >= 2)):
            return self._quantize(device)
        return self._moved(device, dtype, non_blocking)

    def cpu(self):
        return self.to(device="cpu")

    def cuda(self, device: Optional[Union[int, str, torch.device]] = None, non_blocking: bool = False):
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device: Optional[Union[int, str, torch.device]] = None, non_blocking: bool = False):
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)


T = TypeVar("T", bound=Int8Params)


def maybe_rearrange_weight(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load-state-dict pre-hook: consume ``<prefix>weight_format`` and accept only the row-major layout."""
    weight = state_dict.get(f"{prefix}weight")
    if weight is None:
        # No weight for this layer in the state dict (e.g. a LoRA adapter checkpoint): nothing to check.
        return
    weight_format = state_dict.pop(f"{prefix}weight_format", "row")
    if isinstance(weight_format, torch.Tensor):
        weight_format = weight_format.item()
    if isinstance(weight_format, int):
        if weight_format not in INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING:
            raise ValueError(f"Expected supported weight format - got {weight_format}")
        weight_format = INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING[weight_format]
    if weight_format != "row":
        raise ValueError(f"Only 'row' weight format is supported, got {weight_format}")


def _follow_int8_weight(weight: Tensor, state: Optional[MatmulLtState] = None) -> None:
    """After a module move (nn.Module._apply replaces ``weight.data`` but keeps the parameter
    object), point CB at the moved data and move SCB and the matmul state to the weight's device."""
    if not isinstance(weight, Int8Params):
        return
    device = weight.device
    if weight.is_quantized:
        if weight.CB is not None:
            weight.CB = weight.data
        if weight.SCB is not None and weight.SCB.device != device:
            weight.SCB = weight.SCB.to(device)
    if state is None:
        return
    if state.CB is not None:
        state.CB = weight.data if weight.is_quantized and state.CB.shape == weight.shape else state.CB.to(device)
    if state.SCB is not None and state.SCB.device != device:
        state.SCB = weight.SCB if weight.SCB is not None else state.SCB.to(device)


class Linear8bitLt(torch.nn.Linear):
    """Linear layer of LLM.int8(): int8 weight rows, int8 activations, 16-bit outlier features.

    ``has_fp16_weights=False`` (inference, the transformers ``load_in_8bit`` mode): the weight is
    quantized once, on the move to a device (or on the first forward), and is frozen.
    ``has_fp16_weights=True`` (mixed 8-bit training): the weight stays float, trains, and each
    forward quantizes it. ``threshold > 0`` enables the outlier decomposition: input features with
    a value ``|x| >= threshold`` are multiplied in 16 bits. The output has the input's dtype.
    """

    def __init__(self, input_features: int, output_features: int, bias: bool = True,
                 has_fp16_weights: bool = True, threshold: float = 0.0, index=None, device=None) -> None:
        threshold = check.int8_threshold(threshold)  # (refused here rather than at the first forward)
        super().__init__(input_features, output_features, bias, device)
        self.state = MatmulLtState()
        self.index = index
        self.state.threshold = threshold
        self.state.has_fp16_weights = has_fp16_weights
        if threshold > 0.0 and not has_fp16_weights:
            self.state.use_pool = True
        self.weight = Int8Params(self.weight.data, has_fp16_weights=has_fp16_weights,
                                 requires_grad=has_fp16_weights)
        self._register_load_state_dict_pre_hook(maybe_rearrange_weight)

    def _apply(self, fn, recurse=True):
        # nn.Module.to/cuda/cpu replace weight.data in place; CB/SCB and the state follow here,
        # which also covers moves of a parent module (they never call this module's .to()).
        result = super()._apply(fn, recurse)
        _follow_int8_weight(self.weight, self.state)
        return result

    def _scb(self) -> Optional[Tensor]:
        scb = getattr(self.weight, "SCB", None)
        return scb if scb is not None else self.state.SCB

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight (int8 rows once quantized), bias
        if self.state.has_fp16_weights:
            return
        scb = self._scb()
        if scb is not None and getattr(self.weight, "dtype", None) == torch.int8:
            destination[prefix + "SCB"] = scb if keep_vars else scb.detach()
            destination[prefix + "weight_format"] = torch.tensor(LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING["row"],
                                                                 dtype=torch.uint8)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        scb_key, weight_key, bias_key = prefix + "SCB", prefix + "weight", prefix + "bias"
        incoming = state_dict.get(weight_key)
        own_quantized = getattr(self.weight, "dtype", None) == torch.int8
        # A float checkpoint into an already quantized layer is quantized rather than copied as values.
        quantize_incoming = (isinstance(incoming, torch.Tensor) and own_quantized and incoming.is_floating_point()
                             and scb_key not in state_dict)
        if quantize_incoming and self._scb() is None:
            raise RuntimeError("This Linear8bitLt holds int8 rows without their scales (weight.SCB and state.SCB are "
                               "None): a float checkpoint cannot be quantized into it")
        if scb_key in state_dict and self._scb() is None:
            # Raised before anything is loaded, so the float weight is not overwritten with int8 codes.
            raise RuntimeError(
                "Loading a quantized checkpoint into non-quantized Linear8bitLt is "
                "not supported. Please call module.cuda() before module.load_state_dict()"
            )
        # The int8 rows and their scales are one value: a size mismatch in either (or in the bias) is
        # reported the way torch reports it and nothing of this layer is loaded, rather than loading the
        # parts that fit (rows without their scales, or scales broadcast from one value).
        expected = {weight_key: self.weight, bias_key: self.bias, scb_key: self._scb()}
        mismatches = [
            f"size mismatch for {key}: copying a param with shape {state_dict[key].shape} from checkpoint, "
            f"the shape in current model is {own.shape}."
            for key, own in expected.items()
            if own is not None and isinstance(state_dict.get(key), torch.Tensor) and state_dict[key].shape != own.shape
        ]
        if mismatches:
            error_msgs.extend(mismatches)
            return
        rest = state_dict
        if quantize_incoming:
            CB, SCB = quantize_weight(incoming.to(self.weight.device))
            rest = dict(state_dict)
            rest[weight_key] = CB
            rest[scb_key] = SCB
        elif (isinstance(incoming, torch.Tensor) and own_quantized and incoming.dtype == torch.int8
              and scb_key not in state_dict):
            # int8 rows without their scales. torch cannot know SCB belongs to the weight (it is no
            # parameter), so the missing key is reported here: a strict load fails on it, as on any missing
            # key, and a non-strict one takes the rows (their scales may come with another part).
            if scb_key not in missing_keys:
                missing_keys.append(scb_key)
        errors_before = len(error_msgs)
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if scb_key not in rest or len(error_msgs) > errors_before:
            return
        target = self._scb()
        with torch.no_grad():
            target.copy_(rest[scb_key])
        if scb_key in unexpected_keys:
            unexpected_keys.remove(scb_key)
        # The matmul state aliases the weight's buffers; keep it pointing at what was just loaded.
        if self.state.SCB is not None and self.state.SCB is not target:
            self.state.SCB = target
        if self.state.CB is not None and own_quantized:
            self.state.CB = self.weight.data

    def init_8bit_state(self) -> None:
        """Hand the quantized rows and scales from the weight to the matmul state (first forward).

        Only what the weight holds moves: loaders may set SCB alone on a rebuilt parameter."""
        if self.weight.CB is not None:
            self.state.CB = self.weight.CB
        if self.weight.SCB is not None:
            self.state.SCB = self.weight.SCB
        self.weight.CB = None
        self.weight.SCB = None

    def _inference_call(self, x: Tensor) -> Optional[Tensor]:
        """One native call when the layer is ready and nothing needs adapting (int8 rows already in the
        state, bias in x's dtype, no gradient): the common case of generation, where the host time of
        a call matters as much as the kernels'. None sends the call through the general path."""
        state = self.state
        params = self._parameters  # (direct lookups: nn.Module attribute access is slow)
        weight, bias = params["weight"], params["bias"]
        CB, SCB = state.CB, state.SCB
        if (state.has_fp16_weights or CB is None or SCB is None or (self.training and x.device.type == "cpu")
                or (bias is not None and bias.dtype != x.dtype)
                or (torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)))
                or weight.__dict__.get("CB") is not None or weight.__dict__.get("SCB") is not None):
            return None
        with torch._C.DisableTorchFunctionSubclass():  # the weight must still be the state's int8 rows
            if weight.dtype != torch.int8 or weight.data_ptr() != CB.data_ptr() or weight.shape != CB.shape:
                return None
        fused = int8_linear_direct(x, CB, SCB, state.threshold, bias, state.__dict__.get("_outlier_mask_buffer"),
                                   memo=state.__dict__)
        if fused is None:
            return None
        out, outlier_mask = fused
        state.is_training = self.training
        if outlier_mask is not None:
            state.__dict__["_outlier_mask_buffer"] = outlier_mask  # reused by the next call
            state.set_outlier_mask(outlier_mask)
        return out

    def forward(self, x: Tensor) -> Tensor:
        out = self._inference_call(x)
        if out is not None:
            return out
        weight = self.weight
        # What matmul would refuse is refused before the layer changes anything (quantizing the weight,
        # handing CB/SCB to the state, casting the bias in place to x's dtype).
        check_matmul_inputs(x, weight, self.bias)
        check.int8_threshold(self.state.threshold)  # (it may have been set by hand since construction)
        self.state.is_training = self.training
        if (not self.state.has_fp16_weights and isinstance(weight, Int8Params) and not weight.is_quantized
                and self.state.CB is None):
            # Never moved to a device (e.g. built and called on CPU): quantize where it lives.
            weight._quantize(None)
        if getattr(weight, "CB", None) is not None or getattr(weight, "SCB", None) is not None:
            self.init_8bit_state()
        if weight.dtype == torch.int8 and not _same_buffer(self.state.CB, weight.data):
            # The parameter's data is the source of truth (it is what loaders and moves update).
            self.state.CB = weight.data
        # The bias follows the activations' dtype; casting the stored bias once avoids a cast per call.
        if self.bias is not None and self.bias.dtype != x.dtype:
            self.bias.data = self.bias.data.to(x.dtype)
        out = matmul(x, weight, bias=self.bias, state=self.state)
        # A float weight quantized during the call now holds its int8 rows (an int8 weight already is them).
        if weight.dtype != torch.int8 and not self.state.has_fp16_weights and self.state.CB is not None:
            self.weight.data = self.state.CB
        return out


class Embedding8bit(torch.nn.Embedding):
    """Embedding table stored as LLM.int8() rows (one int8 row and one float32 scale per token).

    The table quantizes on the move to a device; a lookup dequantizes only the selected rows and
    returns the table's original dtype. It has no state-dict format.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None) -> None:
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Int8Params(self.weight.data, has_fp16_weights=False, requires_grad=False)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        _follow_int8_weight(self.weight)
        return result

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise NotImplementedError("Saving Embedding8bit is not supported (its state dict has no 8-bit format)")

    def forward(self, input: Tensor) -> Tensor:
        scb = getattr(self.weight, "SCB", None)
        if scb is None or self.weight.dtype != torch.int8:
            raise RuntimeError("Embedding8bit is not quantized. Please call .cuda() or .to(device) first.")
        if input.device != self.weight.device:
            raise ValueError(f"Embedding8bit: input is on {input.device} but the table is on {self.weight.device}")
        flat = input.reshape(-1)
        rows = torchF.embedding(flat, self.weight.data)  # [n, dim] int8
        rows_scale = scb.index_select(0, flat)
        out = F.int8_vectorwise_dequant(rows, rows_scale)
        return out.to(self.dtype).reshape(*input.shape, self.embedding_dim)

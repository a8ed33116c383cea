"""Modules of bitsandbytes.nn.

4-bit layers: ``Params4bit`` is a Parameter that holds a float weight until its first move to a
real device, where it becomes packed 4-bit codes plus a QuantState (quantizing lazily lets model
code build layers on CPU or "meta" and quantize while loading, as transformers does).
``Linear4bit`` and ``Embedding4bit`` use it.

Embeddings: ``Embedding`` and ``StableEmbedding`` always keep 32-bit optimizer states for their
weight (registered through GlobalOptimManager), because the rows of an embedding see sparse, rare
updates whose small moments blockwise 8-bit quantization would round away.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, Optional, TypeVar, Union, overload

import torch
import torch.nn.functional as torchF
from torch import Tensor

from .. import _validate as check, functional as F
from .._quant_state import QuantState
from ..autograd._functions import matmul_4bit
from ..backends.native_4bit_matmul import gemm_4bit_direct
from ..optim import GlobalOptimManager

logger = logging.getLogger(__name__)

__all__ = [
    "Embedding",
    "StableEmbedding",
    "Params4bit",
    "Linear4bit",
    "LinearFP4",
    "LinearNF4",
    "Embedding4bit",
    "EmbeddingFP4",
    "EmbeddingNF4",
    "fix_4bit_weight_quant_state_from_module",
]


def _force_32bit_optimizer_state(module: torch.nn.Module) -> None:
    GlobalOptimManager.get_instance().register_module_override(module, "weight", {"optim_bits": 32})


class _XavierEmbeddingInit:
    """Xavier-uniform initial weights (padding row zeroed) for the embeddings that train with 32-bit state."""

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)


class StableEmbedding(_XavierEmbeddingInit, torch.nn.Embedding):
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

    def forward(self, input: Tensor) -> Tensor:
        emb = torchF.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                               self.scale_grad_by_freq, self.sparse)
        emb = emb.to(torch.get_default_dtype())
        return self.norm(emb).to(self.weight.dtype)


class Embedding(_XavierEmbeddingInit, torch.nn.Embedding):
    """torch.nn.Embedding with Xavier-uniform initialisation and 32-bit optimizer state."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Optional[Tensor] = None, device: Optional[torch.device] = None
                 ) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm,
                         norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=_weight,
                         device=device)
        _force_32bit_optimizer_state(self)

    def forward(self, input: Tensor) -> Tensor:
        return torchF.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                                self.scale_grad_by_freq, self.sparse)


# ---- 4-bit weights ----------------------------------------------------------------------------------

# The attributes a Params4bit carries besides its data. They are exactly the constructor's keywords,
# so ``Params4bit(t, requires_grad=..., **old.__dict__)`` (how transformers rebuilds parameters)
# round-trips, and pickle/deepcopy/copy keep this key set.
_PARAMS4BIT_ATTRS = ("blocksize", "compress_statistics", "quant_type", "quant_state", "quant_storage",
                     "bnb_quantized", "module")

# Storing 4-bit codes in 64-element blocks with one absmax each: the established default, which the
# state-dict format records per tensor anyway.
DEFAULT_4BIT_BLOCKSIZE = 64


# Tensor methods that cast values to another float dtype (nn.Module.half/float/bfloat16/double use them).
_FLOAT_CASTS = (Tensor.half, Tensor.float, Tensor.bfloat16, Tensor.double)


def _rebuild_params4bit(cls, data, requires_grad):
    # Pickle calls this first and __setstate__ afterwards, so a module that refers back to the
    # parameter (a reference cycle) is resolved by pickle's memo instead of recursing.
    return cls.__new__(cls, data=data, requires_grad=requires_grad)


class Params4bit(torch.nn.Parameter):
    """A weight that quantizes itself to packed 4-bit codes (nf4 / fp4) on its first move to a device.

    Before quantization ``data`` is the float weight; afterwards it is the packed tensor
    ``[(numel + 1) // (2 * itemsize(quant_storage)), 1]`` and ``quant_state`` knows the logical
    shape, dtype and block scales. ``module`` is the owning layer, which receives the same
    QuantState so it can restore it if a framework rebuilds the parameter without it.
    """

    def __new__(cls, data: Optional[Tensor] = None, requires_grad: bool = False,
                quant_state: Optional[QuantState] = None, blocksize: Optional[int] = None,
                compress_statistics: bool = True, quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8,
                module: Optional[torch.nn.Module] = None, bnb_quantized: bool = False, **kwargs) -> "Params4bit":
        # Unknown keywords are accepted and dropped: callers pass a parameter's whole __dict__, which
        # frameworks may have extended with their own markers.
        if data is None:
            data = torch.empty(0)
        self = torch.Tensor._make_subclass(cls, data, requires_grad)
        self.blocksize = DEFAULT_4BIT_BLOCKSIZE if blocksize is None else blocksize
        self.compress_statistics = compress_statistics
        self.quant_type = quant_type
        self.quant_state = quant_state
        self.quant_storage = quant_storage
        self.bnb_quantized = bnb_quantized
        self.module = module
        return self

    # -- pickling and copies: data, requires_grad and the seven attributes travel together --

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["data"] = self.data
        state["requires_grad"] = self.requires_grad
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        self.data = state.pop("data")
        self.requires_grad = state.pop("requires_grad")
        for key, value in state.items():
            setattr(self, key, value)

    def __reduce_ex__(self, protocol):
        state = self.__getstate__()
        return _rebuild_params4bit, (type(self), state["data"], state["requires_grad"]), state

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self), data=copy.deepcopy(self.data, memo), requires_grad=self.requires_grad)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "module":
                # Point at the copy of the owning module when the module itself is being copied;
                # copying a lone parameter must not clone the whole layer.
                new.module = memo.get(id(value), value)
            else:
                setattr(new, key, copy.deepcopy(value, memo))
        return new

    def __copy__(self):
        new = type(self).__new__(type(self), data=self.data, requires_grad=self.requires_grad)
        new.__dict__.update(self.__dict__)
        return new

    # -- torch functions: chunk/split keep the 4-bit metadata, everything else yields plain tensors --

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = {} if kwargs is None else kwargs
        if func in (torch.chunk, torch.split, Tensor.chunk, Tensor.split):
            source = args[0]
            with torch._C.DisableTorchFunctionSubclass():
                pieces = func(*args, **kwargs)
            return tuple(
                cls(piece, requires_grad=source.requires_grad, quant_state=source.quant_state,
                    blocksize=source.blocksize, compress_statistics=source.compress_statistics,
                    quant_type=source.quant_type, quant_storage=source.quant_storage, module=source.module,
                    bnb_quantized=source.bnb_quantized)
                for piece in pieces
            )
        if func in _FLOAT_CASTS and isinstance(args[0], Params4bit) and args[0].bnb_quantized:
            # module.half()/.float()/.bfloat16(): packed codes are bit patterns, a value cast
            # would destroy them, so a quantized weight keeps its storage.
            return args[0]
        return super().__torch_function__(func, types, args, kwargs)

    @classmethod
    def from_prequantized(cls, data: Tensor, quantized_stats: Dict[str, Any], requires_grad: bool = False,
                          device="cuda", module: Optional[torch.nn.Module] = None, **kwargs) -> "Params4bit":
        """Wrap already packed 4-bit data and its serialized statistics (state-dict form, §2.1)."""
        quant_state = QuantState.from_dict(qs_dict=quantized_stats, device=device)
        self = cls(data.to(device), requires_grad=requires_grad, quant_state=quant_state,
                   blocksize=quant_state.blocksize, compress_statistics=quant_state.nested,
                   quant_type=quant_state.quant_type, quant_storage=data.dtype, module=module, bnb_quantized=True)
        if module is not None:
            module.quant_state = quant_state
        return self

    # -- device moves: the first move to a real device quantizes --

    def _quantize(self, device: torch.device, dtype: Optional[torch.dtype]) -> "Params4bit":
        if self.requires_grad and not self.quant_storage.is_floating_point:
            # torch refuses integer data on a parameter that requires gradients; say why it happens here.
            raise RuntimeError(
                f"Params4bit with requires_grad=True cannot be quantized into {self.quant_storage} storage: 4-bit "
                "weights are frozen (train adapters beside them). Create it with requires_grad=False or call "
                ".requires_grad_(False) before moving it to a device."
            )
        weight = self.data.contiguous().to(device=device, dtype=dtype)
        packed, quant_state = F.quantize_4bit(weight, blocksize=self.blocksize,
                                              compress_statistics=self.compress_statistics,
                                              quant_type=self.quant_type, quant_storage=self.quant_storage)
        self.data = packed
        self.quant_state = quant_state
        if self.module is not None:
            self.module.quant_state = quant_state
        self.bnb_quantized = True
        return self

    @overload
    def to(self: T, device: Optional[Union[int, torch.device]] = ..., dtype: Optional[torch.dtype] = ...,
           non_blocking: bool = ...) -> T: ...

    @overload
    def to(self: T, dtype: torch.dtype, non_blocking: bool = ...) -> T: ...

    @overload
    def to(self: T, tensor: Tensor, non_blocking: bool = ...) -> T: ...

    def to(self, *args, **kwargs):
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type != "meta" and not self.bnb_quantized:
            return self._quantize(device, dtype)
        if self.bnb_quantized:
            # Packed codes are bit patterns, not numbers: a dtype change (model.half()) would corrupt
            # them when the storage dtype is a float type, so only the device moves.
            dtype = None
        if device is not None and self.quant_state is not None:
            self.quant_state.to(device)  # in place: the owning module holds the same object
        moved = super().to(device=device, dtype=dtype, non_blocking=non_blocking)
        return type(self)(moved, requires_grad=self.requires_grad, quant_state=self.quant_state,
                          blocksize=self.blocksize, compress_statistics=self.compress_statistics,
                          quant_type=self.quant_type, quant_storage=self.quant_storage,
                          bnb_quantized=self.bnb_quantized)

    def cpu(self):
        return self.to(device="cpu")

    def cuda(self, device: Optional[Union[int, str, torch.device]] = None, non_blocking: bool = False):
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device: Optional[Union[int, str, torch.device]] = None, non_blocking: bool = False):
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)

    # -- read-only views of the quant_state. Real properties (not __getattr__) so that
    # torch.compile(fullgraph=True) can resolve them statically. --

    def _nested_state(self) -> Optional[QuantState]:
        qs = self.quant_state
        return qs.state2 if qs is not None and qs.nested else None

    @property
    def absmax(self):
        return None if self.quant_state is None else self.quant_state.absmax

    @property
    def code(self):
        return None if self.quant_state is None else self.quant_state.code

    @property
    def quant_map(self):
        return self.code

    @property
    def offset(self):
        return None if self.quant_state is None else self.quant_state.offset

    @property
    def state2(self):
        return None if self.quant_state is None else self.quant_state.state2

    @property
    def nested_absmax(self):
        s2 = self._nested_state()
        return None if s2 is None else s2.absmax

    @property
    def nested_blocksize(self):
        s2 = self._nested_state()
        return None if s2 is None else s2.blocksize

    @property
    def nested_quant_map(self):
        s2 = self._nested_state()
        return None if s2 is None else s2.code

    @property
    def nested_dtype(self):
        s2 = self._nested_state()
        return None if s2 is None else s2.dtype

    @property
    def nested_offset(self):
        return self.offset if self._nested_state() is not None else None


T = TypeVar("T", bound=Params4bit)


def fix_4bit_weight_quant_state_from_module(module: torch.nn.Module) -> None:
    """Give ``module.weight`` back its QuantState when a framework rebuilt the parameter without it
    (FSDP and some loaders replace parameters by plain ones holding the packed data)."""
    if getattr(module.weight, "quant_state", None) is not None:
        return
    if getattr(module, "quant_state", None) is None:
        logger.warning(
            "FP4 quantization state not initialized. Please call .cuda() or .to(device) on the %s layer first.",
            type(module).__name__,
        )
        raise RuntimeError(
            f"{type(module).__name__} weight is not quantized: move the layer to a device (.to(device) / .cuda()) "
            "or load it from a 4-bit state dict before calling it"
        )
    if module.weight.dim() != 2 or module.weight.shape[1] != 1:
        raise RuntimeError(
            f"{type(module).__name__}.weight must hold packed 4-bit data of shape [X, 1] to reuse the module's "
            f"quant_state; got {tuple(module.weight.shape)}"
        )
    if not isinstance(module.weight, Params4bit):
        module.weight = Params4bit(module.weight.data, requires_grad=False, quant_storage=module.quant_storage,
                                   bnb_quantized=True, module=module)
    module.weight.quant_state = module.quant_state


class Linear4bit(torch.nn.Linear):
    """Linear layer with a frozen 4-bit weight (QLoRA's base layer).

    The weight quantizes on the first move to a device. ``compute_dtype`` is the dtype of the
    matmul; when not given it is taken from the first input (bf16/fp32 inputs compute in their own
    dtype; fp16 inputs compute in fp16 with a warning that fp32 was the configured default).
    The output always has the input's dtype.
    """

    def __init__(self, input_features: int, output_features: int, bias: bool = True,
                 compute_dtype: Optional[torch.dtype] = None, compress_statistics: bool = True,
                 quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8, device=None) -> None:
        super().__init__(input_features, output_features, bias, device)
        self.weight = Params4bit(self.weight.data, requires_grad=False, compress_statistics=compress_statistics,
                                 quant_type=quant_type, quant_storage=quant_storage, module=self)
        self.compute_dtype = compute_dtype
        self.compute_type_is_set = compute_dtype is not None
        self.quant_state: Optional[QuantState] = None
        self.quant_storage = quant_storage
        # The CPU backend has no separate AVX512-BF16 weight layout: the native kernels pick their
        # ISA at load time, so the module never repacks its weight.
        self.support_avx512bf16_for_cpu = False

    def set_compute_type(self, x: Tensor) -> None:
        if x.dtype in (torch.float32, torch.bfloat16):
            self.compute_dtype = x.dtype
        elif x.dtype == torch.float16 and self.compute_dtype in (None, torch.float32):
            if x.numel() == x.shape[-1]:
                logger.warning(
                    "Input type into Linear4bit is torch.float16, but bnb_4bit_compute_dtype=torch.float32 (default). "
                    "This will lead to slow inference."
                )
            else:
                logger.warning(
                    "Input type into Linear4bit is torch.float16, but bnb_4bit_compute_dtype=torch.float32 (default). "
                    "This will lead to slow inference or training speed."
                )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight (packed), bias
        quant_state = getattr(self.weight, "quant_state", None)
        if quant_state is not None:
            for key, value in quant_state.as_dict(packed=True).items():
                destination[prefix + "weight." + key] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A 4-bit checkpoint's weight is packed data of another shape plus its statistics under
        # 'weight.*': rebuild the parameter from them (the transformers loading path) instead of
        # copying into the float weight.
        weight_key = prefix + "weight"
        stats = {k[len(weight_key) + 1:]: v for k, v in state_dict.items() if k.startswith(weight_key + ".")}
        if not stats or weight_key not in state_dict:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
            return
        data = state_dict[weight_key]
        device = self.weight.device if self.weight.device.type != "meta" else data.device
        # Built without the module, which changes only once the whole load succeeded (a failed load leaves
        # the layer as it was).
        new_weight = Params4bit.from_prequantized(data, stats, requires_grad=False, device=device)
        errors_before = len(error_msgs)
        shape, expected = new_weight.quant_state.shape, (self.out_features, self.in_features)
        if shape is None or tuple(shape) != expected:
            error_msgs.append(f"size mismatch for {weight_key}: copying a 4-bit weight of shape "
                              f"{None if shape is None else list(shape)} from checkpoint, the shape in current model "
                              f"is {list(expected)}.")
        else:
            try:
                check.packed_4bit(weight_key, new_weight.data, expected[0] * expected[1])
            except (TypeError, ValueError) as e:
                error_msgs.append(f"size mismatch for {weight_key}: {e}")
        rest = {k: v for k, v in state_dict.items()
                if k.startswith(prefix) and k != weight_key and not k.startswith(weight_key + ".")}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if weight_key in missing_keys:
            missing_keys.remove(weight_key)
        if len(error_msgs) == errors_before:
            new_weight.module = self
            self.quant_state = new_weight.quant_state
            self.weight = new_weight

    def _inference_call(self, x: Tensor) -> Optional[Tensor]:
        """The native product straight away when nothing needs adapting (inputs already in the compute
        dtype, bias in that dtype, no gradient): the common case of inference, where the host time of
        a call matters as much as the kernel's. None sends the call through the general path."""
        params = self._parameters  # (direct lookups: nn.Module attribute access is slow)
        weight, bias = params["weight"], params["bias"]
        quant_state = getattr(weight, "quant_state", None)
        if (quant_state is None or not self.compute_type_is_set
                or (self.compute_dtype is not None and x.dtype != self.compute_dtype)
                or (bias is not None and (bias.dtype != x.dtype or bias.requires_grad))
                or (torch.is_grad_enabled() and x.requires_grad)):
            return None
        return gemm_4bit_direct(x, weight, quant_state, bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self._inference_call(x)
        if out is not None:
            return out
        fix_4bit_weight_quant_state_from_module(self)
        if not isinstance(x, Tensor) or not x.is_floating_point():
            # An integer input would otherwise be cast to the compute dtype and the result truncated back.
            raise TypeError(f"{type(self).__name__} input must be a floating-point tensor; got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
        # The module changes only once the product succeeded, so a call that fails (wrong K, unsupported
        # dtype) leaves it as it was.
        compute_dtype = self.compute_dtype
        if not self.compute_type_is_set and x.dtype in (torch.float32, torch.bfloat16):
            compute_dtype = x.dtype  # what set_compute_type will record
        inp, input_dtype = x, x.dtype
        if compute_dtype is not None:
            x = x.to(compute_dtype)
        bias = None if self.bias is None else self.bias.to(input_dtype).to(x.dtype)
        out = matmul_4bit(x, self.weight, quant_state=self.weight.quant_state, bias=bias).to(input_dtype)
        # The bias follows the activations' dtype; casting the stored bias once avoids a cast per call.
        if self.bias is not None and self.bias.dtype != input_dtype:
            self.bias.data = self.bias.data.to(input_dtype)
        if not self.compute_type_is_set:
            self.set_compute_type(inp)
            self.compute_type_is_set = True
        return out


class LinearFP4(Linear4bit):
    """Linear4bit with the FP4 code book."""

    def __init__(self, input_features: int, output_features: int, bias: bool = True,
                 compute_dtype: Optional[torch.dtype] = None, compress_statistics: bool = True,
                 quant_storage: torch.dtype = torch.uint8, device=None) -> None:
        super().__init__(input_features, output_features, bias, compute_dtype, compress_statistics, "fp4",
                         quant_storage, device)


class LinearNF4(Linear4bit):
    """Linear4bit with the NF4 code book (quantiles of a normal distribution: QLoRA's default)."""

    def __init__(self, input_features: int, output_features: int, bias: bool = True,
                 compute_dtype: Optional[torch.dtype] = None, compress_statistics: bool = True,
                 quant_storage: torch.dtype = torch.uint8, device=None) -> None:
        super().__init__(input_features, output_features, bias, compute_dtype, compress_statistics, "nf4",
                         quant_storage, device)


class Embedding4bit(torch.nn.Embedding):
    """Embedding table stored as 4-bit codes (blocksize 64, no double quantization).

    When every row is a whole number of blocks, a lookup dequantizes only the selected rows;
    otherwise the whole table is dequantized per call (slow, hence the warning).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Optional[torch.dtype] = None,
                 quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8, device=None) -> None:
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Params4bit(self.weight.data, requires_grad=False, compress_statistics=False,
                                 quant_type=quant_type, quant_storage=quant_storage, module=self)
        self.quant_state: Optional[QuantState] = None
        self.quant_storage = quant_storage
        blocksize = self.weight.blocksize
        if embedding_dim % blocksize != 0:
            logger.warning(
                "Embedding size %d is not divisible by block size %d. This will lead to slow inference.",
                embedding_dim, blocksize,
            )

    def _forward_with_partial_dequantize(self, input: Tensor) -> Tensor:
        quant_state = self.weight.quant_state
        blocks_per_row = self.embedding_dim // quant_state.blocksize
        # Two codes per byte: a row of the table is embedding_dim // 2 bytes, whatever the storage dtype.
        packed_rows = self.weight.data.view(torch.uint8).reshape(self.num_embeddings, self.embedding_dim // 2)
        absmax_rows = quant_state.absmax.reshape(self.num_embeddings, blocks_per_row)
        flat = input.reshape(-1)
        # index_select, not indexing: like torch.nn.Embedding it refuses negative indices (IndexError)
        # instead of counting them from the end of the table.
        rows_state = QuantState(absmax=torch.index_select(absmax_rows, 0, flat).reshape(-1),
                                shape=(flat.numel(), self.embedding_dim), code=quant_state.code,
                                blocksize=quant_state.blocksize, quant_type=quant_state.quant_type,
                                dtype=quant_state.dtype)
        rows = F.dequantize_4bit(torch.index_select(packed_rows, 0, flat).reshape(-1, 1), rows_state)
        return rows.reshape(*input.shape, self.embedding_dim)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise NotImplementedError("Saving Embedding4bit is not supported (its state dict has no 4-bit format yet)")

    def forward(self, input: Tensor) -> Tensor:
        fix_4bit_weight_quant_state_from_module(self)
        quant_state = self.weight.quant_state
        # Row gathering needs one float absmax per block; a double-quantized table (only possible
        # when loaded from elsewhere) takes the full-dequantization path.
        if not quant_state.nested and self.embedding_dim % quant_state.blocksize == 0:
            return self._forward_with_partial_dequantize(input).to(self.dtype)
        weight = F.dequantize_4bit(self.weight.data, quant_state)
        return torchF.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type,
                                self.scale_grad_by_freq, self.sparse).to(self.dtype)


class EmbeddingFP4(Embedding4bit):
    """Embedding4bit with the FP4 code book."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Optional[torch.dtype] = None,
                 quant_storage: torch.dtype = torch.uint8, device=None) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, quant_type="fp4", quant_storage=quant_storage,
                         device=device)


class EmbeddingNF4(Embedding4bit):
    """Embedding4bit with the NF4 code book."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Optional[torch.dtype] = None,
                 quant_storage: torch.dtype = torch.uint8, device=None) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, quant_type="nf4", quant_storage=quant_storage,
                         device=device)

from .linear8bit import Embedding8bit, Int8Params, Linear8bitLt, maybe_rearrange_weight  # noqa: E402,F401  (LLM.int8)

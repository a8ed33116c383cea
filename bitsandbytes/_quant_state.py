"""QuantState: everything needed to dequantize a blockwise-quantized tensor, and its serialized form."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .utils import pack_dict_to_tensor, unpack_tensor_to_dict


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtype_from_name(key: str, name) -> torch.dtype:
    """The torch dtype a serialized name ("float16", ...) stands for; anything else is refused (a bare
    getattr(torch, name) would hand back torch.Tensor or a function for names such as "Tensor")."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"quant_state {key!r} must name a torch dtype such as 'float16'; got {name!r}")
    return dtype


class QuantState:
    """Container for the statistics of a quantized tensor (absmax, code, shape, dtype, blocksize...).

    ``state2`` (with ``offset``) holds the second-level quantization of ``absmax`` when the
    statistics are double-quantized ("nested").
    """

    valid_quant_types = ("fp4", "nf4")
    valid_qs_type_keys = [f"bitsandbytes__{x}" for x in valid_quant_types]
    valid_qs_keys = [
        "absmax",
        "quant_map",
        "nested_absmax",
        "nested_quant_map",
        "quant_state",
        "quant_type",
        "blocksize",
        "dtype",
        "shape",
        "nested_blocksize",
        "nested_dtype",
        "nested_offset",
    ]

    def __init__(self, absmax, shape=None, code=None, blocksize=None, quant_type=None, dtype=None, offset=None,
                 state2=None):
        self.absmax = absmax
        self.shape = shape
        self.code = code
        self.dtype = dtype
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.offset = offset
        self.state2 = state2
        self.nested = state2 is not None

    # Per-process caches kept on the state (the eager 4-bit product's prepared kernel arguments, which hold raw
    # pointers): never pickled or copied, a copy prepares its own.
    _CACHE_KEYS = ("_streaming_plan",)

    # The fields a prepared plan decodes the weight by. Assigning one drops the plan here, once, rather than
    # comparing them on every call of the eager 4-bit product (whose host time is budgeted per 0.1 us).
    _PLAN_FIELDS = frozenset(("shape", "blocksize", "quant_type", "dtype", "state2", "offset"))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._PLAN_FIELDS:
            self.__dict__.pop("_streaming_plan", None)
        object.__setattr__(self, name, value)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        for key in self._CACHE_KEYS:
            state.pop(key, None)
        return state

    def __getitem__(self, idx):
        """Legacy list form [absmax, shape, dtype, blocksize, [offset, state2] or None, quant_type] (old pickles)."""
        if self.nested:
            items = [self.absmax, self.shape, self.dtype, self.blocksize, [self.offset, self.state2], self.quant_type]
        else:
            items = [self.absmax, self.shape, self.dtype, self.blocksize, None, self.quant_type]
        return items[idx]

    def __getattr__(self, name: str):
        # FSDP walks module state by fully qualified names ending in the packed-state key.
        if name in ("bitsandbytes__nf4", "bitsandbytes__fp4"):
            quant_type = self.__dict__.get("quant_type")
            if quant_type is not None and name == f"bitsandbytes__{quant_type}":
                return pack_dict_to_tensor(self._packed_fields())
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    @classmethod
    def from_dict(cls, qs_dict: Dict[str, Any], device: torch.device) -> "QuantState":
        """Rebuild from ``as_dict(packed=True)`` output (keys may carry any prefix, e.g. 'layer.weight.absmax')."""
        qs_key = [k for k, v in qs_dict.items() if "quant_state" in k and isinstance(v, torch.Tensor)]
        if "quant_type" not in qs_dict:
            if not qs_key:
                raise ValueError("Expected packed or unpacked quant_state items, found neither")
            if len(qs_key) != 1 or qs_key[0].split(".")[-1] not in cls.valid_qs_type_keys:
                raise ValueError(
                    f"There should be exactly one `quant_state` item with ending from {cls.valid_qs_type_keys}.\n"
                    f"Detected {qs_key}."
                )
        if len(qs_key) == 1:
            first = qs_key[0]
            qs_dict = dict(qs_dict)
            qs_dict.update(unpack_tensor_to_dict(qs_dict.pop(first)))
        qs_dict = {k.split(".")[-1]: v for k, v in qs_dict.items()}  # strip prefixes
        unknown = set(qs_dict) - set(cls.valid_qs_keys)
        if unknown:
            raise ValueError(f"Unexpected quant_state keys {sorted(unknown)}; valid keys are {cls.valid_qs_keys}")

        required = ["quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape"]
        if "nested_absmax" in qs_dict:
            required += ["nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset"]
        missing = [k for k in required if k not in qs_dict]
        if missing:
            raise ValueError(f"quant_state is missing {missing} (present: {sorted(qs_dict)}); a 4-bit state dict holds "
                             f"{required}")

        if "nested_absmax" in qs_dict:
            # float32 whatever the default dtype: the kernels read the offset as one float32.
            offset = torch.tensor(float(qs_dict["nested_offset"]), dtype=torch.float32).to(device)
            state2 = cls(
                absmax=qs_dict["nested_absmax"].to(device),
                blocksize=qs_dict["nested_blocksize"],
                code=qs_dict["nested_quant_map"].to(device),
                dtype=_dtype_from_name("nested_dtype", qs_dict["nested_dtype"]),
            )
        else:
            offset, state2 = None, None
        shape = qs_dict["shape"]
        return cls(
            quant_type=qs_dict["quant_type"],
            absmax=qs_dict["absmax"].to(device),
            blocksize=qs_dict["blocksize"],
            code=qs_dict["quant_map"].to(device),
            dtype=_dtype_from_name("dtype", qs_dict["dtype"]),
            shape=torch.Size(shape) if shape is not None else None,
            offset=offset,
            state2=state2,
        )

    def _packed_fields(self) -> Dict[str, Any]:
        """The non-tensor fields in the order of the serialized JSON blob."""
        fields = {
            "quant_type": self.quant_type,
            "blocksize": self.blocksize,
            "dtype": _dtype_name(self.dtype),
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            fields.update(
                {
                    "nested_blocksize": self.state2.blocksize,
                    "nested_dtype": _dtype_name(self.state2.dtype),
                    "nested_offset": self.offset.item(),
                }
            )
        return fields

    def as_dict(self, packed: bool = False) -> Dict[str, Any]:
        """The state as a dict of tensors and plain values; ``packed=True`` folds the non-tensor
        fields into one uint8 tensor under 'quant_state.bitsandbytes__<quant_type>' (state-dict form)."""
        qs_dict = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": _dtype_name(self.dtype),
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            qs_dict.update(
                {
                    "nested_absmax": self.state2.absmax,
                    "nested_blocksize": self.state2.blocksize,
                    "nested_quant_map": self.state2.code.clone(),  # saved unshared
                    "nested_dtype": _dtype_name(self.state2.dtype),
                    "nested_offset": self.offset.item(),
                }
            )
        if not packed or self.quant_type is None:
            return qs_dict
        tensors = {k: v for k, v in qs_dict.items() if isinstance(v, torch.Tensor)}
        tensors["quant_state." + "bitsandbytes__" + self.quant_type] = pack_dict_to_tensor(self._packed_fields())
        return tensors

    def to(self, device) -> None:
        """Move the tensors in place (the state object itself is kept, as modules hold references to it).
        Fields that are None (a state built from absmax alone has no code) stay None."""

        def move(t):
            return None if t is None else t.to(device)

        self.code = move(self.code)
        self.absmax = move(self.absmax)
        if self.nested:
            self.offset = move(self.offset)
            self.state2.absmax = move(self.state2.absmax)
            self.state2.code = move(self.state2.code)

    def __eq__(self, other) -> bool:
        if not isinstance(other, QuantState):
            return False

        def close(a, b):
            if a is None or b is None:
                return a is b
            return a.shape == b.shape and torch.allclose(a.to(b.device).float(), b.float(), atol=1e-6)

        return (
            close(self.absmax, other.absmax)
            and self.shape == other.shape
            and close(self.code, other.code)
            and self.dtype == other.dtype
            and self.blocksize == other.blocksize
            and self.quant_type == other.quant_type
            and (
                self.offset == other.offset
                if not isinstance(self.offset, torch.Tensor)
                else isinstance(other.offset, torch.Tensor) and bool(torch.equal(self.offset.cpu(), other.offset.cpu()))
            )
            and (self.state2 == other.state2 if self.state2 is not None else other.state2 is None)
        )

    __hash__ = None

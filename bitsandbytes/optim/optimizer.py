"""Base classes of the bitsandbytes optimizers: 32-bit and blockwise 8-bit states.

A step runs in three phases so that bad input never leaves a half-updated model:

1. validate every parameter that has a gradient (dtypes, devices, sizes, contiguity, existing
   state) without changing anything;
2. create the state of parameters seen for the first time;
3. update. By default the parameters of a group are partitioned by (state bits, parameter dtype,
   gradient dtype, step number, device, per-parameter overrides) and each partition is one call of
   the native fused multi-tensor update; the call reads only host-side pointers, so the step never
   synchronises with the GPU. Trust-ratio optimizers (LAMB / LARS need ||p|| on the host) and paged
   states take the per-tensor path.
"""

from __future__ import annotations

import operator
import os
import weakref
from collections import abc as container_abcs, defaultdict
from itertools import chain
from typing import Optional

import numpy as np
import torch

from .. import functional as F
from .._functional_optim import MULTI_COLUMNS, _hparams, _warn_once, multi_tensor_update, native_rule, storage_device

__all__ = ["MockArgs", "GlobalOptimManager", "Optimizer8bit", "Optimizer2State", "Optimizer1State"]

# Paged optimizers put the states of parameters with at least this many elements in unified memory;
# smaller states are not worth the page-fault traffic.
PAGED_MIN_NUMEL = 100_000
# Elements per absmax block of the 8-bit states (include/bnb/optim.h: BNB_OPTIM_8BIT_BLOCKSIZE).
BLOCKSIZE_8BIT = 256

_FLOAT_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16))
_COL = {name: i for i, name in enumerate(MULTI_COLUMNS)}


def _check_device_type(p):
    # Checked before any update: a device without a native backend would otherwise fail midway.
    if p.device.type not in ("cpu", "cuda"):
        raise NotImplementedError(f"bitsandbytes optimizers run on CPU and CUDA tensors; got a parameter on "
                                  f"{p.device}")


def _fused_default() -> bool:
    return os.environ.get("BNB_OPTIM_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


class MockArgs:
    """Attribute bag standing in for an argparse namespace of optimizer options."""

    def __init__(self, initial_data):
        for key in initial_data:
            setattr(self, key, initial_data[key])


class GlobalOptimManager:
    """Process-wide registry of per-parameter optimizer config overrides.

    Overrides can be given before the optimizer exists (``register_parameters`` then
    ``override_config``), after it, or per module attribute (``register_module_override``, which
    the optimizer resolves at its first step). ``get_instance()`` returns the singleton.
    """

    _instance = None

    def __init__(self):
        raise RuntimeError("GlobalOptimManager is a singleton: call GlobalOptimManager.get_instance()")

    def initialize(self):
        self.pid2config = {}
        self.index2config = {}
        self.optimizer = None
        self.uses_config_override = False
        self.module_weight_config_triple = []
        self._version = getattr(self, "_version", 0) + 1

    @classmethod
    def get_instance(cls):
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def _changed(self):
        # Optimizers cache the resolved overrides; a new version makes them look again.
        self._version = getattr(self, "_version", 0) + 1

    def register_parameters(self, params):
        """Record the (group index, parameter index) of parameters that already have overrides."""
        param_groups = list(params)
        if param_groups and not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group_index, group in enumerate(param_groups):
            group_params = group["params"]
            if isinstance(group_params, torch.Tensor):
                group_params = [group_params]
            for p_index, p in enumerate(group_params):
                if id(p) in self.pid2config:
                    self.index2config[(group_index, p_index)] = self.pid2config[id(p)]
        self._changed()

    def override_config(self, parameters, key=None, value=None, key_value_dict=None):
        """Override optimizer options (e.g. ``optim_bits``, ``lr``, ``betas``) for some parameters.

        Give either ``key`` and ``value`` or ``key_value_dict``; ``parameters`` is a tensor or a list.
        """
        self.uses_config_override = True
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        if key is not None and value is not None:
            if key_value_dict is not None:
                raise ValueError("give either key and value or key_value_dict, not both")
            key_value_dict = {key: value}
        if key_value_dict is None:
            raise ValueError("override_config needs key and value, or key_value_dict")
        for p in parameters:
            if id(p) in self.pid2config:
                self.pid2config[id(p)].update(key_value_dict)
            else:
                self.pid2config[id(p)] = dict(key_value_dict)
        self._changed()

    def register_module_override(self, module, param_name, config):
        """Override the config of ``getattr(module, param_name)``, resolved at the optimizer's first step."""
        self.module_weight_config_triple.append((module, param_name, config))
        self._changed()


class _Entry:
    """What a fused step needs to know about one parameter with state (rebuilt when it changes)."""

    __slots__ = ("p", "state", "pptr", "device", "pdtype", "n", "bits", "override", "key", "row", "per_tensor",
                 "qmap1", "qmap2", "s1", "s2", "a1", "a2")

    def current(self) -> bool:
        """Do the state tensors still match the cached pointers? The entry holds references to
        them, so a tensor replaced in the state dict can never leave a dangling pointer behind."""
        st = self.state
        return (st.get("state1") is self.s1 and st.get("state2") is self.s2 and st.get("absmax1") is self.a1
                and st.get("absmax2") is self.a2)


class _GroupCache:
    __slots__ = ("ids", "version", "mng_version", "entries", "table", "fast", "pptrs", "ns", "s1s", "states", "step",
                 "device_index", "grad_refs", "gptrs", "g_dtype", "gtable")


# Bulk per-parameter reads for the fast step: map() over these runs the loop in C.
_grad_of = torch.Tensor.grad.__get__
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_state1_of = operator.itemgetter("state1")
_deref = weakref.ref.__call__


class Optimizer8bit(torch.optim.Optimizer):
    """Common machinery of the bitsandbytes optimizers (state layout, overrides, state dicts, step)."""

    _FSDP_WRAPPED_QUANT_STATE_KEY = "__bnb_optimizer_quant_state__"

    def __init__(self, params, defaults, optim_bits=32, is_paged=False):
        # Set before torch's constructor, which may call methods that look at them.
        self._fused = _fused_default()
        self._state_version = 0
        self._group_caches = {}
        self._qmaps_on = {}
        self._state_snapshot = None
        super().__init__(params, defaults)
        self.initialized = False
        self.name2qmap = {}
        self.is_paged = is_paged
        self.page_mng = F.GlobalPageManager.get_instance()
        self.mng = GlobalOptimManager.get_instance()
        self.non_castable_tensor_keys = {
            "qmap1", "qmap2", "max1", "max2", "new_max1", "new_max2", "state1", "state2", "gnorm_vec",
            "absmax1", "absmax2", "unorm_vec",
        }
        if optim_bits == 8:
            self.fill_qmap()

    def __getstate__(self):
        # torch's __getstate__ keeps only defaults/state/param_groups, which would lose the options
        # (args, optimizer_name, ...). Keep them; drop caches of native pointers and the singletons.
        state = dict(self.__dict__)
        for key in ("_group_caches", "_qmaps_on", "page_mng", "mng", "_state_snapshot"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("page_mng", F.GlobalPageManager.get_instance())
        self.__dict__.setdefault("mng", GlobalOptimManager.get_instance())
        self.__dict__.setdefault("_fused", _fused_default())
        self.__dict__.setdefault("_state_version", 0)
        self.__dict__.setdefault("_group_caches", {})
        self.__dict__.setdefault("_qmaps_on", {})
        self.__dict__.setdefault("_state_snapshot", None)
        self._state_changed()

    def _state_changed(self):
        self._state_version = getattr(self, "_state_version", 0) + 1

    def _remember_state_mapping(self):
        """Records which per-parameter state dicts ``self.state`` holds after a step, so that the fast
        step notices a state dict reset, replaced or removed by hand (``state.clear()``, ``del
        state[p]``, a new ``optimizer.state``) and lets the general path rebuild from it."""
        self._state_snapshot = (self.state, list(self.state.values()))

    def _state_mapping_unchanged(self) -> bool:
        snapshot = self._state_snapshot
        if snapshot is None:
            return False
        state, values = snapshot
        return (self.state is state and len(state) == len(values)
                and all(map(operator.is_, state.values(), values)))

    # ---- code books -------------------------------------------------------------------------------------

    def fill_qmap(self):
        self.name2qmap["dynamic"] = F.create_dynamic_map(signed=True)
        self.name2qmap["udynamic"] = F.create_dynamic_map(signed=False)

    def _qmap(self, name: str, device: torch.device) -> torch.Tensor:
        # One copy per device shared by every parameter there: the fused step needs a single code
        # book pointer per partition.
        key = (name, device)
        q = self._qmaps_on.get(key)
        if q is None:
            if name not in self.name2qmap:
                self.fill_qmap()
            q = self.name2qmap[name].to(device)
            self._qmaps_on[key] = q
        return q

    # ---- config --------------------------------------------------------------------------------------------

    def _args_config(self) -> dict:
        a = self.args
        return {
            "optim_bits": getattr(a, "optim_bits", 32),
            "min_8bit_size": getattr(a, "min_8bit_size", 4096),
            "max_unorm": getattr(a, "max_unorm", 0.0),
            "skip_zeros": getattr(a, "skip_zeros", False),
        }

    def _group_config(self, group) -> dict:
        config = {
            "betas": group["betas"],
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "lr": group["lr"],
            "alpha": group.get("alpha", 0.0),
            "t_alpha": group.get("t_alpha"),
            "t_beta3": group.get("t_beta3"),
        }
        config.update(self._args_config())
        return config

    def _override(self, gindex, pindex, p) -> Optional[dict]:
        """The overrides of one parameter: by (group, index), then by id (the later wins)."""
        a = self.mng.index2config.get((gindex, pindex))
        b = self.mng.pid2config.get(id(p))
        if a is None and b is None:
            return None
        merged = dict(a or {})
        merged.update(b or {})
        return merged

    def get_config(self, gindex, pindex, group):
        config = self._group_config(group)
        override = self._override(gindex, pindex, group["params"][pindex])
        if override:
            config.update(override)
        return config

    def check_overrides(self):
        """Resolve module overrides (register_module_override) to the parameters of this optimizer."""
        for module, attr, config in self.mng.module_weight_config_triple:
            pmodule = getattr(module, attr)
            if not isinstance(pmodule, torch.Tensor):
                raise TypeError(f"module override for {type(module).__name__}.{attr}: expected a tensor, got "
                                f"{type(pmodule).__name__}")
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p is pmodule:
                        self.mng.pid2config[id(p)] = config
                        self.mng.index2config[(gindex, pindex)] = config
        self.mng._changed()

    def to_gpu(self):
        """Move (non-paged) state tensors to their parameter's device."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                for k, v in state.items():
                    if isinstance(v, torch.Tensor) and not getattr(v, "is_paged", False) and v.device != p.device:
                        state[k] = v.to(p.device)
        self._state_changed()

    # ---- state ---------------------------------------------------------------------------------------------

    def _state_plan(self, config, p):
        """State bits (8 or 32) a new state of p gets; raises on an unsupported optim_bits."""
        _check_device_type(p)
        bits = config["optim_bits"]
        if bits not in (8, 32):
            raise NotImplementedError(f"optim_bits must be 8 or 32; got {bits}")
        if p.numel() < config["min_8bit_size"]:
            bits = 32
        return bits

    def get_state_buffer(self, p, dtype=torch.float32, shape=None):
        """A zeroed state buffer for p: paged memory for large CUDA params of paged optimizers."""
        shape = tuple(p.shape) if shape is None else tuple(shape)
        if not self.is_paged or p.numel() < PAGED_MIN_NUMEL:
            return torch.zeros(shape, dtype=dtype, device=p.device)
        if p.device.type != "cuda":
            _warn_once("paged-cpu", "bitsandbytes: paged optimizer states need CUDA parameters; parameters on "
                         f"{p.device} keep their states in regular memory.")
            return torch.zeros(shape, dtype=dtype, device=p.device)
        buf = F.get_paged(*shape, dtype=dtype, device=p.device)
        F.fill(buf, 0)
        if getattr(buf, "is_paged", False):
            self.page_mng.paged_tensors.append(buf)
        return buf

    def _first_state_shape(self, p):
        return tuple(p.shape)

    def _absmax_shape(self, blocks):
        return (blocks,)

    def init_state(self, group, p, gindex, pindex):
        config = self.get_config(gindex, pindex, group)
        bits = self._state_plan(config, p)
        dtype = torch.float32 if bits == 32 else torch.uint8
        state = self.state[p]
        state["step"] = 0
        state["state1"] = self.get_state_buffer(p, dtype, self._first_state_shape(p))
        if self._two_state:
            state["state2"] = self.get_state_buffer(p, dtype)
        if bits == 8:
            blocks = -(p.numel() // -BLOCKSIZE_8BIT)
            state["qmap1"] = self._qmap("dynamic", p.device)
            state["absmax1"] = torch.zeros(self._absmax_shape(blocks), dtype=torch.float32, device=p.device)
            if self._two_state:
                state["qmap2"] = self._qmap("udynamic", p.device)
                state["absmax2"] = torch.zeros((blocks,), dtype=torch.float32, device=p.device)
        if config["max_unorm"] > 0.0:
            state["unorm_vec"] = torch.zeros((1,), device=p.device)
        self._state_changed()

    def prefetch_state(self, p):
        """Start moving the paged states of p to its GPU; returns whether any was paged."""
        state = self.state[p]
        paged = False
        for key in ("state1", "state2"):
            t = state.get(key)
            if t is not None and getattr(t, "is_paged", False):
                F.prefetch_tensor(t)
                paged = True
        return paged

    def _check_state(self, p, state):
        """Raise if an existing state does not fit p (e.g. after loading a foreign state dict)."""
        _check_device_type(p)
        n = p.numel()
        s1 = state.get("state1")
        if s1 is None or "step" not in state:
            raise ValueError(f"optimizer state of a parameter of shape {tuple(p.shape)} lacks 'step' or 'state1'")
        if s1.dtype not in (torch.float32, torch.uint8):
            raise TypeError(f"state1 must be float32 or uint8; got {s1.dtype}")
        mult = 2 if self.optimizer_name == "ademamix" else 1
        keys = ["state1", "state2"] if self._two_state else ["state1"]
        if s1.dtype == torch.uint8:
            keys += ["qmap1", "absmax1"] + (["qmap2", "absmax2"] if self._two_state else [])
        if "unorm_vec" in state:
            keys.append("unorm_vec")
        blocks = -(n // -BLOCKSIZE_8BIT)
        expected = {"state1": mult * n, "state2": n, "qmap1": 256, "qmap2": 256, "absmax1": mult * blocks,
                    "absmax2": blocks, "unorm_vec": 1}
        for key in keys:
            t = state.get(key)
            if t is None:
                raise ValueError(f"optimizer state of a parameter of shape {tuple(p.shape)} lacks {key!r}")
            if t.numel() != expected[key]:
                raise ValueError(f"optimizer state {key!r} has {t.numel()} elements but a parameter of shape "
                                 f"{tuple(p.shape)} needs {expected[key]}")
            want = s1.dtype if key in ("state1", "state2") else torch.float32
            if t.dtype != want:
                raise TypeError(f"optimizer state {key!r} must be {want}; got {t.dtype}")
            if storage_device(t) != p.device:
                raise RuntimeError(f"optimizer state {key!r} is on {storage_device(t)} but its parameter is on "
                                   f"{p.device}; all tensors of an update must be on one device")
            if not t.is_contiguous():
                raise ValueError(f"optimizer state {key!r} must be contiguous")

    # ---- state dict ----------------------------------------------------------------------------------------

    def state_dict(self):
        """torch's state dict with the quantization tensors of each parameter nested under
        ``__bnb_optimizer_quant_state__`` (so that FSDP leaves their dtype and shape alone)."""
        sd = super().state_dict()
        wrapped = {}
        for idx, pstate in sd["state"].items():
            if isinstance(pstate, dict):
                quant = {k: v for k, v in pstate.items() if k in self.non_castable_tensor_keys}
                if quant:
                    pstate = {k: v for k, v in pstate.items() if k not in self.non_castable_tensor_keys}
                    pstate[self._FSDP_WRAPPED_QUANT_STATE_KEY] = quant
            wrapped[idx] = pstate
        sd["state"] = wrapped
        return sd

    def _place_state_tensor(self, param, key, value, move_to_device):
        device = param.device if move_to_device else value.device
        if key in ("qmap1", "qmap2") and value.numel() == 256 and value.dtype == torch.float32:
            # Standard code books are shared again, so fused steps see one pointer per device.
            standard = self._qmap("dynamic" if key == "qmap1" else "udynamic", device)
            if torch.equal(value.to(device), standard):
                return standard
        if (key in ("state1", "state2") and move_to_device and self.is_paged and device.type == "cuda"
                and param.numel() >= PAGED_MIN_NUMEL):
            buf = self.get_state_buffer(param, value.dtype, value.shape)
            buf.copy_(value)
            return buf
        # A copy, so that later steps never write into the caller's state dict.
        return value.to(device=device, copy=True)

    def load_state_dict(self, state_dict, move_to_device=True):
        """Load a state dict from ``state_dict()`` (nested or the older flat form).

        Quantization tensors (states, code books, absmax) are never cast; they are moved to their
        parameter's device (paged again for paged optimizers). Other floating-point tensors are
        cast to the parameter's dtype, as torch does.
        """
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        param_lens = [len(g["params"]) for g in groups]
        saved_lens = [len(g["params"]) for g in saved_groups]
        if param_lens != saved_lens:
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             f"optimizer's group (sizes {saved_lens} vs {param_lens})")
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))

        def cast(param, key, value):
            if isinstance(value, torch.Tensor):
                if key == "step":
                    return int(value.item())
                if key in self.non_castable_tensor_keys:
                    return self._place_state_tensor(param, key, value, move_to_device)
                if param.is_floating_point() and value.is_floating_point():
                    value = value.to(param.dtype)
                return value.to(param.device) if move_to_device else value.clone()
            if isinstance(value, dict):
                flat = {}
                for k, v in value.items():
                    if k == self._FSDP_WRAPPED_QUANT_STATE_KEY and isinstance(v, dict):
                        flat.update({kk: cast(param, kk, vv) for kk, vv in v.items()})
                    else:
                        flat[k] = cast(param, k, v)
                return flat
            if isinstance(value, container_abcs.Iterable) and not isinstance(value, str):
                return type(value)(cast(param, key, v) for v in value)
            return value

        state = defaultdict(dict)
        for k, v in state_dict["state"].items():
            if k in id_map:
                param = id_map[k]
                state[param] = cast(param, None, v)
            else:
                state[k] = v
        if move_to_device:
            # A state that does not fit its parameter (another model's, another optimizer's) is reported
            # now, with this optimizer still unchanged, rather than at the next step.
            for param in id_map.values():
                pstate = state.get(param)
                if isinstance(pstate, dict) and "state1" in pstate:
                    self._check_state(param, pstate)
        new_groups = []
        for group, saved in zip(groups, saved_groups):
            g = dict(saved)
            g["params"] = group["params"]
            new_groups.append(g)
        # Assigned directly: torch's __setstate__ would also add keys to self.defaults.
        self.state = state
        self.param_groups = new_groups
        self._state_changed()

    # ---- step ----------------------------------------------------------------------------------------------

    def _kernel_args(self, config, step):
        """(beta1, beta2, beta3, alpha) for the native update; subclasses map their options."""
        raise NotImplementedError

    def _hparams(self, config, step):
        beta1, beta2, beta3, alpha = self._kernel_args(config, step)
        return _hparams(config["lr"], beta1, beta2, beta3, alpha, config["eps"], config["weight_decay"], 1.0,
                          0.0, 0.0, step, config["skip_zeros"])

    def _collect(self):
        """Phase 1: gather and validate (p, grad) of every group; nothing is modified."""
        work = []
        for gindex, group in enumerate(self.param_groups):
            items = []
            for pindex, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                items.append((pindex, p, self._check_pair(p, g)))
            work.append(items)
        return work

    def _check_pair(self, p, g):
        if g.layout is not torch.strided:
            raise RuntimeError(f"bitsandbytes optimizers do not support sparse gradients (got layout {g.layout})")
        if p.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"parameters must be float32, float16 or bfloat16; got {p.dtype} (shape "
                            f"{tuple(p.shape)})")
        if g.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"gradients must be float32, float16 or bfloat16; got {g.dtype} for a parameter of "
                            f"shape {tuple(p.shape)}")
        if g.device != p.device:
            raise RuntimeError(f"gradient is on {g.device} but its parameter is on {p.device}; all tensors of an "
                               "update must be on one device")
        if g.numel() != p.numel():
            raise ValueError(f"gradient has {g.numel()} elements but its parameter of shape {tuple(p.shape)} has "
                             f"{p.numel()}")
        # A parameter that is not contiguous is given contiguous storage once the whole step has been
        # validated (_make_contiguous), as bitsandbytes' update_step does.
        return g if g.is_contiguous() else g.contiguous()

    def _make_contiguous(self, work):
        """Gives every parameter of the collected work that is not contiguous a contiguous copy of its
        values as its storage (``p.data``), so that the native updates can run over it in place."""
        changed = False
        for items in work:
            for _, p, _ in items:
                if not p.is_contiguous():
                    p.data = p.data.contiguous()
                    changed = True
        if changed:
            self._state_changed()

    def _group_cache(self, gindex, group):
        """Cached per-parameter entries of a group (valid while membership and states are unchanged)."""
        params = group["params"]
        ids = tuple(map(id, params))
        cache = self._group_caches.get(gindex)
        mng_version = getattr(self.mng, "_version", 0)
        if (cache is not None and cache.ids == ids and cache.version == self._state_version
                and cache.mng_version == mng_version):
            return cache
        cache = _GroupCache()
        cache.ids = ids
        cache.version = self._state_version
        cache.mng_version = mng_version
        cache.entries = [None] * len(params)
        rows = []
        key_ids = {}
        group_max_unorm = self._args_config()["max_unorm"]
        for pindex, p in enumerate(params):
            state = self.state.get(p)
            if not state:
                continue
            self._check_state(p, state)
            e = _Entry()
            e.p, e.state = p, state
            e.pptr, e.device, e.pdtype, e.n = p.data_ptr(), p.device, p.dtype, p.numel()
            s1 = state["state1"]
            e.bits = 8 if s1.dtype == torch.uint8 else 32
            e.override = self._override(gindex, pindex, p)
            max_unorm = (e.override or {}).get("max_unorm", group_max_unorm)
            e.per_tensor = max_unorm > 0.0 or any(
                getattr(state.get(k), "is_paged", False) for k in ("state1", "state2"))
            e.qmap1 = state.get("qmap1")
            e.qmap2 = state.get("qmap2")
            # Parameters that may share a fused call get the same small int (cheap to hash per step).
            static_key = (e.bits, e.pdtype, e.device,
                          None if e.override is None else repr(sorted(e.override.items(), key=lambda kv: kv[0])),
                          None if e.qmap1 is None else e.qmap1.data_ptr(),
                          None if e.qmap2 is None else e.qmap2.data_ptr())
            e.key = key_ids.setdefault(static_key, len(key_ids))
            e.row = len(rows)
            s2 = state.get("state2")
            a1, a2 = state.get("absmax1"), state.get("absmax2")
            e.s1, e.s2, e.a1, e.a2 = s1, s2, a1, a2
            rows.append((e.pptr, 0, s1.data_ptr(), 0 if s2 is None else s2.data_ptr(),
                         0 if a1 is None else a1.data_ptr(), 0 if a2 is None else a2.data_ptr(), e.n))
            cache.entries[pindex] = e
        cache.table = np.array(rows, dtype=np.int64).reshape(len(rows), len(MULTI_COLUMNS))
        # The fast path (see _fast_step) serves groups whose parameters all have state, share one
        # fused key and need no per-tensor treatment — the usual case after the first step.
        entries = cache.entries
        cache.fast = (bool(entries) and all(e is not None and not e.per_tensor for e in entries)
                      and len({e.key for e in entries}) == 1 and all(e.row == i for i, e in enumerate(entries)))
        if cache.fast:
            cache.pptrs = [e.pptr for e in entries]
            cache.ns = [e.n for e in entries]
            cache.s1s = [e.s1 for e in entries]
            cache.states = [e.state for e in entries]
            cache.device_index = entries[0].p.get_device()
        cache.step = None
        cache.grad_refs = None  # the gradients (weakly: never kept alive) and table of the last validated fast step
        self._group_caches[gindex] = cache
        return cache

    def _fast_step(self) -> bool:
        """One fused step for the common case, with the fewest Python operations per parameter.

        Applies only when every group is cached as fast, every parameter has a gradient of one
        float dtype, contiguous, on its parameter's device, and all states share one step count;
        then each group is one native call. Returns False, having changed nothing, whenever anything differs: the general
        path then validates and handles it.
        """
        if not self._state_mapping_unchanged():
            return False
        version, mng_version = self._state_version, getattr(self.mng, "_version", 0)
        work = []
        for gindex, group in enumerate(self.param_groups):
            params = group["params"]
            cache = self._group_caches.get(gindex)
            # (a loaded state dict, moved states or changed overrides bump the versions)
            if (cache is None or not cache.fast or cache.version != version or cache.mng_version != mng_version
                    or len(params) != len(cache.pptrs)):
                return False
            first = params[0].grad if params else None
            g_dtype = first.dtype if first is not None else None
            if g_dtype not in _FLOAT_DTYPES:
                return False
            # The parameters' storage (address and a dense layout: `p.data = p.data.t()` keeps the
            # address) and states must still be the ones the cached table holds (map() runs these
            # per-parameter reads in C: they are most of a step's host time). A size change behind the
            # same address needs new gradients of that size, which _validated_grads checks.
            try:
                if (list(map(_data_ptr, params)) != cache.pptrs or not all(map(_is_contiguous, params))
                        or not all(map(operator.is_, map(_state1_of, cache.states), cache.s1s))):
                    return False
            except (KeyError, RuntimeError):
                return False
            grads = list(map(_grad_of, params))
            if (cache.grad_refs is not None and g_dtype is cache.g_dtype
                    and all(map(operator.is_, grads, map(_deref, cache.grad_refs)))
                    and list(map(_data_ptr, grads)) == cache.gptrs):
                # The same gradient tensors at the same addresses as in the last validated step (gradients
                # kept between steps and zeroed in place): their dtype, device and layout were checked then.
                table = cache.gtable
            else:
                table = self._validated_grads(cache, params, grads, g_dtype)
                if table is None:
                    return False
            if cache.step is None:
                steps = {st.get("step") for st in cache.states}
                if len(steps) != 1 or None in steps:  # (a missing count is reported by the general path)
                    return False
                cache.step = steps.pop()
            work.append((group, cache, g_dtype, table))
        rule = native_rule(self.optimizer_name)
        for group, cache, g_dtype, table in work:
            e0 = cache.entries[0]
            config = self._group_config(group)
            if e0.override is not None:
                config = {**config, **e0.override}
            step = cache.step + 1
            multi_tensor_update(rule, self._hparams(config, step), e0.bits, e0.pdtype, g_dtype, e0.qmap1, e0.qmap2,
                                table, e0.device)
            for st in cache.states:
                st["step"] = step
            cache.step = step
        return True

    @staticmethod
    def _validated_grads(cache, params, grads, g_dtype):
        """The group's table with these gradients' addresses, after checking each is a dense contiguous
        tensor of g_dtype on the group's device; None (cache unchanged) when one is not. The gradients
        and table are remembered, so later steps with the same gradient tensors skip these checks."""
        dev = cache.device_index
        gptrs = []
        append = gptrs.append
        try:
            for g, n in zip(grads, cache.ns):
                # (identity test for None; is_contiguous() is False for sparse COO gradients)
                if (g is None or g.dtype is not g_dtype or not g.is_contiguous() or g.get_device() != dev
                        or g.numel() != n):
                    return None
                append(g.data_ptr())
        except RuntimeError:  # layouts without strides raise here: the general path reports them
            return None
        table = cache.table.copy()
        table[:, _COL["g"]] = gptrs
        cache.grad_refs, cache.gptrs, cache.g_dtype, cache.gtable = list(map(weakref.ref, grads)), gptrs, g_dtype, table
        return table

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step (``closure`` re-evaluates the model and returns the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        if not self.initialized:
            self.check_overrides()
            self.to_gpu()
            self.initialized = True

        # Phase 1: validate everything (including existing states) before touching anything. The
        # fused plan does this in the same pass that partitions the parameters; it gives up (None)
        # when some parameter has no state yet or changed storage, and the general pass takes over.
        if self._fused and self._fast_step():
            return loss
        if not self._state_mapping_unchanged():
            self._state_changed()  # the cached entries may hold state dicts the optimizer no longer has
        self._state_snapshot = None
        for cache in self._group_caches.values():
            cache.step = None  # the general path may move step counters apart
        plan = self._plan_fused() if self._fused else None
        if plan is None:
            work = self._collect()
            new = []
            for gindex, items in enumerate(work):
                if not items:
                    continue
                group = self.param_groups[gindex]
                cache = self._group_cache(gindex, group)
                for pindex, p, _ in items:
                    e = cache.entries[pindex]
                    if e is None:
                        self._state_plan(self.get_config(gindex, pindex, group), p)
                        new.append((gindex, pindex, p))
                    elif e.pptr != p.data_ptr() or not e.current() or e.n != p.numel() or "step" not in e.state:
                        # The parameter's storage or a state tensor was replaced (p.data = ..., a state
                        # moved by hand): re-check the states.
                        self._state_changed()
                        cache = self._group_cache(gindex, group)

            self._make_contiguous(work)
            # Phase 2: states of parameters seen for the first time.
            for gindex, pindex, p in new:
                self.init_state(self.param_groups[gindex], p, gindex, pindex)

            if self._fused:
                plan = self._plan_fused()
            else:
                # Phase 3, per tensor.
                paged = False
                for gindex, items in enumerate(work):
                    group = self.param_groups[gindex]
                    for pindex, p, g in items:
                        if self.is_paged:
                            paged |= self.prefetch_state(p)
                        self.update_step(group, p, gindex, pindex, g)
                if paged:
                    # Paged states may be read by the host (or evicted) right after step(): finish first.
                    torch.cuda.synchronize()
                self._remember_state_mapping()
                return loss

        # Phase 3, fused.
        if self._run_fused(plan):
            torch.cuda.synchronize()
        self._remember_state_mapping()
        return loss

    def _plan_fused(self):
        """Validate and partition every (parameter, gradient) pair; None if some parameter needs the
        general pass (no state yet, or its storage was replaced). Nothing is modified."""
        plan = []
        for gindex, group in enumerate(self.param_groups):
            cache = self._group_cache(gindex, group)
            buckets = {}
            per_tensor = []
            keep = []  # contiguous copies of gradients must outlive the native calls
            for pindex, (p, e) in enumerate(zip(group["params"], cache.entries)):
                g = p.grad
                if g is None:
                    continue
                # Inlined Entry.current(): this loop runs once per parameter per step. A parameter whose
                # layout or size changed behind an unchanged address, or a state that lost its step count,
                # also goes to the general path, which validates and reports it before anything changes.
                if e is None or e.pptr != p.data_ptr() or (
                        (st := e.state).get("state1") is not e.s1 or st.get("state2") is not e.s2
                        or st.get("absmax1") is not e.a1 or st.get("absmax2") is not e.a2
                        or "step" not in st or p.numel() != e.n or not p.is_contiguous()):
                    self._check_pair(p, g)  # report bad input first
                    if e is not None:
                        self._state_changed()
                    return None
                g_dtype = g.dtype
                if (g_dtype not in _FLOAT_DTYPES or g.device != e.device or g.numel() != e.n
                        or g.layout is not torch.strided):
                    self._check_pair(p, g)  # raises with a precise message
                if not g.is_contiguous():
                    g = g.contiguous()
                    keep.append(g)
                if e.per_tensor:
                    per_tensor.append((pindex, p, g))
                    continue
                key = (e.key, g_dtype, e.state["step"])
                bucket = buckets.get(key)
                if bucket is None:
                    buckets[key] = bucket = (e, [], [], [])
                bucket[1].append(e.row)
                bucket[2].append(g.data_ptr())
                bucket[3].append(e.state)
            if buckets or per_tensor:
                plan.append((gindex, group, cache, buckets, per_tensor, keep))
        return plan

    def _run_fused(self, plan):
        """Execute a fused plan; returns whether any paged state was touched."""
        paged = False
        rule = native_rule(self.optimizer_name)
        for gindex, group, cache, buckets, per_tensor, _keep in plan:
            if buckets:
                group_config = self._group_config(group)
            for (_, g_dtype, step), (e0, rows, gptrs, states) in buckets.items():
                config = group_config if e0.override is None else {**group_config, **e0.override}
                table = cache.table[rows]
                table[:, _COL["g"]] = gptrs
                multi_tensor_update(rule, self._hparams(config, step + 1), e0.bits, e0.pdtype, g_dtype, e0.qmap1,
                                    e0.qmap2, table, e0.device)
                for st in states:
                    st["step"] = step + 1
            for pindex, p, g in per_tensor:
                if self.is_paged:
                    paged |= self.prefetch_state(p)
                self.update_step(group, p, gindex, pindex, g)
        return paged

    def update_step(self, group, p, gindex, pindex, grad=None):
        """Per-tensor update of one parameter through the functional API."""
        state = self.state[p]
        if grad is None:
            grad = p.grad.contiguous()
        config = self.get_config(gindex, pindex, group)
        step = state["step"] + 1
        beta1, beta2, beta3, alpha = self._kernel_args(config, step)
        max_unorm = config["max_unorm"]
        unorm_vec = state.get("unorm_vec") if max_unorm > 0.0 else None
        if max_unorm > 0.0 and unorm_vec is None:
            unorm_vec = state["unorm_vec"] = torch.zeros((1,), device=p.device)
        s1 = state["state1"]
        if s1.dtype == torch.float32:
            F.optimizer_update_32bit(
                self.optimizer_name, grad, p, s1, beta1, config["eps"], step, config["lr"], state.get("state2"),
                beta2, beta3, alpha, config["weight_decay"], 1.0, unorm_vec, max_unorm=max_unorm,
                skip_zeros=config["skip_zeros"])
        else:
            F.optimizer_update_8bit_blockwise(
                self.optimizer_name, grad, p, s1, state.get("state2"), beta1, beta2, beta3, alpha, config["eps"],
                step, config["lr"], state["qmap1"], state.get("qmap2"), state["absmax1"], state.get("absmax2"),
                config["weight_decay"], 1.0, config["skip_zeros"], unorm_vec=unorm_vec, max_unorm=max_unorm)
        state["step"] = step


def _parse_betas(betas):
    if isinstance(betas, str):
        # Accept "(0.9, 0.999)" as command-line tools pass it.
        parts = betas.replace("(", "").replace(")", "").replace("[", "").replace("]", "").strip().split(",")
        betas = tuple(float(b) for b in parts if b.strip())
    return betas


def _validate(lr, eps, betas, weight_decay):
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


class Optimizer2State(Optimizer8bit):
    """Optimizers with two states (Adam, AdamW, LAMB, AdEMAMix)."""

    _two_state = True

    def __init__(self, optimizer_name, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 optim_bits=32, args=None, min_8bit_size=4096, max_unorm=0.0, skip_zeros=False, is_paged=False,
                 alpha=0.0, t_alpha: Optional[int] = None, t_beta3: Optional[int] = None):
        betas = _parse_betas(betas)
        _validate(lr, eps, betas, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, alpha=alpha, t_alpha=t_alpha,
                        t_beta3=t_beta3)
        super().__init__(params, defaults, optim_bits, is_paged)
        if args is None:
            args = MockArgs({"optim_bits": optim_bits, "min_8bit_size": min_8bit_size, "max_unorm": max_unorm,
                             "skip_zeros": skip_zeros})
        self.args = args
        self.optimizer_name = optimizer_name
        native_rule(optimizer_name)

    def _first_state_shape(self, p):
        # AdEMAMix keeps its fast and slow first moments side by side.
        return (2, *p.shape) if self.optimizer_name == "ademamix" else tuple(p.shape)

    def _absmax_shape(self, blocks):
        return (2, blocks) if self.optimizer_name == "ademamix" else (blocks,)

    def _kernel_args(self, config, step):
        betas = config["betas"]
        return betas[0], betas[1], betas[2] if len(betas) >= 3 else 0.0, config.get("alpha", 0.0)


class Optimizer1State(Optimizer8bit):
    """Optimizers with one state (SGD momentum, LARS, RMSprop, Adagrad, Lion)."""

    _two_state = False

    def __init__(self, optimizer_name, params, lr=1e-3, betas=(0.9, 0.0), eps=1e-8, weight_decay=0.0,
                 optim_bits=32, args=None, min_8bit_size=4096, max_unorm=0.0, skip_zeros=False, is_paged=False):
        betas = _parse_betas(betas)
        _validate(lr, eps, betas, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits, is_paged)
        if args is None:
            args = MockArgs({"optim_bits": optim_bits, "min_8bit_size": min_8bit_size, "max_unorm": max_unorm,
                             "skip_zeros": skip_zeros})
        self.args = args
        self.optimizer_name = optimizer_name
        native_rule(optimizer_name)

    def _kernel_args(self, config, step):
        betas = config["betas"]
        return betas[0], betas[1] if len(betas) >= 2 else 0.0, 0.0, 0.0

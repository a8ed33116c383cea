"""4-bit (NF4 / FP4) models through transformers / accelerate / peft (compat.md §1.5, §1.6, §2.1, §7),
offline, on a GPU.

Tiny Llama and GPT-2 models are built from configs (random weights, no downloads), saved in fp16 or
bf16, and reloaded with ``BitsAndBytesConfig(load_in_4bit=True, ...)`` over quant type (nf4 / fp4),
double quantization and compute dtype. GPT-2 also covers the Conv1D layers that transformers
transposes before quantizing.

Oracles:
- The kernels: the checkpoint's float32 model with each quantized layer's weight replaced by
  ``dequantize_4bit`` of its codes ("fake-quantized"), run in float32. The 4-bit model must match it
  up to the rounding of its activation dtype: relative L2 error of the logits <= 2% (bf16 rounding is
  2^-8 = 0.4% per operation; measured <= 0.7% over the two layers), cosine >= 0.9995.
- Quantization itself: the checkpoint's own weights in float32 (fp16/bf16 -> fp32 is exact). NF4
  with 64-element blocks has a relative L2 weight error of 9.2% on these normally distributed
  weights, FP4 12.2% (``python -m bitsandbytes`` shows similar numbers for its MLP).
  The logits' relative error is about twice the weight error, because SwiGLU (gate * up) and the
  attention scores (q . k) multiply two quantized factors and the two layers add up: for nf4
  ~18% -> cosine ~ 1 - 0.18**2 / 2 = 0.984, for fp4 ~24% -> ~0.97. In exact float32 arithmetic the
  fake-quantized models reach 0.987 (Llama) / 0.993 (GPT-2) for nf4 and 0.968 / 0.986 for fp4, so
  a bound of 0.99 would fail any correct implementation on the Llama model; the bounds are 0.98
  (nf4) and 0.95 (fp4). (Trained models have far less error amplification than random ones.)
- A saved and reloaded 4-bit model must give bit-identical logits.
"""

import copy
import json
import math
import warnings

import pytest
import torch

import bitsandbytes as bnb
from helpers import train_on_batch
import bitsandbytes.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from packaging import version  # noqa: E402  (a dependency of transformers)
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

DEVICE = "cuda"
DEVICE_MAP = {"": 0}
VOCAB = 256
BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256
# Logits cosine against the 16-bit model (see the module docstring).
MIN_COSINE = {"nf4": 0.98, "fp4": 0.95}
# Against the fake-quantized float32 model: only the activation dtype's rounding separates them.
MAX_KERNEL_ERROR = 0.02
MIN_KERNEL_COSINE = 0.9995
# Relative L2 error of a dequantized weight against the original (normally distributed weights,
# blocks of 64): nf4 0.092, fp4 0.122 on every layer here.
MAX_WEIGHT_ERROR = {"nf4": 0.10, "fp4": 0.13}
# transformers >= 4.56 names the load dtype 'dtype' (earlier: 'torch_dtype').
_DTYPE_KW = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"
DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
DTYPE_IDS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
# The layers transformers quantizes (lm_head stays in 16 bits): 7 per Llama layer, 4 per GPT-2 block.
QUANTIZED_PER_LAYER = {"llama": 7, "gpt2": 4}
N_LAYERS = 2


def _llama_config():
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def _gpt2_config():
    return transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=128, n_layer=N_LAYERS, n_head=4, n_positions=128, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )


FAMILIES = {
    "llama": (_llama_config, transformers.LlamaForCausalLM),
    "gpt2": (_gpt2_config, transformers.GPT2LMHeadModel),
}


class Checkpoint:
    """A saved 16-bit model: its directory, dtype, family and the same weights in float32 (the oracle)."""

    def __init__(self, family, dtype, path, reference, weights):
        self.family, self.dtype, self.path, self.reference, self.weights = family, dtype, path, reference, weights


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    cache = {}

    def get(family, dtype=torch.float16):
        if (family, dtype) not in cache:
            make_config, cls = FAMILIES[family]
            torch.manual_seed(0)
            model = cls(make_config()).to(dtype).eval()
            path = tmp_path_factory.mktemp(f"{family}-{DTYPE_IDS[dtype]}")
            model.save_pretrained(path)
            # [out, in] weights of the layers that will be quantized (GPT-2's Conv1D holds [in, out]).
            weights = {}
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
                    weights[name] = module.weight.detach().float().clone()
                elif type(module).__name__ == "Conv1D":
                    weights[name] = module.weight.detach().float().t().contiguous()
            cache[family, dtype] = Checkpoint(family, dtype, path, model.float().to(DEVICE), weights)
        return cache[family, dtype]

    return get


def _bnb_config(quant_type="nf4", double_quant=True, compute_dtype=torch.bfloat16):
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)


def _load_4bit(ckpt, device_map=None, **config):
    kwargs = {_DTYPE_KW: ckpt.dtype}
    model = AutoModelForCausalLM.from_pretrained(ckpt.path, quantization_config=_bnb_config(**config),
                                                 device_map=DEVICE_MAP if device_map is None else device_map, **kwargs)
    return model.eval()


def _tokens(batch=2, length=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g).to(DEVICE)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()).item()


def _rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def _fake_quantized(ckpt, model):
    """The float32 checkpoint model with each quantized layer's weight = dequantize_4bit of its codes."""
    fake = copy.deepcopy(ckpt.reference)
    modules = dict(fake.named_modules())
    for name, layer in _4bit_layers(model).items():
        w = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        target = modules[name]
        if type(target).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            w = w.t()
        target.weight.data = w.contiguous().to(target.weight.device)
    return fake


def _4bit_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def _short(name):
    # peft wraps layers as 'base_model.model.<name>.base_layer': compare on the original name.
    return name.split("base_model.model.", 1)[-1].replace(".base_layer", "")


# ---- loading ----------------------------------------------------------------------------------------

LOAD_CASES = [
    # (checkpoint dtype, quant_type, double quant, compute dtype): every value of every axis appears.
    (torch.float16, "nf4", True, torch.bfloat16),
    (torch.float16, "nf4", False, torch.float16),
    (torch.bfloat16, "nf4", True, torch.float32),
    (torch.float16, "fp4", True, torch.float16),
    (torch.bfloat16, "fp4", False, torch.bfloat16),
]


def _case_id(case):
    dtype, qt, dq, cd = case
    return f"{DTYPE_IDS[dtype]}-{qt}-{'dq' if dq else 'plain'}-compute_{DTYPE_IDS[cd]}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("case", LOAD_CASES, ids=_case_id)
def test_load_in_4bit_matches_16bit(checkpoints, family, case):
    dtype, quant_type, double_quant, compute_dtype = case
    ckpt = checkpoints(family, dtype)
    model = _load_4bit(ckpt, quant_type=quant_type, double_quant=double_quant, compute_dtype=compute_dtype)
    layers = _4bit_layers(model)
    assert set(layers) == set(ckpt.weights), "every Linear / Conv1D but lm_head became a Linear4bit"
    assert len(layers) == QUANTIZED_PER_LAYER[family] * N_LAYERS
    assert not [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    for name, layer in layers.items():
        w = layer.weight
        assert type(w).__name__ == "Params4bit" and isinstance(w, bnb.nn.Params4bit)
        assert w.bnb_quantized and w.quant_type == quant_type and w.compress_statistics == double_quant
        assert w.dtype == torch.uint8 and w.device.type == "cuda" and not w.requires_grad
        qs = w.quant_state
        assert qs is layer.quant_state and qs.quant_type == quant_type and qs.nested == double_quant
        assert qs.blocksize == BLOCKSIZE and qs.dtype == dtype and qs.absmax.device.type == "cuda"
        n, k = ckpt.weights[name].shape
        assert tuple(qs.shape) == (n, k) == (layer.out_features, layer.in_features)
        assert tuple(w.shape) == ((n * k + 1) // 2, 1)
        assert layer.compute_dtype == compute_dtype
        err = _rel_err(F.dequantize_4bit(w.data, qs).float(), ckpt.weights[name])
        assert err < MAX_WEIGHT_ERROR[quant_type], f"{name}: weight error {err:.4f}"
    ids = _tokens()
    logits = _logits(model, ids)
    assert logits.shape == (2, 16, VOCAB) and torch.isfinite(logits).all()
    fake = _logits(_fake_quantized(ckpt, model), ids)
    err, cos = _rel_err(logits, fake), _cosine(logits, fake)
    assert err <= MAX_KERNEL_ERROR and cos >= MIN_KERNEL_COSINE, f"vs fake-quantized model: {err:.5f} {cos:.6f}"
    cos = _cosine(logits, _logits(ckpt.reference, ids))
    assert cos >= MIN_COSINE[quant_type], f"logits cosine {cos:.5f} against the 16-bit model"
    fp_bytes = sum(p.numel() * p.element_size() for p in ckpt.reference.parameters()) // 2
    assert model.get_memory_footprint() < fp_bytes


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_device_map_auto(checkpoints, family):
    pytest.importorskip("accelerate", reason="device_map='auto' needs accelerate")
    ckpt = checkpoints(family)
    model = _load_4bit(ckpt, device_map="auto")
    single = _load_4bit(ckpt)
    assert set(_4bit_layers(model)) == set(ckpt.weights)
    for name, layer in _4bit_layers(model).items():
        assert layer.weight.device.type == "cuda" and layer.weight.quant_state.absmax.device.type == "cuda"
        # Quantization is deterministic: the same bytes whatever the device map.
        assert torch.equal(layer.weight.data, _4bit_layers(single)[name].weight.data)
    ids = _tokens()
    torch.testing.assert_close(_logits(model, ids), _logits(single, ids), rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_and_single_row_decode(checkpoints, family):
    ckpt = checkpoints(family)
    model = _load_4bit(ckpt, compute_dtype=torch.float16)
    ids = _tokens(batch=1, length=8)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         pad_token_id=0)
    assert out.shape[0] == 1 and 8 < out.shape[1] <= 14
    assert torch.equal(out[:, :8], ids)
    # A cached decode step multiplies a single row (the weight-streaming path); the full forward
    # multiplies 8 rows at once. Both must give the same last-position logits up to fp16 rounding.
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits.float()
    full = _logits(model, ids)
    assert _cosine(step[:, -1], full[:, -1]) > 0.999


# ---- serialization ----------------------------------------------------------------------------------


def _load_safetensors(directory):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="needs safetensors")
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(safetensors_torch.load_file(str(file)))
    assert tensors, f"no safetensors file in {directory}"
    return tensors


def _check_4bit_layout(tensors, model, quant_type, double_quant, dtype):
    """The saved keys, dtypes and shapes of every Linear4bit are exactly compat.md §2.1's."""
    layers = _4bit_layers(model)
    assert layers
    for name, layer in layers.items():
        p = name + "."
        expected = {p + "weight", p + "weight.absmax", p + "weight.quant_map",
                    p + f"weight.quant_state.bitsandbytes__{quant_type}"}
        if double_quant:
            expected |= {p + "weight.nested_absmax", p + "weight.nested_quant_map"}
        if layer.bias is not None:
            expected.add(p + "bias")
        assert {k for k in tensors if k.startswith(p)} == expected, name
        n, k = layer.out_features, layer.in_features
        nblocks = math.ceil(n * k / BLOCKSIZE)
        weight = tensors[p + "weight"]
        assert weight.dtype == torch.uint8 and tuple(weight.shape) == ((n * k + 1) // 2, 1)
        assert torch.equal(weight, layer.weight.data.cpu()), f"{name}: saved codes differ from the layer's"
        absmax = tensors[p + "weight.absmax"]
        assert absmax.dtype == (torch.uint8 if double_quant else torch.float32) and tuple(absmax.shape) == (nblocks,)
        assert torch.equal(absmax, layer.weight.quant_state.absmax.cpu())
        quant_map = tensors[p + "weight.quant_map"]
        assert quant_map.dtype == torch.float32 and tuple(quant_map.shape) == (16,)
        torch.testing.assert_close(quant_map, F.get_4bit_type(quant_type, device="cpu").float(), rtol=0, atol=0)
        if double_quant:
            nested_absmax = tensors[p + "weight.nested_absmax"]
            assert nested_absmax.dtype == torch.float32
            assert tuple(nested_absmax.shape) == (math.ceil(nblocks / NESTED_BLOCKSIZE),)
            nested_map = tensors[p + "weight.nested_quant_map"]
            assert nested_map.dtype == torch.float32 and tuple(nested_map.shape) == (256,)
        blob = tensors[p + f"weight.quant_state.bitsandbytes__{quant_type}"]
        assert blob.dtype == torch.uint8 and blob.dim() == 1
        raw = bytes(blob.tolist())
        meta = json.loads(raw.decode("utf-8"))
        keys = ["quant_type", "blocksize", "dtype", "shape"]
        if double_quant:
            keys += ["nested_blocksize", "nested_dtype", "nested_offset"]
        assert list(meta) == keys, meta
        assert meta["quant_type"] == quant_type and meta["blocksize"] == BLOCKSIZE
        assert meta["dtype"] == DTYPE_NAMES[dtype] and meta["shape"] == [n, k]
        if double_quant:
            assert meta["nested_blocksize"] == NESTED_BLOCKSIZE and meta["nested_dtype"] == "float32"
            assert isinstance(meta["nested_offset"], float)
            assert meta["nested_offset"] == pytest.approx(layer.weight.quant_state.offset.item(), rel=1e-6)
        # Byte-compatible with upstream: plain json.dumps of that dict, in that order.
        assert raw == json.dumps(meta).encode("utf-8")


SAVE_CASES = [
    ("llama", torch.float16, "nf4", True),
    ("llama", torch.bfloat16, "fp4", False),
    ("gpt2", torch.float16, "nf4", False),
    ("gpt2", torch.bfloat16, "fp4", True),
]


@pytest.mark.parametrize("family,dtype,quant_type,double_quant", SAVE_CASES,
                         ids=[f"{f}-{DTYPE_IDS[d]}-{q}-{'dq' if n else 'plain'}" for f, d, q, n in SAVE_CASES])
def test_save_and_reload_4bit_is_bit_identical(checkpoints, tmp_path, family, dtype, quant_type, double_quant):
    ckpt = checkpoints(family, dtype)
    model = _load_4bit(ckpt, quant_type=quant_type, double_quant=double_quant, compute_dtype=dtype)
    ids = _tokens()
    expected = _logits(model, ids)
    saved = tmp_path / "4bit"
    model.save_pretrained(saved)
    _check_4bit_layout(_load_safetensors(saved), model, quant_type, double_quant, dtype)
    fp_bytes = sum(f.stat().st_size for f in ckpt.path.glob("*.safetensors"))
    q_bytes = sum(f.stat().st_size for f in saved.glob("*.safetensors"))
    assert q_bytes < fp_bytes

    reloaded = AutoModelForCausalLM.from_pretrained(saved, device_map=DEVICE_MAP).eval()
    assert set(_4bit_layers(reloaded)) == set(_4bit_layers(model))
    for name, layer in _4bit_layers(reloaded).items():
        orig = _4bit_layers(model)[name]
        assert type(layer.weight).__name__ == "Params4bit" and layer.weight.device.type == "cuda"
        assert torch.equal(layer.weight.data, orig.weight.data)
        qs, qs0 = layer.weight.quant_state, orig.weight.quant_state
        assert qs.quant_type == quant_type and qs.nested == double_quant and qs.dtype == qs0.dtype
        assert tuple(qs.shape) == tuple(qs0.shape) and torch.equal(qs.absmax, qs0.absmax)
        if double_quant:
            assert torch.equal(qs.state2.absmax, qs0.state2.absmax) and torch.equal(qs.offset, qs0.offset)
    torch.testing.assert_close(_logits(reloaded, ids), expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dequantize_gives_a_close_float_model(checkpoints, family):
    ckpt = checkpoints(family)
    model = _load_4bit(ckpt, quant_type="nf4", double_quant=True, compute_dtype=torch.float16)
    ids = _tokens()
    logits_4bit = _logits(model, ids)
    expected = {name: F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
                for name, layer in _4bit_layers(model).items()}
    model = model.dequantize() or model
    assert not _4bit_layers(model)
    modules = dict(model.named_modules())
    for name, weight in expected.items():
        layer = modules[name]
        assert type(layer) is torch.nn.Linear, f"{name} is {type(layer).__name__}"
        assert layer.weight.dtype == ckpt.dtype and layer.weight.device.type == "cuda"
        assert torch.equal(layer.weight.data, weight.to(layer.weight.dtype))
        assert _rel_err(layer.weight.float(), ckpt.weights[name]) < MAX_WEIGHT_ERROR["nf4"]
    logits = _logits(model, ids)
    # The same weights multiplied in fp16 by torch instead of the 4-bit kernels.
    assert _cosine(logits, logits_4bit) > 0.9999
    assert _cosine(logits, _logits(ckpt.reference, ids)) >= MIN_COSINE["nf4"]


# ---- QLoRA ------------------------------------------------------------------------------------------

LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_qlora_training_with_paged_8bit_optimizer_then_merge(checkpoints, family):
    peft = pytest.importorskip("peft", reason="peft is not installed")
    ckpt = checkpoints(family)
    model = _load_4bit(ckpt, quant_type="nf4", double_quant=True, compute_dtype=torch.bfloat16)
    model = peft.prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS[family],
                             task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    base_layers = _4bit_layers(model)
    assert len(base_layers) == QUANTIZED_PER_LAYER[family] * N_LAYERS
    assert all(not layer.weight.requires_grad for layer in base_layers.values())
    packed_before = {_short(n): layer.weight.data.clone() for n, layer in base_layers.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    # Small LoRA matrices: min_8bit_size lowered so that their states really are 8-bit.
    opt = bnb.optim.PagedAdamW8bit(trainable, lr=1e-2, min_8bit_size=256)
    assert opt.is_paged
    ids = _tokens(batch=4, length=32, seed=3)
    model.train()
    losses = train_on_batch(model, opt, ids, 20)
    assert all(math.isfinite(x) for x in losses), losses
    # Memorizing one batch of random tokens: from ln(256) = 5.55 the loss falls by ~0.6 in 20 steps
    # for either family (measured with the CPU kernels); half of that is required.
    assert losses[-1] < losses[0] - 0.3, f"loss did not decrease enough: {losses}"
    states = [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    assert any(v.dtype == torch.uint8 for v in states), "some optimizer states are 8-bit"
    # The frozen 4-bit weights did not move.
    for name, layer in _4bit_layers(model).items():
        assert torch.equal(layer.weight.data, packed_before[_short(name)])

    model.eval()
    lora_logits = _logits(model, ids)
    with torch.no_grad():
        lora_loss = model(input_ids=ids, labels=ids).loss.item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that re-quantizing W + BA to 4 bits rounds
        merged = model.merge_and_unload()
    assert not [n for n, _ in merged.named_parameters() if "lora_" in n]
    layers = _4bit_layers(merged)
    assert set(layers) == set(ckpt.weights)
    changed = 0
    for name, layer in layers.items():
        assert type(layer.weight).__name__ == "Params4bit" and layer.weight.bnb_quantized
        assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.device.type == "cuda"
        changed += not torch.equal(layer.weight.data, packed_before[name])
    assert changed == len(LORA_TARGETS[family]) * N_LAYERS, "exactly the LoRA targets were re-quantized"
    merged_logits = _logits(merged, ids)
    with torch.no_grad():
        merged_loss = merged(input_ids=ids, labels=ids).loss.item()
    # Merging re-quantizes W + BA to nf4: the logits move by about one quantization error, and the
    # learned adaptation survives (the loss stays well below where training started).
    assert _cosine(merged_logits, lora_logits) >= MIN_COSINE["nf4"]
    assert merged_loss < losses[0] - 0.5 * (losses[0] - lora_loss), (losses[0], lora_loss, merged_loss)

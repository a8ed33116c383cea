"""LLM.int8() through transformers / accelerate / peft (compat.md §7), offline, on a GPU.

Tiny Llama and GPT-2 models are built from configs (random weights, no downloads), saved in fp16
and reloaded with ``BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)``. GPT-2 also
covers the Conv1D layers that transformers transposes before quantizing.

Oracle: the same model in fp16 (logits cosine >= 0.999, as compat/issue 4 ask); a saved and
reloaded 8-bit model must give bit-identical logits.
"""

import pytest
import torch

import bitsandbytes as bnb
from helpers import train_on_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

THRESHOLD = 6.0
VOCAB = 256
MIN_COSINE = 0.999


def _llama_config():
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def _gpt2_config():
    return transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=128, n_layer=2, n_head=4, n_positions=128, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )


FAMILIES = {
    "llama": (_llama_config, transformers.LlamaForCausalLM),
    "gpt2": (_gpt2_config, transformers.GPT2LMHeadModel),
}


@pytest.fixture(params=sorted(FAMILIES))
def fp16_checkpoint(request, tmp_path):
    """(fp16 model on cuda:0, directory of its fp16 checkpoint)."""
    make_config, cls = FAMILIES[request.param]
    torch.manual_seed(0)
    model = cls(make_config()).half().eval()
    path = tmp_path / f"{request.param}-fp16"
    model.save_pretrained(path)
    return model.cuda(), path


def _bnb_config():
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=THRESHOLD)


def _load_8bit(path, device_map):
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=_bnb_config(), device_map=device_map)
    return model.eval()


def _tokens(batch=2, length=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g).cuda()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()).item()


def _int8_layers(model):
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]


@pytest.mark.parametrize("device_map", [{"": 0}, "auto"], ids=["single-gpu", "auto"])
def test_load_in_8bit_matches_fp16(fp16_checkpoint, device_map):
    if device_map == "auto":
        pytest.importorskip("accelerate", reason="device_map='auto' needs accelerate")
    fp16_model, path = fp16_checkpoint
    model = _load_8bit(path, device_map)
    layers = _int8_layers(model)
    assert layers, "the linear layers were replaced by Linear8bitLt"
    for layer in layers:
        assert type(layer.weight).__name__ == "Int8Params"
        assert layer.weight.dtype == torch.int8 and layer.weight.device.type == "cuda"
        assert layer.state.threshold == THRESHOLD and layer.state.has_fp16_weights is False
    assert model.get_memory_footprint() < fp16_model.get_memory_footprint()
    ids = _tokens()
    cos = _cosine(_logits(model, ids), _logits(fp16_model, ids))
    assert cos >= MIN_COSINE, f"logits cosine {cos:.6f} against fp16"


def test_generate(fp16_checkpoint):
    _, path = fp16_checkpoint
    model = _load_8bit(path, {"": 0})
    ids = _tokens(batch=1, length=8)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         pad_token_id=0)
    assert out.shape[0] == 1 and 8 < out.shape[1] <= 14
    assert torch.equal(out[:, :8], ids)


def test_save_and_reload_8bit_is_bit_identical(fp16_checkpoint, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="needs safetensors")
    _, path = fp16_checkpoint
    model = _load_8bit(path, {"": 0})
    ids = _tokens()
    expected = _logits(model, ids)
    saved = tmp_path / "int8"
    model.save_pretrained(saved)
    # The checkpoint holds the spec's layout: int8 rows, float32 row scales, and the row-major tag.
    tensors = {}
    for file in sorted(saved.glob("*.safetensors")):
        tensors.update(safetensors_torch.load_file(str(file)))
    scb_keys = [k for k in tensors if k.endswith(".SCB")]
    assert scb_keys, "8-bit layers save their SCB"
    for key in scb_keys:
        prefix = key[: -len("SCB")]
        assert tensors[prefix + "weight"].dtype == torch.int8
        assert tensors[key].dtype == torch.float32 and tensors[key].shape == (tensors[prefix + "weight"].shape[0],)
        if prefix + "weight_format" in tensors:
            fmt = tensors[prefix + "weight_format"]
            assert fmt.dtype == torch.uint8 and fmt.numel() == 1 and fmt.item() == 0
    reloaded = AutoModelForCausalLM.from_pretrained(saved, device_map={"": 0}).eval()
    assert len(_int8_layers(reloaded)) == len(_int8_layers(model))
    for a, b in zip(_int8_layers(model), _int8_layers(reloaded)):
        assert torch.equal(a.weight.data, b.weight.data)
    torch.testing.assert_close(_logits(reloaded, ids), expected, rtol=0, atol=0)


def test_model_to_cpu_and_back_keeps_outputs(fp16_checkpoint):
    _, path = fp16_checkpoint
    model = _load_8bit(path, {"": 0})
    ids = _tokens()
    expected = _logits(model, ids)
    weights = [layer.weight.data.clone() for layer in _int8_layers(model)]
    model.to("cpu")
    for layer, w in zip(_int8_layers(model), weights):
        assert layer.weight.device.type == "cpu" and torch.equal(layer.weight.data, w.cpu())
    model.to("cuda")
    torch.testing.assert_close(_logits(model, ids), expected, rtol=0, atol=0)


def _lora_model(path):
    peft = pytest.importorskip("peft", reason="peft is not installed")
    model = _load_8bit(path, {"": 0})
    model = peft.prepare_model_for_kbit_training(model)
    targets = ["q_proj", "v_proj"] if "llama" in path.name else ["c_attn"]
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def test_peft_lora_training_reduces_loss(fp16_checkpoint):
    _, path = fp16_checkpoint
    model = _lora_model(path)
    model.train()
    base_layers = _int8_layers(model)
    assert base_layers and all(not layer.weight.requires_grad for layer in base_layers)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    ids = _tokens(batch=4, length=32, seed=3)
    opt = torch.optim.AdamW(trainable, lr=5e-3)
    losses = train_on_batch(model, opt, ids, 12)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], f"loss did not decrease: {losses}"


def test_trainer_with_adamw_bnb_8bit(fp16_checkpoint, tmp_path):
    _, path = fp16_checkpoint
    model = _lora_model(path)
    ids = _tokens(batch=8, length=32, seed=4).cpu()
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        optim="adamw_bnb_8bit", logging_steps=1, save_strategy="no", report_to="none",
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(optimizer, bnb.optim.optimizer.Optimizer8bit), type(optimizer)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert changed, "the optimizer updated the LoRA weights"

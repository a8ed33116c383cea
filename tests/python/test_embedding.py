"""bitsandbytes.nn.Embedding and StableEmbedding: initialisation, forward, and the 32-bit optimizer
state they force for their weight."""

import math

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes.optim import GlobalOptimManager
from helpers import DEVICES


@pytest.fixture(autouse=True)
def _fresh_manager():
    GlobalOptimManager.get_instance().initialize()
    yield
    GlobalOptimManager.get_instance().initialize()


@pytest.mark.parametrize("cls", [bnb.nn.Embedding, bnb.nn.StableEmbedding])
def test_xavier_uniform_init_and_padding(cls):
    emb = cls(1000, 64, padding_idx=3)
    bound = math.sqrt(6.0 / (1000 + 64))
    w = emb.weight.detach()
    assert w.abs().max() <= bound
    # A uniform distribution on [-b, b] has standard deviation b / sqrt(3).
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.equal(w[3], torch.zeros(64))
    assert isinstance(emb, torch.nn.Embedding)


@pytest.mark.parametrize("cls", [bnb.nn.Embedding, bnb.nn.StableEmbedding])
def test_registers_32bit_override(cls):
    emb = cls(10, 4)
    triples = GlobalOptimManager.get_instance().module_weight_config_triple
    assert (emb, "weight", {"optim_bits": 32}) in [(m, a, c) for m, a, c in triples]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", [bnb.nn.Embedding, bnb.nn.StableEmbedding])
def test_weight_keeps_32bit_state_under_8bit_optimizer(cls, device):
    emb = cls(200, 64, device=device)  # 12800 elements: would get 8-bit states otherwise
    head = torch.nn.Linear(64, 80, device=device)
    opt = bnb.optim.Adam8bit(list(emb.parameters()) + list(head.parameters()))
    x = torch.randint(0, 200, (16, 5), device=device)
    head(emb(x)).sum().backward()
    opt.step()
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    assert opt.state[head.weight]["state1"].dtype == torch.uint8


def test_embedding_forward_matches_torch():
    emb = bnb.nn.Embedding(50, 8, padding_idx=0, max_norm=None)
    ref = torch.nn.Embedding(50, 8, padding_idx=0, _weight=emb.weight.detach().clone())
    x = torch.randint(0, 50, (4, 7))
    torch.testing.assert_close(emb(x), ref(x), rtol=0, atol=0)


def test_embedding_accepts_given_weight():
    w = torch.randn(5, 3)
    emb = bnb.nn.Embedding(5, 3, _weight=w)
    assert torch.equal(emb.weight.detach(), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_stable_embedding_layer_norm_and_output_dtype(dtype):
    emb = bnb.nn.StableEmbedding(30, 16, dtype=dtype)
    assert emb.weight.dtype == dtype
    assert isinstance(emb.norm, torch.nn.LayerNorm) and emb.norm.weight.dtype == torch.float32
    x = torch.randint(0, 30, (3, 5))
    out = emb(x)
    assert out.dtype == dtype and out.shape == (3, 5, 16)
    # Layer norm in float32: each output row has mean 0 and variance 1 (up to the output dtype).
    ref = torch.nn.functional.layer_norm(emb.weight.float()[x], (16,), emb.norm.weight, emb.norm.bias)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_stable_embedding_trains():
    emb = bnb.nn.StableEmbedding(20, 8)
    opt = bnb.optim.AdamW8bit(emb.parameters(), lr=1e-2)
    x = torch.randint(0, 20, (8,))
    target = torch.randn(8, 8)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(emb(x), target)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_module_logger_name():
    assert bnb.nn.modules.logger.name == "bitsandbytes.nn.modules"


@pytest.mark.parametrize("cls", [bnb.nn.Embedding, bnb.nn.StableEmbedding])
def test_weight_is_trainable_with_device_argument(cls):
    emb = cls(10, 4, device="cpu")
    assert emb.weight.requires_grad and emb.weight.device.type == "cpu"

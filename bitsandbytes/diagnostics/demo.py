"""A short demo of what the library does: quantize a model's weights, show memory saved and error incurred."""

from __future__ import annotations

import torch

from .. import functional as F


def _bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _state_bytes(state) -> int:
    total = _bytes(state.absmax, state.code)
    if state.nested:
        total += _bytes(state.state2.absmax, state.state2.code, state.offset)
    return total


def run_demo(device: str) -> None:
    torch.manual_seed(0)
    dtype = torch.float16 if device != "cpu" else torch.bfloat16
    dims = [1024, 4096, 1024]
    layers = [torch.nn.Linear(dims[i], dims[i + 1], bias=False) for i in range(len(dims) - 1)]
    model = torch.nn.Sequential(layers[0], torch.nn.GELU(), layers[1]).to(device=device, dtype=dtype)
    x = torch.randn(8, dims[0], device=device, dtype=dtype)
    with torch.no_grad():
        reference = model(x).float()

    print(f"\nDemo on {device}: a {dims[0]}-{dims[1]}-{dims[2]} MLP in {str(dtype).replace('torch.', '')}")
    print(f"  {'format':28s} {'weight memory':>14s} {'saved':>7s} {'weight error':>13s} {'output error':>13s}")
    fp_bytes = sum(_bytes(l.weight) for l in layers)
    print(f"  {'16-bit (original)':28s} {fp_bytes / 2**20:11.2f} MiB {'':>7s} {'-':>13s} {'-':>13s}")

    def quantizers():
        yield "8-bit blockwise (bs 4096)", lambda w: F.quantize_blockwise(w, blocksize=4096), F.dequantize_blockwise
        yield "nf4 (bs 64)", lambda w: F.quantize_4bit(w, quant_type="nf4"), F.dequantize_4bit
        yield "nf4 + double quant", lambda w: F.quantize_4bit(w, quant_type="nf4", compress_statistics=True), F.dequantize_4bit
        yield "fp4 (bs 64)", lambda w: F.quantize_4bit(w, quant_type="fp4"), F.dequantize_4bit

    for name, quantize, dequantize in quantizers():
        q_bytes, weight_err, restored = 0, 0.0, []
        for layer in layers:
            w = layer.weight.data
            q, state = quantize(w)
            q_bytes += _bytes(q) + _state_bytes(state)
            w_hat = dequantize(q, state).to(dtype)
            weight_err += ((w_hat.float() - w.float()).norm() / w.float().norm()).item() / len(layers)
            restored.append(w_hat)
        originals = [l.weight.data for l in layers]
        for layer, w_hat in zip(layers, restored):
            layer.weight.data = w_hat
        with torch.no_grad():
            out = model(x).float()
        for layer, w in zip(layers, originals):
            layer.weight.data = w
        out_err = ((out - reference).norm() / reference.norm()).item()
        print(f"  {name:28s} {q_bytes / 2**20:11.2f} MiB {1 - q_bytes / fp_bytes:6.1%} {weight_err:12.2%} "
              f"{out_err:12.2%}")
    print("  (errors are relative L2 norms; output = the MLP run with the dequantized weights)")
    for int8_device in dict.fromkeys(["cpu", device]):
        run_int8_demo(int8_device)
    run_4bit_demo(device)


def run_int8_demo(device: str) -> None:
    """LLM.int8() inference of a small MLP against the same MLP in 16 bits: weight memory and output error."""
    from ..nn import Linear8bitLt

    torch.manual_seed(0)
    dtype = torch.float16 if device != "cpu" else torch.bfloat16
    dims = [1024, 4096, 1024]
    reference = torch.nn.Sequential(torch.nn.Linear(dims[0], dims[1]), torch.nn.GELU(),
                                    torch.nn.Linear(dims[1], dims[2])).to(device=device, dtype=dtype).eval()
    x = torch.randn(8, dims[0])
    x[:, [17, 300, 901]] *= 25.0  # a few outlier features, as large language models have
    x = x.to(device=device, dtype=dtype)
    with torch.no_grad():
        expected = reference(x).float()
    fp_bytes = sum(_bytes(m.weight) for m in reference if isinstance(m, torch.nn.Linear))
    print(f"\nDemo on {device}: LLM.int8() inference of the {dims[0]}-{dims[1]}-{dims[2]} MLP "
          f"(3 outlier input features), {str(dtype).replace('torch.', '')} activations")
    print(f"  {'layer':30s} {'weight memory':>14s} {'saved':>7s} {'output error':>13s}")
    print(f"  {'nn.Linear (16-bit)':30s} {fp_bytes / 2**20:11.2f} MiB {'':>7s} {'-':>13s}")
    for threshold in (0.0, 6.0):
        int8_layers = []
        for m in reference:
            if isinstance(m, torch.nn.Linear):
                layer = Linear8bitLt(m.in_features, m.out_features, has_fp16_weights=False, threshold=threshold)
                layer.load_state_dict(m.state_dict())
                m = layer
            int8_layers.append(m)
        try:
            model = torch.nn.Sequential(*int8_layers).to(device).eval()  # quantizes the weights
            with torch.no_grad():
                out = model(x).float()
        except NotImplementedError as err:  # a device without the int8 matmul kernels
            print(f"  LLM.int8() is not available on {device}: {err}")
            return
        q_bytes = sum(_bytes(m.weight, m.state.SCB) for m in model if isinstance(m, Linear8bitLt))
        err = ((out - expected).norm() / expected.norm()).item()
        name = f"Linear8bitLt, threshold {threshold:g}"
        print(f"  {name:30s} {q_bytes / 2**20:11.2f} MiB {1 - q_bytes / fp_bytes:6.1%} {err:12.2%}")
    print("  (output error: relative L2 norm against the 16-bit MLP; threshold 6 runs the outlier features in 16 bits)")


class _LoRALinear(torch.nn.Module):
    """A frozen base layer plus a trainable low-rank update: y = base(x) + (x A^T B^T) * alpha / rank.

    B starts at zero, so training starts from the base layer's outputs (as LoRA does).
    """

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        device = base.weight.device
        self.lora_a = torch.nn.Parameter(torch.randn(rank, base.in_features, device=device) / base.in_features ** 0.5)
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x.float() @ self.lora_a.t()) @ self.lora_b.t()
        return self.base(x) + (update * self.scale).to(x.dtype)


def run_4bit_demo(device: str, steps: int = 20) -> None:
    """QLoRA in small: an MLP with nf4 double-quantized Linear4bit layers against its 16-bit original (weight
    memory, output error), then rank-8 adapters on the frozen 4-bit layers trained with AdamW8bit."""
    from .. import optim
    from ..nn import Linear4bit

    torch.manual_seed(0)
    dtype = torch.float16 if device != "cpu" else torch.bfloat16
    dims = [1024, 4096, 1024] if device != "cpu" else [512, 2048, 512]  # CPU: smaller, to stay quick
    reference = torch.nn.Sequential(torch.nn.Linear(dims[0], dims[1]), torch.nn.GELU(),
                                    torch.nn.Linear(dims[1], dims[2])).to(dtype=dtype).eval()
    modules = []
    for m in reference:
        if isinstance(m, torch.nn.Linear):
            layer = Linear4bit(m.in_features, m.out_features, compute_dtype=dtype, compress_statistics=True,
                               quant_type="nf4")
            layer.weight.data = m.weight.data.clone()
            layer.bias.data = m.bias.data.clone()
            m = layer
        modules.append(m)
    reference = reference.to(device)
    try:
        model = torch.nn.Sequential(*modules).to(device).eval()  # the move to the device quantizes
    except NotImplementedError as err:
        print(f"\n4-bit layers are not available on {device}: {err}")
        return
    x = torch.randn(16, dims[0], device=device, dtype=dtype)
    with torch.no_grad():
        expected = reference(x).float()
        out = model(x).float()
    fp_bytes = sum(_bytes(m.weight) for m in reference if isinstance(m, torch.nn.Linear))
    q_bytes = sum(_bytes(m.weight) + _state_bytes(m.weight.quant_state) for m in model if isinstance(m, Linear4bit))
    err = ((out - expected).norm() / expected.norm()).item()
    dims_str = "-".join(map(str, dims))
    print(f"\nDemo on {device}: 4-bit inference of a {dims_str} MLP and {steps} QLoRA steps, "
          f"{str(dtype).replace('torch.', '')} activations")
    print(f"  {'layer':30s} {'weight memory':>14s} {'saved':>7s} {'output error':>13s}")
    print(f"  {'nn.Linear (16-bit)':30s} {fp_bytes / 2**20:11.2f} MiB {'':>7s} {'-':>13s}")
    print(f"  {'Linear4bit, nf4 + double quant':30s} {q_bytes / 2**20:11.2f} MiB {1 - q_bytes / fp_bytes:6.1%} "
          f"{err:12.2%}")

    # Fine-tuning task: match a copy of the 16-bit MLP whose layers received a rank-4 change. Only
    # the adapters (fp32) train; the 4-bit weights stay frozen and gradients flow through them.
    gen = torch.Generator().manual_seed(2)
    target_model = torch.nn.Sequential(*[torch.nn.Linear(m.in_features, m.out_features)
                                         if isinstance(m, torch.nn.Linear) else m
                                         for m in reference]).to(device=device, dtype=dtype)
    with torch.no_grad():
        for src, dst in zip(reference, target_model):
            if isinstance(src, torch.nn.Linear):
                u = torch.randn(src.out_features, 4, generator=gen) / 4
                v = torch.randn(4, src.in_features, generator=gen) / src.in_features ** 0.5
                dst.weight.copy_(src.weight + (u @ v).to(device=device, dtype=dtype))
                dst.bias.copy_(src.bias)
    inputs = torch.randn(64, dims[0], generator=gen).to(device=device, dtype=dtype)
    with torch.no_grad():
        targets = target_model(inputs).float()
    student = torch.nn.Sequential(*[_LoRALinear(m, rank=8, alpha=16.0) if isinstance(m, Linear4bit) else m
                                    for m in model]).train()
    adapters = [p for p in student.parameters() if p.requires_grad]
    opt = optim.AdamW8bit(adapters, lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(student(inputs).float(), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    n_adapter = sum(p.numel() for p in adapters)
    n_base = sum(m.in_features * m.out_features for m in model if isinstance(m, Linear4bit))
    shown = " ".join(f"{losses[i]:.4f}" for i in sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1}))
    print(f"  QLoRA: rank-8 adapters ({n_adapter / 1e3:.0f}K fp32 parameters, {n_adapter / n_base:.1%} of the frozen "
          f"4-bit weights), bnb.optim.AdamW8bit, lr 3e-3")
    print(f"  loss (MSE to the fine-tuning target) at steps 1, {steps // 4 + 1}, {steps // 2 + 1}, "
          f"{3 * steps // 4 + 1}, {steps}: {shown}")
    print("  (output error: relative L2 norm against the 16-bit MLP; the target is that MLP with a rank-4 change "
          "per layer)")


def _optimizer_state_bytes(opt) -> int:
    total, seen = 0, set()
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.data_ptr() not in seen:
                seen.add(v.data_ptr())  # code books are shared between parameters
                total += v.numel() * v.element_size()
    return total


def run_optimizer_demo(device: str) -> None:
    """Train the same small regression MLP with torch AdamW and with AdamW8bit; compare state memory and loss."""
    from .. import optim

    print(f"\nDemo on {device}: 60 training steps of a 256-1024-256 MLP, torch AdamW vs bitsandbytes AdamW8bit")
    data_gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 256, generator=data_gen).to(device)
    y = torch.sin(x @ torch.randn(256, 256, generator=data_gen).to(device) / 16)
    results = []
    for name, make in (("torch.optim.AdamW", lambda ps: torch.optim.AdamW(ps, lr=1e-3)),
                       ("bnb.optim.AdamW8bit", lambda ps: optim.AdamW8bit(ps, lr=1e-3))):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)).to(device)
        opt = make(model.parameters())
        first = None
        for _ in range(60):
            loss = torch.nn.functional.mse_loss(model(x), y)
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append((name, _optimizer_state_bytes(opt), first, loss.item()))
    params = sum(p.numel() for p in model.parameters())
    print(f"  {'optimizer':22s} {'state memory':>13s} {'bytes/param':>12s} {'loss start':>11s} {'loss end':>9s}")
    for name, state_bytes, first, last in results:
        print(f"  {name:22s} {state_bytes / 2**20:9.2f} MiB {state_bytes / params:12.2f} {first:11.4f} {last:9.4f}")
    saved = 1 - results[1][1] / results[0][1]
    print(f"  8-bit states save {saved:.0%} of the optimizer memory ({params / 1e6:.2f}M parameters)")

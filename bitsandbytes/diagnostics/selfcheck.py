"""Self-check: run every implemented kernel family on every available device.

CPU results are compared with small float64 oracles written here from the format definitions;
CUDA results must equal the CPU bytes exactly (and the CPU result is itself checked first).
"""

from __future__ import annotations

import traceback
from typing import Callable, List, Tuple

import torch

from .. import functional as F
from ..autograd._functions import matmul_4bit


def _oracle_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int):
    x = A.float().reshape(-1)
    n = x.numel()
    pad = (-n) % blocksize
    blocks = torch.nn.functional.pad(x, (0, pad)).view(-1, blocksize)
    absmax = blocks.abs().amax(1)
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    v = (blocks * inv[:, None]).reshape(-1)[:n]
    mids = (code[:-1] + code[1:]) / 2
    return torch.bucketize(v, mids, right=False).to(torch.uint8), absmax


def _check_blockwise(device: str) -> str:
    A = torch.randn(5000, device=device, dtype=torch.float16)
    q, st = F.quantize_blockwise(A, blocksize=256)
    ref_q, ref_absmax = _oracle_blockwise(A.cpu(), F.create_dynamic_map().cpu(), 256)
    assert torch.equal(q.cpu(), ref_q), "8-bit codes differ from the oracle"
    assert torch.equal(st.absmax.cpu(), ref_absmax), "absmax differs from the oracle"
    out = F.dequantize_blockwise(q, st)
    err = (out.float() - A.float()).abs().mean().item()
    assert err < 0.02, f"dequantization error {err:.4f} too large"
    return f"codes exact, mean abs error {err:.4f}"


def _check_4bit(device: str) -> str:
    A = torch.randn(4099, device=device, dtype=torch.bfloat16)
    parts = []
    for qt, bound in (("nf4", 0.09), ("fp4", 0.12)):
        packed, st = F.quantize_4bit(A, blocksize=64, quant_type=qt, compress_statistics=True)
        out = F.dequantize_4bit(packed, st)
        err = (out.float() - A.float()).abs().mean().item()
        assert out.shape == A.shape and out.dtype == A.dtype
        assert err < bound, f"{qt} error {err:.4f} above {bound}"
        if device != "cpu":
            cpu_packed, _ = F.quantize_4bit(A.cpu(), blocksize=64, quant_type=qt)
            dev_packed, _ = F.quantize_4bit(A, blocksize=64, quant_type=qt)
            assert torch.equal(cpu_packed, dev_packed.cpu()), f"{qt} bytes differ between CPU and {device}"
        parts.append(f"{qt} {err:.4f}")
    return "mean abs error " + ", ".join(parts)


def _check_int8(device: str) -> str:
    A = torch.randn(64, 96, device=device, dtype=torch.float16)
    A[:, 5] = 20.0
    q, stats, cols = F.int8_vectorwise_quant(A, threshold=6.0)
    assert cols is not None and cols.tolist() == [5], f"outlier columns {cols}"
    ref = A.float().cpu().clone()
    ref[:, 5] = 0
    ref_stats = ref.abs().amax(1)
    ref_q = torch.round(ref * (127 / ref_stats[:, None])).to(torch.int8)
    assert torch.equal(stats.cpu(), ref_stats), "row statistics differ from the oracle"
    assert (q.cpu().int() - ref_q.int()).abs().max().item() <= 1, "int8 codes differ from the oracle"
    deq = F.int8_vectorwise_dequant(q, stats)
    err = (deq.cpu() - ref).abs().max().item()
    return f"outliers found, max dequant error {err:.4f}"


def _check_int8_matmul(device: str) -> str:
    """Exact int32 products (few rows: the streaming kernel; many: the GEMM library) and one-call
    LLM.int8 inference with an outlier feature against the float64 decomposition."""
    from ..backends.native_int8_matmul import int8_linear_direct

    gen = torch.Generator().manual_seed(1)
    B = torch.randint(-127, 128, (64, 256), generator=gen, dtype=torch.int8)
    for rows in (4, 40):
        A = torch.randint(-127, 128, (rows, 256), generator=gen, dtype=torch.int8)
        out = torch.ops.bitsandbytes.int8_linear_matmul(A.to(device), B.to(device))
        assert torch.equal(out.cpu().long(), A.long() @ B.long().T), f"int32 product differs at {rows} rows"
    X = torch.randn(3, 256, generator=gen)
    X[:, 17] = 30.0
    CB, SCB, _ = F.int8_vectorwise_quant(torch.randn(64, 256, generator=gen).half())
    y, _ = int8_linear_direct(X.half().to(device), CB.to(device), SCB.to(device), 6.0, None)
    W = CB.double() * SCB.double()[:, None] / 127
    err = ((y.cpu().double() - X.half().double() @ W.T).norm() / (X.double() @ W.T).norm()).item()
    assert err < 0.02, f"LLM.int8 output error {err:.4f} above 0.02"
    return f"int32 products exact, outlier decomposition error {err:.4f}"


def _check_4bit_matmul(device: str) -> str:
    """gemm_4bit against float64 on the dequantized weight, for few rows (the streaming kernels) and many."""
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(96, 512, generator=gen).to(device)
    packed, st = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
    Wd = F.dequantize_4bit(packed, st).double().cpu()
    worst = 0.0
    for rows in (1, 16, 40):
        X = torch.randn(rows, 512, generator=gen).to(torch.bfloat16)
        with torch.no_grad():
            y = matmul_4bit(X.to(device), packed.t(), st)
        ref = X.double() @ Wd.T
        worst = max(worst, ((y.cpu().double() - ref).norm() / ref.norm()).item())
    assert worst < 0.01, f"4-bit product error {worst:.4f} above 0.01"
    return f"max relative error {worst:.4f} (bf16, 1 / 16 / 40 rows)"


def _check_optimizers(device: str) -> str:
    """AdamW with 32-bit and 8-bit states against torch.optim.AdamW over a few steps."""
    from .. import optim

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5000, generator=gen)
    grads = [torch.randn(5000, generator=gen) for _ in range(4)]

    def run(make):
        p = torch.nn.Parameter(start.clone().to(device))
        opt = make([p])
        for g in grads:
            p.grad = g.to(device)
            opt.step()
        return p.detach().cpu()

    reference = run(lambda ps: torch.optim.AdamW(ps, lr=1e-2))
    moved = (reference - start).abs().mean().item()
    err32 = (run(lambda ps: optim.AdamW(ps, lr=1e-2)) - reference).abs().max().item()
    err8 = (run(lambda ps: optim.AdamW8bit(ps, lr=1e-2, min_8bit_size=0)) - reference).abs().mean().item()
    assert err32 < 1e-5, f"32-bit AdamW differs from torch by {err32:.2e}"
    assert err8 < 0.05 * moved, f"8-bit AdamW drifts {err8:.2e} from torch (update size {moved:.2e})"
    return f"32-bit max diff {err32:.1e}, 8-bit mean drift {err8 / moved:.1%} of the update"


CHECKS: List[Tuple[str, Callable[[str], str]]] = [
    ("8-bit blockwise", _check_blockwise),
    ("4-bit nf4/fp4 (double-quantized)", _check_4bit),
    ("LLM.int8 vector-wise", _check_int8),
    ("LLM.int8 matmul", _check_int8_matmul),
    ("4-bit matmul (nf4, double-quantized)", _check_4bit_matmul),
    ("optimizers (AdamW 32-bit and 8-bit)", _check_optimizers),
]

ADVICE = {
    "CudaSetupError": "the CUDA library is missing or has no kernels for this GPU: reinstall from source with nvcc on "
    "PATH, or set BNB_CUDA_ARCHS to your GPU's architecture (e.g. 90) and rebuild.",
    "OSError": "a native library failed to load: reinstall with `pip install .` from the source tree.",
    "AssertionError": "a kernel produced wrong numbers: please report this with the output above.",
}


def run_selfcheck(devices: List[str]) -> List[str]:
    """Run every check on every device, print one line each; return the failure messages."""
    failures = []
    for device in devices:
        for name, fn in CHECKS:
            try:
                detail = fn(device)
                print(f"  [ OK ] {device:7s} {name}: {detail}")
            except Exception as e:
                kind = type(e).__name__
                print(f"  [FAIL] {device:7s} {name}: {kind}: {e}")
                advice = ADVICE.get(kind)
                if advice:
                    print(f"         advice: {advice}")
                else:
                    traceback.print_exc(limit=3)
                failures.append(f"{device} {name}")
    return failures

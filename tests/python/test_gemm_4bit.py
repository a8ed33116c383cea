"""gemm_4bit / gemv_4bit against a float64 oracle on the dequantized weight (compat.md §1.2, §1.5)."""

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

import oracles as O
from helpers import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda, randn

ops = torch.ops.bitsandbytes

# Relative error of the product against the float64 product of the same dequantized weight, by
# activation dtype: the GEMM accumulates in the activation's precision class.
RTOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _oracle(x, packed_bytes, absmax, blocksize, quant_type, shape, bias=None):
    n = shape[0] * shape[1]
    codes = O.unpack_nibbles(packed_bytes.cpu(), n)
    w = O.dequantize_4bit_ref(codes, absmax.cpu(), blocksize, quant_type, shape, torch.float32).double()
    y = x.cpu().double() @ w.T
    return y + bias.cpu().double() if bias is not None else y


def _rel_err(y, ref):
    return ((y.cpu().double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
# Past the CPU streaming limits (expand + BLAS, native_4bit_matmul.CPU_*STREAMING_MAX_ROWS): 150 for bfloat16
# without AMX and float32 / float16 with it, 300 for bfloat16 and float32 everywhere, 1100 for all.
@pytest.mark.parametrize("m", [1, 5, 64, 150, 300, 1100])
def test_gemm_4bit_matches_float64(device, dtype, quant_type, m):
    N, K = 48, 96  # K not a multiple of the 64-element blocks per row: blocks span rows
    w = randn((N, K), torch.float32, device, seed=1)
    x = randn((m, K), dtype, device, seed=2)
    bias = randn((N,), dtype, device, seed=3)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    y = ops.gemm_4bit(x, packed, [N, K], state.absmax, 64, quant_type, bias)
    assert y.shape == (m, N) and y.dtype == dtype and y.device.type == device
    ref = _oracle(x, packed.view(torch.uint8).view(-1), state.absmax, 64, quant_type, (N, K), bias)
    assert _rel_err(y, ref) < RTOL[dtype]


@pytest.mark.parametrize("m", [1, 4, 6, 20, 40])
@pytest.mark.parametrize("shape", [(37, 80), (8, 4096), (70, 1024)], ids=["tail-tile-and-tail-k", "long-rows", "passes"])
def test_cpu_bfloat16_product_rounds_the_weight_as_dequantize_does(m, shape):
    # bfloat16 activations on the CPU: the weight enters the product rounded to bfloat16 (as
    # dequantize_4bit to bfloat16 rounds it), the sums are float32, the output is rounded once. Covers a
    # last tile of fewer than four weight rows (N = 37), a K that leaves a tail after 32-wide steps, and on
    # AMX tile products: activation rows past a 16-row tile (20, 40) and weight rows past 32-row passes (70).
    N, K = shape
    w = randn((N, K), torch.float32, "cpu", seed=41)
    x = randn((m, K), torch.bfloat16, "cpu", seed=42)
    bias = randn((N,), torch.bfloat16, "cpu", seed=43)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    y = ops.gemm_4bit(x, packed, [N, K], state.absmax, 64, "nf4", bias)
    wq = F.dequantize_4bit(packed, state).to(torch.bfloat16)  # the weight as the reference path sees it
    ref = x.double() @ wq.double().T + bias.double()
    assert _rel_err(y, ref) < 5e-3  # one bfloat16 rounding of the output


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_cpu_few_rows_product_with_codes_expanded_in_registers(dtype, m, nested):
    # Up to 4 activation rows on the CPU (generation): the codes are expanded and multiplied in registers.
    # N = 37 leaves a last tile of one weight row; blocksize 32 puts two blocks in each 64-code stretch.
    N, K, bs = 37, 256, 32
    w = randn((N, K), torch.float32, "cpu", seed=51)
    x = randn((m, K), dtype, "cpu", seed=52)
    bias = randn((N,), dtype, "cpu", seed=53)
    packed, state = F.quantize_4bit(w, blocksize=bs, quant_type="fp4", compress_statistics=nested)
    y = bnb.matmul_4bit(x, packed.t(), state, bias=bias)
    ref = x.double() @ F.dequantize_4bit(packed, state).double().T + bias.double()
    assert y.dtype == dtype and _rel_err(y, ref) < RTOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_gemm_4bit_nested_statistics(device):
    N, K = 40, 128
    w = randn((N, K), torch.float32, device, seed=4)
    x = randn((3, 2, K), torch.bfloat16, device, seed=5)  # leading dims are kept
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    y = ops.gemm_4bit(x, packed, [N, K], state.state2.absmax, 64, "nf4", None, state.absmax, state.state2.code,
                      state.offset)
    assert y.shape == (3, 2, N)
    # Oracle: reconstruct the block scales from their definition code[q] * absmax2[i // 256] + offset.
    q = state.absmax.cpu().long()
    scales = state.state2.code.cpu()[q] * state.state2.absmax.cpu()[torch.arange(q.numel()) // 256] + state.offset.cpu()
    ref = _oracle(x.reshape(-1, K), packed.view(-1), scales, 64, "nf4", (N, K)).reshape(3, 2, N)
    assert _rel_err(y, ref) < RTOL[torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_gemv_4bit_infers_the_type_from_the_code(device, quant_type):
    N, K = 32, 64
    w = randn((N, K), torch.float32, device, seed=6)
    x = randn((1, K), torch.float16, device, seed=7)
    packed, state = F.quantize_4bit(w, blocksize=32, quant_type=quant_type)
    y = ops.gemv_4bit(x, packed, [N, K], state.absmax, state.code, 32)
    ref = _oracle(x, packed.view(-1), state.absmax, 32, quant_type, (N, K))
    assert y.shape == (1, N) and y.dtype == torch.float16
    assert _rel_err(y, ref) < RTOL[torch.float16]
    out = torch.full((1, N), float("nan"), dtype=torch.float16, device=device)
    assert ops.gemv_4bit.out(x, packed, [N, K], state.absmax, state.code, 32, out=out) is None
    assert torch.equal(out, y)


@pytest.mark.parametrize("device", DEVICES)
def test_storage_dtypes_give_the_same_product(device):
    N, K = 16, 64
    w = randn((N, K), torch.float32, device, seed=8)
    x = randn((2, K), torch.float32, device, seed=9)
    results = []
    for storage in (torch.uint8, torch.float16, torch.bfloat16, torch.float32):
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", quant_storage=storage)
        results.append(ops.gemm_4bit(x, packed, [N, K], state.absmax, 64, "nf4"))
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_opcheck_4bit_matmuls():
    N, K = 8, 64
    w = randn((N, K), torch.float32, seed=10)
    x = randn((3, K), torch.float32, seed=11)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    torch.library.opcheck(ops.gemm_4bit.default, (x, packed, [N, K], state.absmax, 64, "nf4"))
    torch.library.opcheck(ops.gemv_4bit.default, (x[:1], packed, [N, K], state.absmax, state.code, 64))


def test_errors_name_the_argument():
    N, K = 8, 64
    packed, state = F.quantize_4bit(randn((N, K), torch.float32), blocksize=64, quant_type="nf4")
    with pytest.raises((ValueError, RuntimeError), match="K"):
        ops.gemm_4bit(torch.randn(2, K + 1), packed, [N, K], state.absmax, 64, "nf4")
    with pytest.raises((ValueError, RuntimeError), match="bias"):
        ops.gemm_4bit(torch.randn(2, K), packed, [N, K], state.absmax, 64, "nf4", torch.randn(N + 1))
    with pytest.raises((TypeError, RuntimeError), match="A"):
        ops.gemm_4bit(torch.randint(0, 3, (2, K)), packed, [N, K], state.absmax, 64, "nf4")


# Shapes the streaming kernels serve (CUDA: up to 16 rows, K a multiple of 64 and of the blocksize),
# with N not a multiple of the kernel's 32-row tiles, plain and double-quantized scales.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("m", [1, 7, 16])
@pytest.mark.parametrize("K,blocksize", [(64, 64), (1280, 64), (1024, 256), (2048, 1024)])
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_streaming_shapes_match_float64(device, dtype, m, K, blocksize, nested):
    N = 72
    w = randn((N, K), torch.float32, device, seed=12)
    x = randn((m, K), dtype, device, seed=13)
    bias = randn((N,), dtype, device, seed=14)
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=nested)
    if nested:
        y = ops.gemm_4bit(x, packed, [N, K], state.state2.absmax, blocksize, "nf4", bias, state.absmax,
                          state.state2.code, state.offset)
        q = state.absmax.cpu().long()
        scales = (state.state2.code.cpu()[q] * state.state2.absmax.cpu()[torch.arange(q.numel()) // 256]
                  + state.offset.cpu())
    else:
        y = ops.gemm_4bit(x, packed, [N, K], state.absmax, blocksize, "nf4", bias)
        scales = state.absmax
    ref = _oracle(x, packed.view(-1), scales, blocksize, "nf4", (N, K), bias)
    assert y.shape == (m, N) and y.dtype == dtype
    assert _rel_err(y, ref) < RTOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_unaligned_activation_view_is_still_correct(device):
    # A view starting one element into its storage cannot take 16-byte vector loads: the op must
    # still answer correctly (by the general path).
    N, K = 40, 128
    w = randn((N, K), torch.float32, device, seed=15)
    flat = randn((2 * K + 1,), torch.float16, device, seed=16)
    x = flat[1:].view(2, K)  # contiguous, 2 bytes past an aligned address
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="fp4")
    y = ops.gemm_4bit(x, packed, [N, K], state.absmax, 64, "fp4")
    ref = _oracle(x, packed.view(-1), state.absmax, 64, "fp4", (N, K))
    assert _rel_err(y, ref) < RTOL[torch.float16]
    aligned = ops.gemm_4bit(x.contiguous(), packed, [N, K], state.absmax, 64, "fp4")
    assert _rel_err(aligned, ref) < RTOL[torch.float16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_eligible_shapes_take_the_streaming_kernel(device, nested):
    # Few rows, K a multiple of 256: eager inference must reach the weight-streaming kernel (not the
    # dequantize + GEMM fallback), with plain and double-quantized scales.
    from bitsandbytes.backends import native_4bit_matmul as m

    packed, state = F.quantize_4bit(randn((64, 512), torch.float16, device, seed=26), blocksize=64,
                                    quant_type="nf4", compress_statistics=nested)
    x = randn((3, 512), torch.bfloat16 if device == "cuda" else torch.float32, device, seed=27)
    y = m.gemm_4bit_direct(x, packed, state, None)
    assert y is not None and y.shape == (3, 64)
    assert torch.device(device) not in m._no_cuda_streaming


def test_direct_call_refused_by_the_native_library_falls_back(monkeypatch):
    # Eager inference calls the native product directly (bypassing the op and its wrapper); a status saying
    # the kernel cannot serve the call returns None, which sends the layer through the op instead.
    from bitsandbytes.backends import native_4bit_matmul as m

    packed, state = F.quantize_4bit(randn((64, 512), torch.float32, "cpu", seed=28), blocksize=64, quant_type="nf4")
    x = randn((2, 512), torch.float32, "cpu", seed=29)
    assert m.gemm_4bit_direct(x, packed, state, None) is not None
    lib, _ = m._gemm_entries["cpu"]
    calls = []

    def refuse(*args):
        calls.append(args)
        return 3  # BNB_STATUS_NOT_IMPLEMENTED

    monkeypatch.setitem(m._gemm_entries, "cpu", (lib, refuse))
    assert m.gemm_4bit_direct(x, packed, state, None) is None
    assert len(calls) == 1 and calls[0][1] == x.data_ptr() and calls[0][2] == 2  # (weight, A, rows, ...)


@pytest.mark.parametrize("device", DEVICES)
def test_eager_path_checks_the_bias_length(device):
    packed, state = F.quantize_4bit(randn((64, 256), torch.float16, device, seed=31), quant_type="nf4")
    x = randn((2, 256), torch.float16, device, seed=32)
    with torch.no_grad(), pytest.raises(ValueError, match="bias"):
        bnb.matmul_4bit(x, packed.t(), state, bias=torch.ones(3, dtype=torch.float16, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_eager_path_sees_replaced_statistics(device):
    # The eager path caches the weight's pointers; replacing a piece of a double-quantized state must
    # change the result exactly as the op computes it.
    packed, state = F.quantize_4bit(randn((64, 256), torch.float16, device, seed=33), quant_type="nf4",
                                    compress_statistics=True)
    x = randn((2, 256), torch.float16, device, seed=34)
    with torch.no_grad():
        before = bnb.matmul_4bit(x, packed, state)
        old = state.state2.absmax
        state.state2.absmax = old * 2  # the old tensor stays alive, so its address stays taken
        after = bnb.matmul_4bit(x, packed, state)
        ref = ops.gemm_4bit(x, packed.view(-1, 1), [64, 256], state.state2.absmax, 64, "nf4", None, state.absmax,
                            state.state2.code, state.offset)
    assert torch.equal(after, ref) and not torch.equal(after, before)
    del old


def _is_hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("m,N,K,blocksize,quant_type", [
    (17, 256, 64, 64, "nf4"),       # one K tile
    (100, 136, 192, 64, "fp4"),     # N not a multiple of the 128-row tile, 64-row activation tiles
    (300, 1000, 1024, 128, "nf4"),  # activation rows spanning partial 128/256-row tiles
    (1024, 264, 4096, 4096, "nf4"),  # one block per row
    (4096, 136, 128, 64, "fp4"),    # the largest row count the kernel serves
])
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_many_rows_match_float64(dtype, m, N, K, blocksize, quant_type, nested, with_bias):
    # Above 16 rows: on Hopper the tensor-core kernel that expands the codes on the way, elsewhere
    # dequantize + cuBLAS; both against the float64 product of the dequantized weight.
    from bitsandbytes.backends import native_4bit_matmul as mm

    w = randn((N, K), torch.float32, "cuda", seed=51)
    x = randn((m, K), dtype, "cuda", seed=52)
    bias = randn((N,), dtype, "cuda", seed=53) if with_bias else None
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type, compress_statistics=nested)
    if nested:
        y = ops.gemm_4bit(x, packed, [N, K], state.state2.absmax, blocksize, quant_type, bias, state.absmax,
                          state.state2.code, state.offset)
    else:
        y = ops.gemm_4bit(x, packed, [N, K], state.absmax, blocksize, quant_type, bias)
    weight = F.dequantize_4bit(packed, state).double()
    ref = x.double() @ weight.T + (bias.double() if with_bias else 0)
    assert y.shape == (m, N) and y.dtype == dtype
    assert _rel_err(y, ref.cpu()) < RTOL[dtype]
    if _is_hopper():
        assert torch.device("cuda", torch.cuda.current_device()) not in mm._no_cuda_tensor_core


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_many_rows_with_a_tail_of_smaller_tiles_match_float64(dtype, nested):
    # On Hopper, 500 rows over three waves and a few weight tiles more of 256-row CTAs: the weight rows
    # past the whole waves take 128-row CTAs in the same grid (N not a multiple of 128 either).
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    weight_tiles = 3 * (sms // 2) + 3
    m, N, K = 500, (weight_tiles - 1) * 128 + 40, 256
    w = randn((N, K), torch.float32, "cuda", seed=56)
    x = randn((m, K), dtype, "cuda", seed=57)
    bias = randn((N,), dtype, "cuda", seed=58)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=nested)
    with torch.no_grad():
        y = bnb.matmul_4bit(x, packed.t(), state, bias=bias)
    ref = x.double() @ F.dequantize_4bit(packed, state).double().T + bias.double()
    assert y.shape == (m, N)
    assert _rel_err(y, ref.cpu()) < RTOL[dtype]


@needs_cuda
def test_many_rows_unaligned_activations_fall_back_without_disabling_the_kernel():
    from bitsandbytes.backends import native_4bit_matmul as mm

    N, K, m = 128, 256, 40
    packed, state = F.quantize_4bit(randn((N, K), torch.float32, "cuda", seed=54), blocksize=64, quant_type="nf4")
    flat = randn((m * K + 1,), torch.float16, "cuda", seed=55)
    x = flat[1:].view(m, K)  # 2 bytes past an aligned address: TMA cannot read it
    y = ops.gemm_4bit(x, packed, [N, K], state.absmax, 64, "nf4")
    ref = _oracle(x, packed.view(-1), state.absmax, 64, "nf4", (N, K))
    assert _rel_err(y, ref) < RTOL[torch.float16]
    if _is_hopper():
        assert torch.device("cuda", torch.cuda.current_device()) not in mm._no_cuda_tensor_core


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_eager_many_rows_skip_the_op_on_hopper(dtype, nested):
    # Above 16 rows eager inference reaches the tensor-core kernel directly (the op's host time would leave
    # the GPU idle at M = 512): the same bytes as the op, a 3-D input and a bias included; M beyond the
    # kernel's 4096 rows goes back to the op.
    from bitsandbytes.backends import native_4bit_matmul as mm

    if not _is_hopper():
        pytest.skip("the tensor-core kernel runs on compute capability 9.0 only")
    N, K = 264, 512
    packed, state = F.quantize_4bit(randn((N, K), torch.float32, "cuda", seed=61), blocksize=64, quant_type="nf4",
                                    compress_statistics=nested)
    x = randn((2, 150, K), dtype, "cuda", seed=62)
    bias = randn((N,), dtype, "cuda", seed=63)
    y = mm.gemm_4bit_direct(x, packed, state, bias)
    assert y is not None and y.shape == (2, 150, N) and y.dtype == dtype
    args = (state.state2.absmax, 64, "nf4", bias, state.absmax, state.state2.code, state.offset) if nested else \
        (state.absmax, 64, "nf4", bias)
    torch.testing.assert_close(y, ops.gemm_4bit(x, packed, [N, K], *args), rtol=0, atol=0)
    ref = x.double() @ F.dequantize_4bit(packed, state).double().T + bias.double()
    assert _rel_err(y, ref.cpu()) < RTOL[dtype]
    assert mm.gemm_4bit_direct(randn((mm.CUDA_TENSOR_CORE_MAX_ROWS + 1, K), dtype, "cuda", seed=64), packed, state,
                               None) is None


@needs_cuda
def test_eager_many_rows_refused_disable_only_the_tensor_core_kernel(monkeypatch):
    # A status saying the library cannot serve 17+ rows marks the device for the tensor-core kernel only: the
    # few-row kernel keeps serving eager calls, and the refused call goes through the op.
    from bitsandbytes.backends import native_4bit_matmul as mm

    device = torch.device("cuda", torch.cuda.current_device())
    monkeypatch.setattr(mm, "_no_cuda_tensor_core", set())
    monkeypatch.setattr(mm, "_no_cuda_streaming", set())
    packed, state = F.quantize_4bit(randn((128, 256), torch.float32, "cuda", seed=65), blocksize=64,
                                    quant_type="nf4")
    few, many = randn((4, 256), torch.float16, "cuda", seed=66), randn((40, 256), torch.float16, "cuda", seed=67)
    assert mm.gemm_4bit_direct(few, packed, state, None) is not None
    lib, entry = mm._gemm_entries["cuda"]
    monkeypatch.setitem(mm._gemm_entries, "cuda", (lib, lambda weight, a, rows, *rest:
                                                   3 if rows > 16 else entry(weight, a, rows, *rest)))
    assert mm.gemm_4bit_direct(many, packed, state, None) is None
    assert device in mm._no_cuda_tensor_core and device not in mm._no_cuda_streaming
    assert mm.gemm_4bit_direct(few, packed, state, None) is not None
    with torch.no_grad():
        y = bnb.matmul_4bit(many, packed.t(), state)  # the op, dequantizing (the device is marked)
    ref = _oracle(many, packed.view(-1), state.absmax, 64, "nf4", (128, 256))
    assert _rel_err(y, ref) < RTOL[torch.float16]


@needs_cuda
@pytest.mark.parametrize("m", [3, 16])
@pytest.mark.parametrize("N", [200, 9208], ids=["one-wave", "several-waves"])
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_few_row_grids_of_one_and_several_waves_match_float64(m, N, nested):
    # The few-row kernel's CTAs cover 16 or 32 rows as one or two groups of warps, chosen by how many
    # waves the grid takes; both, with N not a multiple of either, agree with the float64 oracle.
    K, dtype = 512, torch.bfloat16
    w = randn((N, K), torch.float32, "cuda", seed=71)
    x = randn((m, K), dtype, "cuda", seed=72)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=nested)
    with torch.no_grad():
        y = bnb.matmul_4bit(x, packed.t(), state)
    ref = x.double() @ F.dequantize_4bit(packed, state).double().T
    assert y.shape == (m, N)
    assert _rel_err(y, ref.cpu()) < RTOL[dtype]


def _check_product_with_alternate_stretches_16x(N, K, m, dtype, nested, seed, blocksize=64):
    # Odd 64-column stretches of the weight 16 times larger: a scale of the wrong block or row is far off.
    w = randn((N, K), torch.float32, "cuda", seed=seed)
    w = w * torch.where(torch.arange(K, device="cuda") // 64 % 2 == 1, 16.0, 1.0)
    x = randn((m, K), dtype, "cuda", seed=seed + 1)
    bias = randn((N,), dtype, "cuda", seed=seed + 2)
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=nested)
    with torch.no_grad():
        y = bnb.matmul_4bit(x, packed.t(), state, bias=bias)
    ref = x.double() @ F.dequantize_4bit(packed, state).double().T + bias.double()
    assert y.shape == (m, N) and y.dtype == dtype
    assert _rel_err(y, ref.cpu()) < RTOL[dtype]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("blocksize", [64, 128, 256])
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_few_row_wide_loads_scale_each_lane_by_its_own_block(dtype, m, blocksize, nested):
    # One-wave grids of at most three activation rows with K a multiple of 1024 read 16 bytes of codes per
    # lane, and an mma step there spans two 64-column blocks: each lane scales its codes by its own block's
    # scale. Odd 64-column stretches of the weight are 16 times larger, so a lane taking its neighbour's
    # block scale would be far off; N = 200 is not a multiple of the CTA's 32 rows.
    _check_product_with_alternate_stretches_16x(200, 3072, m, dtype, nested, seed=81, blocksize=blocksize)


@needs_cuda
def test_few_row_codes_at_an_8_byte_offset_take_the_8_byte_loads():
    # The 16-byte code loads need 16-byte aligned codes: packed codes 8 bytes into an allocation (a view)
    # fall back to the 8-byte loads instead of faulting, and the product is still right.
    N, K = 200, 2048
    w = randn((N, K), torch.float32, "cuda", seed=91)
    x = randn((1, K), torch.float16, "cuda", seed=92)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    storage = torch.empty(packed.numel() + 8, dtype=torch.uint8, device="cuda")
    shifted = storage[8:]
    shifted.copy_(packed.view(torch.uint8).view(-1))
    assert shifted.data_ptr() % 16 == 8
    y = ops.gemm_4bit(x, shifted, [N, K], state.absmax, 64, "nf4", None)
    ref = _oracle(x, packed.view(torch.uint8).view(-1), state.absmax, 64, "nf4", (N, K))
    assert _rel_err(y, ref) < RTOL[torch.float16]


@needs_cuda
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("wide", [256, 9216], ids=["one-wave", "several-waves"])
@pytest.mark.parametrize("K", [256, 4096])
@pytest.mark.parametrize("m", [1, 16])
def test_chained_few_row_products_read_the_kernel_before_them(nested, wide, K, m):
    # The few-row kernel may be scheduled while the kernel before it in the stream still runs
    # (programmatic dependent launch on Hopper): it must still see that kernel's results. Each product
    # here reads the output of the one before it, and each weight is quantized right before its first
    # use; 9216 output rows take several waves of CTAs (the variant that asks L2 ahead of its loads, or
    # at K = 4096 on Hopper the kernel streaming the weight through shared memory, after and before the
    # register-fed one; 16 rows there take the kernel staging weight and activations together).
    dtype = torch.float16
    x = randn((m, K), dtype, "cuda", seed=61) / 4
    outs, weights = [x], []
    for step in range(4):
        shape = (wide, K) if step % 2 == 0 else (K, wide)
        w = randn(shape, torch.float32, "cuda", seed=62 + step) / shape[1] ** 0.5
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=nested)
        with torch.no_grad():
            outs.append(bnb.matmul_4bit(outs[-1], packed.t(), state))
        weights.append(F.dequantize_4bit(packed, state).double())
    torch.cuda.synchronize()
    for step, weight in enumerate(weights):
        ref = outs[step].double() @ weight.T
        assert outs[step + 1].shape == (m, weight.shape[0])
        assert _rel_err(outs[step + 1], ref.cpu()) < RTOL[dtype]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("m", [9, 12, 16])
@pytest.mark.parametrize("K", [1536, 2048])
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("tiles_per_cta", [10, 8])
def test_many_tile_products_of_9_to_16_rows_match_float64(dtype, m, K, nested, tiles_per_cta):
    # 9..16 rows on a grid of several waves: on Hopper each CTA takes its 16-row tiles in passes of one tile
    # per consumer warp, the activations staged once per stage for all of them: 1024-column stages for 7
    # warps where that takes no more passes than 512-column stages for 8 (10 tiles per CTA, K % 1024 == 0,
    # plain weights), else the narrow ones (8 tiles per CTA: one pass of 8 against two of 7; K = 1536; double-
    # quantized weights, whose scales a scale warp decodes into each stage). Each CTA gets a full
    # and a partial pass (10) or one full pass (8, most CTAs), and the last tile is partial. K = 1536 is
    # served plain only (double-quantized codes need K % 1024 == 0) and takes the register-fed kernel nested.
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    _check_product_with_alternate_stretches_16x(sms * tiles_per_cta * 16 - 8, K, m, dtype, nested, seed=111)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("m", [9, 16])
@pytest.mark.parametrize("K,nested", [(1536, False), (2048, True)], ids=["plain", "nested"])
def test_9_to_16_row_products_whose_ctas_make_unequal_passes_match_float64(dtype, m, K, nested):
    # 16.5 tiles per SM, in passes of 8 (narrow stages: K = 1536 plain, double-quantized weights): neighbouring
    # CTAs take 16 and 17 tiles, two full passes and a third of one tile.
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    _check_product_with_alternate_stretches_16x(sms * 33 * 8 - 8, K, m, dtype, nested, seed=131)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("m", [9, 16])
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("tiles_per_sm,fewer_tiles", [(4, 0), (2, 0), (3, 0), (4, 13)],
                         ids=["4", "2", "3", "fewer-ctas-than-sms"])
def test_one_wave_products_of_9_to_16_rows_match_float64(dtype, m, nested, tiles_per_sm, fewer_tiles):
    # 9..16 rows on a grid of at most 4 tiles per SM: on Hopper each CTA takes one pass of its tiles, two
    # consumer warps per tile, each on half of every stage's groups, the second handing its sums to the
    # first; a CTA of 4 tiles (a full pass: its codes copied as one box for all its tiles; the scales stored
    # into the stage by a scale warp, decoded for double-quantized weights) and CTAs of 2 (some with a partial
    # pass). With 4 x SMs - 13 tiles the grid is the fewest CTAs that give none more than 4 tiles: SMs - 3 of
    # them, every one a full pass of 4 tiles but one of 3. The last tile is partial.
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    tiles = sms * tiles_per_sm - fewer_tiles
    _check_product_with_alternate_stretches_16x(tiles * 16 - 8, 2048, m, dtype, nested, seed=121)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("N", [200, 9208], ids=["one-round", "several-rounds"])
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_few_row_products_with_whole_stages_match_float64(dtype, m, N, nested):
    # K a multiple of 4096 at blocksize 64, up to 8 rows and a grid of several waves (N = 9208): on Hopper
    # the weight streams through shared memory in stages of 4096 columns, each CTA taking several 16-row
    # tiles (the last one partial); 9..16 rows take the kernel staging weight and activations together, and
    # the one-round grid of up to 8 rows the register-fed kernel.
    _check_product_with_alternate_stretches_16x(N, 4096, m, dtype, nested, seed=101)


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_prepared_weight_arguments_stay_out_of_pickles_and_copies(nested):
    # The eager path keeps the weight's kernel arguments (raw pointers) on the QuantState: a pickled or copied
    # state leaves them behind and prepares its own on its first call, with the same result.
    import copy
    import pickle

    from bitsandbytes.backends import native_4bit_matmul as m

    packed, state = F.quantize_4bit(randn((64, 512), torch.float32, "cpu", seed=33), blocksize=64, quant_type="nf4",
                                    compress_statistics=nested)
    x = randn((2, 512), torch.float32, "cpu", seed=34)
    y = m.gemm_4bit_direct(x, packed, state, None)
    assert "_streaming_plan" in state.__dict__
    for clone in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state), copy.copy(state)):
        assert "_streaming_plan" not in clone.__dict__
        torch.testing.assert_close(m.gemm_4bit_direct(x, packed.clone(), clone, None), y, rtol=0, atol=0)


# ---- functional.gemv_4bit and argument checks of the 4-bit products ----------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_functional_gemv_4bit_matches_float64(device, nested, quant_type):
    N, K = 40, 128
    w = randn((N, K), torch.float32, device, seed=11)
    x = randn((1, K), torch.float32, device, seed=12)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=nested)
    # Oracle: the float64 product with the weight the state's own (nested or not) scales decode to.
    ref = x.cpu().double() @ F.dequantize_4bit(packed, state).cpu().double().T
    y = F.gemv_4bit(x, packed.t(), state=state)
    assert y.shape == (1, N) and y.dtype == torch.float32
    assert _rel_err(y, ref) < RTOL[torch.float32]
    out = torch.empty(1, N, device=device)
    assert F.gemv_4bit(x, packed, out=out, state=state) is out
    assert _rel_err(out, ref) < RTOL[torch.float32]
    assert "gemv_4bit" in F.__all__
    with pytest.raises(ValueError, match="state"):
        F.gemv_4bit(x, packed)


def _small_weight(nested=False):
    w = randn((32, 64), torch.float32, seed=21)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=nested)
    return w, packed, state


@pytest.mark.parametrize("m", [3, 600], ids=["streaming", "expand"])
def test_gemm_4bit_rejects_bad_scales_and_packed_sizes(m):
    A = randn((m, 64), torch.float32, seed=22)
    _, q, qs = _small_weight()
    for bad, exc, name in [(qs.absmax.half(), TypeError, "absmax"), (qs.absmax.double(), TypeError, "absmax"),
                           (qs.absmax.int(), TypeError, "absmax"), (qs.absmax[:5], ValueError, "absmax")]:
        with pytest.raises(exc, match=name):
            ops.gemm_4bit(A, q, [32, 64], bad, 64, "nf4")
        with pytest.raises(exc, match=name):
            ops.gemv_4bit(A, q, [32, 64], bad, qs.code, 64)
    # B must hold exactly the bytes of shapeB: a prefix, a strided view, a larger weight, an int64 tensor
    other, _ = F.quantize_4bit(randn((64, 64), torch.float32, seed=23), blocksize=128)
    as_int64 = q.reshape(-1).view(torch.int64)
    for bad, exc in [(q[:100], ValueError), (q[::2], ValueError), (other, ValueError), (as_int64, TypeError)]:
        with pytest.raises(exc, match="B"):
            ops.gemm_4bit(A, bad, [32, 64], qs.absmax, 64, "nf4")
    _, qn, qsn = _small_weight(nested=True)
    s2 = qsn.state2
    for kwargs, exc, name in [
        (dict(absmax_8bit=qsn.absmax.float()), TypeError, "absmax_8bit"),
        (dict(absmax_8bit=qsn.absmax[:4]), ValueError, "absmax_8bit"),
        (dict(absmax_code=s2.code[:16].clone()), ValueError, "absmax_code"),
        (dict(absmax_code=s2.code.half()), TypeError, "absmax_code"),
        (dict(absmax_offset=qsn.offset.double()), TypeError, "absmax_offset"),
        (dict(absmax_offset=qsn.offset.repeat(2)), ValueError, "absmax_offset"),
    ]:
        args = dict(absmax_8bit=qsn.absmax, absmax_code=s2.code, absmax_offset=qsn.offset)
        args.update(kwargs)
        with pytest.raises(exc, match=name):
            ops.gemm_4bit(A, qn, [32, 64], s2.absmax, 64, "nf4", None, **args)


def test_matmul_4bit_rejects_a_weight_that_is_not_its_states():
    A = randn((2, 64), torch.float32, seed=24)
    w, q, qs = _small_weight()
    other, _ = F.quantize_4bit(randn((64, 64), torch.float32, seed=25), blocksize=128)  # also 32 blocks
    for bad in (other, w, q[:100], q[::2]):
        with pytest.raises((TypeError, ValueError), match="B"):
            bnb.matmul_4bit(A, bad, qs)


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_streaming_plan_is_checked_again_after_the_weight_or_state_changes(nested):
    A = randn((3, 64), torch.float32, seed=26)
    w, q, qs = _small_weight(nested)
    bnb.matmul_4bit(A, q, qs)  # plans the eager path for this weight
    for bad in (q[:100], q[::2]):  # same address, fewer bytes or another layout
        with pytest.raises(ValueError, match="B"):
            bnb.matmul_4bit(A, bad, qs)
    # The state's quant_type changes how the same bytes decode: the result follows it (float64 oracle).
    qs.quant_type = "fp4"
    ref = A.double() @ F.dequantize_4bit(q, qs).double().T
    assert _rel_err(bnb.matmul_4bit(A, q, qs), ref) < RTOL[torch.float32]
    qs.quant_type = "nf4"
    qs.blocksize = 128  # absmax no longer has one value per block
    with pytest.raises(ValueError, match="absmax"):
        bnb.matmul_4bit(A, q, qs)
    qs.blocksize = 64
    qs.shape = torch.Size([16, 64])  # B now holds twice the bytes the shape needs
    with pytest.raises(ValueError, match="B"):
        bnb.matmul_4bit(A, q, qs)


def test_gemv_4bit_refuses_tables_other_than_nf4_fp4():
    A = randn((2, 64), torch.float32, seed=27)
    _, q, qs = _small_weight()
    for name in ("int4", "af4"):
        with pytest.raises(ValueError, match="nf4 or fp4"):
            ops.gemv_4bit(A, q, [32, 64], qs.absmax, F.get_4bit_type(name, device="cpu"), 64)
    # the two real tables decode as themselves (float64 oracle of each decoding)
    for name in ("nf4", "fp4"):
        s = F.QuantState(absmax=qs.absmax, shape=(32, 64), code=F.get_4bit_type(name, device="cpu"), blocksize=64,
                         quant_type=name, dtype=torch.float32)
        ref = A.double() @ F.dequantize_4bit(q, s).double().T
        assert _rel_err(ops.gemv_4bit(A, q, [32, 64], qs.absmax, s.code, 64), ref) < RTOL[torch.float32]


def test_4bit_product_argument_errors_are_clear():
    A = randn((3, 64), torch.float32, seed=28)
    _, q, qs = _small_weight()
    for shapeB in ([64], [32, 64, 1], [-32, 64]):
        with pytest.raises(ValueError, match="shapeB"):
            ops.gemm_4bit(A, q, shapeB, qs.absmax, 64, "nf4")
    for m in (3, 600):  # the streaming and the expand + BLAS paths say the same
        with pytest.raises(TypeError, match="bias"):
            ops.gemm_4bit(randn((m, 64), torch.float32, seed=29), q, [32, 64], qs.absmax, 64, "nf4",
                          torch.zeros(32, dtype=torch.float16))
    with pytest.raises(ValueError, match="at least one dimension"):
        bnb.matmul_4bit(torch.tensor(1.0), q, qs)


@pytest.mark.parametrize("op", ["gemm", "gemv"])
def test_4bit_product_fake_kernels_refuse_mixed_devices(op):
    A = randn((3, 64), torch.float32, seed=30)
    _, q, qs = _small_weight()
    meta_absmax = qs.absmax.to("meta")
    with pytest.raises(RuntimeError, match="same device"):
        if op == "gemm":
            ops.gemm_4bit(A, q, [32, 64], meta_absmax, 64, "nf4")
        else:
            ops.gemv_4bit(A, q, [32, 64], meta_absmax, qs.code, 64)
    with pytest.raises(RuntimeError, match="same device"):
        bnb.matmul_4bit(A, q, qs, bias=torch.zeros(32, device="meta"))
    # all-meta calls still describe the output
    y = ops.gemm_4bit(A.to("meta"), q.to("meta"), [32, 64], meta_absmax, 64, "nf4")
    assert y.device.type == "meta" and y.shape == (3, 32)


@pytest.mark.parametrize("device", DEVICES)
def test_gemv_4bit_tells_a_table_apart_once_and_again_after_it_changes(device):
    """The nf4 / fp4 decision is kept per code table: repeated calls do not copy it to the host (on CUDA that
    would wait for the GPU), while a table changed in place is compared again (float64 oracles)."""
    A = randn((1, 64), torch.float32, device, seed=31)
    w = randn((32, 64), torch.float32, device, seed=32)
    q, qs = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    code = F.get_4bit_type("nf4", device=device)

    def oracle(quant_type):
        s = F.QuantState(absmax=qs.absmax, shape=(32, 64), code=F.get_4bit_type(quant_type, device=device),
                         blocksize=64, quant_type=quant_type, dtype=torch.float32)
        return A.cpu().double() @ F.dequantize_4bit(q, s).cpu().double().T

    assert _rel_err(ops.gemv_4bit(A, q, [32, 64], qs.absmax, code, 64), oracle("nf4")) < RTOL[torch.float32]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # a host copy of the table would raise here
        try:
            y = ops.gemv_4bit(A, q, [32, 64], qs.absmax, code, 64)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert _rel_err(y, oracle("nf4")) < RTOL[torch.float32]
    code.copy_(F.get_4bit_type("fp4", device=device))
    assert _rel_err(ops.gemv_4bit(A, q, [32, 64], qs.absmax, code, 64), oracle("fp4")) < RTOL[torch.float32]
    code.mul_(0.5)  # no longer either table
    with pytest.raises(ValueError, match="nf4 or fp4"):
        ops.gemv_4bit(A, q, [32, 64], qs.absmax, code, 64)

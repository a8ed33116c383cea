"""LLM.int8() product ops against exact integer and float64 oracles (compat.md §1.2, §1.4.4, §6.9).

The shapes cover every path of the CUDA backend: up to 16 rows with K a multiple of 64 (the
weight-streaming kernel), more rows (cuBLASLt), and K not a multiple of 4 or unaligned data (the
general kernel); CPU runs the same cases (on AMX processors K a multiple of 64 takes the tile unit:
activation rows past 16- and 32-row tiles, weight rows past 32-row passes).
"""

import pytest
import torch

import bitsandbytes  # noqa: F401
import bitsandbytes.functional as F

from helpers import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda, randn

ops = torch.ops.bitsandbytes

SHAPES = [  # (M, K, N)
    (1, 64, 40), (3, 128, 72), (16, 256, 33), (17, 64, 40), (64, 512, 96), (5, 70, 12), (2, 127, 9), (33, 4, 8),
    (40, 192, 50),
]


def _int8(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8).to(device)


def _exact(A, B):
    return A.cpu().long() @ B.cpu().long().T


def _dequant_ref(acc, row, col, bias=None):
    y = acc.double() * row.cpu().double()[:, None] * col.cpu().double()[None, :] / 127**2
    return y + bias.cpu().double() if bias is not None else y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_int8_linear_matmul_is_exact(device, M, K, N):
    A, B = _int8((M, K), device, 1), _int8((N, K), device, 2)
    out = ops.int8_linear_matmul(A, B)
    assert out.dtype == torch.int32 and out.shape == (M, N) and out.device.type == device
    assert torch.equal(out.cpu().long(), _exact(A, B))


@pytest.mark.parametrize("device", DEVICES)
def test_int8_linear_matmul_extreme_values_and_leading_dims(device):
    # All -128 * -128 products: the largest magnitudes int8 allows, still exact in int32.
    A = torch.full((2, 3, 4096), -128, dtype=torch.int8, device=device)
    B = torch.full((24, 4096), -128, dtype=torch.int8, device=device)
    out = ops.int8_linear_matmul(A, B)
    assert out.shape == (2, 3, 24)
    assert torch.all(out == 128 * 128 * 4096)


@pytest.mark.parametrize("device", DEVICES)
def test_int8_linear_matmul_out_variants(device):
    A, B = _int8((6, 64), device, 3), _int8((10, 64), device, 4)
    out = torch.full((6, 10), -1, dtype=torch.int32, device=device)
    assert ops.int8_linear_matmul.out(A, B, out=out) is None
    assert torch.equal(out.cpu().long(), _exact(A, B))
    strided = torch.zeros((10, 6), dtype=torch.int32, device=device).t()
    with pytest.raises(ValueError, match="contiguous"):  # written in place: a strided view is refused
        ops.int8_linear_matmul.out(A, B, out=strided)
    assert torch.all(strided == 0)


def _exact_on_gpu(A, B):
    # float64 sums of int8 products stay exact up to 2^53 (here |sum| <= 128^2 * K < 2^30).
    return (A.double() @ B.double().T).long()


@needs_cuda
@pytest.mark.parametrize("M", [512, 320, 1000])
def test_products_large_enough_to_time_their_algorithm_are_exact(M):
    # The first product of a shape of >= 2^31 multiply-adds times cuBLASLt's candidates and keeps the
    # fastest; 320 then takes the choice made for 512 (same power-of-two bucket). Whichever algorithm
    # runs, the int32 result is exact, on the first call and on the following ones.
    K, N = 4096, 2048
    A, B = _int8((M, K), "cuda", 7), _int8((N, K), "cuda", 8)
    ref = _exact_on_gpu(A, B)
    for _ in range(3):
        assert torch.equal(ops.int8_linear_matmul(A, B).long(), ref)


@needs_cuda
def test_product_first_seen_in_a_graph_capture_is_exact_in_the_graph_and_after():
    # Captured first: no timing (it would synchronise the capturing stream); the later eager call
    # times the candidates and may pick another algorithm, with the same exact result.
    M, K, N = 704, 4096, 2048
    A, B = _int8((M, K), "cuda", 9), _int8((N, K), "cuda", 10)
    ref = _exact_on_gpu(A, B)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.int8_linear_matmul(A, B)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured.long(), ref)
    assert torch.equal(ops.int8_linear_matmul(A, B).long(), ref)
    graph.replay()
    assert torch.equal(captured.long(), ref)


@pytest.mark.parametrize("device", DEVICES)
def test_unaligned_operands_are_still_exact(device):
    flat = _int8((1 + 4 * 64,), device, 5)
    A = flat[1:].view(4, 64)  # one byte past an aligned address
    B = _int8((24, 64), device, 6)
    assert torch.equal(ops.int8_linear_matmul(A, B).cpu().long(), _exact(A, B))
    row, col = torch.rand(4, device=device) + 0.5, torch.rand(24, device=device) + 0.5
    y = ops.int8_scaled_mm(A, B, row, col, dtype=torch.float32)
    torch.testing.assert_close(y.cpu().double(), _dequant_ref(_exact(A, B), row, col), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("bias_dtype", [None, torch.float16, torch.float32], ids=["nobias", "b16", "b32"])
def test_int8_mm_dequant(device, dtype, bias_dtype):
    acc = torch.randint(-(2**20), 2**20, (7, 33), dtype=torch.int32, device=device)
    row, col = torch.rand(7, device=device) * 3, torch.rand(33, device=device) * 3
    bias = None if bias_dtype is None else randn((33,), bias_dtype, device, seed=7)
    y = ops.int8_mm_dequant(acc, row, col, dtype, bias)
    assert y.dtype == dtype and y.shape == acc.shape
    ref = _dequant_ref(acc.cpu().long(), row, col, bias)
    # Computed in float32 and rounded once to the output dtype.
    eps = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert ((y.cpu().double() - ref).abs() <= eps * ref.abs() + 1e-3).all()


def test_int8_mm_dequant_defaults_to_float16():
    acc = torch.randint(-100, 100, (3, 4), dtype=torch.int32)
    assert ops.int8_mm_dequant(acc, torch.ones(3), torch.ones(4)).dtype == torch.float16


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_int8_scaled_mm_matches_float64(device, M, K, N, dtype):
    A, B = _int8((M, K), device, 8), _int8((N, K), device, 9)
    row, col = torch.rand(M, device=device) + 0.1, torch.rand(N, device=device) + 0.1
    bias = randn((N,), dtype, device, seed=10)
    y = ops.int8_scaled_mm(A, B, row, col, bias, dtype)
    assert y.dtype == dtype and y.shape == (M, N)
    ref = _dequant_ref(_exact(A, B), row, col, bias)
    eps = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert ((y.cpu().double() - ref).abs() <= eps * ref.abs() + 1e-4).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("rows", [1, 9, 40])
def test_int8_mixed_scaled_mm_adds_the_outlier_columns(device, dtype, rows):
    K, N = 128, 48
    X = randn((rows, K), torch.float32, device, seed=11)
    X[:, [5, 77]] = 25.0  # two outlier features
    W = randn((N, K), torch.float32, device, seed=12)
    X = X.to(dtype)
    CA, SCA, cols = ops.int8_vectorwise_quant(X, 6.0)
    CB, SCB, _ = ops.int8_vectorwise_quant(W.to(dtype))
    bias = randn((N,), dtype, device, seed=13)
    out, subA = ops.int8_mixed_scaled_mm(X, CA, CB, SCA, SCB, cols, bias)
    assert out.dtype == dtype and out.shape == (rows, N)
    assert torch.equal(cols.cpu(), torch.tensor([5, 77]))
    assert torch.equal(subA.cpu(), X[:, cols].cpu())
    # Oracle: float64 of the spec's decomposition.
    Wd = CB.cpu().double() * SCB.cpu().double()[:, None] / 127
    main = _dequant_ref(_exact(CA, CB), SCA, SCB, bias)
    ref = main + X.cpu().double()[:, cols.cpu()] @ Wd[:, cols.cpu()].T
    err = ((out.cpu().double() - ref).norm() / ref.norm()).item()
    assert err < {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_int8_mixed_scaled_mm_without_outliers(device):
    X = randn((4, 64), torch.float16, device, seed=14)
    CA, SCA, cols = ops.int8_vectorwise_quant(X, 0.0)
    CB, SCB, _ = ops.int8_vectorwise_quant(randn((8, 64), torch.float16, device, seed=15))
    out, subA = ops.int8_mixed_scaled_mm(X, CA, CB, SCA, SCB, None)
    assert subA is None
    torch.testing.assert_close(out, ops.int8_scaled_mm(CA, CB, SCA, SCB, dtype=torch.float16))


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_the_argument(device):
    A, B = _int8((4, 64), device, 16), _int8((8, 64), device, 17)
    with pytest.raises((TypeError, RuntimeError), match="A"):
        ops.int8_linear_matmul(A.float(), B)
    with pytest.raises((ValueError, RuntimeError), match="K"):
        ops.int8_linear_matmul(A, _int8((8, 32), device, 18))
    with pytest.raises(ValueError, match="row_stats"):
        ops.int8_scaled_mm(A, B, torch.ones(3, device=device), torch.ones(8, device=device))
    with pytest.raises(ValueError, match="bias"):
        ops.int8_scaled_mm(A, B, torch.ones(4, device=device), torch.ones(8, device=device),
                           torch.ones(7, device=device))
    with pytest.raises((ValueError, TypeError), match="A"):
        ops.int8_mm_dequant(torch.ones(2, 3, device=device), torch.ones(2, device=device),
                            torch.ones(3, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_devices_are_refused(device):
    if device == "cpu":
        pytest.skip("needs a second device type")
    A, B = _int8((4, 64), "cuda", 19), _int8((8, 64), "cpu", 20)
    with pytest.raises((ValueError, RuntimeError), match="device"):
        ops.int8_linear_matmul(A, B)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_int8_ops(device):
    A, B = _int8((5, 64), device, 21), _int8((8, 64), device, 22)
    row, col = torch.rand(5, device=device) + 0.5, torch.rand(8, device=device) + 0.5
    acc = ops.int8_linear_matmul(A, B)
    torch.library.opcheck(ops.int8_linear_matmul.default, (A, B))
    torch.library.opcheck(ops.int8_linear_matmul.out, (A, B, torch.empty(5, 8, dtype=torch.int32, device=device)))
    torch.library.opcheck(ops.int8_mm_dequant.default, (acc, row, col, torch.bfloat16, None))
    torch.library.opcheck(ops.int8_scaled_mm.default, (A, B, row, col, None, torch.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("rows, K", [(1, 192), (5, 192), (16, 192), (17, 192), (40, 192), (1, 40960)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_fused_int8_linear_matches_the_decomposition(device, dtype, rows, K, threshold):
    # The one-call inference path (quantize, multiply, outliers, dequantize on the device) against the
    # float64 oracle of the spec's LLM.int8() decomposition. One row of K = 40960 is too long for the
    # one-row kernel's shared memory (CUDA): it takes the chain of kernels.
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    N = 40
    X = randn((rows, K), torch.float32, device, seed=23)
    if threshold:
        X[:, [3, 100]] = 20.0
        X[0, 50] = -9.0  # an outlier in one row only: its whole column leaves the int8 product
    X = X.to(dtype)
    CB, SCB, _ = ops.int8_vectorwise_quant(randn((N, K), torch.float16, device, seed=24))
    bias = randn((N,), dtype, device, seed=25)
    fused = int8_linear_direct(X, CB, SCB, threshold, bias)
    assert fused is not None
    y, mask = fused
    assert y.dtype == dtype and y.shape == (rows, N)
    CA, SCA, cols = ops.int8_vectorwise_quant(X, threshold)
    if threshold:  # the mask names exactly the op's outlier columns
        assert torch.equal(torch.nonzero(mask.cpu()).reshape(-1), cols.cpu())
    else:
        assert mask is None
    cols = cols.cpu() if cols is not None else torch.empty(0, dtype=torch.long)
    if threshold:
        assert set(cols.tolist()) == {3, 50, 100}
    Wd = CB.cpu().double() * SCB.cpu().double()[:, None] / 127
    keep = torch.ones(K, dtype=torch.bool)
    keep[cols] = False
    int8_part = (CA.cpu().double()[:, keep] @ CB.cpu().double()[:, keep].T) * SCA.cpu().double()[:, None] \
        * SCB.cpu().double()[None, :] / 127**2
    ref = int8_part + X.cpu().double()[:, ~keep] @ Wd[:, ~keep].T + bias.cpu().double()
    err = ((y.cpu().double() - ref).norm() / ref.norm()).item()
    assert err < {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}[dtype]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_many_row_products_dequantized_in_the_gemm_match_the_int32_path(dtype, with_bias):
    # On Hopper, grids of at least three quarters of a wave of 256 x 128 tiles multiply and dequantize
    # in one kernel: M, N and K here are multiples of none of the tile sizes. The result must be the bits of
    # the int32 product dequantized by int8_mm_dequant, and within rounding of the float64 oracle; the
    # layer path (quantize, then the same kernel) equals the ops.
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    M, K, N = 300, 272, 128 * ((3 * sms + 7) // 8) + 40
    A, B = _int8((M, K), "cuda", 21), _int8((N, K), "cuda", 22)
    row, col = torch.rand(M, device="cuda") + 0.1, torch.rand(N, device="cuda") + 0.1
    bias = randn((N,), dtype, "cuda", seed=23) if with_bias else None
    y = ops.int8_scaled_mm(A, B, row, col, bias, dtype)
    assert y.dtype == dtype and y.shape == (M, N)
    assert torch.equal(y, ops.int8_mm_dequant(ops.int8_linear_matmul(A, B), row, col, dtype, bias))
    ref = _dequant_ref(_exact(A, B), row, col, bias)
    eps = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert ((y.cpu().double() - ref).abs() <= eps * ref.abs() + 1e-4).all()
    X = randn((M, K), dtype, "cuda", seed=24)
    CA, SCA, _ = ops.int8_vectorwise_quant(X, 0.0)
    out, _ = int8_linear_direct(X, B, col, 0.0, bias)
    assert torch.equal(out, ops.int8_scaled_mm(CA, B, SCA, col, bias, dtype))


def _int8_linear_bits(X, CA, SCA, CB, SCB, cols, bias):
    # int8_linear's output with outlier columns, every float32 operation rounded in the order the CUDA
    # epilogues round it (one torch op per rounding on the CPU): the int8 product dequantized, then up
    # to 64 outlier columns as packed coefficients (X / 127 - CA * SCA / 127^2) times CB, summed column
    # by column; more than 64 from X, CA and CB unpacked. Also returns the magnitude of the terms added.
    f = torch.float32
    X, CA, SCA, CB, SCB, cols = (t.cpu() for t in (X, CA, SCA, CB, SCB, cols))
    scale, inv127 = torch.tensor(1.0, dtype=f) / (127.0 * 127.0), torch.tensor(1.0, dtype=f) / 127.0
    row, col = SCA.float()[:, None], SCB.float()[None, :]
    v = ((_exact(CA, CB).to(f) * row) * col) * scale
    if len(cols) <= 64:
        coef = X[:, cols].float() * inv127 - (CA[:, cols].float() * row) * scale
        total = torch.zeros_like(v)
        for i in range(len(cols)):
            total = total + coef[:, i : i + 1] * CB[:, cols[i]].float()[None, :]
        y = v + total * col
        terms = v.abs() + (total * col).abs()
    else:
        extra, int8_terms = torch.zeros_like(v), torch.zeros_like(v)
        for k in cols.tolist():
            w = CB[:, k].float()[None, :]
            extra = extra + X[:, k : k + 1].float() * w
            int8_terms = int8_terms + CA[:, k : k + 1].float() * w
        y = v + ((extra * col) * inv127 - ((int8_terms * row) * col) * scale)
        terms = v.abs() + ((extra * col) * inv127).abs() + (((int8_terms * row) * col) * scale).abs()
    if bias is not None:
        y, terms = y + bias.cpu().float(), terms + bias.cpu().float().abs()
    return y.to(X.dtype), terms


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("outlier_cols", [3, 80])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_many_row_int8_linear_with_outliers_adds_them_in_the_gemm_epilogue(dtype, outlier_cols, with_bias):
    # On Hopper a grid of at least three quarters of a wave multiplies, dequantizes and adds the outlier
    # columns in one kernel (packed up to 64 columns, unpacked beyond): the output must follow the
    # step-by-step float32 formula, lie within rounding of the float64 decomposition, and report the
    # outlier columns. M, N and K are multiples of none of the tile sizes.
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    M, K, N = 300, 272, 128 * ((3 * sms + 7) // 8) + 40
    X = randn((M, K), torch.float32, "cuda", seed=61)
    cols = torch.randperm(K, generator=torch.Generator().manual_seed(62))[:outlier_cols].sort().values.cuda()
    X[M // 3, cols] = 9.0
    X[M - 1, cols[0]] = -30.0
    X = X.to(dtype)
    CB, SCB, _ = ops.int8_vectorwise_quant(randn((N, K), torch.float16, "cuda", seed=63))
    bias = randn((N,), dtype, "cuda", seed=64) if with_bias else None
    y, mask = int8_linear_direct(X, CB, SCB, 6.0, bias)
    assert y.dtype == dtype and y.shape == (M, N)
    assert torch.equal(mask.nonzero().flatten(), cols)
    CA, SCA, _ = ops.int8_vectorwise_quant(X, 6.0)
    bits, terms = _int8_linear_bits(X, CA, SCA, CB, SCB, cols, bias)
    # Exactly equal for nearly all outputs, and everywhere within two units in the last place of the
    # output dtype at the magnitude of the terms added (an intermediate float32 rounding that differs
    # can flip the output's rounding, amplified where the terms cancel).
    _, exponent = torch.frexp(terms)
    ulp = torch.ldexp(torch.ones_like(terms), exponent - 1 - {torch.float16: 10, torch.bfloat16: 7}[dtype])
    diff = (y.cpu().float() - bits.float()).abs()
    assert (diff <= 2 * ulp).all()
    assert int((diff != 0).sum()) <= diff.numel() // 1000, f"{int((diff != 0).sum())} of {diff.numel()} differ"
    Wd = CB.cpu().double() * SCB.cpu().double()[:, None] / 127
    keep = torch.ones(K, dtype=torch.bool)
    keep[cols.cpu()] = False
    ref = X.cpu().double()[:, ~keep] @ Wd[:, ~keep].T + _dequant_ref(_exact(CA.cpu()[:, keep], CB.cpu()[:, keep]), SCA, SCB, bias)
    err = ((y.cpu().double() - ref).norm() / ref.norm()).item()
    assert err < {torch.float16: 1e-3, torch.bfloat16: 5e-3}[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("rows", [1, 3, 8, 9])
def test_fused_int8_linear_without_outliers_is_bit_identical_to_the_ops(device, dtype, rows):
    # Without outliers the one-call path must give exactly what quantizing with the op and multiplying
    # with int8_scaled_mm gives (the same rounding of every dequantized output, fp32 included).
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    K, N = 512, 72
    X = randn((rows, K), torch.float32, device, seed=31).to(dtype)
    X[0, 7] = 0.0  # values of every kind, an exact zero among them
    CB, SCB, _ = ops.int8_vectorwise_quant(randn((N, K), torch.float16, device, seed=32))
    bias = randn((N,), dtype, device, seed=33)
    y, mask = int8_linear_direct(X, CB, SCB, 0.0, bias)
    CA, SCA, _ = ops.int8_vectorwise_quant(X, 0.0)
    assert mask is None
    assert torch.equal(y, ops.int8_scaled_mm(CA, CB, SCA, SCB, bias, dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_fused_int8_linear_memo_skips_checks_only_for_the_checked_tensors(device, threshold):
    # With a memo, a call like the last checked one goes straight to the native function: its results
    # must be those of a checked call, and any other weight, scale, bias or activation shape, dtype or
    # device must be checked again (a mismatch is refused, not multiplied).
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    K, N = 256, 48
    CB, SCB, _ = ops.int8_vectorwise_quant(randn((N, K), torch.float16, device, seed=41))
    bias = randn((N,), torch.float16, device, seed=42)
    memo = {}
    for seed in (43, 44, 45):  # the first call checks and memoises (CUDA), the others reuse it
        X = randn((3, K), torch.float16, device, seed=seed)
        X[:, 9] = 12.0
        y, mask = int8_linear_direct(X, CB, SCB, threshold, bias, memo=memo)
        y_ref, mask_ref = int8_linear_direct(X, CB, SCB, threshold, bias)
        assert torch.equal(y, y_ref)
        assert (mask is None) == (mask_ref is None) and (mask is None or torch.equal(mask, mask_ref))
    if device == "cuda":
        assert "_int8_direct_plan" in memo
    # Another weight with other data, rows or K; another bias; another dtype: each checked again.
    CB2, SCB2, _ = ops.int8_vectorwise_quant(randn((N, K), torch.float16, device, seed=46))
    X = randn((3, K), torch.float16, device, seed=47)
    assert torch.equal(int8_linear_direct(X, CB2, SCB2, threshold, bias, memo=memo)[0],
                       int8_linear_direct(X, CB2, SCB2, threshold, bias)[0])
    bias2 = randn((N,), torch.float16, device, seed=48)
    assert torch.equal(int8_linear_direct(X, CB2, SCB2, threshold, bias2, memo=memo)[0],
                       int8_linear_direct(X, CB2, SCB2, threshold, bias2)[0])
    X5 = randn((5, K), torch.float32, device, seed=49)
    assert torch.equal(int8_linear_direct(X5, CB2, SCB2, threshold, bias2.float(), memo=memo)[0],
                       int8_linear_direct(X5, CB2, SCB2, threshold, bias2.float())[0])
    short = CB2[:, : K // 2].contiguous()  # K no longer matches the activations: refused
    assert int8_linear_direct(X5, short, SCB2, threshold, None, memo=memo) is None
    SCB2.data = SCB2.data[: N // 2].clone()  # same tensor object, new data of the wrong size: refused
    assert int8_linear_direct(X5, CB2, SCB2, threshold, None, memo=memo) is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("rows", [1, 4, 5, 16, 40])
@pytest.mark.parametrize("outlier_cols", [3, 80])
def test_fused_int8_linear_with_outliers_gives_the_same_bits_for_unaligned_rows(device, dtype, rows, outlier_cols):
    # Rows that are not 16-byte aligned are quantized element by element instead of by vectors (and
    # one row takes the chain of kernels instead of the one-kernel path); the outputs (one row: one
    # kernel; up to 16: the weight-streaming kernel; many: the GEMM, then the dequantization, by
    # vectors of 8 outputs) and the outlier mask must not change by a bit, with few outlier columns
    # (packed) and more than the 64 that are packed.
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    K, N = 512, 72
    X = randn((rows, K), torch.float32, device, seed=41)
    X[0, 7] = 0.0
    cols = torch.randperm(K, generator=torch.Generator().manual_seed(42))[:outlier_cols].to(device)
    X[rows // 2, cols] = 9.0  # an outlier in one row only: its whole column leaves the int8 product
    X = X.to(dtype)
    CB, SCB, _ = ops.int8_vectorwise_quant(randn((N, K), torch.float16, device, seed=43))
    bias = randn((N,), dtype, device, seed=44)
    y, mask = int8_linear_direct(X, CB, SCB, 6.0, bias)
    storage = torch.empty(rows * K + 1, dtype=dtype, device=device)
    X_unaligned = storage[1:].view(rows, K)
    X_unaligned.copy_(X)
    assert X_unaligned.data_ptr() % 16 != 0
    y_ref, mask_ref = int8_linear_direct(X_unaligned, CB, SCB, 6.0, bias)
    assert torch.equal(mask, mask_ref) and int(mask.sum()) == outlier_cols
    assert torch.equal(y, y_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("rows", [1, 17, 43])
@pytest.mark.parametrize("outlier_cols", [3, 80])
def test_fused_int8_linear_outputs_do_not_depend_on_the_width_of_the_layer(device, dtype, rows, outlier_cols):
    # Many rows: with N a multiple of 8 the dequantization takes vectors of 8 outputs of 4 rows at a
    # time (the packed outlier columns read once for the 4), with N = 71 one output per thread; few
    # rows: N = 71 leaves the last CTA's weight rows partly past the end; the first 71 outputs of every
    # row must have the same bits either way.
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    K, N = 256, 72
    X = randn((rows, K), torch.float32, device, seed=51)
    cols = torch.randperm(K, generator=torch.Generator().manual_seed(52))[:outlier_cols].to(device)
    X[rows - 1, cols] = -9.0
    X = X.to(dtype)
    CB, SCB, _ = ops.int8_vectorwise_quant(randn((N, K), torch.float16, device, seed=53))
    bias = randn((N,), dtype, device, seed=54)
    y, _ = int8_linear_direct(X, CB, SCB, 6.0, bias)
    y_narrow, _ = int8_linear_direct(X, CB[:71].contiguous(), SCB[:71].contiguous(), 6.0, bias[:71].contiguous())
    assert torch.equal(y[:, :71], y_narrow)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_inference_takes_the_fused_path(device, monkeypatch):
    # Eager Linear8bitLt inference must reach the one-call native path (not the op-by-op one).
    import bitsandbytes as bnb
    from bitsandbytes.autograd import _int8_matmul
    from bitsandbytes.nn import linear8bit

    calls = []
    real = _int8_matmul.int8_linear_direct
    for module in (_int8_matmul, linear8bit):
        monkeypatch.setattr(module, "int8_linear_direct", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    layer = bnb.nn.Linear8bitLt(128, 32, has_fp16_weights=False, threshold=6.0).to(device).eval()
    x = randn((2, 128), torch.float16, device, seed=28)
    x[:, [7, 90]] = 12.0
    with torch.no_grad():
        first = layer(x)
        y = layer(x)  # the layer is set up now: this call is the one-call path from the layer itself
    assert len(calls) == 2 and y.shape == (2, 32) and torch.equal(first, y)
    # The outlier columns are still reported in state.idx (formed on first read).
    assert torch.equal(layer.state.idx.cpu(), torch.tensor([7, 90]))


@pytest.mark.parametrize("device", DEVICES)
def test_fused_path_declines_what_it_cannot_read(device):
    # Strided weight rows, short scale vectors and a bias of the wrong length are left to the ops
    # (which check them) instead of being read as if they were dense.
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    CB = _int8((16, 64), device, 29)
    SCB = torch.rand(16, device=device) + 0.5
    x = randn((2, 64), torch.float16, device, seed=30)
    assert int8_linear_direct(x, CB.t().contiguous().t(), SCB, 0.0, None) is None
    assert int8_linear_direct(x, CB, SCB[:8], 0.0, None) is None
    assert int8_linear_direct(x, CB, SCB, 0.0, torch.ones(3, device=device, dtype=torch.float16)) is None
    assert int8_linear_direct(x, CB, SCB, 0.0, None) is not None


@pytest.mark.parametrize("device", DEVICES)
def test_state_idx_follows_the_last_call(device):
    # The layer reuses one outlier-mask buffer: state.idx must always describe the latest call.
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(64, 16, has_fp16_weights=False, threshold=6.0).to(device).eval()
    x = randn((2, 64), torch.float16, device, seed=35)
    with torch.no_grad():
        layer(x)  # first call: sets the layer up
        for cols in ([3], [10, 40], []):
            x = randn((2, 64), torch.float16, device, seed=36)
            x[:, cols] = 9.0
            layer(x)
            assert layer.state.idx.cpu().tolist() == cols


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [1, 16, 40])
def test_fused_int8_linear_overwrites_every_byte_of_an_offered_mask(device, rows):
    # A layer offers its outlier-mask buffer to every call; whatever the buffer holds (here a byte value
    # no call writes), the call leaves exactly 1 at this call's outlier columns and 0 elsewhere, and the
    # outputs are those of a call with a fresh buffer.
    from bitsandbytes.backends.native_int8_matmul import int8_linear_direct

    K, N = 320, 24
    X = randn((rows, K), torch.float16, device, seed=61)
    X[rows - 1, [5, 77, 300]] = 8.0
    CB, SCB, _ = ops.int8_vectorwise_quant(randn((N, K), torch.float16, device, seed=62))
    stale = torch.full((K,), 7, dtype=torch.uint8, device=device)
    y, mask = int8_linear_direct(X, CB, SCB, 6.0, None, stale)
    y_ref, mask_ref = int8_linear_direct(X, CB, SCB, 6.0, None)
    assert mask.data_ptr() == stale.data_ptr()
    assert torch.nonzero(mask.cpu()).reshape(-1).tolist() == [5, 77, 300]
    assert set(mask.cpu().tolist()) == {0, 1}
    assert torch.equal(mask, mask_ref) and torch.equal(y, y_ref)


# ---- empty inner dimension, empty outputs -------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("a_shape", [(4, 0), (2, 3, 0), (0, 0)], ids=str)
def test_products_over_an_empty_inner_dimension_are_zero(device, a_shape):
    """K = 0: every int32 sum has no terms, so it is 0, and the dequantized product is the bias."""
    A = torch.empty(a_shape, dtype=torch.int8, device=device)
    B = torch.empty((5, 0), dtype=torch.int8, device=device)
    rows = 1
    for d in a_shape[:-1]:
        rows *= d
    acc = ops.int8_linear_matmul(A, B)
    assert acc.shape == (*a_shape[:-1], 5) and acc.dtype == torch.int32 and not acc.any()
    out = torch.full((*a_shape[:-1], 5), 7, dtype=torch.int32, device=device)
    ops.int8_linear_matmul.out(A, B, out)
    assert not out.any()
    row, col = torch.rand(rows, device=device), torch.rand(5, device=device)
    bias = randn((5,), torch.float32, device, seed=8)
    for dtype in FLOAT_DTYPES:
        y = ops.int8_scaled_mm(A, B, row, col, bias, dtype)
        assert y.shape == (*a_shape[:-1], 5) and y.dtype == dtype
        assert torch.equal(y.cpu(), bias.cpu().to(dtype).expand(y.shape))
    y, sub = ops.int8_mixed_scaled_mm(torch.empty(a_shape, device=device), A, B, row, col,
                                      torch.empty(0, dtype=torch.int64, device=device), None)
    assert y.shape == (*a_shape[:-1], 5) and not y.any() and sub.shape == (rows, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_mm_dequant_of_no_columns_still_needs_one_scale_per_row(device):
    acc = torch.empty((5, 0), dtype=torch.int32, device=device)
    y = ops.int8_mm_dequant(acc, torch.ones(5, device=device), torch.ones(0, device=device))
    assert y.shape == (5, 0)
    with pytest.raises(ValueError, match="row_stats"):
        ops.int8_mm_dequant(acc, torch.ones(0, device=device), torch.ones(0, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_dim_operands_are_refused(device):
    B = _int8((3, 8), device, 30)
    with pytest.raises(ValueError, match="at least one dimension"):
        ops.int8_linear_matmul(torch.tensor(1, dtype=torch.int8, device=device), B)
    with pytest.raises(ValueError, match="A"):
        F.int8_linear_matmul(_int8((2, 8), device, 31), torch.tensor(1, dtype=torch.int8, device=device),
                             out=torch.empty(2, 3, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="1-D"):
        ops.int8_mm_dequant(torch.tensor(1, dtype=torch.int32, device=device), torch.ones(1, device=device),
                            torch.ones(1, device=device))


# ---- scales, bias and outputs of the wrong size, dtype or device --------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_scales_and_bias_of_the_wrong_size_or_dtype_are_refused(device):
    A, B = _int8((4, 64), device, 32), _int8((8, 64), device, 33)
    acc = ops.int8_linear_matmul(A, B)
    row, col = torch.ones(4, device=device), torch.ones(8, device=device)
    for run in (lambda r, c, b: ops.int8_scaled_mm(A, B, r, c, b), lambda r, c, b: ops.int8_mm_dequant(acc, r, c, None, b),
                lambda r, c, b: ops.int8_mixed_scaled_mm(torch.ones(4, 64, device=device), A, B, r, c, None, b)):
        with pytest.raises(ValueError, match="row_stats|SCA"):
            run(torch.ones(1, device=device), col, None)  # one value would be broadcast over every row
        with pytest.raises(ValueError, match="col_stats|SCB"):
            run(row, torch.ones(9, device=device), None)
        with pytest.raises(TypeError, match="row_stats"):
            run(row.to(torch.int32), col, None)
        with pytest.raises(ValueError, match="bias"):
            run(row, col, torch.ones(1, device=device))
        with pytest.raises(TypeError, match="bias"):
            run(row, col, torch.ones(8, dtype=torch.int64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_mm_dequant_out_must_match_and_is_left_alone_when_refused(device):
    acc = torch.randint(-1000, 1000, (4, 6), dtype=torch.int32, device=device)
    row, col = torch.rand(4, device=device), torch.rand(6, device=device)
    for bad, exc in [(torch.zeros(2, 4, 6, dtype=torch.float16, device=device), ValueError),  # copy_ would broadcast
                     (torch.zeros(4, 6, dtype=torch.float32, device=device), TypeError),  # copy_ would cast
                     (torch.zeros(4, 6, dtype=torch.float16, device="meta"), ValueError)]:
        with pytest.raises(exc, match="out"):
            F.int8_mm_dequant(acc, row, col, out=bad)
        if bad.device.type != "meta":
            assert not bad.any()
    out = torch.zeros(6, 4, dtype=torch.float16, device=device).t()  # any strides: it receives a copy
    assert F.int8_mm_dequant(acc, row, col, out=out) is out
    assert torch.equal(out, ops.int8_mm_dequant(acc, row, col))


# ---- the fake kernels refuse a meta tensor among real ones ----------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_int8_fake_kernels_refuse_mixed_devices(device):
    """A meta tensor among real ones sends the call to the fake kernel: it must fail there, not return an
    uninitialised real tensor."""
    A, B = _int8((4, 64), device, 34), _int8((8, 64), device, 35)
    row, col = torch.ones(4, device=device), torch.ones(8, device=device)
    acc = torch.ones(4, 8, dtype=torch.int32, device=device)
    meta = lambda t: t.to("meta")  # noqa: E731
    calls = [
        lambda: ops.int8_linear_matmul(A, meta(B)),
        lambda: ops.int8_linear_matmul.out(A, B, torch.empty(4, 8, dtype=torch.int32, device="meta")),
        lambda: ops.int8_mm_dequant(acc, meta(row), col),
        lambda: ops.int8_mm_dequant(acc, row, col, None, torch.ones(8, device="meta")),
        lambda: ops.int8_scaled_mm(A, B, row, meta(col)),
        lambda: ops.int8_scaled_mm(A, B, row, col, torch.ones(8, device="meta")),
        lambda: ops.int8_mixed_scaled_mm(torch.ones(4, 64, device="meta"), A, B, row, col, None, None),
        lambda: ops.int8_vectorwise_dequant(A, torch.ones(4, device="meta")),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="same device"):
            call()
    # all-meta calls still describe their outputs
    y = ops.int8_scaled_mm(meta(A), meta(B), meta(row), meta(col), None, torch.bfloat16)
    assert y.device.type == "meta" and y.shape == (4, 8) and y.dtype == torch.bfloat16


def test_int8_fake_kernels_check_sizes_like_the_kernels():
    A, B = _int8((4, 64), "meta", 36), _int8((8, 64), "meta", 37)
    with pytest.raises(RuntimeError, match="row_stats"):
        ops.int8_scaled_mm(A, B, torch.ones(1, device="meta"), torch.ones(8, device="meta"))
    with pytest.raises(RuntimeError, match="bias"):
        ops.int8_scaled_mm(A, B, torch.ones(4, device="meta"), torch.ones(8, device="meta"), torch.ones(3, device="meta"))
    with pytest.raises(RuntimeError, match="col_stats"):
        ops.int8_mm_dequant(torch.ones(4, 8, dtype=torch.int32, device="meta"), torch.ones(4, device="meta"),
                            torch.ones(7, device="meta"))
    with pytest.raises(RuntimeError, match="out must have shape"):
        ops.int8_linear_matmul.out(A, B, torch.empty(4, 9, dtype=torch.int32, device="meta"))

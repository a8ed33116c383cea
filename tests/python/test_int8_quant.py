"""LLM.int8() quantization: int8_vectorwise_quant / _dequant, int8_double_quant (compat.md §1.3, §1.4.4).

Tolerances: row quantization is exact (round half to even of x * 127 / absmax in float32);
row/col absmax exact; dequantization exact for the stated multiplier.
"""

import pytest
import torch

import bitsandbytes.functional as F
import oracles as O
from helpers import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda, randn

ops = torch.ops.bitsandbytes


def _with_outliers(shape, dtype, device, seed=0):
    x = randn(shape, torch.float32, "cpu", seed=seed)
    cols = shape[-1]
    flat = x.view(-1, cols)
    flat[1, 3] = 9.0
    flat[-1, 3] = -7.5
    flat[2, cols - 1] = 6.0  # exactly the threshold: an outlier (>=)
    flat[0, 5] = 5.96875  # just below the threshold, exact in bf16 too
    return x.to(dtype).to(device)


def _check(x, threshold, q, stats, cols):
    q_ref, stats_ref, cols_ref = O.int8_vectorwise_ref(x, threshold)
    assert q.dtype == torch.int8 and q.shape == x.shape and q.device == x.device
    rows = x.numel() // x.shape[-1]
    assert stats.dtype == torch.float32 and stats.shape == (rows,)
    assert torch.equal(stats.cpu(), stats_ref)
    bad = (q.cpu() != q_ref).sum().item()
    assert bad == 0, f"{bad} int8 values differ from round(x * 127 / absmax)"
    if threshold == 0.0:
        assert cols is None
    else:
        assert cols is not None and cols.dtype == torch.int64 and cols.dim() == 1
        assert torch.equal(cols.cpu(), cols_ref)
    return q_ref, stats_ref, cols_ref


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 64), (37, 129), (4, 5, 96)], ids=str)
def test_vectorwise_quant_no_threshold(device, dtype, shape):
    x = randn(shape, dtype, device, seed=3, scale=3.0)
    q, stats, cols = F.int8_vectorwise_quant(x)
    _check(x, 0.0, q, stats, cols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(6, 40), (2, 3, 40)], ids=str)
def test_vectorwise_quant_with_outliers(device, dtype, shape):
    x = _with_outliers(shape, dtype, device)
    q, stats, cols = F.int8_vectorwise_quant(x, threshold=6.0)
    q_ref, stats_ref, cols_ref = _check(x, 6.0, q, stats, cols)
    assert cols.tolist() == [3, shape[-1] - 1], "sorted, unique columns with any |x| >= threshold"
    q2d = q.view(-1, shape[-1]).cpu()
    assert torch.all(q2d[:, cols.cpu()] == 0), "whole outlier columns are zeroed when rows > 1"
    # row absmax excludes the outliers: the row holding 9.0 has stats < 6
    assert stats.view(-1)[1].item() < 6.0
    assert stats.view(-1)[0].item() == 5.96875


@pytest.mark.parametrize("device", DEVICES)
def test_vectorwise_quant_single_row_zeroes_only_outliers(device):
    x = torch.tensor([[0.5, -8.0, 1.0, 2.0, 7.0, -0.25]], device=device)
    q, stats, cols = F.int8_vectorwise_quant(x, threshold=6.0)
    _check(x, 6.0, q, stats, cols)
    assert cols.tolist() == [1, 4]
    assert stats.item() == 2.0
    assert q.cpu().tolist() == [[32, 0, 64, 127, 0, -16]]  # 0.5 * 63.5 = 31.75 -> 32; -0.25 -> -15.875 -> -16


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_vectorwise_quant_threshold_without_outliers_gives_empty_tensor(device, dtype):
    x = randn((8, 32), dtype, device)
    q, stats, cols = F.int8_vectorwise_quant(x, threshold=100.0)
    assert cols is not None and cols.numel() == 0 and cols.dtype == torch.int64
    _check(x, 100.0, q, stats, cols)
    q0, stats0, _ = F.int8_vectorwise_quant(x)
    assert torch.equal(q, q0) and torch.equal(stats, stats0)


@pytest.mark.parametrize("device", DEVICES)
def test_vectorwise_quant_outlier_columns_stay_right_over_many_calls(device):
    """The flag buffer is reused from call to call (each call flags with a new tag, cleared only when
    the tags wrap after 255 calls): over 300 calls with changing outlier columns, each call lists
    exactly its own columns, never those of an earlier call."""
    rows, cols = 3, 48
    base = randn((rows, cols), torch.float32, "cpu", seed=5)
    for call in range(300):
        x = base.clone()
        own = sorted({(call * 7) % cols, (call * 13 + 5) % cols}) if call % 3 else []
        for j, c in enumerate(own):
            x[(call + j) % rows, c] = 8.0
        _, _, listed = F.int8_vectorwise_quant(x.to(device), threshold=6.0)
        assert listed.tolist() == own, f"call {call}"


@pytest.mark.parametrize("device", DEVICES)
def test_vectorwise_quant_rounds_half_to_even(device):
    # With absmax 127 the scale is exactly 1, so x itself is rounded.
    vals = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4999, 3.5, 126.5]
    x = torch.tensor([vals], device=device)
    q, stats, _ = F.int8_vectorwise_quant(x)
    assert stats.item() == 127.0
    assert q.cpu().tolist() == [[127, 0, 2, 2, 0, -2, -2, 3, 4, 126]]


@pytest.mark.parametrize("device", DEVICES)
def test_vectorwise_quant_zero_row(device):
    x = randn((3, 16), torch.float16, device)
    x[1] = 0
    q, stats, _ = F.int8_vectorwise_quant(x)
    assert stats[1].item() == 0.0
    assert torch.all(q[1] == 0)
    _check(x, 0.0, q, stats, None)


@pytest.mark.parametrize("device", DEVICES)
def test_vectorwise_quant_non_contiguous(device):
    base = randn((40, 64), torch.bfloat16, device, seed=8, scale=2.0)
    x = base.t()
    q, stats, cols = F.int8_vectorwise_quant(x)
    _check(x, 0.0, q, stats, cols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_vectorwise_round_trip_error_bound(device, dtype):
    x = randn((64, 256), dtype, device, seed=5, scale=4.0)
    q, stats, _ = F.int8_vectorwise_quant(x)
    y = F.int8_vectorwise_dequant(q, stats)
    # half a quantization step per row, plus the rounding of the input dtype
    step = stats.cpu()[:, None] / 127
    err = (y.cpu() - x.cpu().float()).abs()
    assert torch.all(err <= step / 2 * (1 + 1e-5) + 1e-6)


# ---- dequant ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(5, 17), (2, 3, 17)], ids=str)
def test_vectorwise_dequant(device, shape):
    g = torch.Generator().manual_seed(1)
    A = torch.randint(-127, 128, shape, dtype=torch.int8, generator=g)
    rows = A.numel() // shape[-1]
    stats = torch.rand(rows, generator=g) * 10 + 0.1
    y = F.int8_vectorwise_dequant(A.to(device), stats.to(device))
    assert y.dtype == torch.float32 and y.shape == shape
    want = (A.reshape(rows, -1).float() * stats[:, None] * torch.tensor(O.INT8_DEQUANT_MULTIPLIER,
                                                                         dtype=torch.float32)).reshape(shape)
    assert torch.equal(y.cpu(), want)
    # the multiplier is 1/127
    exact = A.reshape(rows, -1).double() * stats.double()[:, None] / 127
    torch.testing.assert_close(y.cpu().double().reshape(rows, -1), exact, rtol=1e-6, atol=1e-6)


def test_dequant_multiplier_constant():
    import bitsandbytes._ops as _ops

    assert _ops.INT8_DEQUANT_MULTIPLIER == 7.874015718698502e-3


# ---- double quant -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_double_quant(device, dtype, threshold):
    x = _with_outliers((24, 48), dtype, device, seed=2)
    out_row, out_col, row_stats, col_stats, cols = F.int8_double_quant(x, threshold=threshold)
    _check(x, threshold, out_row, row_stats, cols)
    col_ref, col_stats_ref = O.int8_colwise_ref(x, threshold)
    assert out_col.dtype == torch.int8 and out_col.shape == x.shape
    assert col_stats.dtype == torch.float32 and col_stats.shape == (48,)
    assert torch.equal(col_stats.cpu(), col_stats_ref)
    diff = (out_col.cpu().int() - col_ref.int()).abs()
    # exact except where x * 127 / absmax sits within float32 rounding of a .5 tie
    assert diff.max().item() <= 1
    assert (diff != 0).float().mean().item() < 1e-3
    if threshold > 0:
        outlier_mask = x.cpu().float().abs() >= threshold
        assert torch.all(out_col.cpu()[outlier_mask] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_double_quant_3d(device):
    x = randn((2, 5, 24), torch.float16, device, seed=4)
    out_row, out_col, row_stats, col_stats, cols = F.int8_double_quant(x)
    assert out_row.shape == out_col.shape == (2, 5, 24)
    assert row_stats.shape == (10,) and col_stats.shape == (24,) and cols is None
    assert torch.equal(col_stats.cpu(), x.cpu().float().reshape(10, 24).abs().amax(0))


@pytest.mark.parametrize("kwarg", ["col_stats", "row_stats", "out_col", "out_row"])
def test_double_quant_rejects_preallocated_outputs(kwarg):
    x = randn((4, 8), torch.float16)
    buffers = {"col_stats": torch.empty(8), "row_stats": torch.empty(4),
               "out_col": torch.empty(4, 8, dtype=torch.int8), "out_row": torch.empty(4, 8, dtype=torch.int8)}
    with pytest.raises(ValueError):
        F.int8_double_quant(x, **{kwarg: buffers[kwarg]})


# ---- CUDA vs CPU ----------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_cuda_matches_cpu(dtype, threshold):
    x = _with_outliers((64, 200), dtype, "cpu", seed=6)
    cpu = F.int8_vectorwise_quant(x, threshold)
    gpu = F.int8_vectorwise_quant(x.cuda(), threshold)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    if threshold:
        assert torch.equal(gpu[2].cpu(), cpu[2])
    else:
        assert gpu[2] is None
    cpu_d = F.int8_double_quant(x, threshold=threshold)
    gpu_d = F.int8_double_quant(x.cuda(), threshold=threshold)
    for a, b in zip(gpu_d[:4], cpu_d[:4]):
        assert torch.equal(a.cpu(), b)
    assert torch.equal(F.int8_vectorwise_dequant(gpu[0], gpu[1]).cpu(), F.int8_vectorwise_dequant(cpu[0], cpu[1]))


@needs_cuda
def test_cuda_outlier_columns_many_rows_and_ragged_width():
    """Columns flagged in a few rows only are zeroed in every row (rows spread over many CTAs), the
    list is ascending and complete, also for a width that is not a multiple of the 16-flag loads."""
    rows, cols = 3000, 4133
    x = randn((rows, cols), torch.float32, "cpu", seed=11) * 0.5
    flagged = [0, 15, 16, 17, 2047, 4096, 4131, 4132]
    for j, c in enumerate(flagged):
        x[(j * 397) % rows, c] = -7.0 if j % 2 else 9.0
    q, stats, cols_out = F.int8_vectorwise_quant(x.cuda().half(), threshold=6.0)
    assert cols_out.tolist() == flagged
    q_cpu, _, cols_cpu = F.int8_vectorwise_quant(x.half(), threshold=6.0)
    assert cols_cpu.tolist() == flagged
    assert torch.equal(q.cpu(), q_cpu)
    assert not q.cpu()[:, flagged].any()


@needs_cuda
def test_vectorwise_quant_with_threshold_refuses_graph_capture():
    """The outlier list's length is read on the host: inside CUDA graph capture that is a clear error."""
    x = randn((8, 64), torch.float16, "cuda", seed=3)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        F.int8_vectorwise_quant(x, 6.0)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="graph capture"):
        with torch.cuda.graph(graph):
            F.int8_vectorwise_quant(x, 6.0)


# ---- empty shapes: real outputs agree with the fake kernel --------------------------------------------------


def _fake_run(op, shape, threshold):
    """The op's fake-kernel outputs (FakeTensorMode: the outlier list has a data-dependent size)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()):
        return op(torch.empty(shape), threshold)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 0), (0, 8), (2, 0, 3), (3, 1, 0)], ids=str)
@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_vectorwise_quant_empty_shapes(device, shape, threshold):
    x = torch.empty(shape, device=device)
    q, stats, cols = F.int8_vectorwise_quant(x, threshold)
    mq, mstats, mcols = _fake_run(ops.int8_vectorwise_quant, shape, threshold)
    assert q.shape == mq.shape == shape and q.dtype == torch.int8
    rows = 1
    for d in shape[:-1]:
        rows *= d
    assert stats.shape == mstats.shape == (rows,)
    assert torch.all(stats == 0)
    if threshold == 0.0:
        assert cols is None and mcols is None
    else:
        assert cols.dtype == torch.int64 and cols.numel() == 0, "no values, so no outlier columns"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 0), (0, 8)], ids=str)
def test_double_quant_empty_shapes(device, shape):
    out_row, out_col, row_stats, col_stats, cols = F.int8_double_quant(torch.empty(shape, device=device), threshold=2.0)
    meta = _fake_run(ops.int8_double_quant, shape, 2.0)
    assert out_row.shape == out_col.shape == shape
    assert row_stats.shape == meta[2].shape and col_stats.shape == meta[3].shape
    assert cols.numel() == 0


# ---- thresholds -----------------------------------------------------------------------------------------------

# NaN compares false everywhere (no outliers on one path, a dynamic outlier list on another), a negative
# value makes every value an outlier, and a value too large for float32 is infinity in the kernels.
BAD_THRESHOLDS = [float("nan"), -1.0, -1e-30, float("inf"), 1e39]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", BAD_THRESHOLDS, ids=str)
def test_bad_thresholds_are_refused_everywhere(device, threshold):
    x = randn((4, 16), torch.float16, device)
    for call in (lambda: F.int8_vectorwise_quant(x, threshold), lambda: F.int8_double_quant(x, threshold=threshold),
                 lambda: ops.int8_vectorwise_quant(x, threshold), lambda: ops.int8_double_quant(x, threshold),
                 # no rows: the library is not called, the threshold is still checked
                 lambda: ops.int8_vectorwise_quant(x[:0], threshold)):
        with pytest.raises(ValueError, match="threshold"):
            call()
    for op in (ops.int8_vectorwise_quant, ops.int8_double_quant):  # the fake kernels agree
        with pytest.raises(RuntimeError, match="threshold"):
            _fake_run(op, (4, 16), threshold)


@pytest.mark.parametrize("threshold", [True, "6.0", None], ids=str)
def test_threshold_must_be_a_number(threshold):
    with pytest.raises(TypeError, match="threshold"):
        F.int8_vectorwise_quant(torch.randn(2, 8), threshold)


def test_integral_and_float32_max_thresholds_are_accepted():
    x = torch.tensor([[1.0, 7.0, -2.0]])
    assert F.int8_vectorwise_quant(x, 6)[2].tolist() == [1]
    _, stats, cols = F.int8_vectorwise_quant(x, torch.finfo(torch.float32).max)
    assert cols.numel() == 0 and stats.item() == 7.0


def test_fake_quant_kernels_refuse_what_the_kernels_refuse():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()):
        for op in (ops.int8_vectorwise_quant, ops.int8_double_quant):
            with pytest.raises(RuntimeError, match="float16, bfloat16 or float32"):
                op(torch.empty(4, 8, dtype=torch.int8), 0.0)
            with pytest.raises(RuntimeError, match="at least one dimension"):
                op(torch.empty(()), 0.0)


# ---- non-finite inputs --------------------------------------------------------------------------------------
# A row that keeps a NaN or (threshold 0) an infinity has no int8 form: its row absmax is NaN (any NaN)
# or inf, every code is 0, and the row dequantizes to NaN, as a float product with it is not finite.
# +-inf is an outlier for any threshold > 0; NaN never is.


def _non_finite_rows(dtype, device, cols=40):
    x = randn((5, cols), torch.float32, seed=21)
    x[1, 3] = float("inf")
    x[2, cols - 1] = -float("inf")
    x[3, 0] = float("nan")
    x[4, 7] = float("nan")
    x[4, 9] = float("inf")
    return x.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("cols", [40, 1000], ids=lambda c: f"K{c}")  # one warp per row / one CTA per row on CUDA
def test_infinite_rows_quantize_to_zero_codes_with_infinite_stats(device, dtype, cols):
    x = _non_finite_rows(dtype, device, cols)
    x[3:] = 1.0  # rows 1 and 2 hold infinities only
    q, stats, _ = F.int8_vectorwise_quant(x)
    stats, q = stats.cpu(), q.cpu()
    assert stats[1].item() == stats[2].item() == float("inf")
    assert not q[1:3].any(), "no finite scale can represent the row"
    assert torch.isnan(F.int8_vectorwise_dequant(q, stats)[1:3]).all()
    # the finite rows are untouched by their neighbours
    q_ref, stats_ref, _ = O.int8_vectorwise_ref(x[[0, 3, 4]], 0.0)
    assert torch.equal(stats[[0, 3, 4]], stats_ref) and torch.equal(q[[0, 3, 4]], q_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_infinities_are_outliers_for_a_positive_threshold(device, dtype):
    x = _non_finite_rows(dtype, device)
    x[3, 0] = x[4, 7] = 0.5  # no NaN here
    q, stats, cols = F.int8_vectorwise_quant(x, threshold=6.0)
    assert cols.tolist() == [3, 9, 39]
    assert torch.isfinite(stats).all()
    _check(x, 6.0, q, stats, cols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("cols", [40, 1000], ids=lambda c: f"K{c}")
def test_rows_with_nan_get_nan_stats_and_zero_codes(device, dtype, threshold, cols):
    x = _non_finite_rows(dtype, device, cols)
    q, stats, _ = F.int8_vectorwise_quant(x, threshold)
    stats, q = stats.cpu(), q.cpu()
    assert torch.isnan(stats[[3, 4]]).all(), "a NaN the row keeps is its absmax, as torch.amax gives"
    assert not q[[3, 4]].any()
    assert torch.isnan(F.int8_vectorwise_dequant(q, stats)[[3, 4]]).all()
    # the oracle of the whole matrix: with threshold > 0 the other rows' outlier columns are zeroed in row 0 too
    assert torch.isfinite(stats[0]) and torch.equal(q[0], O.int8_vectorwise_ref(x, threshold)[0][0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_double_quant_keeps_nan_in_rows_and_columns(device, dtype, threshold):
    """Rows and columns holding a NaN store the one NaN pattern 0x7fc00000 (whatever NaNs they hold, so every
    backend stores the same bytes) and all-zero codes; infinities are inf stats at threshold 0, outliers above."""
    x = _non_finite_rows(dtype, "cpu")  # NaN at (3, 0) and (4, 7); inf at (1, 3), (2, 39), (4, 9)
    negative_nan = torch.tensor([0xFFC12345], dtype=torch.int64).to(torch.int32).view(torch.float32)  # with a payload
    x[3, 0] = negative_nan.to(dtype)
    out_row, out_col, row_stats, col_stats, _ = F.int8_double_quant(x.to(device), threshold=threshold)
    out_row, out_col, row_stats, col_stats = out_row.cpu(), out_col.cpu(), row_stats.cpu(), col_stats.cpu()
    nan_bits = 0x7FC00000
    assert (row_stats.view(torch.int32)[[3, 4]] == nan_bits).all() and not out_row[[3, 4]].any()
    assert (col_stats.view(torch.int32)[[0, 7]] == nan_bits).all() and not out_col[:, [0, 7]].any()
    inf_cols = [3, 9, 39]
    if threshold == 0.0:
        assert (col_stats[inf_cols] == float("inf")).all() and not out_col[:, inf_cols].any()
    else:
        assert torch.isfinite(col_stats[inf_cols]).all()
    finite = [c for c in range(40) if c not in (0, 7, *inf_cols)]
    col_ref, col_stats_ref = O.int8_colwise_ref(x, threshold)
    assert torch.equal(col_stats[finite], col_stats_ref[finite])
    assert (out_col[:, finite].int() - col_ref[:, finite].int()).abs().max().item() <= 1


# ---- dequant: one scale per row -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("count", [1, 4, 6, 24])
def test_vectorwise_dequant_needs_one_scale_per_row(device, count):
    """A single scale (or any other count) is refused: broadcasting it would silently scale every row alike."""
    A = torch.ones(5, 4, dtype=torch.int8, device=device)
    stats = torch.ones(count, device=device)
    with pytest.raises(ValueError, match="stats"):
        F.int8_vectorwise_dequant(A, stats)
    with pytest.raises(ValueError, match="stats"):
        ops.int8_vectorwise_dequant(A, stats)
    with pytest.raises(RuntimeError, match="stats"):
        ops.int8_vectorwise_dequant(A.to("meta"), stats.to("meta"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (2, 0, 5), (2, 3, 0)], ids=str)
def test_vectorwise_dequant_empty_shapes(device, shape):
    A = torch.empty(shape, dtype=torch.int8, device=device)
    rows = 1
    for d in shape[:-1]:
        rows *= d
    y = F.int8_vectorwise_dequant(A, torch.ones(rows, device=device))
    assert y.shape == shape and y.dtype == torch.float32 and y.device == A.device


@pytest.mark.parametrize("device", DEVICES)
def test_vectorwise_dequant_refuses_stats_on_another_device(device):
    A = torch.ones(4, 8, dtype=torch.int8, device=device)
    with pytest.raises(RuntimeError, match="same device"):
        ops.int8_vectorwise_dequant(A, torch.ones(4, device="meta"))  # the meta kernel answers: no real result
    with pytest.raises(RuntimeError, match="same device"):
        ops.int8_vectorwise_dequant(A.to("meta"), torch.ones(4, device=device))
    assert ops.int8_vectorwise_dequant(A.to("meta"), torch.ones(4, device="meta")).device.type == "meta"

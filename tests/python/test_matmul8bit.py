"""LLM.int8() matmul: bitsandbytes.matmul, MatMul8bitLt / MatMul8bitFp, and the functional int8
matmul wrappers (compat.md §1.3, §1.4.4, §1.5).

Oracle: the spec formula in float64, built from an independent row-wise quantization
(oracles.int8_vectorwise_ref) of the fp16 weight and of the activation:
    out = (CA @ CB.T) * SCA[i] * SCB[j] / 127^2 + bias + A[:, cols] @ (CB[:, cols] * SCB / 127).T
where cols are the outlier columns (|x| >= threshold) when threshold > 0.
Error measures: ||out - ref|| / ||ref|| and max|out - ref| / max|ref|, bounded per output dtype by
a few units of its rounding (the int8 result passes through fp16, the outlier product through A's
dtype; fp32 outputs are therefore held to the fp16 bound).
"""

import pickle

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
import oracles as O
from bitsandbytes.autograd._functions import MatmulLtState
from helpers import DEVICES, FLOAT_DTYPES, dtype_id, needs_cuda, randn

ops = torch.ops.bitsandbytes

REL_TOL = {torch.float32: 2e-3, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Element-wise bound relative to the largest output: a few output ulps at the top of the range.
MAX_TOL = {torch.float32: 4e-3, torch.float16: 4e-3, torch.bfloat16: 3e-2}
THRESHOLD = 6.0


def _errors(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    rel = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    mx = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item() if ref.numel() else 0.0
    return rel, mx


def _assert_close_to(out, ref, dtype):
    rel, mx = _errors(out, ref)
    assert rel < REL_TOL[dtype], f"relative error {rel:.3g}"
    assert mx < MAX_TOL[dtype], f"max error {mx:.3g} of the largest output"


def _dequant_ref(CB, SCB):
    return CB.double() * SCB.double()[:, None] / 127.0


def _oracle(A, W, threshold=0.0, bias=None):
    """(float64 result [*A.shape[:-1], N], outlier cols or None, CB, SCB) per the spec formula."""
    CB, SCB, _ = O.int8_vectorwise_ref(W.half())
    A2 = A.detach().reshape(-1, A.shape[-1]).cpu()
    CA, SCA, cols = O.int8_vectorwise_ref(A2, threshold)
    out = (CA.double() @ CB.double().t()) * SCA.double()[:, None] * SCB.double()[None, :] / 127.0**2
    if bias is not None:
        out = out + bias.detach().cpu().to(A.dtype).double()
    if cols is not None and cols.numel():
        sub_w = _dequant_ref(CB[:, cols], SCB).to(A.dtype).double()  # the weight columns in A's dtype
        out = out + A2[:, cols].double() @ sub_w.t()
    return out.reshape(*A.shape[:-1], W.shape[0]), cols, CB, SCB


def _activation(shape, dtype, device, outliers, seed=2):
    a = randn(shape, torch.float32, seed=seed)
    if outliers:
        flat = a.view(-1, shape[-1])
        flat[:, 3] *= 4.0
        flat[0, 3] = 9.0  # column 3 holds an outlier
        flat[-1, shape[-1] - 2] = -7.25  # and the second to last column
    return a.to(dtype).to(device)


def _inference_state(threshold=0.0):
    state = MatmulLtState()
    state.is_training = False  # the int8 path on every device
    state.has_fp16_weights = False
    state.threshold = threshold
    return state


SHAPES = [(1, 67), (9, 128), (3, 5, 96), (300, 257)]
SHAPE_IDS = ["M1-Kodd", "M9", "3d", "M300-Kodd"]


# ---- numerics of the int8 path ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD], ids=["t0", "t6"])
@pytest.mark.parametrize("a_shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_matmul_matches_float64_oracle(device, dtype, threshold, a_shape, with_bias):
    n = 48
    W = randn((n, a_shape[-1]), dtype, device, seed=1, scale=0.5)
    A = _activation(a_shape, dtype, device, outliers=threshold > 0)
    bias = randn((n,), dtype, device, seed=3) if with_bias else None
    state = _inference_state(threshold)
    out = bnb.matmul(A, W, bias=bias, state=state)
    ref, cols, CB, SCB = _oracle(A, W, threshold, bias)
    assert out.shape == (*a_shape[:-1], n) and out.dtype == dtype and out.device.type == device
    _assert_close_to(out, ref, dtype)
    # The weight was quantized into the state exactly as the spec's row-wise quantization of fp16 W.
    assert state.CB.dtype == torch.int8 and torch.equal(state.CB.cpu(), CB)
    assert state.SCB.dtype == torch.float32 and torch.equal(state.SCB.cpu(), SCB)
    if threshold > 0:
        assert state.idx is not None and state.idx.dtype == torch.int64
        assert state.idx.cpu().tolist() == cols.tolist() and len(cols) > 0
    else:
        assert state.idx is None
    # LLM.int8() approximates the float product: the quantization error is a few percent at most.
    exact_bias = None if bias is None else bias.double().cpu()
    exact = torch.nn.functional.linear(A.double().cpu(), W.double().cpu(), exact_bias)
    assert _errors(out, exact)[0] < 0.03


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_outliers_only_in_outlier_columns_keep_accuracy(device, dtype):
    # A few large activation features would stretch an all-int8 row scale; the decomposition keeps
    # the int8 error of the other features small: with threshold 6 the result is closer to exact.
    W = randn((64, 256), dtype, device, seed=1, scale=0.5)
    A = randn((32, 256), torch.float32, seed=4)
    A[:, [7, 100]] = 40.0 * torch.sign(A[:, [7, 100]])
    A = A.to(dtype).to(device)
    exact = torch.nn.functional.linear(A.double().cpu(), W.double().cpu())
    plain = bnb.matmul(A, W, state=_inference_state(0.0))
    mixed_state = _inference_state(THRESHOLD)
    mixed = bnb.matmul(A, W, state=mixed_state)
    assert mixed_state.idx.cpu().tolist() == [7, 100]
    assert _errors(mixed, exact)[0] < 0.5 * _errors(plain, exact)[0]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_activations_stay_in_bf16(device):
    # An outlier beyond the float16 range (65504) survives only if the bf16 activation is not
    # converted to fp16 on the way: the outlier column is multiplied in bf16.
    W = randn((16, 64), torch.bfloat16, device, seed=1, scale=0.5)
    A = randn((4, 64), torch.float32, seed=2)
    A[1, 5] = 1.0e5
    A = A.to(torch.bfloat16).to(device)
    out = bnb.matmul(A, W, state=_inference_state(THRESHOLD))
    ref, cols, _, _ = _oracle(A, W, THRESHOLD)
    assert cols.tolist() == [5]
    assert torch.isfinite(out).all()
    _assert_close_to(out, ref, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_prequantized_weight_with_state(device):
    # An int8 B is the quantized weight itself; its scales come with the state. Same result as
    # quantizing the float weight inside the call.
    W = randn((24, 80), torch.float16, device, seed=1)
    A = randn((6, 80), torch.float16, device, seed=2)
    CB, SCB, _ = F.int8_vectorwise_quant(W)
    state = _inference_state()
    state.SCB = SCB
    from_int8 = bnb.matmul(A, CB, state=state)
    from_float = bnb.matmul(A, W, state=_inference_state())
    torch.testing.assert_close(from_int8, from_float, rtol=0, atol=0)
    with pytest.raises(ValueError, match="SCB"):
        bnb.matmul(A, CB, state=_inference_state())


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_weight_is_quantized_once(device):
    W = randn((8, 32), torch.float16, device, seed=1)
    A = randn((3, 32), torch.float16, device, seed=2)
    state = _inference_state()
    bnb.matmul(A, W, state=state)
    cb = state.CB
    bnb.matmul(A, W, state=state)
    assert state.CB is cb


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_argument_sets_state_and_out(device):
    W = randn((8, 32), torch.float16, device, seed=1)
    A = _activation((5, 32), torch.float16, device, outliers=True)
    state = _inference_state()
    out = torch.empty((5, 8), dtype=torch.float16, device=device)
    res = bnb.matmul(A, W, out=out, state=state, threshold=THRESHOLD)
    assert res is out and state.threshold == THRESHOLD and state.idx.numel() > 0
    ref, _, _, _ = _oracle(A, W, THRESHOLD)
    _assert_close_to(out, ref, torch.float16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("a_shape", [(0, 32), (2, 0, 32)], ids=["M0", "3d-M0"])
def test_empty_batch(device, a_shape):
    W = randn((8, 32), torch.float16, device, seed=1)
    bias = randn((8,), torch.float16, device, seed=3).requires_grad_(True)
    A = torch.empty(a_shape, dtype=torch.float16, device=device, requires_grad=True)
    for training in (False, True):
        state = _inference_state()
        state.is_training = training
        out = bnb.matmul(A, W, bias=bias, state=state)
        assert out.shape == (*a_shape[:-1], 8) and out.dtype == torch.float16
        out.sum().backward()
        assert A.grad.shape == A.shape
        assert torch.equal(bias.grad, torch.zeros_like(bias))
        A.grad = bias.grad = None


# ---- gradients -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD], ids=["t0", "t6"])
@pytest.mark.parametrize("a_shape", [(7, 96), (2, 3, 96)], ids=["2d", "3d"])
def test_gradients_wrt_input_and_bias(device, dtype, threshold, a_shape):
    n = 40
    W = randn((n, a_shape[-1]), dtype, device, seed=1, scale=0.5)
    A = _activation(a_shape, dtype, device, outliers=threshold > 0).requires_grad_(True)
    bias = randn((n,), dtype, device, seed=3).requires_grad_(True)
    state = _inference_state(threshold)
    state.is_training = device != "cpu"  # the int8 path; the CPU training path is tested below
    out = bnb.matmul(A, W, bias=bias, state=state)
    grad = randn(out.shape, dtype, device, seed=5)
    out.backward(grad)
    # grad_A = grad @ (CB * SCB / 127), computed in A's dtype.
    w_deq = _dequant_ref(state.CB.cpu(), state.SCB.cpu()).to(dtype).double()
    g2 = grad.reshape(-1, n).double().cpu()
    _assert_close_to(A.grad, (g2 @ w_deq).reshape(a_shape), dtype)
    assert A.grad.dtype == dtype and A.grad.shape == a_shape
    # grad_bias = grad summed over every batch dimension.
    assert bias.grad.shape == (n,) and bias.grad.dtype == dtype
    _assert_close_to(bias.grad, g2.sum(0), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_fp16_weights_training_path(device, dtype):
    # has_fp16_weights: the float weight trains (grad_B = grad.T @ A) and is re-quantized per call.
    n, k = 24, 64
    W = torch.nn.Parameter(randn((n, k), dtype, device, seed=1, scale=0.5))
    A = randn((2, 5, k), dtype, device, seed=2).requires_grad_(True)
    state = MatmulLtState()
    state.has_fp16_weights = True
    state.is_training = True
    out = bnb.matmul(A, W, state=state)
    grad = randn(out.shape, dtype, device, seed=5)
    out.backward(grad)
    a2, g2 = A.detach().reshape(-1, k).double().cpu(), grad.reshape(-1, n).double().cpu()
    assert W.grad is not None and W.grad.dtype == dtype and W.grad.shape == (n, k)
    _assert_close_to(W.grad, g2.t() @ a2, dtype)
    w_deq = _dequant_ref(state.CB.cpu(), state.SCB.cpu()).to(dtype).double()
    _assert_close_to(A.grad, (g2 @ w_deq).reshape(A.shape), dtype)
    # An in-place update of the weight (an optimizer step) is seen by the next call.
    with torch.no_grad():
        W.mul_(2.0)
    bnb.matmul(A, W, state=state)
    CB, SCB, _ = O.int8_vectorwise_ref(W.detach().half())
    assert torch.equal(state.CB.cpu(), CB) and torch.equal(state.SCB.cpu(), SCB)


def test_cpu_training_uses_dequantized_float_path():
    # Training on CPU: dequantize the weight once, then a float linear (MatMul8bitFp): the
    # activation is not quantized, so the result is the float product with the int8 weight.
    dtype = torch.bfloat16
    W = randn((32, 72), dtype, seed=1)
    A = randn((4, 72), dtype, seed=2).requires_grad_(True)
    bias = randn((32,), dtype, seed=3).requires_grad_(True)
    state = MatmulLtState()
    state.has_fp16_weights = False
    assert state.is_training
    out = bnb.matmul(A, W, bias=bias, state=state, threshold=THRESHOLD)
    CB, SCB, _ = O.int8_vectorwise_ref(W.half())
    w_deq = _dequant_ref(CB, SCB).to(dtype).double()
    _assert_close_to(out, A.detach().double() @ w_deq.t() + bias.detach().double(), dtype)
    grad = randn(out.shape, dtype, seed=5)
    out.backward(grad)
    _assert_close_to(A.grad, grad.double() @ w_deq, dtype)
    _assert_close_to(bias.grad, grad.double().sum(0), dtype)


# ---- input validation -----------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    W = randn((8, 32), torch.float16, seed=1)
    A = randn((3, 32), torch.float16, seed=2)
    with pytest.raises(TypeError, match="A must be"):
        bnb.matmul(A.to(torch.int32), W, state=_inference_state())
    with pytest.raises(ValueError, match="disagree on K"):
        bnb.matmul(A, W.t().contiguous(), state=_inference_state())
    with pytest.raises(ValueError, match="2-D"):
        bnb.matmul(A, W.view(8, 2, 16), state=_inference_state())
    with pytest.raises(ValueError, match="bias"):
        bnb.matmul(A, W, bias=torch.zeros(7, dtype=torch.float16), state=_inference_state())


@needs_cuda
def test_device_mismatch_raises():
    W = randn((8, 32), torch.float16, "cuda", seed=1)
    A = randn((3, 32), torch.float16, "cpu", seed=2)
    with pytest.raises(ValueError, match="cuda"):
        bnb.matmul(A, W, state=_inference_state())


def test_state_is_picklable_and_comparable():
    state = _inference_state(THRESHOLD)
    bnb.matmul(randn((2, 16), torch.float16), randn((4, 16), torch.float16), state=state)
    again = pickle.loads(pickle.dumps(state))
    assert torch.equal(again.CB, state.CB) and again.threshold == THRESHOLD


# ---- functional wrappers and the ops --------------------------------------------------------------------


def _int8(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mnk", [(1, 16, 67), (33, 40, 128), (130, 72, 255)], ids=str)
def test_int8_linear_matmul_exact(device, mnk):
    m, n, k = mnk
    A, B = _int8((m, k), device, 1), _int8((n, k), device, 2)
    ref = (A.cpu().long() @ B.cpu().long().t()).to(torch.int32)
    out = F.int8_linear_matmul(A, B)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out.cpu(), ref)
    buf = torch.empty((m, n), dtype=torch.int32, device=device)
    assert F.int8_linear_matmul(A, B, out=buf) is buf and torch.equal(buf.cpu(), ref)
    # Leading dimensions of A are batch dimensions.
    out3 = ops.int8_linear_matmul(A.view(1, m, k), B)
    assert out3.shape == (1, m, n) and torch.equal(out3.cpu().view(m, n), ref)


def test_int8_linear_matmul_rejects_bad_arguments():
    A, B = _int8((4, 16), "cpu", 1), _int8((8, 16), "cpu", 2)
    with pytest.raises(NotImplementedError):
        F.int8_linear_matmul(A, B, dtype=torch.float16)
    with pytest.raises(TypeError, match="A must have dtype int8"):
        F.int8_linear_matmul(A.float(), B)
    with pytest.raises(ValueError, match="shape"):
        F.int8_linear_matmul(A, B, out=torch.empty((4, 7), dtype=torch.int32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_int8_mm_dequant_formula(device, with_bias):
    m, n = 12, 20
    g = torch.Generator().manual_seed(3)
    acc = torch.randint(-2**20, 2**20, (m, n), generator=g, dtype=torch.int32).to(device)
    row = (torch.rand(m, generator=g) * 4 + 0.1).to(device)
    col = (torch.rand(n, generator=g) * 4 + 0.1).to(device)
    bias = randn((n,), torch.float16, device, seed=4) if with_bias else None
    out = F.int8_mm_dequant(acc, row, col, bias=bias)
    assert out.dtype == torch.float16 and out.shape == (m, n)
    ref = acc.cpu().double() * row.cpu().double()[:, None] * col.cpu().double()[None, :] / 127.0**2
    if bias is not None:
        ref = ref + bias.cpu().double()
    _assert_close_to(out, ref, torch.float16)
    buf = torch.empty((m, n), dtype=torch.float16, device=device)
    assert F.int8_mm_dequant(acc, row, col, out=buf, bias=bias) is buf
    torch.testing.assert_close(buf, out, rtol=0, atol=0)
    with pytest.raises(TypeError, match="int32"):
        F.int8_mm_dequant(acc.float(), row, col)


# ---- a refused call leaves the state and out as they were ---------------------------------------------------


def _untouched(state, out=None):
    assert state.CB is None and state.SCB is None and state.threshold == 0.0
    if out is not None:
        assert torch.all(out.cpu() == 5)


@pytest.mark.parametrize("device", DEVICES)
def test_refused_matmul_leaves_state_and_out_unchanged(device):
    W = randn((8, 32), torch.float16, device, seed=1)
    A = randn((3, 32), torch.float16, device, seed=2)
    for threshold in (float("nan"), -1.0, float("inf")):
        state = _inference_state()
        with pytest.raises(ValueError, match="threshold"):
            bnb.matmul(A, W, state=state, threshold=threshold)
        _untouched(state)
    state = _inference_state()
    with pytest.raises(ValueError, match="disagree on K"):
        bnb.matmul(A[:, :16], W, state=state, threshold=THRESHOLD)  # (the threshold is not kept either)
    _untouched(state)
    for bad_out, exc in [(torch.full((2, 3, 8), 5, dtype=torch.float16, device=device), ValueError),  # broadcast
                         (torch.full((3, 8), 5, dtype=torch.float32, device=device), TypeError)]:  # cast
        state = _inference_state()
        with pytest.raises(exc, match="out"):
            bnb.matmul(A, W, out=bad_out, state=state)
        _untouched(state, bad_out)
    state = _inference_state()
    CB, _, _ = F.int8_vectorwise_quant(W)
    with pytest.raises(ValueError, match="SCB"):
        bnb.matmul(A, CB, state=state)
    _untouched(state)


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_threshold_in_the_state_is_refused(device):
    W = randn((8, 32), torch.float16, device, seed=1)
    A = randn((3, 32), torch.float16, device, seed=2)
    for training in (False, True):  # also where the threshold plays no part (training on CPU)
        state = _inference_state(threshold=float("nan"))
        state.is_training = training
        with pytest.raises(ValueError, match="threshold"):
            bnb.matmul(A, W, state=state)


# ---- non-finite activations ---------------------------------------------------------------------------------


def _rows_with(values, device, dtype, M=6, K=64, seed=4):
    """Activations whose first rows each hold one of `values` (the others finite), and the same rows
    with those values replaced by 0.5."""
    x = randn((M, K), torch.float32, seed=seed)
    clean = x.clone()
    for r, v in enumerate(values):
        x[r, 2 * r + 1] = v
        clean[r, 2 * r + 1] = 0.5
    return x.to(dtype).to(device), clean.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("M", [1, 6, 40])
def test_infinite_activations_give_non_finite_rows_only(device, dtype, M):
    """threshold 0: a row holding +-inf comes out NaN (its int8 form is all zeros with an infinite scale);
    the other rows are exactly those of the same call with finite values there."""
    W = randn((24, 64), torch.float16, device, seed=1)
    x, clean = _rows_with([float("inf"), -float("inf")][:M], device, dtype, M=M)
    bad = min(M, 2)
    for grad in (False, True):  # the fused inference call and the autograd function
        state = _inference_state()
        a = x.clone().requires_grad_(grad)
        out = bnb.matmul(a, W, state=state)
        ref = bnb.matmul(clean, W, state=_inference_state())
        assert torch.isnan(out[:bad]).all()
        assert torch.equal(out[bad:].detach(), ref[bad:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 6, 40])
def test_infinite_activations_are_outliers_for_a_positive_threshold(device, M):
    W = randn((24, 64), torch.float16, device, seed=1)
    x, _ = _rows_with([float("inf")], device, torch.float16, M=M)
    out = bnb.matmul(x, W, state=_inference_state(THRESHOLD))
    # column 1 is an outlier: its infinity meets the dequantized weight column in floating point
    CB = O.int8_vectorwise_ref(W)[0][:, 1].float()
    want = torch.where(CB > 0, float("inf"), -float("inf"))
    want[CB == 0] = float("nan")
    torch.testing.assert_close(out[0].cpu().float(), want.float(), equal_nan=True)
    assert torch.isfinite(out[1:]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
@pytest.mark.parametrize("M", [1, 6, 40])
def test_nan_activations_give_nan_rows(device, threshold, M):
    """A NaN in a row makes the whole output row NaN, as a float product does, instead of vanishing."""
    W = randn((24, 64), torch.float16, device, seed=1)
    x, _ = _rows_with([float("nan")], device, torch.float16, M=M)
    for grad in (False, True):
        out = bnb.matmul(x.clone().requires_grad_(grad), W, state=_inference_state(threshold))
        assert torch.isnan(out[0]).all()
        assert torch.isfinite(out[1:]).all()


# ---- deprecated int8 products (compat.md §1.3) ----------------------------------------------------------------


def _i8(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8).to(device)


def _t(x, transposed):
    return x.transpose(-1, -2) if transposed else x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tA", [False, True])
@pytest.mark.parametrize("tB", [False, True])
@pytest.mark.parametrize("dims", ["2x2", "3x2", "3x3"])
def test_deprecated_igemm_is_an_exact_int32_product(device, tA, tB, dims):
    M, K, N, b = 5, 70, 9, 3
    a_shape = (M, K) if dims == "2x2" else (b, M, K)
    b_shape = (K, N) if dims != "3x3" else (b, K, N)
    # The operands as passed: transposed (last two dimensions swapped) where the flag says so.
    stored_A = _i8(a_shape[:-2] + (a_shape[-1], a_shape[-2]) if tA else a_shape, device, 1)
    stored_B = _i8(b_shape[:-2] + (b_shape[-1], b_shape[-2]) if tB else b_shape, device, 2)
    want = torch.matmul(_t(stored_A, tA).cpu().long(), _t(stored_B, tB).cpu().long())  # exact oracle
    with pytest.warns(FutureWarning, match="deprecated"):
        shape = F.check_matmul(stored_A, stored_B, transposed_A=tA, transposed_B=tB)
    assert tuple(shape) == tuple(want.shape)
    with pytest.warns(FutureWarning):
        got = F.igemm(stored_A, stored_B, transposed_A=tA, transposed_B=tB)
    assert got.dtype == torch.int32 and torch.equal(got.cpu().long(), want)
    out = torch.full(want.shape, 3, dtype=torch.int32, device=device)
    with pytest.warns(FutureWarning):
        assert F.igemm(stored_A, stored_B, out=out, transposed_A=tA, transposed_B=tB) is out
    assert torch.equal(out.cpu().long(), want)
    if dims == "3x3":
        with pytest.warns(FutureWarning):
            assert torch.equal(F.batched_igemm(stored_A, stored_B, transposed_A=tA, transposed_B=tB).cpu().long(), want)


def test_deprecated_igemm_refuses_bad_arguments():
    A, B = _i8((4, 8), "cpu", 3), _i8((8, 6), "cpu", 4)
    with pytest.warns(FutureWarning):
        with pytest.raises(TypeError, match="int8"):
            F.igemm(A.float(), B)
        with pytest.raises(ValueError, match="dimensions incorrect"):
            F.igemm(A, B[:7])
        with pytest.raises(ValueError, match="out"):
            F.igemm(A, B, out=torch.zeros(4, 7, dtype=torch.int32))
        with pytest.raises(TypeError, match="out"):
            F.igemm(A, B, out=torch.zeros(4, 6, dtype=torch.int64))
        with pytest.raises(ValueError, match="3-D"):
            F.batched_igemm(A, B)

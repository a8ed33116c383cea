// extern "C" entry points of the LLM.int8() products.
#include "bnb/gemm.h"
#include "core/backend.h"
#include "core/dispatch.h"
#include "core/error.h"

#include <cmath>

using namespace bnb;

namespace {

void check_shapes(int64_t M, int64_t N, int64_t K) {
  BNB_CHECK_ARG(M >= 0 && N >= 0 && K >= 0, "M, N and K must be >= 0, got ", M, ", ", N, ", ", K);
}

void check_dequant(const float* row_stats, const float* col_stats, const void* bias, bnb_dtype_t bias_dtype,
                   const void* out, bnb_dtype_t out_dtype, int64_t M, int64_t N) {
  BNB_CHECK_ARG(is_float_dtype(out_dtype), "the output dtype must be float32, float16 or bfloat16, got ",
                dtype_name(out_dtype));
  BNB_CHECK_ARG(bias == nullptr || is_float_dtype(bias_dtype), "bias must be float32, float16 or bfloat16, got ",
                dtype_name(bias_dtype));
  BNB_CHECK_ARG(M * N == 0 || (row_stats != nullptr && col_stats != nullptr && out != nullptr),
                "row_stats, col_stats and out must not be null");
}

}  // namespace

extern "C" {

BNB_API bnb_status_t bnb_int8_linear_matmul(const int8_t* A, const int8_t* B, int32_t* out, int64_t M, int64_t N,
                                            int64_t K, int32_t device, bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_shapes(M, N, K);
    BNB_CHECK_ARG(M * N == 0 || out != nullptr, "out is a null pointer");
    BNB_CHECK_ARG(M * N * K == 0 || (A != nullptr && B != nullptr), "A / B is a null pointer");
    if (M == 0 || N == 0) return;
    backend::check_device(device);
    backend::int8_linear_matmul({A, B, out, M, N, K}, device, stream);
  });
}

BNB_API bnb_status_t bnb_int8_mm_dequant(const int32_t* acc, const float* row_stats, const float* col_stats,
                                         const void* bias, bnb_dtype_t bias_dtype, void* out, bnb_dtype_t out_dtype,
                                         int64_t M, int64_t N, int32_t device, bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_shapes(M, N, 0);
    check_dequant(row_stats, col_stats, bias, bias_dtype, out, out_dtype, M, N);
    BNB_CHECK_ARG(M * N == 0 || acc != nullptr, "acc is a null pointer");
    if (M == 0 || N == 0) return;
    backend::check_device(device);
    backend::int8_mm_dequant(acc, {row_stats, col_stats, bias, bias_dtype, out, out_dtype, M, N}, device, stream);
  });
}

BNB_API bnb_status_t bnb_int8_scaled_mm(const int8_t* A, const int8_t* B, const float* row_stats,
                                        const float* col_stats, const void* bias, bnb_dtype_t bias_dtype, void* out,
                                        bnb_dtype_t out_dtype, int64_t M, int64_t N, int64_t K, int32_t device,
                                        bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_shapes(M, N, K);
    check_dequant(row_stats, col_stats, bias, bias_dtype, out, out_dtype, M, N);
    BNB_CHECK_ARG(M * N * K == 0 || (A != nullptr && B != nullptr), "A / B is a null pointer");
    if (M == 0 || N == 0) return;
    backend::check_device(device);
    backend::int8_scaled_mm({A, B, nullptr, M, N, K}, {row_stats, col_stats, bias, bias_dtype, out, out_dtype, M, N},
                            device, stream);
  });
}

BNB_API bnb_status_t bnb_int8_linear(const void* X, bnb_dtype_t x_dtype, int64_t M, int64_t K, const int8_t* CB,
                                     const float* SCB, int64_t N, float threshold, const void* bias, void* out,
                                     uint8_t* outlier_mask, int32_t device, bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_shapes(M, N, K);
    BNB_CHECK_ARG(is_float_dtype(x_dtype), "X must be float32, float16 or bfloat16, got ", dtype_name(x_dtype));
    BNB_CHECK_ARG(threshold >= 0.0f && threshold < INFINITY, "threshold must be finite and >= 0, got ", threshold);
    BNB_CHECK_ARG(M * N == 0 || out != nullptr, "out is a null pointer");
    BNB_CHECK_ARG(M * K == 0 || X != nullptr, "X is a null pointer");
    BNB_CHECK_ARG(N * K == 0 || (CB != nullptr && SCB != nullptr), "CB / SCB is a null pointer");
    if (M == 0 || N == 0) return;
    backend::check_device(device);
    backend::int8_linear({X, x_dtype, CB, SCB, bias, out, threshold > 0.0f ? outlier_mask : nullptr, M, N, K, threshold},
                         device, stream);
  });
}

BNB_API bnb_status_t bnb_set_blas_library(const char* path) {
  return capi_guard(__func__, [&] { backend::set_blas_library(path); });
}

}  // extern "C"

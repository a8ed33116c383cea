// extern "C" entry points of the quantized matrix products.
#include "bnb/gemm.h"
#include "core/backend.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/formats.h"

using namespace bnb;

extern "C" {

BNB_API bnb_status_t bnb_gemm_4bit(const void* A, bnb_dtype_t a_dtype, int64_t M, int64_t K, const uint8_t* packed,
                                   const float* absmax, const uint8_t* absmax_q, const float* absmax_code,
                                   const float* absmax_offset, bnb_quant_t qtype, int64_t N, int64_t blocksize,
                                   const void* bias, void* out, int32_t device, bnb_stream_t stream) {
  const bnb_gemm_4bit_weight_t weight{packed, absmax, absmax_q, absmax_code, absmax_offset, K, N, blocksize,
                                      static_cast<int32_t>(qtype), static_cast<int32_t>(a_dtype), device, 0};
  return bnb_gemm_4bit_with_weight(&weight, A, M, bias, out, stream);
}

BNB_API bnb_status_t bnb_gemm_4bit_with_weight(const bnb_gemm_4bit_weight_t* weight, const void* A, int64_t M,
                                               const void* bias, void* out, bnb_stream_t stream) {
  return capi_guard("bnb_gemm_4bit", [&] {
    BNB_CHECK_ARG(weight != nullptr, "weight is a null pointer");
    const bnb_gemm_4bit_weight_t& w = *weight;
    const auto a_dtype = static_cast<bnb_dtype_t>(w.a_dtype);
    const int64_t K = w.K, N = w.N;
    BNB_CHECK_ARG(M >= 0 && K >= 0 && N >= 0, "M, K and N must be >= 0, got ", M, ", ", K, ", ", N);
    BNB_CHECK_ARG(is_float_dtype(a_dtype), "A must be float32, float16 or bfloat16, got ", dtype_name(a_dtype));
    BNB_CHECK_ARG(w.qtype == BNB_QUANT_FP4 || w.qtype == BNB_QUANT_NF4, "quant_type must be fp4 or nf4, got ", w.qtype);
    BNB_CHECK_SUPPORTED(is_valid_blocksize_4bit(w.blocksize), "4-bit blocksize must be a power of two in [",
                        kMinBlocksize4bit, ", ", kMaxBlocksize, "], got ", w.blocksize);
    BNB_CHECK_ARG(M * K == 0 || A != nullptr, "A is a null pointer");
    BNB_CHECK_ARG(N * K == 0 || (w.packed != nullptr && w.absmax != nullptr), "packed / absmax is a null pointer");
    BNB_CHECK_ARG(M * N == 0 || out != nullptr, "out is a null pointer");
    BNB_CHECK_ARG(w.absmax_q == nullptr || (w.absmax_code != nullptr && w.absmax_offset != nullptr),
                  "double-quantized scales need absmax_code and absmax_offset");
    if (M == 0 || N == 0) return;
    backend::check_device(w.device);
    backend::gemm_4bit({A, w.packed, w.absmax, w.absmax_q, w.absmax_code, w.absmax_offset, bias, out, M, K, N,
                        w.blocksize, a_dtype, static_cast<QuantType>(w.qtype)},
                       w.device, stream);
  });
}

}  // extern "C"

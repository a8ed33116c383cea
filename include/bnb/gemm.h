/* Matrix products with quantized weights. */
#ifndef BNB_GEMM_H
#define BNB_GEMM_H

#include "bnb/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[m, n] = sum_k A[m, k] * W[n, k] (+ bias[n]) with W the 4-bit weight [N, K] stored as
 * quantize_4bit stores it (row-major flat codes, element 2j in the high nibble of byte j, one
 * float32 absmax per `blocksize` consecutive elements). Accumulates in float32; A, bias and out
 * share the dtype a_dtype (float32/float16/bfloat16).
 *   A [M, K], packed [ceil(N K / 2)] uint8, absmax [ceil(N K / blocksize)], bias [N] or NULL, out [M, N] */
BNB_API bnb_status_t bnb_gemm_4bit(const void* A, bnb_dtype_t a_dtype, int64_t M, int64_t K, const uint8_t* packed,
                                   const float* absmax, bnb_quant_t qtype, int64_t N, int64_t blocksize,
                                   const void* bias, void* out, int32_t device, bnb_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* BNB_GEMM_H */

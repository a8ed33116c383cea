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
 *   A [M, K], packed [ceil(N K / 2)] uint8, bias [N] or NULL, out [M, N]
 * Block scales, plain: absmax [ceil(N K / blocksize)] float32 and absmax_q = absmax_code = absmax_offset = NULL.
 * Double-quantized: absmax_q [ceil(N K / blocksize)] uint8 codes, absmax_code [256] float32, absmax_offset one
 * float32 and absmax the second-level scales [ceil(blocks / 256)]; the scale of block b is
 * absmax_code[absmax_q[b]] * absmax[b / 256] + *absmax_offset (all pointers on the op's device).
 * The CUDA backend serves 1..16 rows of float16/bfloat16 activations with K a multiple of 256 and of the
 * blocksize (blocksize >= 64) on compute capability >= 8.0, and answers BNB_STATUS_NOT_IMPLEMENTED
 * otherwise (callers then dequantize and use a dense GEMM). */
BNB_API bnb_status_t bnb_gemm_4bit(const void* A, bnb_dtype_t a_dtype, int64_t M, int64_t K, const uint8_t* packed,
                                   const float* absmax, const uint8_t* absmax_q, const float* absmax_code,
                                   const float* absmax_offset, bnb_quant_t qtype, int64_t N, int64_t blocksize,
                                   const void* bias, void* out, int32_t device, bnb_stream_t stream);

/* bnb_gemm_4bit's weight-side arguments, filled once per weight and dtype of A: eager inference calls
 * the same layer over and over, and every argument that crosses the ABI costs host time per call. */
typedef struct bnb_gemm_4bit_weight {
  const uint8_t* packed;
  const float* absmax;
  const uint8_t* absmax_q;      /* NULL for plain scales */
  const float* absmax_code;     /* with absmax_q */
  const float* absmax_offset;   /* with absmax_q */
  int64_t K;
  int64_t N;
  int64_t blocksize;
  int32_t qtype;                /* bnb_quant_t */
  int32_t a_dtype;              /* bnb_dtype_t of A, bias and out */
  int32_t device;
  int32_t reserved;             /* 0 */
} bnb_gemm_4bit_weight_t;

/* bnb_gemm_4bit with the weight's arguments taken from `weight`: the same checks, kernels and results. */
BNB_API bnb_status_t bnb_gemm_4bit_with_weight(const bnb_gemm_4bit_weight_t* weight, const void* A, int64_t M,
                                               const void* bias, void* out, bnb_stream_t stream);

/* ---- LLM.int8() ----------------------------------------------------------------------------------
 * A [M, K] and B [N, K] are row-major int8 (B is the weight, one row per output feature). */

/* out[m, n] = sum_k A[m, k] * B[n, k], exactly, as int32 [M, N]. */
BNB_API bnb_status_t bnb_int8_linear_matmul(const int8_t* A, const int8_t* B, int32_t* out, int64_t M, int64_t N,
                                            int64_t K, int32_t device, bnb_stream_t stream);

/* out[m, n] = acc[m, n] * row_stats[m] * col_stats[n] / 127^2 (+ bias[n]), computed in float32 and
 * rounded once to out_dtype (float32/float16/bfloat16). bias has dtype bias_dtype (a float dtype) or is NULL. */
BNB_API bnb_status_t bnb_int8_mm_dequant(const int32_t* acc, const float* row_stats, const float* col_stats,
                                         const void* bias, bnb_dtype_t bias_dtype, void* out, bnb_dtype_t out_dtype,
                                         int64_t M, int64_t N, int32_t device, bnb_stream_t stream);

/* The two above in one call: int8 product, scales, bias and the output dtype applied to the float32
 * accumulator before anything is written (no int32 matrix in memory where the backend can avoid it). */
BNB_API bnb_status_t bnb_int8_scaled_mm(const int8_t* A, const int8_t* B, const float* row_stats,
                                        const float* col_stats, const void* bias, bnb_dtype_t bias_dtype, void* out,
                                        bnb_dtype_t out_dtype, int64_t M, int64_t N, int64_t K, int32_t device,
                                        bnb_stream_t stream);

/* LLM.int8() inference in one call, without synchronising the host:
 *   out = int8(X) @ CB^T * SCA * SCB / 127^2 + X[:, outliers] @ (CB[:, outliers] * SCB / 127)^T + bias
 * X [M, K] (float32/float16/bfloat16) is quantized row-wise as bnb_int8_vectorwise_quant does; with
 * threshold > 0 the columns holding any |x| >= threshold are outlier features, taken out of the int8
 * product (whole columns) and multiplied in float32 against the dequantized weight columns instead.
 * CB [N, K] int8 and SCB [N] float32 are the weight's rows and scales; bias [N] and out [M, N] have X's dtype.
 * outlier_mask [K] (optional, with threshold > 0) receives 1 for each outlier column and 0 elsewhere. */
BNB_API bnb_status_t bnb_int8_linear(const void* X, bnb_dtype_t x_dtype, int64_t M, int64_t K, const int8_t* CB,
                                     const float* SCB, int64_t N, float threshold, const void* bias, void* out,
                                     uint8_t* outlier_mask, int32_t device, bnb_stream_t stream);

/* Where the CUDA backend finds cuBLASLt (used for int8 products of many rows): a full path to the
 * shared library, tried before the default search (which finds a copy already loaded in the process,
 * e.g. by torch). NULL or "" clears it. The CPU backend records and ignores it. */
BNB_API bnb_status_t bnb_set_blas_library(const char* path);

#ifdef __cplusplus
}
#endif

#endif /* BNB_GEMM_H */

/* Quantization primitives: 8-bit blockwise (any sorted 256-entry code), 4-bit
 * NF4/FP4 with packing, LLM.int8() row-wise int8 and quantile estimation.
 *
 * Element counts are int64_t: tensors larger than 2^31 elements are supported.
 * Inputs are dense, row-major. Buffers live on the backend's device.
 */
#ifndef BNB_QUANT_H
#define BNB_QUANT_H

#include "bnb/bnb.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bnb_quant {
  BNB_QUANT_FP4 = 1, /* 1 sign, 2 exponent, 1 mantissa bits; table in bit-pattern order */
  BNB_QUANT_NF4 = 2  /* normal-float 4-bit, 16 sorted values in [-1, 1] */
} bnb_quant_t;

/* The 16 dequantization values of a 4-bit type, in code order. Host memory. */
BNB_API bnb_status_t bnb_code_table_4bit(bnb_quant_t qtype, float* out16);

/* out[i] = index of the code entry nearest to A[i] / absmax[i / blocksize]
 * (ties to the lower entry); absmax[b] = max |A| over block b.
 *   A      [n]                      dtype a_dtype (float32/float16/bfloat16)
 *   code   [256] float32, sorted ascending
 *   out    [n] uint8
 *   absmax [ceil(n / blocksize)] float32                                        */
BNB_API bnb_status_t bnb_quantize_blockwise(const void* A, bnb_dtype_t a_dtype, const float* code,
                                            uint8_t* out, float* absmax, int64_t n, int64_t blocksize,
                                            int32_t device, bnb_stream_t stream);

/* out[i] = code[A[i]] * absmax[i / blocksize], computed in float32.
 *   out [n] dtype out_dtype (float32/float16/bfloat16)                           */
BNB_API bnb_status_t bnb_dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax,
                                              void* out, bnb_dtype_t out_dtype, int64_t n, int64_t blocksize,
                                              int32_t device, bnb_stream_t stream);

/* 4-bit quantization: two codes per byte, element 2j in the high nibble, odd n
 * pads a zero low nibble.
 *   packed [ceil(n / 2)] uint8;  absmax [ceil(n / blocksize)] float32            */
BNB_API bnb_status_t bnb_quantize_4bit(const void* A, bnb_dtype_t a_dtype, bnb_quant_t qtype,
                                       uint8_t* packed, float* absmax, int64_t n, int64_t blocksize,
                                       int32_t device, bnb_stream_t stream);

BNB_API bnb_status_t bnb_dequantize_4bit(const uint8_t* packed, const float* absmax, bnb_quant_t qtype,
                                         void* out, bnb_dtype_t out_dtype, int64_t n, int64_t blocksize,
                                         int32_t device, bnb_stream_t stream);

/* LLM.int8() row-wise quantization of A [rows, cols]:
 *   row_stats[r] = max |A[r, :]| over the values with |x| < threshold (all when threshold == 0)
 *   out[r, c]    = round_half_even(A[r, c] * 127 / row_stats[r]), 0 where |x| >= threshold
 *   outlier_cols [cols] uint8, may be NULL when threshold == 0: the flags of the columns holding a
 *                value with |x| >= threshold.
 *   tag          0: outlier_cols is cleared first and flagged columns are set to 1.
 *                1..255: outlier_cols is not cleared; flagged columns are set to tag. A caller that
 *                keeps one flag buffer advances the tag per call (entries of earlier calls then no
 *                longer match) and clears the buffer only when the tag wraps, so no clearing is
 *                queued per call.
 * Zeroing whole outlier columns (rows > 1) is left to bnb_int8_outlier_columns, which lists them. */
BNB_API bnb_status_t bnb_int8_vectorwise_quant(const void* A, bnb_dtype_t a_dtype, int64_t rows, int64_t cols,
                                               float threshold, int8_t* out, float* row_stats,
                                               uint8_t* outlier_cols, uint8_t tag, int32_t device,
                                               bnb_stream_t stream);

/* The outlier columns flagged by bnb_int8_vectorwise_quant: the ascending indices c with
 * flags[c] == tag (1..255; 1 for flags written with tag 0) go to columns [cols] (int64; entries past
 * the count are left as they were), their number to *count on the host, and when out [rows, cols] is
 * not NULL those columns of out are set to 0 (what LLM.int8 does for rows > 1). The count is data the
 * host needs, so on CUDA the call waits for `stream`, once, after queueing all of its work (no copy:
 * a kernel writes the host's pinned word), so the zeroing runs while the host waits. */
BNB_API bnb_status_t bnb_int8_outlier_columns(const uint8_t* flags, uint8_t tag, int64_t rows, int64_t cols,
                                              int8_t* out, int64_t* columns, int64_t* count, int32_t device,
                                              bnb_stream_t stream);

/* Column-wise counterpart used by int8_double_quant:
 *   col_stats[c] = max |A[:, c]| over values with |x| < threshold
 *   out[r, c]    = round_half_even(A[r, c] * 127 / col_stats[c]), 0 where |x| >= threshold */
BNB_API bnb_status_t bnb_int8_colwise_quant(const void* A, bnb_dtype_t a_dtype, int64_t rows, int64_t cols,
                                            float threshold, int8_t* out, float* col_stats,
                                            int32_t device, bnb_stream_t stream);

/* 256 quantiles of A at probabilities linspace(offset, 1 - offset, 256) (linear
 * interpolation between order statistics). Requires n >= 256.
 *   out [256] float32                                                            */
BNB_API bnb_status_t bnb_estimate_quantiles(const void* A, bnb_dtype_t a_dtype, int64_t n, float offset,
                                            float* out, int32_t device, bnb_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* BNB_QUANT_H */

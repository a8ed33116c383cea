// The Hopper int8 product with the dequantization in its epilogue (int8_gemm_sm90.cu): many-row
// LLM.int8() products without an int32 matrix in memory.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"
#include "cuda/int8_arith.cuh"

namespace bnb::backend {

// Whether the kernel takes this product: int8 A [M, K] and B [N, K] (16-byte aligned, K a multiple of
// 16), output float16/bfloat16 [M, N] (16-byte aligned, N a multiple of 8), bias absent or of the output
// dtype, compute capability 9.0, a library built with an sm_90a image, and a grid of 256 x 128 output
// tiles that fills at least three quarters of the SMs.
bool int8_gemm_dequant_sm90_serves(const Int8MatmulParams& mm, const Int8DequantParams& dq, int32_t device);

// The outlier columns of an int8_linear call (threshold > 0) and X, whose values there replace A's.
struct Int8LinearOutliers {
  cuda::Outliers packed;
  const void* X;  // [M, K] of the output dtype
};

// out = (A B^T) * row_stats[m] * col_stats[n] / 127^2 (+ bias[n]), rounded as int8_mm_dequant rounds;
// with `outliers`, plus their float product in place of the int8 one, rounded as int8_linear's
// dequantization does. `overlap`: the kernel before it in the stream lets it start early
// (allow_next_kernel).
void int8_gemm_dequant_sm90(const Int8MatmulParams& mm, const Int8DequantParams& dq, int32_t device,
                            cudaStream_t stream, bool overlap, const Int8LinearOutliers* outliers = nullptr);

}  // namespace bnb::backend

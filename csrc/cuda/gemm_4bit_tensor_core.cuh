// The Hopper tensor-core 4-bit product (gemm_4bit_tensor_core.cu), used by gemm_4bit above 16 rows.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace bnb::backend {

// Up to this many activation rows the kernel beats expanding the weight once and multiplying with
// cuBLAS (H100, K = 8192: equal at 1024 rows, slower at 4096, where the expansion is amortised).
constexpr int64_t kTensorCoreMaxRows = 1024;

// Whether the kernel takes these shapes, dtypes and alignments on this device: up to 1024 rows of
// fp16/bf16 activations, K a multiple of 64 and of the blocksize (>= 64), N a multiple of 8, 16-byte
// aligned A, weight and output, compute capability 9.0, and a library built with an sm_90a image.
bool gemm_4bit_tensor_core_serves(const Gemm4bitParams& p, int32_t device);
void gemm_4bit_tensor_core(const Gemm4bitParams& p, int32_t device, cudaStream_t stream);

}  // namespace bnb::backend

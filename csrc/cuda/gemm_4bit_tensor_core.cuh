// The Hopper tensor-core 4-bit product (gemm_4bit_tensor_core.cu), used by gemm_4bit above 16 rows.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace bnb::backend {

// Up to this many activation rows the kernel takes the product; above, the weight is expanded once and
// multiplied by cuBLAS, whose better tensor-pipe use then outweighs the expansion. H100, K = 8192, graph
// times against that path: M = 1024 and 2048 faster everywhere (N = 28672 M = 2048: 1455-1500 vs
// 1555-1740 us); M = 4096 equal within the scatter at N = 8192 (811-866 vs 816-949 us) and bf16 N = 28672,
// 6% slower at fp16 N = 28672 (3128-3170 vs 2945-2992 us), without the 16-bit copy of the weight
// (470 MB at N = 28672) that the other path allocates for every call.
constexpr int64_t kTensorCoreMaxRows = 4096;

// Whether the kernel takes these shapes, dtypes and alignments on this device: up to 4096 rows of
// fp16/bf16 activations, K a multiple of 64 and of the blocksize (>= 64), N a multiple of 8, 16-byte
// aligned A, weight and output, compute capability 9.0, and a library built with an sm_90a image.
bool gemm_4bit_tensor_core_serves(const Gemm4bitParams& p, int32_t device);
void gemm_4bit_tensor_core(const Gemm4bitParams& p, int32_t device, cudaStream_t stream);

}  // namespace bnb::backend

// The exact int32 product of many-row int8 matrices by cuBLASLt's int8 tensor-core GEMM, with the
// algorithm chosen per shape by timing the candidates cuBLASLt's heuristic offers (int8_cublaslt.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/params.h"

namespace bnb::cuda {

// out [M, N] = A [M, K] x B [N, K]^T in int32 (p.out). False when cuBLASLt is unavailable or declines
// the shape or the buffers' alignment: the caller then takes another path.
bool int8_product_cublaslt(const Int8MatmulParams& p, int32_t device, cudaStream_t stream);

}  // namespace bnb::cuda

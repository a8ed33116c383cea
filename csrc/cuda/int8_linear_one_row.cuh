// LLM.int8() of one activation row in one kernel (int8_linear_one_row.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/params.h"

namespace bnb::backend {

// Launches the whole of int8_linear (quantization, outlier columns, product, dequantization, bias, the
// caller's outlier mask) as one kernel on `stream` and returns true, or returns false without doing
// anything when the shape is not one it takes (more rows, K not a multiple of 64 or too long for shared
// memory, unaligned operands).
bool int8_linear_one_row(const Int8LinearParams& p, int32_t device, cudaStream_t stream);

}  // namespace bnb::backend

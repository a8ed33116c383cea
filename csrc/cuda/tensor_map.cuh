// TMA tensor maps for the Hopper kernels (gemm_4bit_tensor_core.cu, int8_gemm_sm90.cu).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace bnb::cuda {

// A 2-D row-major tensor [rows, cols] of `elem_bytes`-byte elements, read in boxes of box_rows x box_cols;
// reads past the tensor's edges fill zeros. Throws bnb::Error when the driver cannot encode it.
CUtensorMap tensor_map_2d(const void* data, CUtensorMapDataType type, int elem_bytes, int64_t rows, int64_t cols,
                          uint32_t box_rows, uint32_t box_cols, CUtensorMapSwizzle swizzle);

}  // namespace bnb::cuda

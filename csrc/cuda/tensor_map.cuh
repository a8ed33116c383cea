// TMA tensor maps for the Hopper kernels (gemm_4bit_tensor_core.cu, int8_gemm_sm90.cu).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace bnb::cuda {

// A 2-D row-major tensor [rows, cols] of `elem_bytes`-byte elements, read in boxes of box_rows x box_cols;
// reads past the tensor's edges fill zeros. Throws bnb::Error when the driver cannot encode it.
CUtensorMap tensor_map_2d(const void* data, CUtensorMapDataType type, int elem_bytes, int64_t rows, int64_t cols,
                          uint32_t box_rows, uint32_t box_cols, CUtensorMapSwizzle swizzle);

// A 3-D view of a row-major byte matrix [rows, row_bytes]: dimension 0 `piece` bytes, dimension 1 the pieces of
// a row, dimension 2 the rows; boxes of [box_rows, box_pieces, piece] (each row's pieces one run of requests).
CUtensorMap tensor_map_row_pieces(const void* data, int64_t rows, int64_t row_bytes, uint32_t piece,
                                  uint32_t box_rows, uint32_t box_pieces, CUtensorMapSwizzle swizzle);

}  // namespace bnb::cuda

// TMA tensor maps (tensor_map.cuh).
#include "cuda/tensor_map.cuh"

#include <cudaTypedefs.h>

#include <atomic>

#include "core/error.h"
#include "cuda/common.cuh"

namespace bnb::cuda {
namespace {

// cuTensorMapEncodeTiled from the driver (the runtime is linked statically; libcuda is not linked).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static std::atomic<PFN_cuTensorMapEncodeTiled_v12000> cached{nullptr};
  PFN_cuTensorMapEncodeTiled_v12000 fn = cached.load(std::memory_order_acquire);
  if (fn) return fn;
  void* entry = nullptr;
  cudaDriverEntryPointQueryResult found{};
  BNB_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || entry == nullptr)
    fail(BNB_STATUS_DEVICE_ERROR, "the CUDA driver does not provide cuTensorMapEncodeTiled (driver too old?)");
  fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(entry);
  cached.store(fn, std::memory_order_release);
  return fn;
}

// Encodes a map of `rank` dimensions (innermost first; element strides 1) and reports a refusal.
CUtensorMap encode(CUtensorMapDataType type, cuuint32_t rank, const void* data, const cuuint64_t* dims,
                   const cuuint64_t* strides, const cuuint32_t* box, CUtensorMapSwizzle swizzle) {
  CUtensorMap map;
  const cuuint32_t element_strides[5] = {1, 1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(&map, type, rank, const_cast<void*>(data), dims, strides, box,
                                          element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail(BNB_STATUS_DEVICE_ERROR, "cuTensorMapEncodeTiled failed with CUresult ", static_cast<int>(r));
  return map;
}

}  // namespace

CUtensorMap tensor_map_2d(const void* data, CUtensorMapDataType type, int elem_bytes, int64_t rows, int64_t cols,
                          uint32_t box_rows, uint32_t box_cols, CUtensorMapSwizzle swizzle) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols * elem_bytes)};
  const cuuint32_t box[2] = {box_cols, box_rows};
  return encode(type, 2, data, dims, strides, box, swizzle);
}

CUtensorMap tensor_map_row_pieces(const void* data, int64_t rows, int64_t row_bytes, uint32_t piece,
                                  uint32_t box_rows, uint32_t box_pieces, CUtensorMapSwizzle swizzle) {
  const cuuint64_t dims[3] = {piece, static_cast<cuuint64_t>(row_bytes / piece), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {piece, static_cast<cuuint64_t>(row_bytes)};
  const cuuint32_t box[3] = {piece, box_pieces, box_rows};
  return encode(CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, data, dims, strides, box, swizzle);
}

}  // namespace bnb::cuda

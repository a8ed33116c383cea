// Building bnb::CodeSearch tables in shared memory, shared by the kernels that quantize against an
// arbitrary 256-entry code book (blockwise quantization, 8-bit optimizer states).
#pragma once

#include "core/code_search.h"
#include "cuda/common.cuh"

namespace bnb::cuda {

// Fills the CTA's copy of the search tables from the code book. Same arithmetic as
// CodeSearch::build on the host, so the tables (and therefore the codes) are identical.
// Contains barriers: every thread of the CTA must call it.
__device__ inline void build_code_search(CodeSearch& s, const float* __restrict__ code) {
  for (int i = threadIdx.x; i < CodeSearch::kMidpoints; i += blockDim.x)
    s.mid[i] = (__ldg(code + i) + __ldg(code + i + 1)) * 0.5f;
  __syncthreads();
  for (int b = threadIdx.x; b < CodeSearch::kBuckets; b += blockDim.x) {
    const int below = count_below(s.mid, CodeSearch::kMidpoints, CodeSearch::bucket_min(b));
    s.lo[b] = static_cast<uint8_t>(below > CodeSearch::kMidpoints ? CodeSearch::kMidpoints : below);
  }
  __syncthreads();
}

}  // namespace bnb::cuda

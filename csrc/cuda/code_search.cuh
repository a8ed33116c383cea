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
  if (threadIdx.x == 0) {
    s.mid[CodeSearch::kMidpoints] = CodeSearch::kSentinel;
    s.max_run = 0;
  }
  __syncthreads();
  for (int b = threadIdx.x; b < CodeSearch::kBuckets; b += blockDim.x) {
    const int below = count_below(s.mid, CodeSearch::kMidpoints, CodeSearch::bucket_min(b));
    s.lo[b] = static_cast<uint8_t>(below > CodeSearch::kMidpoints ? CodeSearch::kMidpoints : below);
  }
  __syncthreads();
  // max_run: a byte in shared memory has no atomicMax, so reduce through one int per warp.
  int longest = 0;
  for (int b = threadIdx.x; b < CodeSearch::kBuckets; b += blockDim.x) longest = max(longest, s.run_length(b));
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    longest = max(longest, __shfl_xor_sync(kFullWarpMask, longest, offset));
  __shared__ int warp_longest;
  if (threadIdx.x == 0) warp_longest = 0;
  __syncthreads();
  if (threadIdx.x % kWarpSize == 0) atomicMax(&warp_longest, longest);
  __syncthreads();
  if (threadIdx.x == 0) s.max_run = static_cast<uint8_t>(warp_longest);
  __syncthreads();
}

}  // namespace bnb::cuda

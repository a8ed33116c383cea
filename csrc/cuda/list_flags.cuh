// Ascending positions of the bytes of a flag array that hold a given tag (the outlier columns of
// LLM.int8: one byte per column, so small), by one CTA.
//
// Each thread takes 16 consecutive flags per round (one 16-byte load when the array allows it) and
// the CTA lists a round's positions with one prefix sum over the threads' counts, so a round costs
// one load latency and two barriers; 8192 flags take two rounds of 256 threads. The order is
// ascending, so sums over the listed columns are reproducible.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"

namespace bnb::cuda {

constexpr int kFlagThreads = 256;   // threads of a CTA that runs scan_flags
constexpr int kFlagsPerThread = 16;  // flags per thread per round
constexpr int64_t kFlagsPerRound = int64_t{kFlagThreads} * kFlagsPerThread;

// Bit i set iff flags[first + i] == tag (i < 16, within n).
__device__ __forceinline__ uint32_t flag_bits(const uint8_t* __restrict__ flags, uint8_t tag, int64_t n,
                                              int64_t first, bool vector) {
  uint32_t bits = 0;
  if (vector && first + kFlagsPerThread <= n) {
    const uint4 v = *reinterpret_cast<const uint4*>(flags + first);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < kFlagsPerThread; ++i) bits |= (((words[i / 4] >> (8 * (i % 4))) & 0xffu) == tag ? 1u : 0u) << i;
  } else {
    for (int i = 0; i < kFlagsPerThread && first + i < n; ++i) bits |= (flags[first + i] == tag ? 1u : 0u) << i;
  }
  return bits;
}

// Lists set bits with the whole CTA (kFlagThreads threads; contains barriers when listing): each
// round, every thread takes bits_of(first), the bit set of the 16 positions starting at `first`
// (first < n; bits at or past n must be clear). When positions is not null, the set positions are
// written there in ascending order and the return value is their number (in every thread); only the
// first `capacity` positions are stored (the count is the whole number).
template <typename Index, typename BitsOf>
__device__ int64_t scan_bits(int64_t n, Index* __restrict__ positions, BitsOf bits_of,
                             int64_t capacity = INT64_MAX) {
  __shared__ int32_t warp_totals[kFlagThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  int64_t listed = 0;
  for (int64_t round = 0; round < n; round += kFlagsPerRound) {
    const int64_t first = round + int64_t{threadIdx.x} * kFlagsPerThread;
    const uint32_t bits = first < n ? bits_of(first) : 0u;
    if (positions == nullptr) continue;
    // Exclusive prefix of the threads' counts: within the warp by shuffles, across warps in smem.
    const int own = __popc(bits);
    int inclusive = own;
#pragma unroll
    for (int offset = 1; offset < kWarpSize; offset *= 2) {
      const int up = __shfl_up_sync(kFullWarpMask, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    if (lane == kWarpSize - 1) warp_totals[warp] = inclusive;
    __syncthreads();
    int64_t at = listed + inclusive - own;
    int64_t round_total = 0;
    for (int w = 0; w < kFlagThreads / kWarpSize; ++w) {
      if (w < warp) at += warp_totals[w];
      round_total += warp_totals[w];
    }
    for (uint32_t rest = bits; rest != 0 && at < capacity; rest &= rest - 1)
      positions[at++] = static_cast<Index>(first + __ffs(rest) - 1);
    listed += round_total;
    __syncthreads();  // warp_totals is rewritten by the next round
  }
  return listed;
}

// Walks flags [n] with the whole CTA: on_chunk(first, bits) gets every thread's 16 flags as a bit
// set (flag == tag) starting at `first`; with positions, lists them as scan_bits does.
template <typename Index, typename OnChunk>
__device__ int64_t scan_flags(const uint8_t* __restrict__ flags, uint8_t tag, int64_t n,
                              Index* __restrict__ positions, OnChunk on_chunk) {
  const bool vector = (reinterpret_cast<uintptr_t>(flags) & 15u) == 0;
  return scan_bits(n, positions, [&](int64_t first) {
    const uint32_t bits = flag_bits(flags, tag, n, first, vector);
    on_chunk(first, bits);
    return bits;
  });
}

// positions[0, count) = the positions of flags [n] holding 1 (a mask cleared and then flagged),
// ascending; *count = their number. One CTA of kFlagThreads.
template <typename Index>
__global__ void __launch_bounds__(kFlagThreads)
    list_flags_kernel(const uint8_t* __restrict__ flags, int64_t n, Index* __restrict__ positions, Index* count) {
  allow_next_kernel();         // a dependent launch after it waits for the list
  wait_for_previous_kernel();  // when launched to overlap the kernel that sets the flags
  const int64_t listed = scan_flags(flags, uint8_t{1}, n, positions, [](int64_t, uint32_t) {});
  if (threadIdx.x == 0) *count = static_cast<Index>(listed);
}

}  // namespace bnb::cuda

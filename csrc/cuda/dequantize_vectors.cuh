// The vector loop shared by the blockwise dequantize kernels (8-bit code book and 4-bit NF4/FP4).
//
// One output vector (16 bytes of T) per thread and step, from the codes of that vector: both the
// code loads and the 16-byte stores of a warp are contiguous. The codes and block scales of all
// kDequantUnroll vectors of a thread are requested before any is expanded: a scale read issued only
// after the previous vector's store would put one memory latency per vector on the critical path
// (at blocksize 64 most of them miss L1).
#pragma once

#include "cuda/common.cuh"

namespace bnb::cuda {

constexpr int kDequantThreads = 256;
constexpr int kDequantUnroll = 4;  // output vectors per thread per step

// CTAs for num_vecs vectors: one tile (kDequantThreads * kDequantUnroll vectors) each. A grid of
// resident CTAs striding over the tiles reached 86-90% of copy bandwidth on the H100; one tile per
// CTA, with streaming stores, 95-97%.
inline unsigned dequant_grid(int64_t num_vecs) {
  constexpr int64_t kTileVecs = int64_t{kDequantThreads} * kDequantUnroll;
  return grid_for((num_vecs + kTileVecs - 1) / kTileVecs, kMaxGridX);
}

// Vectors [0, num_vecs) of `out`. Codes: the packed codes of one output vector. decode(codes,
// scale, x) expands them into V floats already multiplied by the block scale. A vector never
// straddles two blocks: blocksizes are powers of two of at least V elements.
template <typename T, typename Codes, typename Decode>
__device__ __forceinline__ void dequantize_vectors(const Codes* __restrict__ in, const float* __restrict__ absmax,
                                                   T* __restrict__ out, int64_t num_vecs, int log2_blocksize,
                                                   Decode decode) {
  constexpr int V = vec_elems<T>();
  constexpr int kUnroll = kDequantUnroll;
  constexpr int64_t kTileVecs = int64_t{kDequantThreads} * kUnroll;
  for (int64_t base = int64_t{blockIdx.x} * kTileVecs; base < num_vecs; base += int64_t{gridDim.x} * kTileVecs) {
    Codes q[kUnroll];
    float scales[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = base + u * kDequantThreads + threadIdx.x;
      if (v < num_vecs) {
        q[u] = in[v];
        scales[u] = __ldg(absmax + ((v * V) >> log2_blocksize));
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = base + u * kDequantThreads + threadIdx.x;
      if (v >= num_vecs) break;
      float x[V];
      decode(q[u], scales[u], x);
      store_from_f32<T, V, true>(out + v * V, x);  // streamed: the output is not read again here
    }
  }
}

// log2 of a power of two (block sizes): the kernels index blocks with a shift.
inline int log2_of(int64_t pow2) {
  int s = 0;
  while ((int64_t{1} << s) < pow2) ++s;
  return s;
}

}  // namespace bnb::cuda

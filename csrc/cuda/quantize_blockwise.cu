// 8-bit blockwise quantization with an arbitrary 256-entry code book, and its inverse.
//
// Quantize: absmax[b] = max |A| over block b; out[i] = bucketize(A[i] * inverse_absmax(absmax), midpoints)
// via bnb::CodeSearch, whose tables each CTA builds once in shared memory and then reuses over a
// persistent grid-stride loop of tiles (block_tile.cuh describes the tile layout). Everything that
// is not a whole tile of aligned data (the last partial tile, misaligned pointers) goes through a
// warp-per-block kernel with scalar accesses and the same search, so the bytes never depend on the path.
// A code out of ascending order is searched as its sorted copy and the positions are mapped back to
// the caller's indices (SortedCode, FineCodeSearch::code_index); finding out that a code is ascending
// costs one vote per CTA.
// Blocks holding inf or NaN follow the rule of core/formats.h, as on the CPU.
//
// Dequantize: out[i] = code[A[i]] * absmax[i / blocksize], one 16-byte output vector per thread per step.
#include <algorithm>

#include "core/backend.h"
#include "core/code_search.h"
#include "core/formats.h"
#include "cuda/block_tile.cuh"
#include "cuda/code_search.cuh"
#include "cuda/common.cuh"
#include "cuda/dequantize_vectors.cuh"

namespace bnb::cuda {
namespace {

constexpr int kLoadsPerThread = 4;  // 16-byte loads in flight per thread in the vector kernel
constexpr int kGenericThreads = 256;
constexpr int kGenericWarps = kGenericThreads / kWarpSize;
constexpr uint32_t kHighBytesPair = 0x0073;  // __byte_perm selector: [a.byte3, b.byte3, ...]
constexpr uint32_t kJoinPairs = 0x5410;     // __byte_perm selector: [a.byte0, a.byte1, b.byte0, b.byte1]

// Whole tiles of 16-byte-aligned data. T: input element type; G: threads per quantization block.
template <typename T, int G>
__global__ void __launch_bounds__(kTileThreads)
    quantize_blockwise_kernel(QuantizeBlockwiseParams p, int64_t num_tiles) {
  using Tile = BlockTile<T, G, kLoadsPerThread>;
  constexpr int V = Tile::kVec;
  __shared__ SortedCode sorted;
  __shared__ FineCodeSearch search;
  __shared__ typename Tile::Shared scratch;
  const bool ascending = sort_code_in_cta(p.code, sorted);
  search.build(sorted.value, /*signed_codes=*/false, ascending ? nullptr : sorted.index);

  const T* __restrict__ A = static_cast<const T*>(p.A);
  const int group = threadIdx.x / G;
  const int g = threadIdx.x % G;
  int parity = 0;
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, parity ^= 1) {
    const int64_t block = tile * Tile::kBlocksPerTile + group;
    uint4 raw[kLoadsPerThread];
    Tile::load(A, block, g, raw);
    const float amax = Tile::absmax(raw, scratch, parity);
    if (g == 0) p.absmax[block] = stored_absmax(amax);
    float scale = inverse_absmax(amax);
    if (!is_finite(amax)) {
      // The rule for blocks holding inf or NaN (formats.h): the block's values are replaced before the
      // loop below rather than tested in it, which keeps that loop as it is for every finite block.
      Tile::transform(raw, [](float x) { return value_in_non_finite_block(x); });
      scale = 1.0f;
    }
    uint8_t* out = p.out + block * Tile::kBlockElems;
#pragma unroll
    for (int l = 0; l < kLoadsPerThread; ++l) {
      float x[V];
      Tile::unpack(raw, l, x);
#pragma unroll
      for (int i = 0; i < V; ++i) x[i] = __fmul_rn(x[i], scale);  // rounded on its own: never fused into the search
      uint32_t idx[V];
#pragma unroll
      for (int k = 0; k < V; k += FineCodeSearch::kGroup) search.search4(x + k, idx + k, /*mapped=*/!ascending);
      // Top bytes of four results per word: byte_perm picks them without shifting.
      uint32_t words[V / 4];
#pragma unroll
      for (int w = 0; w < V / 4; ++w)
        words[w] = __byte_perm(__byte_perm(idx[4 * w], idx[4 * w + 1], kHighBytesPair),
                               __byte_perm(idx[4 * w + 2], idx[4 * w + 3], kHighBytesPair), kJoinPairs);
      *reinterpret_cast<Packet<uint32_t, V / 4>*>(out + Tile::offset_in_block(g, l)) =
          *reinterpret_cast<const Packet<uint32_t, V / 4>*>(words);
    }
  }
}

// Blocks [first_block, ceil(n / blocksize)) with scalar accesses: one warp per block. Serves the
// tail after the whole tiles and inputs whose pointers are not aligned for vector access.
template <typename T>
__global__ void __launch_bounds__(kGenericThreads)
    quantize_blockwise_generic_kernel(QuantizeBlockwiseParams p, int64_t first_block) {
  __shared__ SortedCode sorted;
  __shared__ CodeSearch search;
  const bool ascending = sort_code_in_cta(p.code, sorted);
  build_code_search(search, sorted.value);

  const T* __restrict__ A = static_cast<const T*>(p.A);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t num_blocks = (p.n + p.blocksize - 1) / p.blocksize;
  const int64_t stride = int64_t{gridDim.x} * kGenericWarps;
  for (int64_t b = first_block + int64_t{blockIdx.x} * kGenericWarps + threadIdx.x / kWarpSize; b < num_blocks;
       b += stride) {
    const int64_t begin = b * p.blocksize;
    const int64_t end = begin + p.blocksize < p.n ? begin + p.blocksize : p.n;
    const float m = warp_absmax(A, begin, end, lane);
    if (lane == 0) p.absmax[b] = stored_absmax(m);
    const bool finite = is_finite(m);  // else the rule for blocks holding inf or NaN (formats.h)
    const float scale = inverse_absmax(m);
    for (int64_t i = begin + lane; i < end; i += kWarpSize) {
      const float x = to_f32(A[i]);
      const int position = search.search(finite ? x * scale : value_in_non_finite_block(x));
      p.out[i] = ascending ? static_cast<uint8_t>(position) : sorted.index[position];
    }
  }
}

// Whole vectors through dequantize_vectors (V codes per 16-byte output vector), then the tail.
template <typename T>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_blockwise_kernel(DequantizeBlockwiseParams p, int64_t num_vecs, int log2_blocksize) {
  constexpr int V = vec_elems<T>();
  using Codes = Packet<uint8_t, V>;
  __shared__ float code[kCodeSize8bit];
  for (int i = threadIdx.x; i < kCodeSize8bit; i += blockDim.x) code[i] = __ldg(p.code + i);
  __syncthreads();

  T* __restrict__ out = static_cast<T*>(p.out);
  const Codes* __restrict__ in = reinterpret_cast<const Codes*>(p.A);
  dequantize_vectors(in, p.absmax, out, num_vecs, log2_blocksize, [&](const Codes& q, float scale, float (&x)[V]) {
#pragma unroll
    for (int i = 0; i < V; ++i) x[i] = code[q.v[i]] * scale;
  });
  // Elements after the last whole vector (or all of them when the pointers are not aligned).
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = num_vecs * V + int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < p.n; i += stride)
    out[i] = from_f32<T>(code[p.A[i]] * __ldg(p.absmax + (i >> log2_blocksize)));
}


template <typename T, int G>
void launch_quantize_tiles(const QuantizeBlockwiseParams& p, int64_t num_tiles, int32_t device, cudaStream_t stream) {
  constexpr auto kernel = quantize_blockwise_kernel<T, G>;
  const unsigned grid = grid_for(num_tiles, kStreamingWaves * resident_ctas<kernel>(device, kTileThreads));
  kernel<<<grid, kTileThreads, 0, stream>>>(p, num_tiles);
  BNB_CUDA_CHECK_LAUNCH("quantize_blockwise_kernel");
}

// Group width G such that G threads x kLoadsPerThread vectors cover one block of `blocksize`.
template <typename T>
void launch_quantize_tiles_for(const QuantizeBlockwiseParams& p, int64_t num_tiles, int32_t device,
                               cudaStream_t stream) {
  const int64_t group = p.blocksize / (int64_t{vec_elems<T>()} * kLoadsPerThread);
  auto run = [&](auto g) {
    constexpr int kG = decltype(g)::value;
    constexpr int kElems = kG * kLoadsPerThread * vec_elems<T>();
    if constexpr (kElems >= kMinBlocksizeCuda8bit && kElems <= kMaxBlocksize) {
      launch_quantize_tiles<T, kG>(p, num_tiles, device, stream);
    } else {
      fail(BNB_STATUS_INTERNAL, "no quantize_blockwise tile for blocksize ", p.blocksize);
    }
  };
  dispatch_group_width(group, "quantize_blockwise", p.blocksize, run);
}

template <typename T>
void launch_quantize_blockwise(const QuantizeBlockwiseParams& p, int32_t device, cudaStream_t stream) {
  constexpr int V = vec_elems<T>();
  const int64_t num_blocks = (p.n + p.blocksize - 1) / p.blocksize;
  const int64_t tile_elems = int64_t{kTileThreads} * kLoadsPerThread * V;  // whole blocks: tile >= 4096 >= blocksize
  const bool vector_ok = is_aligned(p.A, kVecBytes) && is_aligned(p.out, V);
  const int64_t num_tiles = vector_ok ? p.n / tile_elems : 0;
  if (num_tiles > 0) launch_quantize_tiles_for<T>(p, num_tiles, device, stream);
  const int64_t first_block = num_tiles * (tile_elems / p.blocksize);
  if (first_block < num_blocks) {
    constexpr auto kernel = quantize_blockwise_generic_kernel<T>;
    const int64_t warps_work = (num_blocks - first_block + kGenericWarps - 1) / kGenericWarps;
    const unsigned grid = grid_for(warps_work, resident_ctas<kernel>(device, kGenericThreads));
    kernel<<<grid, kGenericThreads, 0, stream>>>(p, first_block);
    BNB_CUDA_CHECK_LAUNCH("quantize_blockwise_generic_kernel");
  }
}

template <typename T>
void launch_dequantize_blockwise(const DequantizeBlockwiseParams& p, int32_t device, cudaStream_t stream) {
  constexpr int V = vec_elems<T>();
  const bool vector_ok = is_aligned(p.A, V) && is_aligned(p.out, kVecBytes);
  const int64_t num_vecs = vector_ok ? p.n / V : 0;
  constexpr auto kernel = dequantize_blockwise_kernel<T>;
  const unsigned grid = vector_ok ? dequant_grid(num_vecs)
                                  : grid_for((p.n + kDequantThreads - 1) / (kDequantThreads), resident_ctas<kernel>(device, kDequantThreads));
  kernel<<<grid, kDequantThreads, 0, stream>>>(p, num_vecs, log2_of(p.blocksize));
  BNB_CUDA_CHECK_LAUNCH("dequantize_blockwise_kernel");
}

}  // namespace
}  // namespace bnb::cuda

namespace bnb::backend {

void quantize_blockwise(const QuantizeBlockwiseParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  dispatch_float<cuda::CudaType>(p.a_dtype, "A", [&](auto tag) {
    cuda::launch_quantize_blockwise<typename decltype(tag)::type>(p, device, cuda::as_cuda(stream));
  });
}

void dequantize_blockwise(const DequantizeBlockwiseParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  dispatch_float<cuda::CudaType>(p.out_dtype, "out", [&](auto tag) {
    cuda::launch_dequantize_blockwise<typename decltype(tag)::type>(p, device, cuda::as_cuda(stream));
  });
}

}  // namespace bnb::backend

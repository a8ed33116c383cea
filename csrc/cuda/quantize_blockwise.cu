// 8-bit blockwise quantization with an arbitrary sorted 256-entry code book, and its inverse.
//
// Quantize: absmax[b] = max |A| over block b; out[i] = bucketize(A[i] * inverse_absmax(absmax), midpoints)
// via bnb::CodeSearch, whose tables each CTA builds once in shared memory and then reuses over a
// persistent grid-stride loop of tiles (block_tile.cuh describes the tile layout). Everything that
// is not a whole tile of aligned data (the last partial tile, misaligned pointers) goes through a
// warp-per-block kernel with scalar accesses and the same search, so the bytes never depend on the path.
//
// Dequantize: out[i] = code[A[i]] * absmax[i / blocksize], 16 codes per thread per step.
#include <algorithm>

#include "core/backend.h"
#include "core/code_search.h"
#include "core/formats.h"
#include "cuda/block_tile.cuh"
#include "cuda/common.cuh"

namespace bnb::cuda {
namespace {

constexpr int kLoadsPerThread = 4;  // 16-byte loads in flight per thread in the vector kernel
constexpr int kGenericThreads = 256;
constexpr int kGenericWarps = kGenericThreads / kWarpSize;
constexpr int kDequantThreads = 256;
constexpr int kDequantChunk = 16;  // codes per thread per step: one 16-byte load

// Fills the CTA's copy of the search tables from the code book. Same arithmetic as
// CodeSearch::build on the host, so the tables (and therefore the codes) are identical.
__device__ void build_code_search(CodeSearch& s, const float* __restrict__ code) {
  for (int i = threadIdx.x; i < CodeSearch::kMidpoints; i += blockDim.x)
    s.mid[i] = (__ldg(code + i) + __ldg(code + i + 1)) * 0.5f;
  __syncthreads();
  for (int b = threadIdx.x; b < CodeSearch::kBuckets; b += blockDim.x) {
    const int below = count_below(s.mid, CodeSearch::kMidpoints, CodeSearch::bucket_min(b));
    s.lo[b] = static_cast<uint8_t>(below > CodeSearch::kMidpoints ? CodeSearch::kMidpoints : below);
  }
  __syncthreads();
}

// Whole tiles of 16-byte-aligned data. T: input element type; G: threads per quantization block.
template <typename T, int G>
__global__ void __launch_bounds__(kTileThreads)
    quantize_blockwise_kernel(QuantizeBlockwiseParams p, int64_t num_tiles) {
  using Tile = BlockTile<T, G, kLoadsPerThread>;
  constexpr int V = Tile::kVec;
  __shared__ CodeSearch search;
  __shared__ typename Tile::Shared scratch;
  build_code_search(search, p.code);

  const T* __restrict__ A = static_cast<const T*>(p.A);
  const int group = threadIdx.x / G;
  const int g = threadIdx.x % G;
  int parity = 0;
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, parity ^= 1) {
    const int64_t block = tile * Tile::kBlocksPerTile + group;
    float x[kLoadsPerThread][V];
    Tile::load(A, block, g, x);
    const float amax = Tile::absmax(x, scratch, parity);
    if (g == 0) p.absmax[block] = amax;
    const float scale = inverse_absmax(amax);
    uint8_t* out = p.out + block * Tile::kBlockElems;
#pragma unroll
    for (int l = 0; l < kLoadsPerThread; ++l) {
      Packet<uint8_t, V> q;
#pragma unroll
      for (int i = 0; i < V; ++i) q.v[i] = static_cast<uint8_t>(search.search(x[l][i] * scale));
      *reinterpret_cast<Packet<uint8_t, V>*>(out + Tile::offset_in_block(g, l)) = q;
    }
  }
}

// Blocks [first_block, ceil(n / blocksize)) with scalar accesses: one warp per block. Serves the
// tail after the whole tiles and inputs whose pointers are not aligned for vector access.
template <typename T>
__global__ void __launch_bounds__(kGenericThreads)
    quantize_blockwise_generic_kernel(QuantizeBlockwiseParams p, int64_t first_block) {
  __shared__ CodeSearch search;
  build_code_search(search, p.code);

  const T* __restrict__ A = static_cast<const T*>(p.A);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t num_blocks = (p.n + p.blocksize - 1) / p.blocksize;
  const int64_t stride = int64_t{gridDim.x} * kGenericWarps;
  for (int64_t b = first_block + int64_t{blockIdx.x} * kGenericWarps + threadIdx.x / kWarpSize; b < num_blocks;
       b += stride) {
    const int64_t begin = b * p.blocksize;
    const int64_t end = begin + p.blocksize < p.n ? begin + p.blocksize : p.n;
    float m = 0.0f;
    for (int64_t i = begin + lane; i < end; i += kWarpSize) m = fmaxf(m, fabsf(to_f32(A[i])));
    m = group_max<kWarpSize>(m);
    if (lane == 0) p.absmax[b] = m;
    const float scale = inverse_absmax(m);
    for (int64_t i = begin + lane; i < end; i += kWarpSize)
      p.out[i] = static_cast<uint8_t>(search.search(to_f32(A[i]) * scale));
  }
}

template <typename T>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_blockwise_kernel(DequantizeBlockwiseParams p, int64_t num_chunks, int log2_blocksize) {
  constexpr int V = vec_elems<T>();
  constexpr int kStores = kDequantChunk / V;  // 16-byte stores per chunk
  __shared__ float code[kCodeSize8bit];
  for (int i = threadIdx.x; i < kCodeSize8bit; i += blockDim.x) code[i] = __ldg(p.code + i);
  __syncthreads();

  T* __restrict__ out = static_cast<T*>(p.out);
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  // A chunk never straddles two blocks: blocksizes are powers of two >= kMinBlocksizeCuda8bit.
  for (int64_t c = tid; c < num_chunks; c += stride) {
    const int64_t first = c * kDequantChunk;
    const uint4 raw = load16(p.A + first);
    const float scale = __ldg(p.absmax + (first >> log2_blocksize));
    uint8_t q[kDequantChunk];
    std::memcpy(q, &raw, sizeof(q));
#pragma unroll
    for (int s = 0; s < kStores; ++s) {
      float v[V];
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] = code[q[s * V + i]] * scale;
      store_from_f32<T, V>(out + first + s * V, v);
    }
  }
  // Elements after the last whole chunk (or all of them when the pointers are not 16-byte aligned).
  for (int64_t i = num_chunks * kDequantChunk + tid; i < p.n; i += stride)
    out[i] = from_f32<T>(code[p.A[i]] * __ldg(p.absmax + (i >> log2_blocksize)));
}

int log2_of(int64_t pow2) {
  int s = 0;
  while ((int64_t{1} << s) < pow2) ++s;
  return s;
}

template <typename T, int G>
void launch_quantize_tiles(const QuantizeBlockwiseParams& p, int64_t num_tiles, int32_t device, cudaStream_t stream) {
  constexpr auto kernel = quantize_blockwise_kernel<T, G>;
  const unsigned grid = grid_for(num_tiles, resident_ctas<kernel>(device, kTileThreads));
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
  switch (group) {
    case 2: return run(std::integral_constant<int, 2>{});
    case 4: return run(std::integral_constant<int, 4>{});
    case 8: return run(std::integral_constant<int, 8>{});
    case 16: return run(std::integral_constant<int, 16>{});
    case 32: return run(std::integral_constant<int, 32>{});
    case 64: return run(std::integral_constant<int, 64>{});
    case 128: return run(std::integral_constant<int, 128>{});
    case 256: return run(std::integral_constant<int, 256>{});
    default: fail(BNB_STATUS_INTERNAL, "no quantize_blockwise tile for blocksize ", p.blocksize);
  }
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
  const bool vector_ok = is_aligned(p.A, kVecBytes) && is_aligned(p.out, kVecBytes);
  const int64_t num_chunks = vector_ok ? p.n / kDequantChunk : 0;
  constexpr auto kernel = dequantize_blockwise_kernel<T>;
  const int64_t work = std::max<int64_t>(num_chunks, p.n - num_chunks * kDequantChunk);
  const unsigned grid = grid_for((work + kDequantThreads - 1) / kDequantThreads, resident_ctas<kernel>(device, kDequantThreads));
  kernel<<<grid, kDequantThreads, 0, stream>>>(p, num_chunks, log2_of(p.blocksize));
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

// 4-bit blockwise quantization (NF4 / FP4) with nibble packing, and its inverse.
//
// Quantize: absmax[b] = max |A| over block b; each element is scaled by inverse_absmax(absmax[b])
// and encoded with bnb::encode_4bit<Q> (core/formats.h); element 2j goes to the high nibble of
// packed[j], element 2j + 1 to the low nibble, and an odd n leaves the last low nibble zero.
// Whole tiles of aligned data use the vector layout of block_tile.cuh; the rest (last partial tile,
// misaligned pointers) goes through a warp-per-block kernel with the same encoder.
//
// Dequantize: out[i] = table[nibble(i)] * absmax[i / blocksize]; one thread expands 16 packed bytes
// (32 elements) per step with the 16-entry table in shared memory (16 words in 16 banks: no conflicts).
#include <algorithm>

#include "core/backend.h"
#include "core/formats.h"
#include "cuda/block_tile.cuh"
#include "cuda/common.cuh"

namespace bnb::cuda {
namespace {

constexpr int kLoadsPerThread = 4;  // 16-byte loads in flight per thread in the vector kernel
constexpr int kGenericThreads = 256;
constexpr int kGenericWarps = kGenericThreads / kWarpSize;
constexpr int kDequantThreads = 256;
constexpr int kDequantChunkBytes = 16;                       // packed bytes per thread per step
constexpr int kDequantChunkElems = 2 * kDequantChunkBytes;   // elements they hold
constexpr int kTableSize4bit = 16;

__device__ __forceinline__ uint8_t pack_pair(uint8_t hi, uint8_t lo) { return static_cast<uint8_t>((hi << 4) | lo); }

// Whole tiles of aligned data. T: input element type; Q: NF4 or FP4; G: threads per block.
template <typename T, QuantType Q, int G>
__global__ void __launch_bounds__(kTileThreads) quantize_4bit_kernel(Quantize4bitParams p, int64_t num_tiles) {
  using Tile = BlockTile<T, G, kLoadsPerThread>;
  constexpr int V = Tile::kVec;
  static_assert(V % 2 == 0, "a vector holds whole bytes of codes");
  __shared__ typename Tile::Shared scratch;

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
    uint8_t* packed = p.packed + block * (Tile::kBlockElems / 2);
#pragma unroll
    for (int l = 0; l < kLoadsPerThread; ++l) {
      Packet<uint8_t, V / 2> q;
#pragma unroll
      for (int j = 0; j < V / 2; ++j)
        q.v[j] = pack_pair(encode_4bit<Q>(x[l][2 * j] * scale), encode_4bit<Q>(x[l][2 * j + 1] * scale));
      *reinterpret_cast<Packet<uint8_t, V / 2>*>(packed + Tile::offset_in_block(g, l) / 2) = q;
    }
  }
}

// Blocks [first_block, ceil(n / blocksize)) with scalar accesses, one warp per block; each lane
// produces whole bytes (element pairs).
template <typename T, QuantType Q>
__global__ void __launch_bounds__(kGenericThreads)
    quantize_4bit_generic_kernel(Quantize4bitParams p, int64_t first_block) {
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
    for (int64_t i = begin + 2 * lane; i < end; i += 2 * kWarpSize) {
      const uint8_t hi = encode_4bit<Q>(to_f32(A[i]) * scale);
      const uint8_t lo = (i + 1 < end) ? encode_4bit<Q>(to_f32(A[i + 1]) * scale) : uint8_t{0};
      p.packed[i / 2] = pack_pair(hi, lo);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_4bit_kernel(Dequantize4bitParams p, int64_t num_chunks, int log2_blocksize) {
  constexpr int V = vec_elems<T>();
  constexpr int kStores = kDequantChunkElems / V;  // 16-byte stores per chunk
  __shared__ float table[kTableSize4bit];
  if (threadIdx.x < kTableSize4bit)
    table[threadIdx.x] = p.qtype == QuantType::NF4 ? kNF4Values[threadIdx.x] : kFP4Values[threadIdx.x];
  __syncthreads();

  T* __restrict__ out = static_cast<T*>(p.out);
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  // A chunk never straddles two blocks: blocksizes are powers of two >= kDequantChunkElems.
  for (int64_t c = tid; c < num_chunks; c += stride) {
    const uint4 raw = load16(p.packed + c * kDequantChunkBytes);
    const int64_t first = c * kDequantChunkElems;
    const float scale = __ldg(p.absmax + (first >> log2_blocksize));
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int s = 0; s < kStores; ++s) {
      float v[V];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int e = s * V + i;                     // element within the chunk
        const uint32_t byte = (words[e / 8] >> (8 * ((e / 2) % 4))) & 0xffu;
        const uint32_t nibble = (e % 2 == 0) ? (byte >> 4) : (byte & 0xfu);
        v[i] = table[nibble] * scale;
      }
      store_from_f32<T, V>(out + first + s * V, v);
    }
  }
  // Bytes after the last whole chunk (or all of them when the pointers are not 16-byte aligned).
  const int64_t num_bytes = (p.n + 1) / 2;
  for (int64_t j = num_chunks * kDequantChunkBytes + tid; j < num_bytes; j += stride) {
    const uint8_t byte = p.packed[j];
    const int64_t i = 2 * j;
    out[i] = from_f32<T>(table[byte >> 4] * __ldg(p.absmax + (i >> log2_blocksize)));
    if (i + 1 < p.n) out[i + 1] = from_f32<T>(table[byte & 0xf] * __ldg(p.absmax + ((i + 1) >> log2_blocksize)));
  }
}

static_assert(kDequantChunkElems <= kMinBlocksize4bit, "a dequantize chunk lies inside one block");

int log2_of(int64_t pow2) {
  int s = 0;
  while ((int64_t{1} << s) < pow2) ++s;
  return s;
}

template <typename T, QuantType Q, int G>
void launch_quantize_tiles(const Quantize4bitParams& p, int64_t num_tiles, int32_t device, cudaStream_t stream) {
  constexpr auto kernel = quantize_4bit_kernel<T, Q, G>;
  const unsigned grid = grid_for(num_tiles, resident_ctas<kernel>(device, kTileThreads));
  kernel<<<grid, kTileThreads, 0, stream>>>(p, num_tiles);
  BNB_CUDA_CHECK_LAUNCH("quantize_4bit_kernel");
}

template <typename T, QuantType Q>
void launch_quantize_tiles_for(const Quantize4bitParams& p, int64_t num_tiles, int32_t device, cudaStream_t stream) {
  const int64_t group = p.blocksize / (int64_t{vec_elems<T>()} * kLoadsPerThread);
  auto run = [&](auto g) {
    constexpr int kG = decltype(g)::value;
    constexpr int kElems = kG * kLoadsPerThread * vec_elems<T>();
    if constexpr (kElems >= kMinBlocksize4bit && kElems <= kMaxBlocksize) {
      launch_quantize_tiles<T, Q, kG>(p, num_tiles, device, stream);
    } else {
      fail(BNB_STATUS_INTERNAL, "no quantize_4bit tile for blocksize ", p.blocksize);
    }
  };
  switch (group) {
    case 1: return run(std::integral_constant<int, 1>{});
    case 2: return run(std::integral_constant<int, 2>{});
    case 4: return run(std::integral_constant<int, 4>{});
    case 8: return run(std::integral_constant<int, 8>{});
    case 16: return run(std::integral_constant<int, 16>{});
    case 32: return run(std::integral_constant<int, 32>{});
    case 64: return run(std::integral_constant<int, 64>{});
    case 128: return run(std::integral_constant<int, 128>{});
    case 256: return run(std::integral_constant<int, 256>{});
    default: fail(BNB_STATUS_INTERNAL, "no quantize_4bit tile for blocksize ", p.blocksize);
  }
}

template <typename T, QuantType Q>
void launch_quantize_4bit(const Quantize4bitParams& p, int32_t device, cudaStream_t stream) {
  constexpr int V = vec_elems<T>();
  const int64_t num_blocks = (p.n + p.blocksize - 1) / p.blocksize;
  const int64_t tile_elems = int64_t{kTileThreads} * kLoadsPerThread * V;  // whole blocks: tile >= 4096 >= blocksize
  const bool vector_ok = is_aligned(p.A, kVecBytes) && is_aligned(p.packed, V / 2);
  const int64_t num_tiles = vector_ok ? p.n / tile_elems : 0;
  if (num_tiles > 0) launch_quantize_tiles_for<T, Q>(p, num_tiles, device, stream);
  const int64_t first_block = num_tiles * (tile_elems / p.blocksize);
  if (first_block < num_blocks) {
    constexpr auto kernel = quantize_4bit_generic_kernel<T, Q>;
    const int64_t warps_work = (num_blocks - first_block + kGenericWarps - 1) / kGenericWarps;
    const unsigned grid = grid_for(warps_work, resident_ctas<kernel>(device, kGenericThreads));
    kernel<<<grid, kGenericThreads, 0, stream>>>(p, first_block);
    BNB_CUDA_CHECK_LAUNCH("quantize_4bit_generic_kernel");
  }
}

template <typename T>
void launch_dequantize_4bit(const Dequantize4bitParams& p, int32_t device, cudaStream_t stream) {
  const bool vector_ok = is_aligned(p.packed, kVecBytes) && is_aligned(p.out, kVecBytes);
  const int64_t num_chunks = vector_ok ? p.n / kDequantChunkElems : 0;
  const int64_t tail_bytes = (p.n + 1) / 2 - num_chunks * kDequantChunkBytes;
  constexpr auto kernel = dequantize_4bit_kernel<T>;
  const int64_t work = std::max<int64_t>(num_chunks, tail_bytes);
  const unsigned grid =
      grid_for((work + kDequantThreads - 1) / kDequantThreads, resident_ctas<kernel>(device, kDequantThreads));
  kernel<<<grid, kDequantThreads, 0, stream>>>(p, num_chunks, log2_of(p.blocksize));
  BNB_CUDA_CHECK_LAUNCH("dequantize_4bit_kernel");
}

}  // namespace
}  // namespace bnb::cuda

namespace bnb::backend {

void quantize_4bit(const Quantize4bitParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  dispatch_float<cuda::CudaType>(p.a_dtype, "A", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (p.qtype == QuantType::NF4) cuda::launch_quantize_4bit<T, QuantType::NF4>(p, device, cuda::as_cuda(stream));
    else cuda::launch_quantize_4bit<T, QuantType::FP4>(p, device, cuda::as_cuda(stream));
  });
}

void dequantize_4bit(const Dequantize4bitParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  dispatch_float<cuda::CudaType>(p.out_dtype, "out", [&](auto tag) {
    cuda::launch_dequantize_4bit<typename decltype(tag)::type>(p, device, cuda::as_cuda(stream));
  });
}

}  // namespace bnb::backend

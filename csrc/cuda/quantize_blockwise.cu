// 8-bit blockwise quantization with an arbitrary sorted 256-entry code book, and its inverse.
//
// Quantize: absmax[b] = max |A| over block b; out[i] = bucketize(A[i] * inverse_absmax(absmax), midpoints)
// via bnb::CodeSearch, whose tables each CTA builds once in shared memory and then reuses over a
// persistent grid-stride loop of tiles (block_tile.cuh describes the tile layout). Everything that
// is not a whole tile of aligned data (the last partial tile, misaligned pointers) goes through a
// warp-per-block kernel with scalar accesses and the same search, so the bytes never depend on the path.
//
// Dequantize: out[i] = code[A[i]] * absmax[i / blocksize], one 16-byte output vector per thread per step.
#include <algorithm>

#include "core/backend.h"
#include "core/code_search.h"
#include "core/formats.h"
#include "cuda/block_tile.cuh"
#include "cuda/code_search.cuh"
#include "cuda/common.cuh"

namespace bnb::cuda {
namespace {

constexpr int kLoadsPerThread = 4;  // 16-byte loads in flight per thread in the vector kernel
constexpr int kGenericThreads = 256;
constexpr int kGenericWarps = kGenericThreads / kWarpSize;
constexpr int kDequantThreads = 256;
constexpr uint32_t kHighBytesPair = 0x0073;  // __byte_perm selector: [a.byte3, b.byte3, ...]
constexpr uint32_t kJoinPairs = 0x5410;     // __byte_perm selector: [a.byte0, a.byte1, b.byte0, b.byte1]
constexpr int kDequantUnroll = 4;  // output vectors per thread per step of the dequantize kernel

// CodeSearch with one 32-bit word per bucket and a branch-free fast path, for the vector kernel.
//
// Same rule as bnb::CodeSearch (index = number of midpoints strictly below v) and the same buckets:
// sign, exponent and 6 mantissa bits of v pick a bucket, lo = #midpoints below the bucket. In a
// bucket of one octave slice every value shares bits 17..31, so comparing v with the one midpoint
// m inside it is comparing their low 17 bits (reversed for negative values, where a larger
// magnitude is a smaller value):
//
//   x = low17(v bits ^ sign mask)                       (0x1ffff - low17 for v < 0)
//   entry = lo << 24 | 0x7f << 17 | K,  K = 0x1ffff - x(m)   (K = 0 when no midpoint is inside)
//   entry + x: the low 17 bits carry out iff x > x(m), i.e. iff v > m; the carry ripples through
//   the seven ones into bits 24..31, which then hold lo + (v > m), the index.
//
// One shared-memory word per element instead of two (entry and midpoint), spread over all 32 banks:
// the table lookups were what held 16-bit inputs back (three times the element rate of fp32 per byte).
// Buckets with two or more midpoints, and the tiny and |v| >= 1 buckets (which span several
// exponents) when a midpoint lies inside, clear bit 23 and take CodeSearch's forward scan from lo.
// A NaN lands in the |v| >= 1 bucket of its sign, as in CodeSearch; no comparison with it holds, so
// it gets lo there on either path, as CodeSearch gives it.
struct FineCodeSearch {
  static constexpr int kSliceBits = CodeSearch::kMantissaBits;  // 64 slices per octave
  static constexpr int kOctaves = CodeSearch::kOctaves;          // [2^-24, 1) get slices
  static constexpr int kTopExponent = 127;
  static constexpr int kShift = 23 - kSliceBits;                 // bits below the bucket key
  static constexpr uint32_t kLowMask = (1u << kShift) - 1u;
  static constexpr int kFirstKey = (kTopExponent - kOctaves) << kSliceBits;
  static constexpr int kMagBuckets = 1 + (kOctaves << kSliceBits) + 1;  // tiny | slices | |v| >= 1
  static constexpr int kSignStride = 2048;  // negative buckets start here: a power of two, so OR adds it
  static_assert(kMagBuckets <= kSignStride, "magnitude buckets fit below the sign stride");
  static constexpr int kEntries = 2 * kSignStride;
  static constexpr int kIndexShift = 24;                        // lo (and the result) in bits 24..31
  static constexpr uint32_t kCarryOnes = 0x7fu << kShift;      // bits 17..23: carry path to bit 24
  static constexpr uint32_t kFastBit = 1u << (kIndexShift - 1);  // bit 23: set iff one comparison suffices
  static_assert(kShift + 7 == kIndexShift, "the carry path spans bits kShift..23");
  static constexpr uint32_t kPositiveInfBits = 0x7f800000u;

  float mid[CodeSearch::kMidpoints];
  uint32_t entry[kEntries];

  // Table slot of v: magnitude bucket (clamped: tiny below, |v| >= 1 and NaN above) | sign stride.
  __device__ __forceinline__ static int slot(uint32_t bits) {
    const int m = static_cast<int>((bits & 0x7fffffffu) >> kShift) - kFirstKey + 1;
    const int sign = static_cast<int>(bits) >> 31;  // 0 or -1
    return min(max(m, 0), kMagBuckets - 1) | (sign & kSignStride);
  }
  // v's low bits in comparison order: larger means a larger value within the bucket.
  __device__ __forceinline__ static uint32_t order_bits(uint32_t bits) {
    return (bits ^ static_cast<uint32_t>(static_cast<int>(bits) >> 31)) & kLowMask;
  }
  // Bits of the smallest magnitude in magnitude bucket m (m <= kMagBuckets - 1).
  __device__ static uint32_t lower_bits(int m) { return m == 0 ? 0u : static_cast<uint32_t>(m - 1 + kFirstKey) << kShift; }

  __device__ __forceinline__ int scan(float v, uint32_t e) const {
    int idx = static_cast<int>(e >> kIndexShift);
    while (idx < CodeSearch::kMidpoints && v > mid[idx]) ++idx;
    return idx;
  }

  // Indices of kGroup values at once; byte 3 of each result is the index. The fast path is taken
  // when all of them land in one-comparison buckets (one test per group). The caller must round v
  // on its own (__fmul_rn): the bits compared are those of the rounded product.
  static constexpr int kGroup = 4;
  __device__ __forceinline__ void search4(const float* v, uint32_t* idx) const {
    uint32_t e[kGroup];
    uint32_t all = kFastBit;
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      e[i] = entry[slot(__float_as_uint(v[i]))];
      all &= e[i];
    }
    if (all) {
#pragma unroll
      for (int i = 0; i < kGroup; ++i) idx[i] = e[i] + order_bits(__float_as_uint(v[i]));
    } else {
#pragma unroll
      for (int i = 0; i < kGroup; ++i) idx[i] = static_cast<uint32_t>(scan(v[i], e[i])) << kIndexShift;
    }
  }

  __device__ static int count_at_most(const float* sorted, int count, float v) {
    int lo = 0, hi = count;  // first index with sorted[i] > v
    while (lo < hi) {
      const int m = (lo + hi) / 2;
      if (sorted[m] <= v) lo = m + 1;
      else hi = m;
    }
    return lo;
  }

  __device__ void build(const float* __restrict__ code) {
    for (int i = threadIdx.x; i < CodeSearch::kMidpoints; i += blockDim.x)
      mid[i] = (__ldg(code + i) + __ldg(code + i + 1)) * 0.5f;
    __syncthreads();
    for (int idx = threadIdx.x; idx < kEntries; idx += blockDim.x) {
      const int m = idx % kSignStride;
      if (m >= kMagBuckets) continue;  // never looked up
      const bool negative = idx >= kSignStride;
      const bool top = m == kMagBuckets - 1;
      const float small = __uint_as_float(lower_bits(m));                                   // smallest |v|
      const float large = __uint_as_float(top ? kPositiveInfBits : lower_bits(m + 1) - 1u); // largest |v|
      const float vmin = negative ? -large : small;
      const float vmax = negative ? -small : large;
      const int lo = count_below(mid, CodeSearch::kMidpoints, vmin);
      const int count = count_at_most(mid, CodeSearch::kMidpoints, vmax) - lo;
      // One octave slice: all its values share bits kShift..31 (checked on the midpoint itself, so a
      // code book with NaN or inf entries, whose counts mean nothing, keeps the scan).
      const bool narrow = m != 0 && !top;
      uint32_t e = static_cast<uint32_t>(lo) << kIndexShift;
      if (count == 0) {
        e |= kCarryOnes;  // K = 0: x never carries
      } else if (count == 1 && narrow &&
                 (__float_as_uint(mid[lo]) >> kShift) == (__float_as_uint(vmin) >> kShift)) {
        e |= kCarryOnes | (kLowMask - order_bits(__float_as_uint(mid[lo])));
      }
      entry[idx] = e;
    }
    __syncthreads();
  }
};

// Whole tiles of 16-byte-aligned data. T: input element type; G: threads per quantization block.
template <typename T, int G>
__global__ void __launch_bounds__(kTileThreads)
    quantize_blockwise_kernel(QuantizeBlockwiseParams p, int64_t num_tiles) {
  using Tile = BlockTile<T, G, kLoadsPerThread>;
  constexpr int V = Tile::kVec;
  __shared__ FineCodeSearch search;
  __shared__ typename Tile::Shared scratch;
  search.build(p.code);

  const T* __restrict__ A = static_cast<const T*>(p.A);
  const int group = threadIdx.x / G;
  const int g = threadIdx.x % G;
  int parity = 0;
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, parity ^= 1) {
    const int64_t block = tile * Tile::kBlocksPerTile + group;
    uint4 raw[kLoadsPerThread];
    Tile::load(A, block, g, raw);
    const float amax = Tile::absmax(raw, scratch, parity);
    if (g == 0) p.absmax[block] = amax;
    const float scale = inverse_absmax(amax);
    uint8_t* out = p.out + block * Tile::kBlockElems;
#pragma unroll
    for (int l = 0; l < kLoadsPerThread; ++l) {
      float x[V];
      Tile::unpack(raw, l, x);
#pragma unroll
      for (int i = 0; i < V; ++i) x[i] = __fmul_rn(x[i], scale);  // rounded on its own: never fused into the search
      uint32_t idx[V];
#pragma unroll
      for (int k = 0; k < V; k += FineCodeSearch::kGroup) search.search4(x + k, idx + k);
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

// One output vector (16 bytes of T) per thread and step, from V consecutive codes: both the V-byte
// code loads and the 16-byte stores of a warp are contiguous. kDequantUnroll vectors per thread are
// loaded before any is expanded, to keep several loads in flight.
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
  constexpr int64_t kTileVecs = int64_t{kDequantThreads} * kDequantUnroll;
  // A vector never straddles two blocks: blocksizes are powers of two >= kMinBlocksizeCuda8bit >= V.
  for (int64_t base = int64_t{blockIdx.x} * kTileVecs; base < num_vecs; base += int64_t{gridDim.x} * kTileVecs) {
    // Codes and block scales of all kDequantUnroll vectors are requested before any is used: a
    // scale read issued only after the previous vector's store would put one memory latency per
    // vector on the critical path (at blocksize 64 most of them miss L1).
    Codes q[kDequantUnroll];
    float scales[kDequantUnroll];
#pragma unroll
    for (int u = 0; u < kDequantUnroll; ++u) {
      const int64_t v = base + u * kDequantThreads + threadIdx.x;
      if (v < num_vecs) {
        q[u] = in[v];
        scales[u] = __ldg(p.absmax + ((v * V) >> log2_blocksize));
      }
    }
#pragma unroll
    for (int u = 0; u < kDequantUnroll; ++u) {
      const int64_t v = base + u * kDequantThreads + threadIdx.x;
      if (v >= num_vecs) break;
      const float scale = scales[u];
      float x[V];
#pragma unroll
      for (int i = 0; i < V; ++i) x[i] = code[q[u].v[i]] * scale;
      store_from_f32<T, V>(out + v * V, x);
    }
  }
  // Elements after the last whole vector (or all of them when the pointers are not aligned).
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = num_vecs * V + int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < p.n; i += stride)
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
  constexpr int V = vec_elems<T>();
  const bool vector_ok = is_aligned(p.A, V) && is_aligned(p.out, kVecBytes);
  const int64_t num_vecs = vector_ok ? p.n / V : 0;
  constexpr auto kernel = dequantize_blockwise_kernel<T>;
  const int64_t per_cta = vector_ok ? int64_t{kDequantThreads} * kDequantUnroll * V : kDequantThreads;
  const unsigned grid = grid_for((p.n + per_cta - 1) / per_cta, resident_ctas<kernel>(device, kDequantThreads));
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

// 4-bit blockwise quantization (NF4 / FP4) with nibble packing, and its inverse.
//
// Quantize: absmax[b] = max |A| over block b; each element is scaled by inverse_absmax(absmax[b])
// and encoded as bnb::encode_4bit<Q> (core/formats.h) does (the vector kernel through an exact lookup
// table derived from it); element 2j goes to the high nibble of
// packed[j], element 2j + 1 to the low nibble, and an odd n leaves the last low nibble zero.
// Whole tiles of aligned data use the vector layout of block_tile.cuh; the rest (last partial tile,
// misaligned pointers) goes through a warp-per-block kernel with the same encoder. Blocks holding inf
// or NaN follow the rule of core/formats.h, as on the CPU (encode_4bit itself: the table covers finite
// blocks only).
//
// Dequantize: out[i] = table[nibble(i)] * absmax[i / blocksize]; one thread writes a 16-byte output
// vector per step, with the 16-entry table in shared memory (16 words in 16 banks: no conflicts).
#include <algorithm>

#include "core/backend.h"
#include "core/formats.h"
#include "cuda/block_tile.cuh"
#include "cuda/common.cuh"
#include "cuda/dequantize_vectors.cuh"

namespace bnb::cuda {
namespace {

constexpr int kLoadsPerThread = 4;  // 16-byte loads in flight per thread in the vector kernel
constexpr int kGenericThreads = 256;
constexpr int kGenericWarps = kGenericThreads / kWarpSize;
constexpr int kTableSize4bit = 16;

__device__ __forceinline__ uint8_t pack_pair(uint8_t hi, uint8_t lo) { return static_cast<uint8_t>((hi << 4) | lo); }

// encode_4bit<Q> as one shared-memory lookup and one comparison instead of 7-15 comparisons, which
// would make the kernel ALU-bound for 16-bit inputs. The float bits of the scaled value pick a bucket
// (sign, exponent, kSliceBits mantissa bits); every bucket holds at most one decision threshold, so
//   code(x) = x > bucket.thr ? bucket.above : bucket.below
// reproduces encode_4bit<Q> exactly. The table is computed per CTA by evaluating encode_4bit<Q> itself
// (binary search for the one change point of each bucket), so it cannot drift from the reference.
//
//   magnitude buckets:  0 = |x| < 2^-kOctaves | kOctaves + 1 octaves x 2^kSliceBits slices up to [1, 2) | NaN/|x| >= 2
//   index = magnitude bucket + (sign ? kMagBuckets : 0)
struct Lut4bit {
  static constexpr int kSliceBits = 3;   // 8 slices per octave: NF4/FP4 thresholds are >= 1/8 octave apart
  static constexpr int kOctaves = 10;    // 2^-10 is below the smallest FP4 threshold (0.0026) and NF4's (0.0398)
  static constexpr int kTopExponent = 127;                       // biased exponent of 1.0f
  static constexpr int kFirstKey = (kTopExponent - kOctaves) << kSliceBits;
  static constexpr int kSlices = (kOctaves + 1) << kSliceBits;   // octaves 2^-10 .. 2^0 inclusive
  static constexpr int kMagBuckets = 1 + kSlices + 1;
  static constexpr int kEntries = 2 * kMagBuckets;
  static constexpr uint32_t kCanonicalNaN = 0x7fffffffu;

  struct Entry {
    float thr;
    uint32_t codes;  // below | above << 8
  };
  Entry entry[kEntries];

  __device__ __forceinline__ static int magnitude_bucket(uint32_t bits) {
    const int m = static_cast<int>((bits & 0x7fffffffu) >> (23 - kSliceBits)) - kFirstKey + 1;
    return min(max(m, 0), kMagBuckets - 1);
  }

  __device__ __forceinline__ uint32_t encode(float x) const {
    const uint32_t bits = __float_as_uint(x);
    const Entry e = entry[magnitude_bucket(bits) + ((bits >> 31) ? kMagBuckets : 0)];
    return x > e.thr ? (e.codes >> 8) : (e.codes & 0xffu);
  }

  // Magnitude bits of the smallest |x| in magnitude bucket m (1 <= m < kMagBuckets).
  __device__ static uint32_t lower_bits(int m) { return static_cast<uint32_t>(m - 1 + kFirstKey) << (23 - kSliceBits); }

  template <QuantType Q>
  __device__ void build() {
    for (int idx = threadIdx.x; idx < kEntries; idx += blockDim.x) {
      const int m = idx % kMagBuckets;
      const bool negative = idx >= kMagBuckets;
      if (m == kMagBuckets - 1) {
        // |x| >= 2, +-inf and NaN. A finite block reaches it only when its absmax is so small that the
        // inverse overflows (x * inf, 0 * inf = NaN); a block holding inf or NaN reaches it with +-inf alone
        // (the kernel replaces its values first). Every finite value here encodes as the infinity of its
        // sign; NaN compares false and takes `below`, and a NaN made by arithmetic has its sign bit clear.
        const float inf = float_from_bits(kInfinityBits);  // (formats.h)
        const uint32_t below = negative ? encode_4bit<Q>(-inf) : encode_4bit<Q>(__uint_as_float(kCanonicalNaN));
        const uint32_t above = negative ? below : encode_4bit<Q>(inf);
        entry[idx] = {0.0f, below | (above << 8)};
        continue;
      }
      const uint32_t a = m == 0 ? 0u : lower_bits(m);
      const uint32_t b = lower_bits(m + 1) - 1u;
      // The bucket's values in ascending order: value(i), i = 0 .. b - a.
      auto value = [&](uint32_t i) { return negative ? -__uint_as_float(b - i) : __uint_as_float(a + i); };
      const uint32_t below = encode_4bit<Q>(value(0));
      const uint32_t above = encode_4bit<Q>(value(b - a));
      uint32_t lo = 0, hi = b - a;  // largest i with code(value(i)) == below
      while (lo < hi) {
        const uint32_t mid = lo + (hi - lo + 1) / 2;
        if (encode_4bit<Q>(value(mid)) == below) lo = mid;
        else hi = mid - 1;
      }
      entry[idx] = {value(lo), below | (above << 8)};
    }
  }
};

// Whole tiles of aligned data. T: input element type; Q: NF4 or FP4; G: threads per block.
template <typename T, QuantType Q, int G>
__global__ void __launch_bounds__(kTileThreads) quantize_4bit_kernel(Quantize4bitParams p, int64_t num_tiles) {
  using Tile = BlockTile<T, G, kLoadsPerThread>;
  constexpr int V = Tile::kVec;
  static_assert(V % 2 == 0, "a vector holds whole bytes of codes");
  __shared__ typename Tile::Shared scratch;
  __shared__ Lut4bit lut;
  lut.build<Q>();
  __syncthreads();

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
      // The rule for blocks holding inf or NaN (formats.h): the block's values become 0 or +-inf before the
      // loop below, whose table encodes +-inf as encode_4bit does. A test inside that loop (a branch per
      // vector) made it 8% slower for 16-bit inputs on the H100, every block being finite.
      Tile::transform(raw, [](float x) { return value_in_non_finite_block(x); });
      scale = 1.0f;
    }
    uint8_t* packed = p.packed + block * (Tile::kBlockElems / 2);
#pragma unroll
    for (int l = 0; l < kLoadsPerThread; ++l) {
      float x[V];
      Tile::unpack(raw, l, x);
      Packet<uint8_t, V / 2> q;
#pragma unroll
      for (int j = 0; j < V / 2; ++j)
        q.v[j] = static_cast<uint8_t>((lut.encode(x[2 * j] * scale) << 4) | lut.encode(x[2 * j + 1] * scale));
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
    const float m = warp_absmax(A, begin, end, lane);
    if (lane == 0) p.absmax[b] = stored_absmax(m);
    const bool finite = is_finite(m);  // else the rule for blocks holding inf or NaN (formats.h)
    const float scale = inverse_absmax(m);
    auto encode = [&](int64_t i) {
      const float x = to_f32(A[i]);
      return encode_4bit<Q>(finite ? x * scale : value_in_non_finite_block(x));
    };
    for (int64_t i = begin + 2 * lane; i < end; i += 2 * kWarpSize) {
      const uint8_t hi = encode(i);
      const uint8_t lo = (i + 1 < end) ? encode(i + 1) : uint8_t{0};
      p.packed[i / 2] = pack_pair(hi, lo);
    }
  }
}

// Whole vectors through dequantize_vectors (V / 2 packed bytes per 16-byte output vector), then the tail.
template <typename T>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_4bit_kernel(Dequantize4bitParams p, int64_t num_vecs, int log2_blocksize) {
  constexpr int V = vec_elems<T>();
  using Codes = Packet<uint8_t, V / 2>;
  __shared__ float table[kTableSize4bit];
  if (threadIdx.x < kTableSize4bit)
    table[threadIdx.x] = p.qtype == QuantType::NF4 ? kNF4Values[threadIdx.x] : kFP4Values[threadIdx.x];
  __syncthreads();

  T* __restrict__ out = static_cast<T*>(p.out);
  const Codes* __restrict__ in = reinterpret_cast<const Codes*>(p.packed);
  dequantize_vectors(in, p.absmax, out, num_vecs, log2_blocksize, [&](const Codes& q, float scale, float (&x)[V]) {
#pragma unroll
    for (int j = 0; j < V / 2; ++j) {
      x[2 * j] = table[q.v[j] >> 4] * scale;
      x[2 * j + 1] = table[q.v[j] & 0xf] * scale;
    }
  });
  // Bytes after the last whole vector (or all of them when the pointers are not aligned).
  const int64_t num_bytes = (p.n + 1) / 2;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t j = num_vecs * (V / 2) + int64_t{blockIdx.x} * blockDim.x + threadIdx.x; j < num_bytes; j += stride) {
    const uint8_t byte = p.packed[j];
    const int64_t i = 2 * j;
    out[i] = from_f32<T>(table[byte >> 4] * __ldg(p.absmax + (i >> log2_blocksize)));
    if (i + 1 < p.n) out[i + 1] = from_f32<T>(table[byte & 0xf] * __ldg(p.absmax + ((i + 1) >> log2_blocksize)));
  }
}


template <typename T, QuantType Q, int G>
void launch_quantize_tiles(const Quantize4bitParams& p, int64_t num_tiles, int32_t device, cudaStream_t stream) {
  constexpr auto kernel = quantize_4bit_kernel<T, Q, G>;
  const unsigned grid = grid_for(num_tiles, kStreamingWaves * resident_ctas<kernel>(device, kTileThreads));
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
  dispatch_group_width(group, "quantize_4bit", p.blocksize, run);
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
  constexpr int V = vec_elems<T>();
  const bool vector_ok = is_aligned(p.packed, V / 2) && is_aligned(p.out, kVecBytes);
  const int64_t num_vecs = vector_ok ? p.n / V : 0;
  constexpr auto kernel = dequantize_4bit_kernel<T>;
  const unsigned grid = vector_ok ? dequant_grid(num_vecs)
                                  : grid_for((p.n + 2 * kDequantThreads - 1) / (2 * kDequantThreads), resident_ctas<kernel>(device, kDequantThreads));
  kernel<<<grid, kDequantThreads, 0, stream>>>(p, num_vecs, log2_of(p.blocksize));
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

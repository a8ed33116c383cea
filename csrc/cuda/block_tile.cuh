// The tile layout shared by the blockwise quantizers (8-bit code book and 4-bit NF4/FP4): how a
// CTA's threads split a tile of whole quantization blocks, load them with 16-byte vectors and
// reduce each block's absmax.
//
// One CTA tile = kTileThreads threads x L vectors each. Threads form groups of G consecutive
// lanes; group k owns quantization block k of the tile (G * L vectors). Thread g of a group loads
// vectors g, g + G, g + 2G, ... of its block, so adjacent lanes always read adjacent 16-byte words:
//
//   block (G = 4, L = 4):  | v0 v1 v2 v3 | v4 v5 v6 v7 | v8 ... | v12 ... v15 |
//   load l = 0 by lanes      0  1  2  3
//   load l = 1 by lanes                    0  1  2  3
//
// The L loads of a thread are independent and issued back to back (L x 16 bytes in flight per
// thread). The block maximum is a shuffle reduction over the G lanes; groups wider than a warp
// finish through shared memory. It is taken over the bit patterns of |x| (bnb::magnitude_bits), which
// keeps a NaN: the quantizers treat blocks holding inf or NaN apart (core/formats.h).
#pragma once

#include <type_traits>

#include "cuda/common.cuh"

namespace bnb::cuda {

constexpr int kTileThreads = 256;  // threads per CTA of the blockwise quantizers

template <typename T, int G, int L>
struct BlockTile {
  static constexpr int kVec = vec_elems<T>();                 // elements per 16-byte vector
  static constexpr int kBlockVecs = G * L;                    // vectors per quantization block
  static constexpr int kBlockElems = kBlockVecs * kVec;       // the blocksize this layout serves
  static constexpr int kBlocksPerTile = kTileThreads / G;     // quantization blocks per CTA tile
  static constexpr int64_t kTileElems = int64_t{kBlocksPerTile} * kBlockElems;
  static constexpr int kWarps = kTileThreads / kWarpSize;
  static constexpr int kWarpsPerGroup = G > kWarpSize ? G / kWarpSize : 1;
  static_assert(G >= 1 && G <= kTileThreads && (G & (G - 1)) == 0, "group size is a power of two");

  // Scratch for groups wider than a warp: one partial max per warp, double-buffered by tile parity
  // so the next tile's writes never race this tile's reads (one barrier per tile instead of two).
  struct Shared {
    uint32_t warp_max[2][kWarps];  // magnitude bit patterns
  };

  using Raw = RawVec<T, kVec>;

  // Loads this thread's L vectors of block `block` (all in range), raw.
  __device__ __forceinline__ static void load(const T* __restrict__ A, int64_t block, int g, uint4 (&raw)[L]) {
    const T* base = A + block * kBlockElems + int64_t{g} * kVec;
#pragma unroll
    for (int l = 0; l < L; ++l) raw[l] = Raw::load(base + l * G * kVec);
  }

  // Vector l as floats.
  __device__ __forceinline__ static void unpack(const uint4 (&raw)[L], int l, float (&x)[kVec]) {
    Raw::unpack(raw[l], x);
  }

  // Replaces each element x of this thread's vectors by f(x); f must give values exact in T (0, +-inf).
  template <typename F>
  __device__ static void transform(uint4 (&raw)[L], F f) {
#pragma unroll
    for (int l = 0; l < L; ++l) {
      auto& e = *reinterpret_cast<Packet<T, kVec>*>(&raw[l]);
#pragma unroll
      for (int i = 0; i < kVec; ++i) e.v[i] = from_f32<T>(f(to_f32(e.v[i])));
    }
  }

  // Element offset, inside the block, of element i of this thread's vector l.
  __device__ __forceinline__ static int offset_in_block(int g, int l) { return (l * G + g) * kVec; }

  // max |x| over the whole block (NaN if the block holds one); every thread of the group gets it.
  // Must be reached by all threads of the CTA when G > 32 (it contains a barrier).
  __device__ __forceinline__ static float absmax(const uint4 (&raw)[L], Shared& smem, int parity) {
    uint32_t m = 0;
    if constexpr (sizeof(T) == 2) {
      // Two 16-bit values per instruction; the maximum of 16-bit values is exact in 16 bits and widened
      // once at the end. __hmax2_nan (sm_80 on) passes a NaN through; before sm_80, an integer maximum
      // of the 16-bit magnitude patterns does the same (they order like the values, NaN above inf).
      using T2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
      uint32_t m2 = 0;  // +0 in both halves
#pragma unroll
      for (int l = 0; l < L; ++l) {
        const uint32_t w[4] = {raw[l].x, raw[l].y, raw[l].z, raw[l].w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
          const T2 h = __hmax2_nan(*reinterpret_cast<const T2*>(&m2), __habs2(*reinterpret_cast<const T2*>(&w[k])));
          m2 = *reinterpret_cast<const uint32_t*>(&h);
#else
          m2 = __vmaxu2(m2, w[k] & 0x7fff7fffu);
#endif
        }
      }
      const T2 halves = *reinterpret_cast<const T2*>(&m2);
      m = max(magnitude_bits(to_f32(halves.x)), magnitude_bits(to_f32(halves.y)));
    } else {
#pragma unroll
      for (int l = 0; l < L; ++l) {
        const uint32_t w[4] = {raw[l].x, raw[l].y, raw[l].z, raw[l].w};  // float32 patterns
#pragma unroll
        for (int k = 0; k < 4; ++k) m = max(m, w[k] & 0x7fffffffu);
      }
    }
    if constexpr (G <= kWarpSize) {
      return __uint_as_float(group_max_bits<G>(m));
    } else {
      m = group_max_bits<kWarpSize>(m);
      const int warp = threadIdx.x / kWarpSize;
      if (threadIdx.x % kWarpSize == 0) smem.warp_max[parity][warp] = m;
      __syncthreads();
      const int first = (threadIdx.x / G) * kWarpsPerGroup;
      m = 0;
#pragma unroll
      for (int w = 0; w < kWarpsPerGroup; ++w) m = max(m, smem.warp_max[parity][first + w]);
      return __uint_as_float(m);
    }
  }
};

// Calls f(std::integral_constant<int, G>{}) for the runtime group width G (a power of two in
// [1, kTileThreads]): the tile kernels are instantiated per group width.
template <typename F>
void dispatch_group_width(int64_t group, const char* op, int64_t blocksize, F&& f) {
  switch (group) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 256: return f(std::integral_constant<int, 256>{});
    default: fail(BNB_STATUS_INTERNAL, "no ", op, " tile for blocksize ", blocksize);
  }
}

}  // namespace bnb::cuda

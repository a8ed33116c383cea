// The byte -> pair-of-codes table through which the CUDA 4-bit products expand packed codes into 16-bit
// MMA operands, and the mma.sync tile they feed. One copy per lane, so that 32 lanes looking up random
// bytes hit 32 different banks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"

namespace bnb::cuda {

constexpr int kPairTableWords = 256 * kWarpSize;  // narrow layout: word byte * 32 + lane (32 KB)

// Fills a table of the 16-bit pairs of `code` (the type's 16 values) by `threads` threads of which this is
// number `thread`. Narrow layout: word byte * 32 + lane. Wide layout (twice the space): byte * 64 + lane,
// the upper 32 words of each byte unused, which a byte permute addresses (pair_offset).
template <typename T>
__device__ __forceinline__ void fill_pair_table(uint32_t* table, const float (&code)[16], bool wide, int thread,
                                                int threads) {
  for (int i = thread; i < kPairTableWords / 4; i += threads) {
    const int byte = i / (kWarpSize / 4);
    // Element 2j of the flat weight is the high nibble and the lower k: it goes in the low half.
    const uint32_t v = pair_word<T>(code[byte >> 4], code[byte & 15]);
    reinterpret_cast<uint4*>(table)[wide ? i + byte * (kWarpSize / 4) : i] = make_uint4(v, v, v, v);
  }
}

// Byte B of code word w as a byte offset into the pair table. Narrow table (32 KB): entry (byte << 7) |
// (lane << 2), i.e. word byte * 32 + lane: one shift and one three-input logic op per byte. Wide table
// (64 KB, each byte's 32 words 256 bytes apart, the upper 128 bytes of each unused): byte * 256 +
// lane * 4 is one byte permute. The table's base address folds into the load's immediate offset.
template <int B, bool Wide>
__device__ __forceinline__ uint32_t pair_offset(uint32_t w, uint32_t lane4) {
  if constexpr (Wide) return __byte_perm(w, lane4, 0x5504u | (B << 4));
  else if constexpr (B == 0) return ((w << 7) & 0x7f80u) | lane4;
  else return ((w >> (8 * B - 7)) & 0x7f80u) | lane4;
}

// The mma's 16-row operand (A fragment) of one step from code words of rows g (lo) and g + 8 (hi): the pairs
// of their bytes 0 and 1 for an even step, 2 and 3 for an odd one (unrolled steps make `odd` a constant).
template <bool Wide>
__device__ __forceinline__ void step_fragment(const char* table, uint32_t lo, uint32_t hi, bool odd, uint32_t lane4,
                                              uint32_t (&a)[4]) {
  auto pair = [&](uint32_t off) { return *reinterpret_cast<const uint32_t*>(table + off); };
  if (!odd) {
    a[0] = pair(pair_offset<0, Wide>(lo, lane4)), a[1] = pair(pair_offset<0, Wide>(hi, lane4));
    a[2] = pair(pair_offset<1, Wide>(lo, lane4)), a[3] = pair(pair_offset<1, Wide>(hi, lane4));
  } else {
    a[0] = pair(pair_offset<2, Wide>(lo, lane4)), a[1] = pair(pair_offset<2, Wide>(hi, lane4));
    a[2] = pair(pair_offset<3, Wide>(lo, lane4)), a[3] = pair(pair_offset<3, Wide>(hi, lane4));
  }
}

// d += a * b for one m16n8k16 tile (row-major A, column-major B, float32 accumulators).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

}  // namespace bnb::cuda

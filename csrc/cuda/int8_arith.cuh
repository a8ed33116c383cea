// The arithmetic every LLM.int8() kernel must share bit for bit (the quantization's rounding, the
// dequantization of int32 sums, the outlier correction), and the few-row tensor-core tile layout of
// int8_matmul.cu and int8_linear_one_row.cu. One definition, so every path gives the same float32 bits.
#pragma once

#include <cstdint>

#include "core/formats.h"
#include "core/params.h"
#include "cuda/common.cuh"

namespace bnb::cuda {

// Round half to even, as std::nearbyint in the CPU reference; |v| <= 127 by construction.
__device__ __forceinline__ int8_t round_to_int8(float v) { return static_cast<int8_t>(__float2int_rn(v)); }

// One element of a row quantized with scale = int8_scale(absmax): an outlier (|x| >= threshold, when
// kOutliers) becomes 0.
template <bool kOutliers>
__device__ __forceinline__ int8_t quantize_int8(float x, float scale, float threshold) {
  return (kOutliers && fabsf(x) >= threshold) ? int8_t{0} : round_to_int8(x * scale);
}

// acc * SCA[m] * SCB[n] / 127^2, rounded step by step: no fused multiply-add the compiler may or may
// not form, so every path (and every epilogue instantiation) gives the same float32 bits.
__device__ __forceinline__ float dequant_acc(int32_t acc, float row, float col) {
  return __fmul_rn(__fmul_rn(__fmul_rn(static_cast<float>(acc), row), col), kInt8DequantScale);
}
__device__ __forceinline__ float plus_bias(float v, float bias) { return __fadd_rn(v, bias); }

// The outlier columns are gathered first into small dense arrays (up to kPackedOutliers of them):
// each output then reads a few contiguous bytes instead of one cache line per column of CB.
constexpr int kPackedOutliers = 64;

// The packed outlier columns of an int8_linear call (threshold > 0).
struct Outliers {
  const int32_t* count;  // number of outlier columns (on the device)
  const int32_t* cols;   // their ascending indices [K]
  // [M, kPackedOutliers] per row and outlier column: what one unit of CB there adds to the output
  // before the column scale (outlier_coef: the float product minus the int8 one).
  const float* coef;
  const int8_t* cb;      // [kPackedOutliers, N] CB at those columns (column-major: adjacent outputs n are
                         // adjacent bytes, so a warp's reads coalesce)
};

// The outlier arithmetic, rounded step by step (as dequant_acc), so the per-element and the vector
// epilogues give the same bits. coef = X / 127 - CA * SCA / 127^2 per row and outlier column.
__device__ __forceinline__ float outlier_coef(float x, float ca, float sca) {
  return __fsub_rn(__fmul_rn(x, 1.0f / 127.0f), __fmul_rn(__fmul_rn(ca, sca), kInt8DequantScale));
}
__device__ __forceinline__ float add_product(float sum, float a, float b) { return __fadd_rn(sum, __fmul_rn(a, b)); }
// v + (sum over outlier columns of X * CB) * SCB / 127 - (sum of CA * CB) * SCA * SCB / 127^2
__device__ __forceinline__ float add_unpacked(float v, float extra, float int8_terms, float row, float col) {
  return __fadd_rn(v, __fsub_rn(__fmul_rn(__fmul_rn(extra, col), 1.0f / 127.0f),
                                __fmul_rn(__fmul_rn(__fmul_rn(int8_terms, row), col), kInt8DequantScale)));
}
// Output (m, n) dequantized as v plus `count` outlier columns read unpacked from X, CA and CB (more of
// them than the packed arrays hold): the int8_linear epilogues' shared fallback.
template <typename T>
__device__ __forceinline__ float add_unpacked_outliers(float v, const int32_t* cols, int32_t count, const T* X,
                                                       const int8_t* CA, const int8_t* CB, int64_t K, int64_t m,
                                                       int64_t n, float row, float col) {
  float extra = 0.0f, int8_terms = 0.0f;
  for (int32_t i = 0; i < count; ++i) {
    const int64_t k = cols[i];
    const float w = static_cast<float>(CB[n * K + k]);
    extra = add_product(extra, to_f32(X[m * K + k]), w);
    int8_terms = add_product(int8_terms, static_cast<float>(CA[m * K + k]), w);
  }
  return add_unpacked(v, extra, int8_terms, row, col);
}

// ---- few rows: stream B through the tensor cores -----------------------------------------------------
// Same layout as the 4-bit GEMV (gemm_4bit.cu): each CTA owns 8 * kTiles rows of B, its 8 warps split
// K in groups of 64 columns, lane (g, t) loads 16 consecutive bytes [16t, 16t + 16) of B row g and of
// A rows g and g + 8, and the mma's k index is permuted to match: step s (0, 1) of m16n8k32 takes
// columns 16t + 8s + {0..3} for fragment k 4t..4t+3 and 16t + 8s + {4..7} for 16 + 4t..16 + 4t+3.
namespace int8_tiles {
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kTiles = 4;
constexpr int kRowsPerCta = 8 * kTiles;
constexpr int kGroup = 64;
constexpr int kUnroll = 2;
constexpr int kMaxSmallRows = 16;
// Shared int32 partial sums of the 8 warps, reduced by warps [0, kTiles) for the epilogue.
constexpr int kPartialInts = kWarps * kTiles * 4 * kWarpSize;
}  // namespace int8_tiles

__device__ __forceinline__ void mma_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Lane (g, t)'s weight rows of a CTA's tile (row0 + 8j + g for tile j; the last row stands in for
// rows past N), each from byte 16t, and what the few-row kernels do with them.
struct WeightRows {
  const int8_t* row[int8_tiles::kTiles];

  __device__ __forceinline__ WeightRows(const int8_t* B, int64_t N, int64_t K, int64_t row0, int g, int t) {
#pragma unroll
    for (int j = 0; j < int8_tiles::kTiles; ++j) row[j] = B + min(row0 + 8 * j + g, N - 1) * K + 16 * t;
  }

  // Asks L2 for the first kUnroll groups of the warp (issued early: they travel while the kernel waits
  // for its predecessor or prepares A).
  __device__ __forceinline__ void prefetch(int warp, int64_t groups) const {
    using namespace int8_tiles;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t grp = warp + int64_t{u} * kWarps;
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
        if (grp < groups) asm volatile("prefetch.global.L2 [%0];" ::"l"(row[j] + grp * kGroup));
    }
  }

  // acc[j] += A rows (g, g + 8) times tile j's rows over the warp's groups warp, warp + kWarps, ...;
  // a_at(col) gives the lane's 16 bytes of A rows g and g + 8 at column col (a uint4 pair: lo, hi).
  template <typename LoadA>
  __device__ __forceinline__ void multiply(int warp, int64_t groups, LoadA a_at,
                                           int32_t (&acc)[int8_tiles::kTiles][4]) const {
    using namespace int8_tiles;
    for (int64_t base = warp; base < groups; base += int64_t{kWarps} * kUnroll) {
      uint4 w[kUnroll][kTiles];
      uint4 lo[kUnroll], hi[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t grp = base + int64_t{u} * kWarps;
        if (grp >= groups) break;
        const int64_t col = grp * kGroup;
#pragma unroll
        for (int j = 0; j < kTiles; ++j) w[u][j] = __ldg(reinterpret_cast<const uint4*>(row[j] + col));
        a_at(col, lo[u], hi[u]);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (base + int64_t{u} * kWarps >= groups) break;
#pragma unroll
        for (int j = 0; j < kTiles; ++j) {
          mma_s8(acc[j], lo[u].x, hi[u].x, lo[u].y, hi[u].y, w[u][j].x, w[u][j].y);
          mma_s8(acc[j], lo[u].z, hi[u].z, lo[u].w, hi[u].w, w[u][j].z, w[u][j].w);
        }
      }
    }
  }
};

}  // namespace bnb::cuda

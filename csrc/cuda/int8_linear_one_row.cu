// LLM.int8() of one activation row (token-by-token generation) in one kernel launch: every CTA
// quantizes the row itself into shared memory (finding the outlier columns on the way), streams its
// rows of the int8 weight through the tensor cores and finishes its outputs (scales, outlier
// correction, bias). The general path takes a chain of kernels for the same work (quantize; with
// outliers, list and pack the columns; multiply) plus a scratch allocation, and at one row each
// launch costs host time comparable to the kernels' GPU time.
//
// Every CTA reads all of X (from L2 after the first). H100, K = N = 8192, fp16, GPU time in a CUDA
// graph against the chain (before this kernel overlapped its predecessor): threshold 6: M = 1 32.6 us
// (chain 33.1-33.3), M = 4 37.7 (34.9); threshold 0: M = 1 29.5-29.7 (28.5), M = 4 34.0 (29.0): each
// more row costs every CTA about a microsecond, so only one row is taken here. Overlapping the
// kernel before it brought M = 1 to 30.6-30.7 (threshold 6) and 28.2-28.3 us (threshold 0). At one
// row the host time of a call falls by a launch (threshold 0) or three launches and the scratch
// allocation (threshold 6), which is what eager generation waits on.
// The values, the outlier columns and every rounding step are those of the chained path
// (int8_arith.cuh), so the results are the same bits.
#include "cuda/int8_linear_one_row.cuh"

#include "core/dispatch.h"
#include "core/formats.h"
#include "cuda/int8_arith.cuh"
#include "cuda/list_flags.cuh"

namespace bnb::backend {
namespace {

using namespace cuda::int8_tiles;
using cuda::kPackedOutliers;
using cuda::kWarpSize;

// Dynamic shared memory a launch may take without the opt-in attribute (48 KiB), less the static arrays.
constexpr size_t kMaxDynamicSmem = 40 * 1024;

template <typename T>
struct OneRowArgs {
  const T* X;           // [1, K]
  const int8_t* CB;     // [N, K]
  const float* SCB;     // [N]
  const T* bias;        // [N] or null
  T* out;               // [1, N]
  uint8_t* mask;        // [K] or null: 1 at the outlier columns, 0 elsewhere (threshold > 0)
  int64_t N, K;
  float threshold;
};

// Shared memory before the outlier bits: the quantized row, reused for the warps' partial sums.
__host__ __device__ constexpr int64_t row_region_bytes(int64_t K) {
  const int64_t partial = int64_t{kPartialInts} * 4;
  return ((K > partial ? K : partial) + 15) / 16 * 16;
}

template <typename T, bool kOutliers>
__global__ void __launch_bounds__(kThreads) int8_linear_one_row(OneRowArgs<T> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ uint4 dynamic_smem[];
  __shared__ uint32_t warp_max[kWarps];
  __shared__ int32_t cols[kPackedOutliers];
  __shared__ float coef[kPackedOutliers];
  __shared__ int8_t cb[kPackedOutliers][kRowsPerCta];

  constexpr int V = cuda::vec_elems<T>();  // elements per 16-byte load of X
  const int64_t N = p.N, K = p.K;
  int8_t* ca = reinterpret_cast<int8_t*>(dynamic_smem);          // [K] the quantized row
  int32_t* partial = reinterpret_cast<int32_t*>(dynamic_smem);   // [kPartialInts] after the main loop
  uint32_t* outlier_bits = reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(dynamic_smem) +
                                                       row_region_bytes(K));  // [K / 32]
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int g = lane / 4;
  const int t = lane % 4;
  const int64_t row0 = int64_t{blockIdx.x} * kRowsPerCta;
  const cuda::WeightRows weight(p.CB, N, K, row0, g, t);
  const int64_t groups = K / kGroup;

  // Launched to overlap the end of the kernel before it, and lets the kernel after it do the same
  // (its weight prefetch): in generation the next product is often one of these. The first weight
  // bytes travel while the row is quantized (the weight is never written by the kernels before
  // this one); X, the outputs and the mask are touched only after wait_for_previous_kernel.
  // (Prefetching 4 or 8 groups per warp instead of kUnroll measured slower.)
  cuda::allow_next_kernel();
  weight.prefetch(warp, groups);
  if constexpr (kOutliers) {
    for (int64_t w = threadIdx.x; w < K / 32; w += kThreads) outlier_bits[w] = 0;
    __syncthreads();
  }
  cuda::wait_for_previous_kernel();

  // The row's 16-byte chunks are items 0 .. K / V - 1, item i at X + i * V. Thread j takes items j,
  // j + kThreads, ..., kBatch of them loaded at once (one round trip for a whole row at K = 8192 and
  // 16-bit X, where a load per iteration took four).
  using Raw = cuda::RawVec<T, V>;
  constexpr int kBatch = 4;
  const uint32_t items = static_cast<uint32_t>(K / V);
  auto for_items = [&](auto body) {
    for (uint32_t i0 = threadIdx.x; i0 < items; i0 += kThreads * kBatch) {
      typename Raw::type raw[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const uint32_t i = i0 + b * kThreads;
        if (i < items) raw[b] = Raw::load(p.X + int64_t{i} * V);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const uint32_t i = i0 + b * kThreads;
        if (i >= items) break;
        float x[V];
        Raw::unpack(raw[b], x);
        body(i * V, x);  // first column
      }
    }
  };

  // Pass 1: the row's absmax over the non-outliers and the outlier columns (bit k: |X[k]| >= threshold).
  // The maximum is taken over bit patterns, as int8_vectorwise_quant does, so that a NaN is kept.
  uint32_t amax = 0;
  for_items([&](uint32_t k, const float (&x)[V]) {
    uint32_t bits = 0;
    uint32_t chunk_max = 0;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float a = fabsf(x[i]);
      const bool outlier = kOutliers && a >= p.threshold;
      bits |= (outlier ? 1u : 0u) << i;
      chunk_max = max(chunk_max, outlier ? 0u : __float_as_uint(a));
    }
    amax = max(amax, chunk_max);
    if (kOutliers && bits) atomicOr(&outlier_bits[k / 32], bits << (k % 32));
  });
  amax = cuda::group_max_bits<kWarpSize>(amax);
  if (lane == 0) warp_max[warp] = amax;
  __syncthreads();
  uint32_t sca_bits = 0;  // a max, so the same bits in any order
#pragma unroll
  for (int w = 0; w < kWarps; ++w) sca_bits = max(sca_bits, warp_max[w]);
  const float sca = stored_absmax(__uint_as_float(sca_bits));  // SCA, as int8_vectorwise_quant stores it

  // Pass 2: the quantized row into shared memory (outliers 0), as int8_vectorwise_quant writes CA:
  // all 0 for a row whose absmax is NaN or inf (the outputs come out NaN through SCA).
  const bool finite = is_finite(sca);
  const float scale = int8_scale(sca);
  for_items([&](uint32_t k, const float (&x)[V]) {
    cuda::Packet<int8_t, V> q;
#pragma unroll
    for (int i = 0; i < V; ++i) q.v[i] = finite ? cuda::quantize_int8<kOutliers>(x[i], scale, p.threshold) : int8_t{0};
    *reinterpret_cast<cuda::Packet<int8_t, V>*>(ca + k) = q;
  });

  // The outlier columns in ascending order (the first kPackedOutliers of them listed), the caller's
  // mask, and per listed column what one unit of CB there adds (outlier_coef).
  int64_t count = 0;
  if constexpr (kOutliers) {
    count = cuda::scan_bits(
        K, cols, [&](int64_t first) { return (outlier_bits[first / 32] >> (first % 32)) & 0xffffu; },
        kPackedOutliers);  // ends with a barrier: the quantized row is complete as well
    if (p.mask != nullptr && blockIdx.x == 0) {
      for (int64_t k = threadIdx.x; k < K; k += kThreads)
        p.mask[k] = static_cast<uint8_t>((outlier_bits[k / 32] >> (k % 32)) & 1u);
    }
    if (count <= kPackedOutliers) {
      for (int64_t j = threadIdx.x; j < count; j += kThreads) {
        const int64_t k = cols[j];
        coef[j] = cuda::outlier_coef(cuda::to_f32(p.X[k]), static_cast<float>(ca[k]), sca);
      }
    }
  } else {
    __syncthreads();  // the quantized row is complete
  }

  // Main loop: the int8 product of the row with this CTA's kRowsPerCta weight rows (as int8_gemm_small_m,
  // A from shared memory: the row is A's row 0, lanes of g = 0 load it, every other row of A is zero).
  const bool has_row = g == 0;
  const int8_t* a_row = ca + 16 * t;
  int32_t acc[kTiles][4] = {};
  weight.multiply(warp, groups, [&](int64_t col, uint4& lo, uint4& hi) {
    lo = has_row ? *reinterpret_cast<const uint4*>(a_row + col) : make_uint4(0, 0, 0, 0);
    hi = make_uint4(0, 0, 0, 0);
  }, acc);

  // The listed outlier columns of this CTA's weight rows (just streamed: mostly L2 hits).
  if (kOutliers && count <= kPackedOutliers) {
    for (int64_t i = threadIdx.x; i < count * kRowsPerCta; i += kThreads) {
      const int64_t j = i / kRowsPerCta, r = i % kRowsPerCta;
      cb[j][r] = p.CB[min(row0 + r, N - 1) * K + cols[j]];
    }
  }
  __syncthreads();  // every warp is done with the quantized row: its bytes take the partial sums
#pragma unroll
  for (int j = 0; j < kTiles; ++j)
#pragma unroll
    for (int c = 0; c < 2; ++c) partial[((warp * kTiles + j) * 2 + c) * kWarpSize + lane] = acc[j][c];
  __syncthreads();
  if (warp >= kTiles || g != 0) return;  // lanes of g = 0 hold the output row
  const int j = warp;
#pragma unroll
  for (int c = 0; c < 2; ++c) {  // accumulator entries 2 and 3 are row 8 of A: zero
    uint32_t sum = 0;  // modulo 2^32, as the int32 GEMMs wrap
    for (int w = 0; w < kWarps; ++w) sum += static_cast<uint32_t>(partial[((w * kTiles + j) * 2 + c) * kWarpSize + lane]);
    const int64_t r = 8 * j + 2 * t + c, n = row0 + r;
    if (n >= N) continue;
    const float col = p.SCB[n];
    float v = cuda::dequant_acc(static_cast<int32_t>(sum), sca, col);
    if constexpr (kOutliers) {
      if (count <= kPackedOutliers) {
        float outlier_sum = 0.0f;
        for (int64_t i = 0; i < count; ++i)
          outlier_sum = cuda::add_product(outlier_sum, coef[i], static_cast<float>(cb[i][r]));
        v = cuda::add_product(v, outlier_sum, col);
      } else {
        // More outlier columns than listed: walk the bits in ascending order, CA requantized from X.
        const float scale = int8_scale(sca);
        float extra = 0.0f, int8_terms = 0.0f;
        for (int64_t word = 0; word < K / 32; ++word) {
          for (uint32_t rest = outlier_bits[word]; rest != 0; rest &= rest - 1) {
            const int64_t k = word * 32 + __ffs(rest) - 1;
            const float w8 = static_cast<float>(p.CB[n * K + k]), x = cuda::to_f32(p.X[k]);
            extra = cuda::add_product(extra, x, w8);
            int8_terms = cuda::add_product(
                int8_terms, static_cast<float>(cuda::quantize_int8<true>(x, scale, p.threshold)), w8);
          }
        }
        v = cuda::add_unpacked(v, extra, int8_terms, sca, col);
      }
    }
    if (p.bias != nullptr) v = cuda::plus_bias(v, cuda::to_f32(p.bias[n]));
    p.out[n] = cuda::from_f32<T>(v);
  }
#endif
}

}  // namespace

bool int8_linear_one_row(const Int8LinearParams& p, int32_t device, cudaStream_t stream) {
  if (p.M != 1 || p.K % kGroup != 0 || !cuda::is_aligned(p.X, cuda::kVecBytes) ||
      !cuda::is_aligned(p.CB, 16) || cuda::compute_capability(device) < 80)
    return false;
  const bool outliers = p.threshold > 0.0f;
  const size_t smem = static_cast<size_t>(row_region_bytes(p.K)) + (outliers ? static_cast<size_t>(p.K / 8) : 0);
  const int64_t ctas = (p.N + kRowsPerCta - 1) / kRowsPerCta;
  if (smem > kMaxDynamicSmem || ctas > cuda::kMaxGridX) return false;
  dispatch_float<cuda::CudaType>(p.x_dtype, "X", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const OneRowArgs<T> args{static_cast<const T*>(p.X), p.CB, p.SCB, static_cast<const T*>(p.bias),
                              static_cast<T*>(p.out), p.outlier_mask, p.N, p.K, p.threshold};
    auto kernel = outliers ? int8_linear_one_row<T, true> : int8_linear_one_row<T, false>;
    cuda::launch_with_smem_after_previous(kernel, static_cast<unsigned>(ctas), kThreads, smem, stream, device,
                                          /*overlap=*/true, args);
  });
  return true;
}

}  // namespace bnb::backend

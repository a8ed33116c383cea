// CUDA LLM.int8() products: int8 A [M, K] times int8 B [N, K] transposed, as exact int32 or
// finished by the dequantization (row and column scales, bias, output dtype).
//
// Paths, chosen by shape:
//  - bnb_int8_linear with one row (token-by-token generation): one kernel that also quantizes the row
//    and finds its outlier columns (int8_linear_one_row.cu);
//  - up to 16 rows: a weight-streaming tensor-core kernel that reads B once and applies the
//    dequantization to its int32 accumulators before anything is written;
//  - many rows on Hopper: one kernel that multiplies, dequantizes and adds the outlier columns (listed and
//    packed before it) (int8_gemm_sm90.cu);
//  - other many-row products: cuBLASLt's int8 GEMM (int32 out, int8_cublaslt.cu), then the dequantization
//    kernel (with outliers, the outlier columns are packed on a side stream while the GEMM runs);
//  - shapes neither takes (K not a multiple of 4, unaligned rows, no cuBLASLt): a tiled kernel that
//    accepts any shape.
#include <algorithm>
#include <optional>

#include "core/backend.h"
#include "core/error.h"
#include "cuda/common.cuh"
#include "cuda/int8_arith.cuh"
#include "cuda/int8_cublaslt.cuh"
#include "cuda/int8_gemm_sm90.cuh"
#include "cuda/int8_linear_one_row.cuh"
#include "cuda/list_flags.cuh"
#include "cuda/scratch.cuh"
#include "cuda/side_stream.cuh"

namespace bnb::backend {
namespace {

using cuda::kWarpSize;
using namespace cuda::int8_tiles;
using cuda::add_product;
using cuda::dequant_acc;
using cuda::kPackedOutliers;
using cuda::mma_s8;
using cuda::outlier_coef;
using cuda::Outliers;
using cuda::plus_bias;

// ---- epilogues: what happens to the exact int32 sum of output (m, n) ---------------------------------
struct StoreInt32 {
  int32_t* out;
  int64_t ld;
  __device__ void operator()(int64_t m, int64_t n, int32_t acc) const { out[m * ld + n] = acc; }
};


// The dequantizing epilogues give value(m, n, acc), the finished float, and out_at(m, n), where it goes;
// the dequantization kernel stores whole vectors of consecutive n when it can.
template <typename Out, typename Bias>
struct StoreDequant {
  using OutType = Out;
  static constexpr bool kRowValues = false;  // no values_rows
  const float* row_stats;
  const float* col_stats;
  const Bias* bias;
  Out* out;
  int64_t ld;
  __device__ float value(int64_t m, int64_t n, int32_t acc) const {
    const float v = dequant_acc(acc, row_stats[m], col_stats[n]);
    return bias ? plus_bias(v, cuda::to_f32(bias[n])) : v;
  }
  template <int V>
  __device__ void values(int64_t m, int64_t n0, const int32_t (&acc)[V], float (&v)[V]) const {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = value(m, n0 + i, acc[i]);
  }
  __device__ Out* out_at(int64_t m, int64_t n) const { return out + m * ld + n; }
  __device__ void operator()(int64_t m, int64_t n, int32_t acc) const { *out_at(m, n) = cuda::from_f32<Out>(value(m, n, acc)); }
};

// bnb_int8_linear: output dtype = bias dtype = X's, plus the outlier columns of X (if any), which
// were zeroed in CA as values but not as whole columns: their float product replaces the int8 one,
// so the int8 terms CA * CB of those columns are taken back out of the accumulator's value.
template <typename T>
struct StoreLinear {
  using OutType = T;
  static constexpr bool kRowValues = true;  // values_rows: several rows share the packed outlier loads
  const float* row_stats;  // SCA
  const float* col_stats;  // SCB
  const T* bias;
  T* out;
  int64_t N, K;
  const T* X;              // unpacked fallback for more than kPackedOutliers outlier columns
  const int8_t* CA;
  const int8_t* CB;
  Outliers outliers;       // count == null when threshold == 0
  __device__ float value(int64_t m, int64_t n, int32_t acc) const {
    const float col = col_stats[n];
    float v = dequant_acc(acc, row_stats[m], col);
    if (outliers.count) {
      const int32_t c = *outliers.count;
      if (c <= kPackedOutliers) {
        const float* coef = outliers.coef + m * kPackedOutliers;
        float sum = 0.0f;
        for (int32_t i = 0; i < c; ++i) sum = add_product(sum, coef[i], static_cast<float>(outliers.cb[i * N + n]));
        v = add_product(v, sum, col);
      } else {
        v = cuda::add_unpacked_outliers(v, outliers.cols, c, X, CA, CB, K, m, n, row_stats[m], col);
      }
    }
    return bias ? plus_bias(v, cuda::to_f32(bias[n])) : v;
  }
  // V consecutive outputs n0.. of `rows` (<= R) consecutive rows m0.. (n0 and N multiples of V): each
  // packed outlier column is read once for all of them (one V-byte load of cb per column serves R * V
  // outputs; with one row per thread cb was read once per row, as many bytes as the int32 matrix at a
  // few outlier columns). Same arithmetic as value(), so the same bits.
  template <int V, int R>
  __device__ void values_rows(int64_t m0, int rows, int64_t n0, const int32_t (&acc)[R][V], float (&v)[R][V]) const {
    const int32_t c = outliers.count ? *outliers.count : 0;
    if (c == 0 || c > kPackedOutliers) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < V; ++i)
          if (r < rows) v[r][i] = value(m0 + r, n0 + i, acc[r][i]);
      }
      return;
    }
    float sum[R][V] = {};
    for (int32_t j = 0; j < c; ++j) {
      const auto w = *reinterpret_cast<const cuda::Packet<int8_t, V>*>(outliers.cb + j * N + n0);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float k = r < rows ? outliers.coef[(m0 + r) * kPackedOutliers + j] : 0.0f;
#pragma unroll
        for (int i = 0; i < V; ++i) sum[r][i] = add_product(sum[r][i], k, static_cast<float>(w.v[i]));
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float col = col_stats[n0 + i];
      const float b = bias ? cuda::to_f32(bias[n0 + i]) : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r >= rows) continue;
        const float x = add_product(dequant_acc(acc[r][i], row_stats[m0 + r], col), sum[r][i], col);
        v[r][i] = bias ? plus_bias(x, b) : x;
      }
    }
  }
  // One row: the dequantization kernel's vector form.
  template <int V>
  __device__ void values(int64_t m, int64_t n0, const int32_t (&acc)[V], float (&v)[V]) const {
    values_rows<V, 1>(m, 1, n0, reinterpret_cast<const int32_t(&)[1][V]>(acc), reinterpret_cast<float(&)[1][V]>(v));
  }
  __device__ T* out_at(int64_t m, int64_t n) const { return out + m * N + n; }
  __device__ void operator()(int64_t m, int64_t n, int32_t acc) const { *out_at(m, n) = cuda::from_f32<T>(value(m, n, acc)); }
};

// Fills the packed outlier arrays of Outliers (rows [0, M) of coef, columns [0, N) of cb).
template <typename T>
__global__ void pack_outliers(const T* __restrict__ X, const int8_t* __restrict__ CA, const float* __restrict__ SCA,
                              const int8_t* __restrict__ CB, int64_t M, int64_t N, int64_t K, const int32_t* count,
                              const int32_t* cols, float* coef, int8_t* cb) {
  cuda::allow_next_kernel();         // the product after it waits for the packed outliers
  cuda::wait_for_previous_kernel();  // launched to overlap the listing of the outlier columns
  const int32_t c = *count;
  if (c > kPackedOutliers) return;
  const int64_t total = (M + N) * c;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = i / c, j = i % c, k = cols[j];
    if (row < M) {
      coef[row * kPackedOutliers + j] =
          outlier_coef(cuda::to_f32(X[row * K + k]), static_cast<float>(CA[row * K + k]), SCA[row]);
    } else {
      cb[j * N + (row - M)] = CB[(row - M) * K + k];
    }
  }
}

constexpr int64_t kRowsScannedForOutliers = 4;

// Few rows: the outlier columns straight from the activations, by one CTA (kFlagThreads threads):
// column k is an outlier when |X[m, k]| >= threshold in any row m. Writes the whole mask (1 or 0 per
// column, so the buffer needs no clearing before the call), lists the columns in ascending order and
// stores their number. Launched to overlap the quantization before it: X is complete before that
// kernel starts, and this one finishes only after it (wait_for_previous_kernel at the end), so the
// kernels after this one may rely on the quantized rows as well. Used up to kRowsScannedForOutliers
// rows (see int8_linear): one CTA reads all of X.
template <typename T>
__global__ void __launch_bounds__(cuda::kFlagThreads)
    outlier_columns_of_rows(const T* __restrict__ X, int64_t M, int64_t K, float threshold, uint8_t* __restrict__ mask,
                            int32_t* __restrict__ positions, int32_t* __restrict__ count) {
  cuda::allow_next_kernel();
  constexpr int kSpan = cuda::kFlagsPerThread;  // columns per thread and round
  constexpr int V = cuda::vec_elems<T>();      // elements per 16-byte load
  static_assert(kSpan % V == 0, "a thread's columns are whole vectors");
  const bool vector = K % V == 0 && cuda::is_aligned(X, cuda::kVecBytes);
  const bool vector_mask = cuda::is_aligned(mask, kSpan);
  const int64_t listed = cuda::scan_bits(K, positions, [&](int64_t first) {
    const int span = K - first < kSpan ? static_cast<int>(K - first) : kSpan;
    uint32_t bits = 0;
#pragma unroll 4
    for (int64_t m = 0; m < M; ++m) {  // unrolled: four rows' loads in flight at once
      const T* row = X + m * K + first;
      if (vector && span == kSpan) {
#pragma unroll
        for (int v = 0; v < kSpan / V; ++v) {
          float x[V];
          cuda::load_f32<T, V>(row + v * V, x);
#pragma unroll
          for (int i = 0; i < V; ++i) bits |= (fabsf(x[i]) >= threshold ? 1u : 0u) << (v * V + i);
        }
      } else {
        for (int i = 0; i < span; ++i) bits |= (fabsf(cuda::to_f32(row[i])) >= threshold ? 1u : 0u) << i;
      }
    }
    if (vector_mask && span == kSpan) {
      uint32_t w[4] = {};
#pragma unroll
      for (int i = 0; i < kSpan; ++i) w[i / 4] |= ((bits >> i) & 1u) << (8 * (i % 4));
      *reinterpret_cast<uint4*>(mask + first) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
      for (int i = 0; i < span; ++i) mask[first + i] = static_cast<uint8_t>((bits >> i) & 1u);
    }
    return bits;
  });
  if (threadIdx.x == 0) *count = static_cast<int32_t>(listed);
  cuda::wait_for_previous_kernel();  // done only once the quantization is: see above
}

// ---- few rows: stream B through the tensor cores (layout: int8_arith.cuh) -----------------------------
template <typename Epilogue>
__global__ void __launch_bounds__(kThreads) int8_gemm_small_m(const int8_t* __restrict__ A,
                                                              const int8_t* __restrict__ B, int64_t M, int64_t N,
                                                              int64_t K, Epilogue epilogue) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ int32_t partial[kPartialInts];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int g = lane / 4;
  const int t = lane % 4;
  const cuda::WeightRows weight(B, N, K, int64_t{blockIdx.x} * kRowsPerCta, g, t);
  const int64_t row0 = int64_t{blockIdx.x} * kRowsPerCta;
  const bool has_lo = g < M;
  const bool has_hi = g + 8 < M;
  const int8_t* a_lo = A + int64_t{g} * K + 16 * t;
  const int8_t* a_hi = A + int64_t{g + 8} * K + 16 * t;
  const int64_t groups = K / kGroup;

  // Launched to overlap the kernel that quantizes A: the first weight bytes are asked for while that one
  // finishes, A (and the epilogue's row scales) only read after it.
  weight.prefetch(warp, groups);
  cuda::wait_for_previous_kernel();

  int32_t acc[kTiles][4] = {};
  weight.multiply(warp, groups, [&](int64_t col, uint4& lo, uint4& hi) {
    const uint4 zero = make_uint4(0, 0, 0, 0);
    lo = has_lo ? __ldg(reinterpret_cast<const uint4*>(a_lo + col)) : zero;
    hi = has_hi ? __ldg(reinterpret_cast<const uint4*>(a_hi + col)) : zero;
  }, acc);

#pragma unroll
  for (int j = 0; j < kTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) partial[((warp * kTiles + j) * 4 + c) * kWarpSize + lane] = acc[j][c];
  __syncthreads();
  if (warp >= kTiles) return;
  const int j = warp;
  uint32_t sum[4] = {0, 0, 0, 0};  // modulo 2^32, as the int32 GEMMs wrap
  for (int w = 0; w < kWarps; ++w)
#pragma unroll
    for (int c = 0; c < 4; ++c) sum[c] += static_cast<uint32_t>(partial[((w * kTiles + j) * 4 + c) * kWarpSize + lane]);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t n = row0 + 8 * j + 2 * t + (c % 2);
    const int64_t m = g + 8 * (c / 2);
    if (n < N && m < M) epilogue(m, n, static_cast<int32_t>(sum[c]));
  }
#endif
}

bool small_m_eligible(const Int8MatmulParams& p, int32_t device) {
  if (p.M > kMaxSmallRows || p.K % kGroup != 0 || !cuda::is_aligned(p.A, 16) || !cuda::is_aligned(p.B, 16))
    return false;
  return cuda::compute_capability(device) >= 80;
}

// overlap: the kernel before it in the stream lets it start early (allow_next_kernel).
template <typename Epilogue>
void launch_small_m(const Int8MatmulParams& p, Epilogue epilogue, int32_t device, cudaStream_t stream,
                    bool overlap = false) {
  const int64_t ctas = (p.N + kRowsPerCta - 1) / kRowsPerCta;
  BNB_CHECK_SUPPORTED(ctas <= cuda::kMaxGridX, "N = ", p.N, " is too large for the int8 GEMV grid");
  cuda::launch_after_previous(int8_gemm_small_m<Epilogue>, static_cast<unsigned>(ctas), kThreads, stream, device,
                              overlap, p.A, p.B, p.M, p.N, p.K, epilogue);
}

// ---- any shape: shared-memory tiles ------------------------------------------------------------------
constexpr int kTile = 16;   // outputs per CTA side
constexpr int kTileK = 64;  // K columns staged per step

template <typename Epilogue>
__global__ void int8_gemm_tiled(const int8_t* __restrict__ A, const int8_t* __restrict__ B, int64_t M, int64_t N,
                                int64_t K, Epilogue epilogue) {
  __shared__ int8_t a_tile[kTile][kTileK + 4];
  __shared__ int8_t b_tile[kTile][kTileK + 4];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m = int64_t{blockIdx.y} * kTile + ty;
  const int64_t n = int64_t{blockIdx.x} * kTile + tx;
  uint32_t acc = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    // Each of the 256 threads stages 4 bytes of each tile.
    for (int i = ty * kTile + tx; i < kTile * kTileK; i += kTile * kTile) {
      const int r = i / kTileK, c = i % kTileK;
      const int64_t am = int64_t{blockIdx.y} * kTile + r, bn = int64_t{blockIdx.x} * kTile + r;
      a_tile[r][c] = (am < M && k0 + c < K) ? A[am * K + k0 + c] : int8_t{0};
      b_tile[r][c] = (bn < N && k0 + c < K) ? B[bn * K + k0 + c] : int8_t{0};
    }
    __syncthreads();
#pragma unroll 16
    for (int c = 0; c < kTileK; ++c) acc += static_cast<uint32_t>(int32_t{a_tile[ty][c]} * int32_t{b_tile[tx][c]});
    __syncthreads();
  }
  if (m < M && n < N) epilogue(m, n, static_cast<int32_t>(acc));
}

template <typename Epilogue>
void launch_tiled(const Int8MatmulParams& p, Epilogue epilogue, cudaStream_t stream) {
  const int64_t gx = (p.N + kTile - 1) / kTile, gy = (p.M + kTile - 1) / kTile;
  BNB_CHECK_SUPPORTED(gx <= cuda::kMaxGridX && gy <= 65535, "int8 product of ", p.M, " x ", p.N,
                      " is too large for the general kernel");
  int8_gemm_tiled<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(kTile, kTile), 0, stream>>>(
      p.A, p.B, p.M, p.N, p.K, epilogue);
  BNB_CUDA_CHECK_LAUNCH("int8_gemm_tiled");
}

// ---- dequantization of an int32 matrix ----------------------------------------------------------------
// Rows stride over gridDim.y and columns over the threads of gridDim.x (no index division). The
// vector kernel takes kDequantVec consecutive outputs per thread: two 16-byte loads of the int32
// matrix (read once: streamed), one vector store; the scalar kernel serves rows that are not whole
// aligned vectors. (One element per thread with a 64-bit division per element ran at a third of the
// memory bandwidth on the H100.)
constexpr int kDequantVec = 8;

template <typename Epilogue>
__global__ void int8_dequant_vector_kernel(const int32_t* __restrict__ acc, int64_t M, int64_t N, Epilogue epilogue) {
  using Out = typename Epilogue::OutType;
  const int64_t vecs = N / kDequantVec;
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
    const int32_t* row = acc + m * N;
    for (int64_t v = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; v < vecs; v += int64_t{gridDim.x} * blockDim.x) {
      const int64_t n0 = v * kDequantVec;
      const int4 lo = __ldcs(reinterpret_cast<const int4*>(row + n0));
      const int4 hi = __ldcs(reinterpret_cast<const int4*>(row + n0 + 4));
      const int32_t a[kDequantVec] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      float x[kDequantVec];
      epilogue.values(m, n0, a, x);
      cuda::store_from_f32<Out, kDequantVec, true>(epilogue.out_at(m, n0), x);
    }
  }
}

// The vector kernel for kDequantRows rows per thread (epilogues with values_rows: the outlier
// columns of int8_linear). Rows [m0, m0 + kDequantRows) go to one thread, groups stride over gridDim.y.
// On the H100 (threshold 6, M = 512, K = N = 8192, 8 outlier columns) the dequantization took 16.5 us
// with one row per thread, 13.5 us with 4; 8 rows per thread measured slower than 4.
constexpr int kDequantRows = 4;

template <typename Epilogue>
__global__ void int8_dequant_rows_kernel(const int32_t* __restrict__ acc, int64_t M, int64_t N, Epilogue epilogue) {
  using Out = typename Epilogue::OutType;
  constexpr int R = kDequantRows, V = kDequantVec;
  const int64_t vecs = N / V;
  for (int64_t m0 = int64_t{blockIdx.y} * R; m0 < M; m0 += int64_t{gridDim.y} * R) {
    const int rows = static_cast<int>(std::min<int64_t>(R, M - m0));
    for (int64_t v = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; v < vecs; v += int64_t{gridDim.x} * blockDim.x) {
      const int64_t n0 = v * V;
      int32_t a[R][V];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        int4 lo{}, hi{};
        if (r < rows) {
          lo = __ldcs(reinterpret_cast<const int4*>(acc + (m0 + r) * N + n0));
          hi = __ldcs(reinterpret_cast<const int4*>(acc + (m0 + r) * N + n0 + 4));
        }
        const int32_t row[V] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int i = 0; i < V; ++i) a[r][i] = row[i];
      }
      float x[R][V];
      epilogue.template values_rows<V, R>(m0, rows, n0, a, x);
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r < rows) cuda::store_from_f32<Out, V, true>(epilogue.out_at(m0 + r, n0), x[r]);
    }
  }
}

template <typename Epilogue>
__global__ void int8_dequant_kernel(const int32_t* __restrict__ acc, int64_t M, int64_t N, Epilogue epilogue) {
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y)
    for (int64_t n = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; n < N; n += int64_t{gridDim.x} * blockDim.x)
      epilogue(m, n, acc[m * N + n]);
}

// Runs body(epilogue) with the dequantizing epilogue for p's output and bias dtypes.
template <typename Body>
void with_dequant_epilogue(const Int8DequantParams& p, Body body) {
  dispatch_float<cuda::CudaType>(p.out_dtype, "out", [&](auto out_tag) {
    using Out = typename decltype(out_tag)::type;
    if (p.bias == nullptr) {
      body(StoreDequant<Out, float>{p.row_stats, p.col_stats, nullptr, static_cast<Out*>(p.out), p.N});
      return;
    }
    dispatch_float<cuda::CudaType>(p.bias_dtype, "bias", [&](auto bias_tag) {
      using Bias = typename decltype(bias_tag)::type;
      body(StoreDequant<Out, Bias>{p.row_stats, p.col_stats, static_cast<const Bias*>(p.bias),
                                   static_cast<Out*>(p.out), p.N});
    });
  });
}

constexpr int kElementwiseThreads = 256;

template <typename Epilogue>
void launch_dequant(const int32_t* acc, int64_t M, int64_t N, Epilogue epilogue, int32_t device, cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  using Out = typename Epilogue::OutType;
  // Every row starts on a whole vector when N is a multiple of it and both bases are aligned for it.
  const bool vectors = N % kDequantVec == 0 && cuda::is_aligned(acc, 16) &&
                       cuda::is_aligned(epilogue.out, sizeof(Out) * kDequantVec);
  const int64_t per_row = vectors ? N / kDequantVec : N;
  const int64_t x_blocks = std::min<int64_t>((per_row + kElementwiseThreads - 1) / kElementwiseThreads, 65535);
  // About 16 CTAs per SM in all; rows beyond gridDim.y are strided.
  const int64_t y_blocks = std::max<int64_t>(1, std::min<int64_t>({M, 65535, int64_t{cuda::sm_count(device)} * 16 / x_blocks}));
  const dim3 grid(static_cast<unsigned>(x_blocks), static_cast<unsigned>(y_blocks));
  if constexpr (Epilogue::kRowValues) {
    // Row groups pay off when there are outlier columns to add (values_rows reads them once per group).
    if (vectors && epilogue.outliers.count != nullptr) {
      const dim3 groups(grid.x, static_cast<unsigned>(std::min<int64_t>(grid.y, (M + kDequantRows - 1) / kDequantRows)));
      int8_dequant_rows_kernel<<<groups, kElementwiseThreads, 0, stream>>>(acc, M, N, epilogue);
      BNB_CUDA_CHECK_LAUNCH("int8_dequant_rows_kernel");
      return;
    }
  }
  if (vectors) {
    int8_dequant_vector_kernel<<<grid, kElementwiseThreads, 0, stream>>>(acc, M, N, epilogue);
  } else {
    int8_dequant_kernel<<<grid, kElementwiseThreads, 0, stream>>>(acc, M, N, epilogue);
  }
  BNB_CUDA_CHECK_LAUNCH("int8_dequant_kernel");
}

// int32 product into p.out by the best path for its shape.
void int32_product(const Int8MatmulParams& p, int32_t device, cudaStream_t stream) {
  if (small_m_eligible(p, device)) return launch_small_m(p, StoreInt32{p.out, p.N}, device, stream);
  if (cuda::int8_product_cublaslt(p, device, stream)) return;
  launch_tiled(p, StoreInt32{p.out, p.N}, stream);
}

constexpr size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

void int8_linear(const Int8LinearParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  const cudaStream_t s = cuda::as_cuda(stream);
  if (int8_linear_one_row(p, device, s)) return;  // one row: one kernel, no scratch
  const bool outliers = p.threshold > 0.0f;
  // One scratch block: CA [M, K], SCA [M], and with outliers: mask [K], indices [K] + count, the packed
  // outlier arrays coef [M, kPackedOutliers] (float) and cb [kPackedOutliers, N].
  const size_t ca_bytes = align_up(static_cast<size_t>(p.M * p.K)), sca_bytes = align_up(sizeof(float) * p.M);
  const size_t mask_bytes = outliers ? align_up(static_cast<size_t>(p.K)) : 0;
  const size_t index_bytes = outliers ? align_up(sizeof(int32_t) * (p.K + 1)) : 0;
  const size_t packed_row_bytes = outliers ? align_up(sizeof(float) * p.M * kPackedOutliers) : 0;
  const size_t packed_cb_bytes = outliers ? align_up(static_cast<size_t>(p.N) * kPackedOutliers) : 0;
  const cuda::Scratch scratch(ca_bytes + sca_bytes + mask_bytes + index_bytes + packed_row_bytes + packed_cb_bytes,
                             device, s);
  char* next = scratch.get();
  auto take = [&](size_t bytes) {
    char* at = next;
    next += bytes;
    return at;
  };
  int8_t* CA = reinterpret_cast<int8_t*>(take(ca_bytes));
  float* SCA = reinterpret_cast<float*>(take(sca_bytes));
  uint8_t* mask = outliers ? reinterpret_cast<uint8_t*>(take(mask_bytes)) : nullptr;
  if (p.outlier_mask) mask = p.outlier_mask;  // the caller keeps the outlier columns
  int32_t* indices = outliers ? reinterpret_cast<int32_t*>(take(index_bytes)) : nullptr;
  Outliers packed{};
  if (outliers) {
    packed = {indices + p.K, indices, reinterpret_cast<float*>(take(packed_row_bytes)),
              reinterpret_cast<int8_t*>(take(packed_cb_bytes))};
  }

  Int8MatmulParams mm{CA, p.CB, nullptr, p.M, p.N, p.K};
  const bool few_rows = small_m_eligible(mm, device);
  // Up to kRowsScannedForOutliers rows take their outlier columns from X itself (one CTA reads X:
  // outlier_columns_of_rows), so the quantization writes no mask and the mask needs no clearing first,
  // one operation less in the chain. H100, K = N = 8192, threshold 6, on the GPU: M = 1 35.7 -> 32.7 us
  // (one row now takes int8_linear_one_row unless it declines); at M = 16 the one CTA's reading of X
  // costs more than it saves (38.5 -> 43.5 us).
  const bool own_columns = outliers && few_rows && p.M <= kRowsScannedForOutliers;
  backend::int8_vectorwise_quant({p.X, CA, SCA, own_columns ? nullptr : mask, p.M, p.K, p.threshold, p.x_dtype},
                                 device, stream);
  dispatch_float<cuda::CudaType>(p.x_dtype, "X", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* X = static_cast<const T*>(p.X);
    // Packs the listed outlier columns (coefficients per row, CB at those columns) on `on`.
    auto pack = [&](cudaStream_t on) {
      const int64_t work = (p.M + p.N) * kPackedOutliers;
      const unsigned grid = cuda::grid_for((work + 255) / 256, int64_t{cuda::sm_count(device)} * 4);
      cuda::launch_after_previous(pack_outliers<T>, grid, 256, on, device, true, X, CA, SCA, p.CB, p.M, p.N, p.K,
                                  packed.count, packed.cols, const_cast<float*>(packed.coef),
                                  const_cast<int8_t*>(packed.cb));
    };
    // Lists the flagged outlier columns of the mask and packs them on `on`.
    auto list_and_pack = [&](cudaStream_t on, bool overlap) {
      cuda::launch_after_previous(cuda::list_flags_kernel<int32_t>, 1u, cuda::kFlagThreads, on, device, overlap, mask,
                                  p.K, indices, indices + p.K);
      pack(on);
    };
    const StoreLinear<T> epilogue{SCA, p.SCB, static_cast<const T*>(p.bias), static_cast<T*>(p.out), p.N, p.K,
                                  X, CA, p.CB, packed};
    if (few_rows) {
      // Each kernel of the chain (quantize, list the outlier columns, pack them, multiply) lets the next
      // one start early and waits for its predecessor's results: the launches overlap (few-row calls
      // are a handful of microseconds each).
      if (own_columns) {
        cuda::launch_after_previous(outlier_columns_of_rows<T>, 1u, cuda::kFlagThreads, s, device, true, X, p.M, p.K,
                                    p.threshold, mask, indices, indices + p.K);
        pack(s);
      } else if (outliers) {
        list_and_pack(s, true);
      }
      return launch_small_m(mm, epilogue, device, s, /*overlap=*/true);
    }
    // Many rows on Hopper: one kernel multiplies and dequantizes, adding the outlier columns (listed
    // and packed first: the chain overlaps through programmatic dependent launch).
    const Int8DequantParams dq{SCA, p.SCB, p.bias, p.x_dtype, p.out, p.x_dtype, p.M, p.N};
    if (int8_gemm_dequant_sm90_serves(mm, dq, device)) {
      if (!outliers) return int8_gemm_dequant_sm90(mm, dq, device, s, /*overlap=*/true);
      list_and_pack(s, true);
      const Int8LinearOutliers columns{packed, p.X};
      return int8_gemm_dequant_sm90(mm, dq, device, s, /*overlap=*/true, &columns);
    }
    // Many rows: the outlier columns are listed and packed on a side stream while the GEMM runs (it
    // needs only CA); the dequantization, which reads them, waits for both.
    const cuda::Scratch acc(align_up(sizeof(int32_t) * p.M * p.N), device, s);
    mm.out = reinterpret_cast<int32_t*>(acc.get());
    // The side stream forks here (after the quantization) but its kernels are launched after the GEMM,
    // so that the GEMM's CTAs take the SMs first and the small side kernels fill what it leaves.
    std::optional<cuda::SideStream> side;
    if (outliers) side.emplace(device, s);
    int32_product(mm, device, s);
    if (side) {
      list_and_pack(side->get(), false);
      side->join();
    }
    launch_dequant(mm.out, p.M, p.N, epilogue, device, s);
  });
}

void int8_linear_matmul(const Int8MatmulParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  int32_product(p, device, cuda::as_cuda(stream));
}

void int8_mm_dequant(const int32_t* acc, const Int8DequantParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  with_dequant_epilogue(p, [&](auto epilogue) {
    launch_dequant(acc, p.M, p.N, epilogue, device, cuda::as_cuda(stream));
  });
}

void int8_scaled_mm(const Int8MatmulParams& mm, const Int8DequantParams& dq, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  const cudaStream_t s = cuda::as_cuda(stream);
  if (small_m_eligible(mm, device)) {
    with_dequant_epilogue(dq, [&](auto epilogue) { launch_small_m(mm, epilogue, device, s); });
    return;
  }
  if (int8_gemm_dequant_sm90_serves(mm, dq, device)) return int8_gemm_dequant_sm90(mm, dq, device, s, false);
  // Many rows: the int32 product in a stream-ordered scratch buffer, then the dequantization.
  const cuda::Scratch acc(sizeof(int32_t) * mm.M * mm.N, device, s);
  Int8MatmulParams p = mm;
  p.out = acc.as<int32_t>();
  int32_product(p, device, s);
  with_dequant_epilogue(dq, [&](auto epilogue) { launch_dequant(p.out, mm.M, mm.N, epilogue, device, s); });
}

}  // namespace bnb::backend

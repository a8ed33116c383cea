// LLM.int8() quantization of a row-major [rows, cols] matrix.
//
// Row-wise (int8_vectorwise_quant): a group of R threads owns one row (R = one warp for short rows,
// the whole CTA otherwise). The row is read once into registers (up to kCacheVecs vectors per
// thread; longer rows are re-read for the second pass, mostly from L2), its absmax over the
// non-outliers is reduced across the group, then every element becomes
// rint(x * int8_scale(absmax)) or 0 for an outlier (|x| >= threshold), exactly as the CPU reference.
// The absmax is a maximum of bit patterns, which keeps a NaN: a row holding one (or, threshold 0, an
// infinity) gets row_stats NaN (one pattern, stored_absmax) or inf, and all-zero codes.
// Outlier columns are flagged by plain byte stores of the call's flag value (concurrent writers
// store the same value) into a mask the launcher clears on the stream first, unless the caller
// passed a tag (Int8VectorwiseQuantParams::flag_tag: then entries of earlier calls hold other values).
// Outliers are rare: a packet tests all its elements without branching and only a packet holding
// one goes back to store its flags, each store skipped when the flag already holds the value (a
// column with outliers in every row would otherwise take one store per row at the same address).
//
//   R = 32  (cols <= kWarpRowMaxElems):  warp w of a CTA -> row  blockIdx * 8 + w
//   R = 256 (longer rows):                the CTA         -> row  blockIdx
//   thread t of the group reads vectors t, t + R, t + 2R, ...   (coalesced 16-byte loads)
//
// Column-wise (int8_colwise_quant): one pass reduces column maxima into col_stats with atomicMax on
// the float bits (valid for non-negative floats, NaN patterns included), a second pass quantizes.
#include <algorithm>

#include "core/backend.h"
#include "core/formats.h"
#include "cuda/common.cuh"
#include "cuda/int8_arith.cuh"
#include "cuda/list_flags.cuh"

namespace bnb::cuda {
namespace {

constexpr int kRowThreads = 256;  // threads per CTA of the row-wise kernel
constexpr int kCacheVecs = 4;     // vectors of a row kept in registers per thread (4 x 16 bytes)
constexpr int kColThreads = 256;  // columns per CTA of the column-wise kernels
constexpr int kColSlabRows = 64;  // rows one thread scans before its atomicMax
constexpr int64_t kMaxGridY = 65535;


// Max |x| over the non-outliers of V elements, as bit patterns (bnb::magnitude_bits): an integer
// maximum keeps a NaN, which is never an outlier (it compares false with the threshold), where
// fmaxf would drop it. Flags the columns of outliers when kOutliers.
template <bool kOutliers, int V>
__device__ __forceinline__ uint32_t packet_absmax_bits(const float (&x)[V], uint32_t amax, float threshold,
                                                       uint8_t* __restrict__ outlier_cols, uint8_t flag,
                                                       int64_t col) {
  bool any = false;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const float a = fabsf(x[i]);
    const bool outlier = kOutliers && a >= threshold;
    any |= outlier;
    amax = max(amax, outlier ? 0u : __float_as_uint(a));  // amax >= 0, so an outlier leaves it as it is
  }
  if (kOutliers && any && outlier_cols != nullptr) {  // null: the caller takes the columns from A itself
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (fabsf(x[i]) >= threshold && outlier_cols[col + i] != flag) outlier_cols[col + i] = flag;
  }
  return amax;
}

template <bool kOutliers, int V>
__device__ __forceinline__ void quantize_packet(const float (&x)[V], float scale, float threshold, int8_t* dst) {
  Packet<int8_t, V> q;
#pragma unroll
  for (int i = 0; i < V; ++i)
    q.v[i] = quantize_int8<kOutliers>(x[i], scale, threshold);
  *reinterpret_cast<Packet<int8_t, V>*>(dst) = q;
}

// T: input type; R: threads per row (32 or kRowThreads); V: elements per access (16-byte vector,
// or 1 when rows are not vector-aligned); kOutliers: threshold > 0.
template <typename T, int R, int V, bool kOutliers>
__global__ void __launch_bounds__(kRowThreads) int8_vectorwise_kernel(Int8VectorwiseQuantParams p) {
  allow_next_kernel();  // the int8 product after it may be scheduled now (it waits for these rows)
  constexpr int kRowsPerCta = kRowThreads / R;
  constexpr int kWarps = kRowThreads / kWarpSize;
  __shared__ uint32_t warp_max[2][kWarps];  // R = kRowThreads only; double-buffered by row parity

  const T* __restrict__ A = static_cast<const T*>(p.A);
  const uint8_t flag = p.flag_value();
  const int t = threadIdx.x % R;
  const int64_t nvec = p.cols / V;
  int parity = 0;
  // Trip count is uniform over the CTA (rows are visited in CTA-sized steps), so the barrier of the
  // R = kRowThreads reduction is reached by every thread.
  for (int64_t base = int64_t{blockIdx.x} * kRowsPerCta; base < p.rows;
       base += int64_t{gridDim.x} * kRowsPerCta, parity ^= 1) {
    const int64_t row = base + threadIdx.x / R;
    const bool active = row < p.rows;
    const T* src = A + row * p.cols;
    int8_t* dst = p.out + row * p.cols;

    using Raw = RawVec<T, V>;
    typename Raw::type cache[kCacheVecs];
#pragma unroll
    for (int c = 0; c < kCacheVecs; ++c) {
      const int64_t v = int64_t{c} * R + t;
      if (active && v < nvec) cache[c] = Raw::load(src + v * V);
    }
    uint32_t amax = 0;  // bit pattern of the absmax so far (packet_absmax_bits)
#pragma unroll
    for (int c = 0; c < kCacheVecs; ++c) {
      const int64_t v = int64_t{c} * R + t;
      if (active && v < nvec) {
        float x[V];
        Raw::unpack(cache[c], x);
        amax = packet_absmax_bits<kOutliers, V>(x, amax, p.threshold, p.outlier_cols, flag, v * V);
      }
    }
    for (int64_t v = int64_t{kCacheVecs} * R + t; active && v < nvec; v += R) {
      float x[V];
      load_f32<T, V>(src + v * V, x);
      amax = packet_absmax_bits<kOutliers, V>(x, amax, p.threshold, p.outlier_cols, flag, v * V);
    }

    if constexpr (R == kRowThreads) {
      amax = group_max_bits<kWarpSize>(amax);
      if (threadIdx.x % kWarpSize == 0) warp_max[parity][threadIdx.x / kWarpSize] = amax;
      __syncthreads();
      amax = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) amax = max(amax, warp_max[parity][w]);
    } else {
      amax = group_max_bits<R>(amax);
    }
    if (!active) continue;
    const float absmax = __uint_as_float(amax);
    if (t == 0) p.row_stats[row] = stored_absmax(absmax);

    // A row holding NaN (or, threshold 0, inf) has no finite scale: all its codes are 0, stored as
    // such rather than left to __float2int_rn(NaN * 0), whose result CUDA does not specify.
    if (!is_finite(absmax)) {
      int8_t* d = dst + int64_t{t} * V;  // a walking pointer: dst + v * V per store spilled in one instance
      for (int64_t v = t; v < nvec; v += R, d += R * V) *reinterpret_cast<Packet<int8_t, V>*>(d) = Packet<int8_t, V>{};
      continue;
    }
    const float scale = int8_scale(absmax);
#pragma unroll
    for (int c = 0; c < kCacheVecs; ++c) {
      const int64_t v = int64_t{c} * R + t;
      if (v < nvec) {
        float x[V];
        Raw::unpack(cache[c], x);
        quantize_packet<kOutliers, V>(x, scale, p.threshold, dst + v * V);
      }
    }
    for (int64_t v = int64_t{kCacheVecs} * R + t; v < nvec; v += R) {
      float x[V];
      load_f32<T, V>(src + v * V, x);
      quantize_packet<kOutliers, V>(x, scale, p.threshold, dst + v * V);
    }
  }
}

// col_stats[c] = max over a slab of rows of |A[r, c]| for non-outliers, merged with atomicMax. As in
// the row-wise kernel the maximum is taken over bit patterns, so a NaN is kept; every slab hands over
// the one NaN pattern of stored_absmax, so the column's maximum over slabs is that pattern too.
// Only non-negative patterns reach atomicMax, which therefore orders them like their values.
template <typename T>
__global__ void __launch_bounds__(kColThreads) int8_col_absmax_kernel(Int8ColwiseQuantParams p) {
  const T* __restrict__ A = static_cast<const T*>(p.A);
  const bool outliers = p.threshold > 0.0f;
  for (int64_t col = int64_t{blockIdx.x} * kColThreads + threadIdx.x; col < p.cols;
       col += int64_t{gridDim.x} * kColThreads) {
    for (int64_t r0 = int64_t{blockIdx.y} * kColSlabRows; r0 < p.rows; r0 += int64_t{gridDim.y} * kColSlabRows) {
      const int64_t r1 = r0 + kColSlabRows < p.rows ? r0 + kColSlabRows : p.rows;
      uint32_t m = 0;
      for (int64_t r = r0; r < r1; ++r) {
        const float a = fabsf(to_f32(A[r * p.cols + col]));
        if (!(outliers && a >= p.threshold)) m = max(m, __float_as_uint(a));
      }
      atomicMax(reinterpret_cast<int*>(p.col_stats + col), __float_as_int(stored_absmax(__uint_as_float(m))));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kColThreads) int8_col_quantize_kernel(Int8ColwiseQuantParams p) {
  const T* __restrict__ A = static_cast<const T*>(p.A);
  const bool outliers = p.threshold > 0.0f;
  for (int64_t col = int64_t{blockIdx.x} * kColThreads + threadIdx.x; col < p.cols;
       col += int64_t{gridDim.x} * kColThreads) {
    const float absmax = p.col_stats[col];
    const bool finite = is_finite(absmax);  // else every code of the column is 0, as in the row-wise kernel
    const float scale = int8_scale(absmax);
    for (int64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
      const float x = to_f32(A[r * p.cols + col]);
      p.out[r * p.cols + col] =
          (!finite || (outliers && fabsf(x) >= p.threshold)) ? int8_t{0} : round_to_int8(x * scale);
    }
  }
}

// The outlier columns of a flag mask (flags equal to tag): CTA 0 lists them (and stores their count in *count, a mapped
// host word); when out is not null, every CTA zeroes those columns in its share of the rows, each
// thread the flagged ones among its 16 columns (no list needed, so no second kernel).
__global__ void __launch_bounds__(kFlagThreads)
    outlier_columns_kernel(const uint8_t* __restrict__ flags, uint8_t tag, int64_t rows, int64_t cols,
                           int8_t* __restrict__ out, int64_t* __restrict__ columns, int64_t* count) {
  const int64_t rows_per_cta = (rows + gridDim.x - 1) / gridDim.x;
  const int64_t r0 = int64_t{blockIdx.x} * rows_per_cta;
  const int64_t r1 = min(rows, r0 + rows_per_cta);
  const auto zero_rows = [&](int64_t first, uint32_t bits) {
    if (out == nullptr) return;
    for (uint32_t rest = bits; rest != 0; rest &= rest - 1) {
      const int64_t c = first + __ffs(rest) - 1;
      for (int64_t r = r0; r < r1; ++r) out[r * cols + c] = 0;
    }
  };
  const int64_t listed = scan_flags(flags, tag, cols, blockIdx.x == 0 ? columns : nullptr, zero_rows);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *static_cast<volatile int64_t*>(count) = listed;
    __threadfence_system();  // on its way to the host now, not when the kernel ends
  }
}

// Waits until a kernel queued on `stream` has stored a value >= 0 into the mapped host word and
// returns it. The stream is queried every kSpinsPerQuery reads, so a failed kernel (or one that
// never stores) ends in an error, never a hang.
constexpr int kSpinsPerQuery = 1000;
int64_t wait_for_host_word(volatile int64_t* word, cudaStream_t stream) {
  for (;;) {
    for (int spin = 0; spin < kSpinsPerQuery; ++spin) {
      const int64_t value = *word;
      if (value >= 0) return value;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
    }
    const cudaError_t state = cudaStreamQuery(stream);
    if (state == cudaErrorNotReady) continue;
    if (state != cudaSuccess) throw_cuda_error(state, "cudaStreamQuery", __FILE__, __LINE__);
    const int64_t value = *word;  // the stream is idle: every store of its kernels has landed
    if (value >= 0) return value;
    fail(BNB_STATUS_INTERNAL, "outlier_columns_kernel finished without storing the outlier count");
  }
}

template <typename T, int R, int V, bool kOutliers>
void launch_rows(const Int8VectorwiseQuantParams& p, int32_t device, cudaStream_t stream) {
  constexpr auto kernel = int8_vectorwise_kernel<T, R, V, kOutliers>;
  constexpr int kRowsPerCta = kRowThreads / R;
  const int64_t ctas = (p.rows + kRowsPerCta - 1) / kRowsPerCta;
  const unsigned grid = grid_for(ctas, resident_ctas<kernel>(device, kRowThreads));
  kernel<<<grid, kRowThreads, 0, stream>>>(p);
  BNB_CUDA_CHECK_LAUNCH("int8_vectorwise_kernel");
}

template <typename T, int V, bool kOutliers>
void launch_rows_for(const Int8VectorwiseQuantParams& p, int32_t device, cudaStream_t stream) {
  // A warp covers a row from registers up to this length; longer rows take the whole CTA.
  constexpr int64_t kWarpRowMaxElems = int64_t{kWarpSize} * kCacheVecs * V;
  if (p.cols <= kWarpRowMaxElems) launch_rows<T, kWarpSize, V, kOutliers>(p, device, stream);
  else launch_rows<T, kRowThreads, V, kOutliers>(p, device, stream);
}

template <typename T>
void launch_int8_vectorwise(const Int8VectorwiseQuantParams& p, int32_t device, cudaStream_t stream) {
  if (p.outlier_cols && p.flag_tag == 0)
    BNB_CUDA_CHECK(cudaMemsetAsync(p.outlier_cols, 0, static_cast<size_t>(p.cols), stream));
  if (p.cols == 0) {
    BNB_CUDA_CHECK(cudaMemsetAsync(p.row_stats, 0, static_cast<size_t>(p.rows) * sizeof(float), stream));
    return;
  }
  constexpr int V = vec_elems<T>();
  const bool vector_ok = p.cols % V == 0 && is_aligned(p.A, kVecBytes) && is_aligned(p.out, V);
  const bool outliers = p.threshold > 0.0f;
  if (vector_ok) {
    if (outliers) launch_rows_for<T, V, true>(p, device, stream);
    else launch_rows_for<T, V, false>(p, device, stream);
  } else {
    if (outliers) launch_rows_for<T, 1, true>(p, device, stream);
    else launch_rows_for<T, 1, false>(p, device, stream);
  }
}

template <typename T>
void launch_int8_colwise(const Int8ColwiseQuantParams& p, int32_t device, cudaStream_t stream) {
  BNB_CUDA_CHECK(cudaMemsetAsync(p.col_stats, 0, static_cast<size_t>(p.cols) * sizeof(float), stream));
  if (p.rows == 0) return;
  const int64_t col_ctas = (p.cols + kColThreads - 1) / kColThreads;
  {
    constexpr auto kernel = int8_col_absmax_kernel<T>;
    const int64_t resident = resident_ctas<kernel>(device, kColThreads);
    const unsigned gx = grid_for(col_ctas, resident);
    const int64_t slabs = (p.rows + kColSlabRows - 1) / kColSlabRows;
    const int64_t gy = std::min<int64_t>({slabs, kMaxGridY, std::max<int64_t>(1, resident / gx)});
    kernel<<<dim3(gx, static_cast<unsigned>(gy)), kColThreads, 0, stream>>>(p);
    BNB_CUDA_CHECK_LAUNCH("int8_col_absmax_kernel");
  }
  {
    constexpr auto kernel = int8_col_quantize_kernel<T>;
    const int64_t resident = resident_ctas<kernel>(device, kColThreads);
    const unsigned gx = grid_for(col_ctas, resident);
    const int64_t gy = std::min<int64_t>({p.rows, kMaxGridY, std::max<int64_t>(1, resident / gx)});
    kernel<<<dim3(gx, static_cast<unsigned>(gy)), kColThreads, 0, stream>>>(p);
    BNB_CUDA_CHECK_LAUNCH("int8_col_quantize_kernel");
  }
}

}  // namespace
}  // namespace bnb::cuda

namespace bnb::backend {

void int8_vectorwise_quant(const Int8VectorwiseQuantParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  dispatch_float<cuda::CudaType>(p.a_dtype, "A", [&](auto tag) {
    cuda::launch_int8_vectorwise<typename decltype(tag)::type>(p, device, cuda::as_cuda(stream));
  });
}

int64_t int8_outlier_columns(const uint8_t* flags, uint8_t tag, int64_t rows, int64_t cols, int8_t* out,
                             int64_t* columns, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  const cudaStream_t s = cuda::as_cuda(stream);
  // The host needs the count, so it must wait: not possible while the stream is being captured.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  BNB_CUDA_CHECK(cudaStreamIsCapturing(s, &capture));
  if (capture != cudaStreamCaptureStatusNone)
    fail(BNB_STATUS_UNSUPPORTED, "the outlier columns of int8_vectorwise_quant (threshold > 0) are counted on the ",
         "host, which cannot wait inside CUDA graph capture; use threshold=0 in captured code");
  // One pinned, device-mapped word per thread: CTA 0 stores the count straight into host memory,
  // and the host watches that word instead of synchronising the stream. It returns as soon as the
  // count lands (the zeroing of the columns goes on, stream-ordered before anything queued later),
  // and skips the driver's wake-up latency, which measured several microseconds per call.
  thread_local int64_t* word = nullptr;
  thread_local int64_t* word_on_device = nullptr;
  if (word == nullptr) {
    int64_t* host = nullptr;
    BNB_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(int64_t),
                                 cudaHostAllocMapped | cudaHostAllocPortable));
    void* mapped = nullptr;
    const cudaError_t err = cudaHostGetDevicePointer(&mapped, host, 0);
    if (err != cudaSuccess) {
      cudaFreeHost(host);
      cuda::throw_cuda_error(err, "cudaHostGetDevicePointer", __FILE__, __LINE__);
    }
    word = host;
    word_on_device = static_cast<int64_t*>(mapped);
  }
  volatile int64_t* const count = word;
  *count = -1;  // not written yet
  // One CTA when nothing is zeroed; with a matrix, CTAs enough to spread its rows over the device.
  constexpr auto kernel = cuda::outlier_columns_kernel;
  const unsigned grid = out == nullptr ? 1u : cuda::grid_for(rows, cuda::resident_ctas<kernel>(device, cuda::kFlagThreads));
  kernel<<<grid, cuda::kFlagThreads, 0, s>>>(flags, tag, rows, cols, out, columns, word_on_device);
  BNB_CUDA_CHECK_LAUNCH("outlier_columns_kernel");
  return cuda::wait_for_host_word(count, s);
}

void int8_colwise_quant(const Int8ColwiseQuantParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  dispatch_float<cuda::CudaType>(p.a_dtype, "A", [&](auto tag) {
    cuda::launch_int8_colwise<typename decltype(tag)::type>(p, device, cuda::as_cuda(stream));
  });
}

}  // namespace bnb::backend

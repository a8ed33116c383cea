// 256 quantiles of A by exact sorting, the same definition as the CPU backend:
//   prob_k = offset + k * (1 - 2 offset) / 255,  pos = prob_k * (n - 1),
//   out[k] = v[floor(pos)] + (v[min(floor(pos) + 1, n - 1)] - v[floor(pos)]) * frac(pos)
// in double precision, then cast to float. Steps, all on the caller's stream with stream-ordered
// scratch memory (no host synchronisation): widen A to float32, radix-sort (CUB), interpolate.
#include <cub/device/device_radix_sort.cuh>

#include "core/backend.h"
#include "cuda/common.cuh"
#include "cuda/scratch.cuh"

namespace bnb::cuda {
namespace {

constexpr int kWidenThreads = 256;
constexpr int kScratchAlign = 256;  // keeps each scratch region aligned for CUB's vector accesses

template <typename T>
__global__ void __launch_bounds__(kWidenThreads) widen_kernel(const T* __restrict__ in, float* __restrict__ out, int64_t n) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    out[i] = to_f32(in[i]);
}

// One thread per quantile. The explicit _rn intrinsics keep every operation separately rounded
// (no fused multiply-add), as the host computation is.
__global__ void __launch_bounds__(kNumQuantiles)
    interpolate_quantiles_kernel(const float* __restrict__ sorted, int64_t n, float offset, float* __restrict__ out) {
  const int k = threadIdx.x;
  if (k >= kNumQuantiles) return;
  const double off = offset;
  const double span = __dadd_rn(1.0, -__dmul_rn(2.0, off));
  const double prob = __dadd_rn(off, __ddiv_rn(__dmul_rn(static_cast<double>(k), span), kNumQuantiles - 1));
  const double pos = __dmul_rn(prob, static_cast<double>(n - 1));
  const int64_t i = static_cast<int64_t>(floor(pos));
  const double frac = __dadd_rn(pos, -static_cast<double>(i));
  const double lo = sorted[i];
  const double hi = sorted[i + 1 < n ? i + 1 : n - 1];
  out[k] = static_cast<float>(__dadd_rn(lo, __dmul_rn(__dadd_rn(hi, -lo), frac)));
}

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

template <typename T>
void launch_estimate_quantiles(const EstimateQuantilesParams& p, int32_t device, cudaStream_t stream) {
  size_t sort_bytes = 0;
  BNB_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, static_cast<const float*>(nullptr),
                                                static_cast<float*>(nullptr), p.n, 0, 8 * sizeof(float), stream));
  const size_t keys_bytes = round_up(static_cast<size_t>(p.n) * sizeof(float), kScratchAlign);
  const Scratch scratch(2 * keys_bytes + sort_bytes, device, stream);  // freed even when a step fails to launch
  float* keys_in = scratch.as<float>();
  float* keys_out = reinterpret_cast<float*>(scratch.get() + keys_bytes);
  void* sort_tmp = scratch.get() + 2 * keys_bytes;

  constexpr auto widen = widen_kernel<T>;
  const unsigned grid = grid_for((p.n + kWidenThreads - 1) / kWidenThreads, resident_ctas<widen>(device, kWidenThreads));
  widen<<<grid, kWidenThreads, 0, stream>>>(static_cast<const T*>(p.A), keys_in, p.n);
  BNB_CUDA_CHECK_LAUNCH("widen_kernel");
  BNB_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(sort_tmp, sort_bytes, keys_in, keys_out, p.n, 0, 8 * sizeof(float), stream));
  interpolate_quantiles_kernel<<<1, kNumQuantiles, 0, stream>>>(keys_out, p.n, p.offset, p.out);
  BNB_CUDA_CHECK_LAUNCH("interpolate_quantiles_kernel");
}

}  // namespace
}  // namespace bnb::cuda

namespace bnb::backend {

void estimate_quantiles(const EstimateQuantilesParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  dispatch_float<cuda::CudaType>(p.a_dtype, "A", [&](auto tag) {
    cuda::launch_estimate_quantiles<typename decltype(tag)::type>(p, device, cuda::as_cuda(stream));
  });
}

}  // namespace bnb::backend

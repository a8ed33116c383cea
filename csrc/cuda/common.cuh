// Shared pieces of the CUDA backend: dtype traits for bnb::dispatch_float, 16-byte vector
// loads and their conversion to float, error checking that throws bnb::Error, the device guard
// and the launch-geometry helpers. Nothing here synchronises the host with the device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "bnb/bnb.h"
#include "core/dispatch.h"
#include "core/error.h"

namespace bnb::cuda {

// ---- errors ------------------------------------------------------------------------------------------
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  // A failed runtime call also leaves its (non-sticky) error as the "last error": clear it, or the next
  // launch check would report it against an unrelated kernel.
  (void)cudaGetLastError();
  // Out of memory has its own status: the caller may free cached memory and try again.
  if (err == cudaErrorMemoryAllocation)
    fail(BNB_STATUS_OUT_OF_MEMORY, "CUDA out of memory. ", call, " at ", file, ":", line);
  fail(BNB_STATUS_DEVICE_ERROR, "CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in ", call,
       " at ", file, ":", line);
}

}  // namespace bnb::cuda

// Any runtime call whose failure must surface as BNB_STATUS_DEVICE_ERROR (BNB_STATUS_OUT_OF_MEMORY
// when the runtime ran out of memory).
#define BNB_CUDA_CHECK(call)                                                            \
  do {                                                                                  \
    const cudaError_t bnb_err_ = (call);                                                \
    if (bnb_err_ != cudaSuccess) ::bnb::cuda::throw_cuda_error(bnb_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After every <<<>>>: a launch failure (bad geometry, missing image) is reported here; errors
// raised while the kernel runs surface at the caller's next synchronising call.
#define BNB_CUDA_CHECK_LAUNCH(kernel_name)                                                      \
  do {                                                                                          \
    const cudaError_t bnb_err_ = cudaGetLastError();                                            \
    if (bnb_err_ != cudaSuccess) ::bnb::cuda::throw_cuda_error(bnb_err_, "launch of " kernel_name, __FILE__, __LINE__); \
  } while (0)

namespace bnb::cuda {

// ---- device selection --------------------------------------------------------------------------------
// The current device is the calling thread's driver context, which this library's (static) runtime shares
// with torch's and every other runtime in the process. An op makes its device current for its own scope
// and gives the caller's back afterwards, as torch's device guards do: a call on cuda:1 neither launches
// on whatever device torch last selected nor leaves cuda:1 selected for the torch code after it.
class DeviceGuard {
 public:
  explicit DeviceGuard(int32_t device) {
    BNB_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      BNB_CUDA_CHECK(cudaSetDevice(device));
      restore_ = true;
    }
  }
  ~DeviceGuard() {
    if (restore_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

inline cudaStream_t as_cuda(bnb_stream_t stream) { return static_cast<cudaStream_t>(stream); }

// ---- dtype traits ------------------------------------------------------------------------------------
template <bnb_dtype_t D>
struct CudaType;
template <>
struct CudaType<BNB_DTYPE_FLOAT32> {
  using type = float;
};
template <>
struct CudaType<BNB_DTYPE_FLOAT16> {
  using type = __half;
};
template <>
struct CudaType<BNB_DTYPE_BFLOAT16> {
  using type = __nv_bfloat16;
};

// The dtype tag of a CUDA element type (the inverse of CudaType).
template <typename T>
constexpr bnb_dtype_t dtype_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
                "a float type");
  return std::is_same_v<T, float> ? BNB_DTYPE_FLOAT32 : std::is_same_v<T, __half> ? BNB_DTYPE_FLOAT16 : BNB_DTYPE_BFLOAT16;
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round-to-nearest-even, as the CPU backend's conversions and torch's casts do.
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Two floats rounded to a 16-bit pair in one 32-bit word, `lo` in the low half (the layout of an MMA
// operand register).
template <typename T>
__device__ __forceinline__ uint32_t pair_word(float lo, float hi) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "a 16-bit float type");
  const T pair[2] = {from_f32<T>(lo), from_f32<T>(hi)};
  return *reinterpret_cast<const uint32_t*>(pair);
}

// The 16-bit pair type of T (__half2 / __nv_bfloat162), a scale broadcast to both halves, and an operand word
// of two T times such a pair (one HMUL2).
template <typename T>
struct Vec2;
template <>
struct Vec2<__half> {
  using type = __half2;
  __device__ static type broadcast(float v) { return __float2half2_rn(v); }
  __device__ static type pack(float lo, float hi) { return __floats2half2_rn(lo, hi); }
  __device__ static type low(type v) { return __low2half2(v); }
  __device__ static type high(type v) { return __high2half2(v); }
};
template <>
struct Vec2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  __device__ static type broadcast(float v) { return __float2bfloat162_rn(v); }
  __device__ static type pack(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
  __device__ static type low(type v) { return __low2bfloat162(v); }
  __device__ static type high(type v) { return __high2bfloat162(v); }
};
template <typename T>
__device__ __forceinline__ uint32_t scale_pair_word(uint32_t word, typename Vec2<T>::type scale) {
  const typename Vec2<T>::type scaled = __hmul2(*reinterpret_cast<const typename Vec2<T>::type*>(&word), scale);
  return *reinterpret_cast<const uint32_t*>(&scaled);
}

// ---- 16-byte vectors ---------------------------------------------------------------------------------
constexpr int kVecBytes = 16;  // widest single global load/store per thread (LDG.128 / STG.128)

// Elements of T in one 16-byte vector.
template <typename T>
constexpr int vec_elems() {
  return kVecBytes / static_cast<int>(sizeof(T));
}

// V elements of T viewed as a 16-byte word (or, when V * sizeof(T) < 16, the matching smaller word).
template <typename T, int V>
struct alignas(sizeof(T) * V) Packet {
  T v[V];
};

// Elements of one 16-byte word as float. Kept as raw words until used: a cached __half held as its
// own object costs a whole register, a raw word holds two.
__device__ __forceinline__ void unpack16(const uint4& r, float (&x)[4]) {
  x[0] = __uint_as_float(r.x);
  x[1] = __uint_as_float(r.y);
  x[2] = __uint_as_float(r.z);
  x[3] = __uint_as_float(r.w);
}

template <typename T>
__device__ __forceinline__ void unpack16(const uint4& r, float (&x)[8]) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if constexpr (std::is_same_v<T, __half>) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
      x[2 * k] = f.x;
      x[2 * k + 1] = f.y;
    } else {  // bfloat16 is the upper half of a float32: widening is a shift
      x[2 * k] = __uint_as_float(w[k] << 16);
      x[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  }
}

// V consecutive elements of T in their raw form: one 16-byte word for a full vector, the elements
// themselves for narrower accesses (unaligned rows).
template <typename T, int V>
struct RawVec {
  static constexpr bool kWide = V * sizeof(T) == kVecBytes;
  using type = std::conditional_t<kWide, uint4, Packet<T, V>>;

  __device__ __forceinline__ static type load(const T* __restrict__ src) {
    return *reinterpret_cast<const type*>(src);
  }
  __device__ __forceinline__ static void unpack(const type& r, float (&x)[V]) {
    if constexpr (kWide && sizeof(T) == 4) {
      unpack16(r, x);
    } else if constexpr (kWide) {
      unpack16<T>(r, x);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) x[i] = to_f32(r.v[i]);
    }
  }
};

template <typename T, int V>
__device__ __forceinline__ void load_f32(const T* __restrict__ src, float (&dst)[V]) {
  RawVec<T, V>::unpack(RawVec<T, V>::load(src), dst);
}

// Streaming: a cache-streaming (evict-first) store, for outputs written once and not read back soon.
template <typename T, int V, bool Streaming = false>
__device__ __forceinline__ void store_from_f32(T* __restrict__ dst, const float (&src)[V]) {
  Packet<T, V> p;
#pragma unroll
  for (int i = 0; i < V; ++i) p.v[i] = from_f32<T>(src[i]);
  if constexpr (Streaming && sizeof(p) == 16) {
    __stcs(reinterpret_cast<uint4*>(dst), *reinterpret_cast<const uint4*>(&p));  // evict-first
  } else {
    *reinterpret_cast<Packet<T, V>*>(dst) = p;
  }
}


__host__ __device__ inline bool is_aligned(const void* p, size_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// ---- reductions --------------------------------------------------------------------------------------
constexpr unsigned kFullWarpMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Max over aligned groups of `Lanes` consecutive lanes (Lanes a power of two <= 32); every lane of
// the group receives the result. fmaxf ignores NaN, as std::max(acc, x) does in the CPU reference.
template <int Lanes>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int offset = Lanes / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, offset));
  return v;
}

// group_max over the bit patterns of magnitudes (bnb::magnitude_bits): the maximum keeps a NaN.
template <int Lanes>
__device__ __forceinline__ uint32_t group_max_bits(uint32_t v) {
#pragma unroll
  for (int offset = Lanes / 2; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(kFullWarpMask, v, offset));
  return v;
}

// max |A[i]| over [begin, end) for one warp (lane = its lane index); every lane gets the result. A NaN
// in the range gives NaN: the blockwise quantizers need to see it (core/formats.h).
template <typename T>
__device__ __forceinline__ float warp_absmax(const T* __restrict__ A, int64_t begin, int64_t end, int lane) {
  uint32_t m = 0;
  for (int64_t i = begin + lane; i < end; i += kWarpSize) m = max(m, magnitude_bits(to_f32(A[i])));
  return __uint_as_float(group_max_bits<kWarpSize>(m));
}

// ---- programmatic dependent launch (sm_90 on) -----------------------------------------------------------
// A kernel launched by launch_after_previous() may start while the kernel before it in the stream still
// runs, once that one has called allow_next_kernel(); it must call wait_for_previous_kernel() before
// reading anything the previous kernel writes (the wait returns when that kernel has finished and its
// stores are visible). Both calls are no-ops for ordinary launches and on older targets.
__device__ __forceinline__ void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// ---- launch geometry ---------------------------------------------------------------------------------
constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit

constexpr int kMaxCachedDevices = 64;  // ordinals whose SM count / occupancy answers are memoised

inline int sm_count(int32_t device) {
  static std::atomic<int> cache[kMaxCachedDevices];
  if (device >= 0 && device < kMaxCachedDevices) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int sms = 0;
  BNB_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < kMaxCachedDevices) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

// Compute capability of `device` as 10 * major + minor (90 for sm_90), memoised like sm_count: the
// kernels that need a minimum (mma.sync, wgmma) ask on every call.
inline int compute_capability(int32_t device) {
  static std::atomic<int> cache[kMaxCachedDevices];
  if (device >= 0 && device < kMaxCachedDevices) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int major = 0, minor = 0;
  BNB_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  BNB_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  const int cc = 10 * major + minor;
  if (device >= 0 && device < kMaxCachedDevices) cache[device].store(cc, std::memory_order_relaxed);
  return cc;
}

// Raises the dynamic shared memory `kernel` may take to `bytes` on `device` (the default cap is 48 KB),
// once per device: `opted_in` is the caller's record (one per kernel) of the devices done.
template <typename... Params>
void allow_dynamic_smem(void (*kernel)(Params...), size_t bytes, int32_t device, std::atomic<uint64_t>& opted_in) {
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (opted_in.load(std::memory_order_relaxed) & bit) return;
  BNB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  opted_in.fetch_or(bit, std::memory_order_relaxed);
}

// Launches kernel<<<grid, threads, smem_bytes, stream>>>(args...); with `overlap`, so that it may overlap
// the end of the previous kernel in the stream (see wait_for_previous_kernel) where the device supports it
// (compute capability 9.0 on). Only worth it after a kernel that calls allow_next_kernel(): waiting for
// one that never does costs a little time.
template <typename... Params, typename... Args>
void launch_with_smem_after_previous(void (*kernel)(Params...), unsigned grid, int threads, size_t smem_bytes,
                                     cudaStream_t stream, int32_t device, bool overlap, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = overlap && compute_capability(device) >= 90 ? 1 : 0;
  BNB_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

// The same without dynamic shared memory.
template <typename... Params, typename... Args>
void launch_after_previous(void (*kernel)(Params...), unsigned grid, int threads, cudaStream_t stream,
                           int32_t device, bool overlap, Args&&... args) {
  launch_with_smem_after_previous(kernel, grid, threads, 0, stream, device, overlap, std::forward<Args>(args)...);
}

// Whether work enqueued on `stream` now is being captured into a CUDA graph. Also true when the
// query itself fails (e.g. the legacy stream while another stream captures): callers then take
// their capture-safe path.
inline bool stream_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

// CTAs that fill `device` once at the occupancy Kernel reaches with `threads` per CTA (static shared
// memory only): persistent kernels launch this many and stride over their work, so per-CTA setup
// (shared tables) is paid once per CTA rather than once per block of data.
template <auto Kernel>
int64_t resident_ctas(int32_t device, int threads) {
  static std::atomic<int> cache[kMaxCachedDevices];
  int per_sm = 0;
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable) per_sm = cache[device].load(std::memory_order_relaxed);
  if (per_sm <= 0) {
    BNB_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, threads, 0));
    if (per_sm < 1) per_sm = 1;
    if (cacheable) cache[device].store(per_sm, std::memory_order_relaxed);
  }
  return static_cast<int64_t>(sm_count(device)) * per_sm;
}

// Persistent kernels that build shared tables per CTA and then stream memory (the code-search
// quantizers, the 8-bit optimizers) launch this many times the resident CTA count: with exactly one
// wave, quantize_blockwise (fp16, blocksize 256) reached 81% of copy bandwidth on the H100, with
// three to four waves 89%, with eight 75% (the table builds no longer amortise).
constexpr int kStreamingWaves = 4;

// Grid for `work` independent units, capped at the resident CTA count (grid-stride beyond that).
inline unsigned grid_for(int64_t work, int64_t resident) {
  int64_t g = work < resident ? work : resident;
  if (g < 1) g = 1;
  if (g > kMaxGridX) g = kMaxGridX;
  return static_cast<unsigned>(g);
}

}  // namespace bnb::cuda

// CUDA optimizer updates: the rules of core/optim.h for 32-bit and 8-bit blockwise states, one
// tensor or a fused table of many.
//
// Work unit: one warp updates one block of 256 elements (the 8-bit absmax block), each lane 8
// consecutive elements, so a block's absmax is a single warp reduction:
//
//   block b of tensor t:  | lane 0: e0..e7 | lane 1: e8..e15 | ... | lane 31: e248..e255 |
//
// A CTA of 8 warps strides over the blocks of every tensor in its table (persistent grid), so the
// per-CTA setup (code books and their search tables in shared memory) is paid once per CTA. The
// table travels in the kernel parameters: no device-side copy, no host synchronisation, and a
// captured CUDA graph replays it as is.
#include <algorithm>

#include "core/backend.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/optim.h"
#include "cuda/code_search.cuh"
#include "cuda/common.cuh"

namespace bnb::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kLaneElems = kOptimBlock / kWarpSize;  // elements per lane
static_assert(kLaneElems == 8, "the load helpers below move 8 elements per lane");
constexpr int kSingle = 1;                                 // table capacity of single-tensor calls
constexpr int kMulti = BNB_OPTIM_MULTI_MAX_TENSORS;        // table capacity of fused calls
constexpr uintptr_t kVectorAlign = 16;                     // 16-byte loads need 16-byte aligned bases

// Tensors of one launch. Tensor i owns the global blocks [first_block[i], first_block[i + 1]).
template <int Cap>
struct TensorTable {
  bnb_optimizer_tensor_t t[Cap];
  int64_t first_block[Cap + 1];
  int32_t count;
};
static_assert(sizeof(TensorTable<kMulti>) + 128 < 32764, "kernel parameters are limited to 32764 bytes");

// The trust ratio (LAMB / LARS) needs ||update|| before any element moves: a Norm pass accumulates
// it into `unorm`, the Update pass reads it back on the device.
enum class Phase : int { Update = 0, Norm = 1 };

struct KernelArgs {
  OptimStep step;
  const float* qmap1;  // [256] signed code book (8-bit states)
  const float* qmap2;  // [256] unsigned code book, or null
  float* unorm;        // [1] squared update norm when the trust ratio is on, else null
  bnb_dtype_t g_dtype; // gradients may differ in dtype from the parameters
};

struct Smem8bit {
  float qmap1[kCodeSize8bit];
  float qmap2[kCodeSize8bit];
  CodeSearch search1;
  CodeSearch search2;
};

// ---- 8-element lane I/O ----------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void load8(const T* __restrict__ src, bool vector, int valid, float (&x)[8]) {
  if (vector) {
    constexpr int V = vec_elems<T>();
#pragma unroll
    for (int c = 0; c < 8 / V; ++c) {
      float part[V];
      load_f32<T, V>(src + c * V, part);
#pragma unroll
      for (int k = 0; k < V; ++k) x[c * V + k] = part[k];
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = k < valid ? to_f32(src[k]) : 0.0f;
  }
}

template <typename T>
__device__ __forceinline__ void store8(T* __restrict__ dst, bool vector, int valid, const float (&x)[8]) {
  if (vector) {
    constexpr int V = vec_elems<T>();
#pragma unroll
    for (int c = 0; c < 8 / V; ++c) {
      float part[V];
#pragma unroll
      for (int k = 0; k < V; ++k) part[k] = x[c * V + k];
      store_from_f32<T, V>(dst + c * V, part);
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (k < valid) dst[k] = from_f32<T>(x[k]);
  }
}

__device__ __forceinline__ void load_grad(const void* g, bnb_dtype_t dtype, int64_t offset, bool vector, int valid,
                                          float (&x)[8]) {
  switch (dtype) {  // uniform across the warp
    case BNB_DTYPE_FLOAT16: return load8(static_cast<const __half*>(g) + offset, vector, valid, x);
    case BNB_DTYPE_BFLOAT16: return load8(static_cast<const __nv_bfloat16*>(g) + offset, vector, valid, x);
    default: return load8(static_cast<const float*>(g) + offset, vector, valid, x);
  }
}

__device__ __forceinline__ void load_codes(const uint8_t* __restrict__ src, bool vector, int valid,
                                           uint8_t (&c)[8]) {
  if (vector) {
    const uint2 w = *reinterpret_cast<const uint2*>(src);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      c[k] = static_cast<uint8_t>(w.x >> (8 * k));
      c[4 + k] = static_cast<uint8_t>(w.y >> (8 * k));
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) c[k] = k < valid ? src[k] : 0;
  }
}

__device__ __forceinline__ void store_codes(uint8_t* __restrict__ dst, bool vector, int valid,
                                            const uint8_t (&c)[8]) {
  if (vector) {
    uint2 w{0u, 0u};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      w.x |= static_cast<uint32_t>(c[k]) << (8 * k);
      w.y |= static_cast<uint32_t>(c[4 + k]) << (8 * k);
    }
    *reinterpret_cast<uint2*>(dst) = w;
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (k < valid) dst[k] = c[k];
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarpMask, v, offset);
  return v;
}

__device__ __forceinline__ bool aligned(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// ---- the kernel ------------------------------------------------------------------------------------------

template <OptimizerKind K, typename TP, int Bits, int Cap>
__global__ void __launch_bounds__(kThreads)
    optimizer_kernel(const __grid_constant__ TensorTable<Cap> table, const KernelArgs args, const Phase phase) {
  constexpr bool kTwoStates = has_second_state(K);
  constexpr bool kSlowMoment = K == OptimizerKind::AdEMAMix;
  const OptimStep& s = args.step;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;

  __shared__ std::conditional_t<Bits == 8, Smem8bit, char> smem;
  if constexpr (Bits == 8) {
    for (int i = threadIdx.x; i < kCodeSize8bit; i += kThreads) {
      smem.qmap1[i] = args.qmap1[i];
      if (kTwoStates) smem.qmap2[i] = args.qmap2[i];
    }
    build_code_search(smem.search1, args.qmap1);
    if (kTwoStates) build_code_search(smem.search2, args.qmap2);
  }

  const float trust = (phase == Phase::Update && args.unorm) ? optim_trust<K>(s, *args.unorm) : 1.0f;
  float norm_acc = 0.0f;
  const int64_t total = table.first_block[table.count];
  int ti = 0;
  for (int64_t gb = int64_t{blockIdx.x} * kWarps + warp; gb < total; gb += int64_t{gridDim.x} * kWarps) {
    while (gb >= table.first_block[ti + 1]) ++ti;  // gb only grows: the cursor only moves forward
    const bnb_optimizer_tensor_t& t = table.t[ti];
    const int64_t b = gb - table.first_block[ti];
    const int64_t nb = (t.n + kOptimBlock - 1) / kOptimBlock;
    const int64_t begin = b * kOptimBlock + int64_t{lane} * kLaneElems;
    const int valid = static_cast<int>(min(max(t.n - begin, int64_t{0}), int64_t{kLaneElems}));
    const uintptr_t state_align = Bits == 8 ? sizeof(uint2) : kVectorAlign;
    const bool vector = valid == kLaneElems && aligned(t.p, kVectorAlign) && aligned(t.g, kVectorAlign) &&
                        aligned(t.state1, state_align) && (!kTwoStates || aligned(t.state2, state_align)) &&
                        (!kSlowMoment || (t.n % kLaneElems) == 0);

    TP* p = static_cast<TP*>(t.p) + begin;
    float pv[8], gv[8], m[8], v[8], m2[8];
    load8(p, vector, valid, pv);
    load_grad(t.g, args.g_dtype, begin, vector, valid, gv);
    uint8_t c1[8], c2[8], c3[8];
    if constexpr (Bits == 32) {
      const float* s1 = static_cast<const float*>(t.state1);
      load8(s1 + begin, vector, valid, m);
      if (kTwoStates) load8(static_cast<const float*>(t.state2) + begin, vector, valid, v);
      if (kSlowMoment) load8(s1 + t.n + begin, vector, valid, m2);
    } else {
      const uint8_t* s1 = static_cast<const uint8_t*>(t.state1);
      load_codes(s1 + begin, vector, valid, c1);
      if (kTwoStates) load_codes(static_cast<const uint8_t*>(t.state2) + begin, vector, valid, c2);
      if (kSlowMoment) load_codes(s1 + t.n + begin, vector, valid, c3);
      const float a1 = t.absmax1[b];
      const float a2 = kTwoStates ? t.absmax2[b] : 0.0f;
      const float a3 = kSlowMoment ? t.absmax1[nb + b] : 0.0f;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        m[k] = k < valid ? smem.qmap1[c1[k]] * a1 : 0.0f;
        if (kTwoStates) v[k] = k < valid ? smem.qmap2[c2[k]] * a2 : 0.0f;
        if (kSlowMoment) m2[k] = k < valid ? smem.qmap1[c3[k]] * a3 : 0.0f;
      }
    }
    if constexpr (!kTwoStates) {
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = 0.0f;
    }
    if constexpr (!kSlowMoment) {
#pragma unroll
      for (int k = 0; k < 8; ++k) m2[k] = 0.0f;
    }

#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (k >= valid) continue;
      OptimElement e{pv[k], gv[k] * s.gnorm_scale, m[k], v[k], m2[k]};
      if (optim_skip(s, e.g)) continue;
      const float u = optim_states<K>(s, e);
      if (phase == Phase::Norm) {
        norm_acc += u * u;
        continue;
      }
      pv[k] = optim_param<K>(s, e.p, u, trust);
      m[k] = e.m;
      v[k] = e.v;
      m2[k] = e.m2;
    }
    if (phase == Phase::Norm) continue;

    store8(p, vector, valid, pv);
    if constexpr (Bits == 32) {
      float* s1 = static_cast<float*>(t.state1);
      store8(s1 + begin, vector, valid, m);
      if (kTwoStates) store8(static_cast<float*>(t.state2) + begin, vector, valid, v);
      if (kSlowMoment) store8(s1 + t.n + begin, vector, valid, m2);
    } else {
      // New block scales, then re-quantize every state against them.
      float x1 = 0.0f, x2 = 0.0f, x3 = 0.0f;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        x1 = fmaxf(x1, fabsf(m[k]));
        x2 = fmaxf(x2, fabsf(v[k]));
        x3 = fmaxf(x3, fabsf(m2[k]));
      }
      x1 = group_max<kWarpSize>(x1);
      if (kTwoStates) x2 = group_max<kWarpSize>(x2);
      if (kSlowMoment) x3 = group_max<kWarpSize>(x3);
      const float inv1 = inverse_absmax(x1), inv2 = inverse_absmax(x2), inv3 = inverse_absmax(x3);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        c1[k] = quantize_signed_state(smem.search1, smem.qmap1, m[k], inv1);
        if (kTwoStates) c2[k] = quantize_unsigned_state(smem.search2, v[k], inv2);
        if (kSlowMoment) c3[k] = quantize_signed_state(smem.search1, smem.qmap1, m2[k], inv3);
      }
      uint8_t* s1 = static_cast<uint8_t*>(t.state1);
      store_codes(s1 + begin, vector, valid, c1);
      if (kTwoStates) store_codes(static_cast<uint8_t*>(t.state2) + begin, vector, valid, c2);
      if (kSlowMoment) store_codes(s1 + t.n + begin, vector, valid, c3);
      if (lane == 0) {
        t.absmax1[b] = x1;
        if (kTwoStates) t.absmax2[b] = x2;
        if (kSlowMoment) t.absmax1[nb + b] = x3;
      }
    }
  }
  if (phase == Phase::Norm) {
    norm_acc = warp_sum(norm_acc);
    if (lane == 0 && norm_acc != 0.0f) atomicAdd(args.unorm, norm_acc);
  }
}

// ---- launchers -----------------------------------------------------------------------------------------

template <OptimizerKind K, typename TP, int Bits, int Cap>
void launch_optimizer(const TensorTable<Cap>& table, const KernelArgs& args, Phase phase, int32_t device,
                      cudaStream_t stream) {
  const int64_t total_blocks = table.first_block[table.count];
  if (total_blocks == 0) return;
  const int64_t resident = resident_ctas<optimizer_kernel<K, TP, Bits, Cap>>(device, kThreads);
  const unsigned grid = grid_for((total_blocks + kWarps - 1) / kWarps, resident);
  optimizer_kernel<K, TP, Bits, Cap><<<grid, kThreads, 0, stream>>>(table, args, phase);
  BNB_CUDA_CHECK_LAUNCH("optimizer_kernel");
}

// Runs a table (single or fused) for the runtime rule and parameter dtype; with the trust ratio
// on, the Norm pass goes first on the same stream.
template <int Bits, int Cap>
void run_table(OptimizerKind kind, bnb_dtype_t p_dtype, const TensorTable<Cap>& table, const KernelArgs& args,
               int32_t device, cudaStream_t stream) {
  dispatch_optimizer(kind, [&](auto k) {
    dispatch_float<CudaType>(p_dtype, "p", [&](auto tp) {
      using TP = typename decltype(tp)::type;
      constexpr OptimizerKind K = decltype(k)::value;
      if (args.unorm) {
        BNB_CUDA_CHECK(cudaMemsetAsync(args.unorm, 0, sizeof(float), stream));
        launch_optimizer<K, TP, Bits, Cap>(table, args, Phase::Norm, device, stream);
      }
      launch_optimizer<K, TP, Bits, Cap>(table, args, Phase::Update, device, stream);
    });
  });
}

int64_t blocks_of(int64_t n) { return (n + kOptimBlock - 1) / kOptimBlock; }

}  // namespace
}  // namespace bnb::cuda

namespace bnb::backend {

using namespace bnb::cuda;

void optimizer_update_32bit(OptimizerKind kind, const OptimStep& step, const Optimizer32bitParams& p, int32_t device,
                            bnb_stream_t stream) {
  DeviceGuard guard(device);
  TensorTable<kSingle> table{};
  table.t[0] = {p.p, p.g, p.state1, p.state2, nullptr, nullptr, p.n};
  table.first_block[0] = 0;
  table.first_block[1] = blocks_of(p.n);
  table.count = 1;
  const KernelArgs args{step, nullptr, nullptr, step.trust_ratio ? p.unorm : nullptr, p.g_dtype};
  run_table<32>(kind, p.p_dtype, table, args, device, as_cuda(stream));
}

void optimizer_update_8bit_blockwise(OptimizerKind kind, const OptimStep& step, const Optimizer8bitParams& p,
                                     int32_t device, bnb_stream_t stream) {
  DeviceGuard guard(device);
  TensorTable<kSingle> table{};
  table.t[0] = {p.p, p.g, p.state1, p.state2, p.absmax1, p.absmax2, p.n};
  table.first_block[0] = 0;
  table.first_block[1] = blocks_of(p.n);
  table.count = 1;
  const KernelArgs args{step, p.qmap1, p.qmap2, step.trust_ratio ? p.unorm : nullptr, p.g_dtype};
  run_table<8>(kind, p.p_dtype, table, args, device, as_cuda(stream));
}

void optimizer_update_multi(OptimizerKind kind, const OptimStep& step, const OptimizerMultiParams& m, int32_t device,
                            bnb_stream_t stream) {
  DeviceGuard guard(device);
  const KernelArgs args{step, m.qmap1, m.qmap2, nullptr, m.g_dtype};
  // Built on the host stack, copied into the launch by the runtime.
  static thread_local TensorTable<kMulti> table;
  for (int64_t first = 0; first < m.count; first += kMulti) {
    const int count = static_cast<int>(std::min<int64_t>(kMulti, m.count - first));
    table.first_block[0] = 0;
    for (int i = 0; i < count; ++i) {
      table.t[i] = m.tensors[first + i];
      table.first_block[i + 1] = table.first_block[i] + blocks_of(table.t[i].n);
    }
    table.count = count;
    if (m.state_bits == 8) run_table<8>(kind, m.p_dtype, table, args, device, as_cuda(stream));
    else run_table<32>(kind, m.p_dtype, table, args, device, as_cuda(stream));
  }
}

}  // namespace bnb::backend

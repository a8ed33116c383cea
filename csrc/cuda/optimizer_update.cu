// CUDA optimizer updates: the rules of core/optim.h for 32-bit and 8-bit blockwise states, one
// tensor or a fused table of many.
//
// Work unit: one warp updates one block of 256 elements (the 8-bit absmax block), so a block's
// absmax is a single warp reduction. Each lane holds 8 elements as two chunks of 4, placed so that
// every load and store instruction of the warp covers one contiguous span (512 bytes of fp32,
// 256 of 16-bit, 128 of 8-bit codes) instead of half of every sector:
//
//   block b:  | chunk 0: lane 0 e0..e3 | lane 1 e4..e7 | ... | lane 31 e124..e127 |
//             | chunk 1: lane 0 e128..e131 | ...             | lane 31 e252..e255 |
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
#include "cuda/scratch.cuh"

namespace bnb::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kLaneElems = kOptimBlock / kWarpSize;  // elements per lane
constexpr int kChunk = 4;                              // consecutive elements per lane per access
constexpr int kChunkSpan = kChunk * kWarpSize;         // elements one warp-wide access covers
static_assert(kLaneElems == 2 * kChunk, "the load helpers below move two chunks per lane");
constexpr int kSingle = 1;                                 // table capacity of single-tensor calls
constexpr int kMulti = BNB_OPTIM_MULTI_MAX_TENSORS;        // table capacity of fused calls

// Tensors of one launch. Tensor i owns the global blocks [first_block[i], first_block[i + 1]).
template <int Cap>
struct TensorTable {
  bnb_optimizer_tensor_t t[Cap];
  int64_t first_block[Cap + 1];
  int32_t count;
};
static_assert(sizeof(TensorTable<kMulti>) + 128 < 32764, "kernel parameters are limited to 32764 bytes");

// The trust ratio (LAMB / LARS) needs ||update|| before any element moves: a Norm pass writes one
// partial sum per CTA, the Update pass adds them up in a fixed order on the device (so the result
// is bit-for-bit repeatable, unlike float atomics) and CTA 0 stores it in `unorm`.
enum class Phase : int { Update = 0, Norm = 1 };

struct KernelArgs {
  OptimStep step;
  const float* qmap1;  // [256] signed code book (8-bit states)
  const float* qmap2;  // [256] unsigned code book, or null
  float* unorm;        // [1] squared update norm when the trust ratio is on, else null
  float* partials;     // [gridDim.x] per-CTA partial norms (trust ratio only)
  bnb_dtype_t g_dtype; // gradients may differ in dtype from the parameters
};

// Sum of partials[0, count) in a fixed order; every thread of the CTA gets it (contains a barrier).
__device__ float ordered_total(const float* __restrict__ partials, int count, float* scratch) {
  if (threadIdx.x < kWarpSize) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < count; i += kWarpSize) acc += partials[i];
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(kFullWarpMask, acc, offset);
    if (threadIdx.x == 0) *scratch = acc;
  }
  __syncthreads();
  return *scratch;
}

struct Smem8bit {
  float qmap1[kCodeSize8bit];
  float qmap2[kCodeSize8bit];
  FineCodeSearch search1;  // re-quantization of state1 (signed map, built for keep_sign)
  FineCodeSearch search2;  // of state2 (unsigned map)
};

// Codes of the 8 values of a lane, each scaled by inv (rounded on its own, as the CPU reference
// rounds it: the search compares the bits of the rounded product). Unsigned: the nearest code (the
// unsigned map's states are >= 0, which the search exploits, checking it per group of four).
__device__ __forceinline__ void codes8(const FineCodeSearch& search, const float (&x)[8], float inv,
                                       uint8_t (&c)[8]) {
  float v[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = __fmul_rn(x[k], inv);
  uint32_t raw[8];
#pragma unroll
  for (int k = 0; k < 8; k += FineCodeSearch::kGroup) search.search4_nonnegative(v + k, raw + k);
#pragma unroll
  for (int k = 0; k < 8; ++k) c[k] = static_cast<uint8_t>(raw[k] >> FineCodeSearch::kIndexShift);
}

// Signed: the nearest code of the value's own sign (keep_sign), from tables built for it.
__device__ __forceinline__ void signed_codes8(const FineCodeSearch& search, const float* qmap, const float (&x)[8],
                                              float inv, uint8_t (&c)[8]) {
  float v[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = __fmul_rn(x[k], inv);
  uint32_t raw[8];
#pragma unroll
  for (int k = 0; k < 8; k += FineCodeSearch::kGroup) search.search4_signed(v + k, x + k, qmap, raw + k);
#pragma unroll
  for (int k = 0; k < 8; ++k) c[k] = static_cast<uint8_t>(raw[k] >> FineCodeSearch::kIndexShift);
}

// ---- 8-element lane I/O ----------------------------------------------------------------------------
// `block` points at element 0 of the 256-element block; `full` = the whole block is in range and
// every base pointer is aligned for chunk-wide accesses; otherwise element (c, k) is read only when
// its offset is below `remaining`.

__device__ __forceinline__ int lane_offset(int lane, int c, int k) { return c * kChunkSpan + lane * kChunk + k; }

template <typename T>
__device__ __forceinline__ void load8(const T* __restrict__ block, int lane, bool full, int64_t remaining,
                                      float (&x)[8]) {
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    if (full) {
      const Packet<T, kChunk> v = *reinterpret_cast<const Packet<T, kChunk>*>(block + lane_offset(lane, c, 0));
#pragma unroll
      for (int k = 0; k < kChunk; ++k) x[c * kChunk + k] = to_f32(v.v[k]);
    } else {
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const int off = lane_offset(lane, c, k);
        x[c * kChunk + k] = off < remaining ? to_f32(block[off]) : 0.0f;
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ void store8(T* __restrict__ block, int lane, bool full, int64_t remaining,
                                       const float (&x)[8]) {
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    if (full) {
      Packet<T, kChunk> v;
#pragma unroll
      for (int k = 0; k < kChunk; ++k) v.v[k] = from_f32<T>(x[c * kChunk + k]);
      *reinterpret_cast<Packet<T, kChunk>*>(block + lane_offset(lane, c, 0)) = v;
    } else {
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const int off = lane_offset(lane, c, k);
        if (off < remaining) block[off] = from_f32<T>(x[c * kChunk + k]);
      }
    }
  }
}

__device__ __forceinline__ void load_grad(const void* g, bnb_dtype_t dtype, int64_t block_begin, int lane, bool full,
                                          int64_t remaining, float (&x)[8]) {
  switch (dtype) {  // uniform across the warp
    case BNB_DTYPE_FLOAT16:
      return load8(static_cast<const __half*>(g) + block_begin, lane, full, remaining, x);
    case BNB_DTYPE_BFLOAT16:
      return load8(static_cast<const __nv_bfloat16*>(g) + block_begin, lane, full, remaining, x);
    default:
      return load8(static_cast<const float*>(g) + block_begin, lane, full, remaining, x);
  }
}

// Codes as table indices: one byte permute per code extracts it zero-extended (a shift and a mask
// otherwise), one instruction fewer per table lookup.
__device__ __forceinline__ void load_codes(const uint8_t* __restrict__ block, int lane, bool full, int64_t remaining,
                                           uint32_t (&q)[8]) {
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    if (full) {
      const uint32_t w = *reinterpret_cast<const uint32_t*>(block + lane_offset(lane, c, 0));
#pragma unroll
      for (int k = 0; k < kChunk; ++k) q[c * kChunk + k] = __byte_perm(w, 0u, 0x4440u + k);
    } else {
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const int off = lane_offset(lane, c, k);
        q[c * kChunk + k] = off < remaining ? block[off] : 0;
      }
    }
  }
}

__device__ __forceinline__ void store_codes(uint8_t* __restrict__ block, int lane, bool full, int64_t remaining,
                                            const uint8_t (&q)[8]) {
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    if (full) {
      uint32_t w = 0;
#pragma unroll
      for (int k = 0; k < kChunk; ++k) w |= static_cast<uint32_t>(q[c * kChunk + k]) << (8 * k);
      *reinterpret_cast<uint32_t*>(block + lane_offset(lane, c, 0)) = w;
    } else {
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const int off = lane_offset(lane, c, k);
        if (off < remaining) block[off] = q[c * kChunk + k];
      }
    }
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

// ---- prefetch ---------------------------------------------------------------------------------------------
// The 8-bit update of a block is a long dependent chain (dequantize, update, block absmax, code
// search) during which the warp has no loads in flight. Before starting it, the warp asks L2 for
// the lines of a block it will take later (one line per lane), so that block's loads find them there.
// Blocks ahead of the current one. One-state rules (few instructions per byte) gain from it; the
// two-state ones are bound by instruction issue and lose the prefetch's own instructions (H100,
// 268M elements: Lion8bit bf16 0.96 -> 0.90 ms with it, Adam8bit bf16 1.25 -> 1.27-1.30 ms and
// AdamW8bit fp32 1.64 -> 1.86-1.88 ms). Two blocks ahead measured slower than one.
template <OptimizerKind K>
constexpr int kPrefetchAhead = has_second_state(K) ? 0 : 1;
__device__ __forceinline__ void prefetch_l2(const void* ptr) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr));
}

template <typename TP, int Cap>
__device__ __forceinline__ void prefetch_next_block(const TensorTable<Cap>& table, int64_t gb, int ti,
                                                    bnb_dtype_t g_dtype, int lane) {
  if (gb >= table.first_block[table.count]) return;
  while (gb >= table.first_block[ti + 1]) ++ti;
  const bnb_optimizer_tensor_t& t = table.t[ti];
  const int64_t begin = (gb - table.first_block[ti]) * kOptimBlock;
  const int64_t elems_left = t.n - begin;  // >= 1
  constexpr int kLine = 128;
  constexpr int kParamLines = kOptimBlock * static_cast<int>(sizeof(TP)) / kLine;  // 4 (16-bit) or 8 (fp32)
  const int g_size = g_dtype == BNB_DTYPE_FLOAT32 ? 4 : 2;
  const int grad_lines = kOptimBlock * g_size / kLine;
  constexpr int kStateLines = kOptimBlock / kLine;  // 2
  int line = lane;
  const char* at = nullptr;
  int64_t limit = 0;  // bytes of that array left from the block's start
  if (line < kParamLines) {
    at = static_cast<const char*>(t.p) + begin * sizeof(TP), limit = elems_left * sizeof(TP);
  } else if ((line -= kParamLines) < grad_lines) {
    at = static_cast<const char*>(t.g) + begin * g_size, limit = elems_left * g_size;
  } else if ((line -= grad_lines) < kStateLines) {
    at = static_cast<const char*>(t.state1) + begin, limit = elems_left;
  } else if ((line -= kStateLines) < kStateLines && t.state2 != nullptr) {
    at = static_cast<const char*>(t.state2) + begin, limit = elems_left;
  }
  if (at != nullptr && int64_t{line} * kLine < limit) prefetch_l2(at + line * kLine);
}

// ---- the kernel ------------------------------------------------------------------------------------------

// One 256-element block by one warp. Full: the whole block is in range and every array is aligned
// for chunk-wide accesses, known at compile time so that the common case carries no per-element
// range tests. An element with a non-finite (or, with skip_zeros, zero) gradient keeps its
// parameter and states: the update is computed for every element and the old values selected back,
// which keeps the loop free of branches.
template <OptimizerKind K, typename TP, int Bits, bool Full>
__device__ __forceinline__ void update_block(const bnb_optimizer_tensor_t& t, int64_t b, const KernelArgs& args,
                                             Phase phase, const std::conditional_t<Bits == 8, Smem8bit, char>& smem,
                                             float trust, int lane, float& norm_acc) {
  constexpr bool kTwoStates = has_second_state(K);
  constexpr bool kSlowMoment = K == OptimizerKind::AdEMAMix;
  const OptimStep& s = args.step;
  const int64_t begin = b * kOptimBlock;   // first element of the block
  const int64_t remaining = t.n - begin;   // >= 1
  const auto in_range = [&](int k) { return Full || lane_offset(lane, k / kChunk, k % kChunk) < remaining; };

  TP* p = static_cast<TP*>(t.p) + begin;
  float pv[8], gv[8], m[8], v[8], m2[8];
  load8(p, lane, Full, remaining, pv);
  load_grad(t.g, args.g_dtype, begin, lane, Full, remaining, gv);
  uint32_t q1[8], q2[8], q3[8];  // the stored codes
  uint8_t c1[8], c2[8], c3[8];   // the new ones
  const int64_t nb = (t.n + kOptimBlock - 1) / kOptimBlock;
  if constexpr (Bits == 32) {
    const float* s1 = static_cast<const float*>(t.state1);
    load8(s1 + begin, lane, Full, remaining, m);
    if (kTwoStates) load8(static_cast<const float*>(t.state2) + begin, lane, Full, remaining, v);
    if (kSlowMoment) load8(s1 + t.n + begin, lane, Full, remaining, m2);
  } else {
    const uint8_t* s1 = static_cast<const uint8_t*>(t.state1);
    load_codes(s1 + begin, lane, Full, remaining, q1);
    if (kTwoStates) load_codes(static_cast<const uint8_t*>(t.state2) + begin, lane, Full, remaining, q2);
    if (kSlowMoment) load_codes(s1 + t.n + begin, lane, Full, remaining, q3);
    const float a1 = t.absmax1[b];
    const float a2 = kTwoStates ? t.absmax2[b] : 0.0f;
    const float a3 = kSlowMoment ? t.absmax1[nb + b] : 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const bool in = in_range(k);
      m[k] = in ? smem.qmap1[q1[k]] * a1 : 0.0f;
      if (kTwoStates) v[k] = in ? smem.qmap2[q2[k]] * a2 : 0.0f;
      if (kSlowMoment) m2[k] = in ? smem.qmap1[q3[k]] * a3 : 0.0f;
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

  if (s.gnorm_scale != 1.0f) {  // uniform: most steps run unscaled
#pragma unroll
    for (int k = 0; k < 8; ++k) gv[k] *= s.gnorm_scale;
  }
  if (phase == Phase::Norm) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      OptimElement e{pv[k], gv[k], m[k], v[k], m2[k]};
      const bool keep = !in_range(k) || optim_skip(s, e.g);
      const float u = optim_states<K>(s, e);
      norm_acc += keep ? 0.0f : u * u;
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    OptimElement e{pv[k], gv[k], m[k], v[k], m2[k]};
    const bool keep = !in_range(k) || optim_skip(s, e.g);
    const float u = optim_states<K>(s, e);
    const float p_new = optim_param<K>(s, e.p, u, trust);
    pv[k] = keep ? pv[k] : p_new;
    m[k] = keep ? m[k] : e.m;
    v[k] = keep ? v[k] : e.v;
    m2[k] = keep ? m2[k] : e.m2;
  }

  store8(p, lane, Full, remaining, pv);
  if constexpr (Bits == 32) {
    float* s1 = static_cast<float*>(t.state1);
    store8(s1 + begin, lane, Full, remaining, m);
    if (kTwoStates) store8(static_cast<float*>(t.state2) + begin, lane, Full, remaining, v);
    if (kSlowMoment) store8(s1 + t.n + begin, lane, Full, remaining, m2);
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
    signed_codes8(smem.search1, smem.qmap1, m, inverse_absmax(x1), c1);
    if (kTwoStates) codes8(smem.search2, v, inverse_absmax(x2), c2);
    if (kSlowMoment) signed_codes8(smem.search1, smem.qmap1, m2, inverse_absmax(x3), c3);
    uint8_t* s1 = static_cast<uint8_t*>(t.state1);
    store_codes(s1 + begin, lane, Full, remaining, c1);
    if (kTwoStates) store_codes(static_cast<uint8_t*>(t.state2) + begin, lane, Full, remaining, c2);
    if (kSlowMoment) store_codes(s1 + t.n + begin, lane, Full, remaining, c3);
    if (lane == 0) {
      t.absmax1[b] = x1;
      if (kTwoStates) t.absmax2[b] = x2;
      if (kSlowMoment) t.absmax1[nb + b] = x3;
    }
  }
}

// The grid-stride loop over 256-element blocks.
template <OptimizerKind K, typename TP, int Bits, int Cap>
__device__ __forceinline__ float update_blocks(const TensorTable<Cap>& table, const KernelArgs& args, Phase phase,
                                               const std::conditional_t<Bits == 8, Smem8bit, char>& smem,
                                               float trust) {
  constexpr bool kTwoStates = has_second_state(K);
  constexpr bool kSlowMoment = K == OptimizerKind::AdEMAMix;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  float norm_acc = 0.0f;
  const int64_t total = table.first_block[table.count];
  int ti = 0;
  for (int64_t gb = int64_t{blockIdx.x} * kWarps + warp; gb < total; gb += int64_t{gridDim.x} * kWarps) {
    while (gb >= table.first_block[ti + 1]) ++ti;  // gb only grows: the cursor only moves forward
    const bnb_optimizer_tensor_t& t = table.t[ti];
    const int64_t b = gb - table.first_block[ti];
    const int64_t remaining = t.n - b * kOptimBlock;
    const uintptr_t state_align = Bits == 8 ? kChunk : kChunk * sizeof(float);
    const bool full = remaining >= kOptimBlock && aligned(t.p, kChunk * sizeof(TP)) &&
                      aligned(t.g, kChunk * 4) && aligned(t.state1, state_align) &&
                      (!kTwoStates || aligned(t.state2, state_align)) && (!kSlowMoment || t.n % kChunk == 0);

    if constexpr (Bits == 8 && kPrefetchAhead<K> > 0) {
      const int64_t stride = int64_t{gridDim.x} * kWarps;
      if (gb < stride) {  // the first block: ask for all the blocks up to the prefetch distance
#pragma unroll
        for (int ahead = 1; ahead < kPrefetchAhead<K>; ++ahead)
          prefetch_next_block<TP>(table, gb + ahead * stride, ti, args.g_dtype, lane);
      }
      prefetch_next_block<TP>(table, gb + kPrefetchAhead<K> * stride, ti, args.g_dtype, lane);
    }
    if (full) update_block<K, TP, Bits, true>(t, b, args, phase, smem, trust, lane, norm_acc);
    else update_block<K, TP, Bits, false>(t, b, args, phase, smem, trust, lane, norm_acc);
  }
  return norm_acc;
}

template <OptimizerKind K, typename TP, int Bits, int Cap>
__global__ void __launch_bounds__(kThreads)
    optimizer_kernel(const __grid_constant__ TensorTable<Cap> table, const KernelArgs args, const Phase phase) {
  constexpr bool kTwoStates = has_second_state(K);
  const OptimStep& s = args.step;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;

  __shared__ std::conditional_t<Bits == 8, Smem8bit, char> smem;
  if constexpr (Bits == 8) {
    for (int i = threadIdx.x; i < kCodeSize8bit; i += kThreads) {
      smem.qmap1[i] = args.qmap1[i];
      if (kTwoStates) smem.qmap2[i] = args.qmap2[i];
    }
    smem.search1.build(args.qmap1, /*signed_codes=*/true);
    if (kTwoStates) smem.search2.build(args.qmap2);
  }

  __shared__ float norm_scratch[kWarps + 1];
  float trust = 1.0f;
  if (phase == Phase::Update && args.unorm) {
    const float unorm_sq = ordered_total(args.partials, gridDim.x, &norm_scratch[kWarps]);
    if (blockIdx.x == 0 && threadIdx.x == 0) *args.unorm = unorm_sq;
    trust = optim_trust<K>(s, unorm_sq);
  }
  float norm_acc = 0.0f;
  norm_acc = update_blocks<K, TP, Bits, Cap>(table, args, phase, smem, trust);
  if (phase == Phase::Norm) {
    norm_acc = warp_sum(norm_acc);
    if (lane == 0) norm_scratch[warp] = norm_acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      float cta = 0.0f;
      for (int w = 0; w < kWarps; ++w) cta += norm_scratch[w];
      args.partials[blockIdx.x] = cta;
    }
  }
}

// ---- launchers -----------------------------------------------------------------------------------------

template <OptimizerKind K, typename TP, int Bits, int Cap>
unsigned optimizer_grid(const TensorTable<Cap>& table, int32_t device) {
  const int64_t total_blocks = table.first_block[table.count];
  // One wave: unlike the quantizers, the optimizer step measured no faster with more (H100).
  const int64_t resident = resident_ctas<optimizer_kernel<K, TP, Bits, Cap>>(device, kThreads);
  return grid_for((total_blocks + kWarps - 1) / kWarps, resident);
}

template <OptimizerKind K, typename TP, int Bits, int Cap>
void launch_optimizer(const TensorTable<Cap>& table, const KernelArgs& args, Phase phase, unsigned grid,
                      cudaStream_t stream) {
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
      if (table.first_block[table.count] == 0) return;
      const unsigned grid = optimizer_grid<K, TP, Bits, Cap>(table, device);
      if (!args.unorm) {
        launch_optimizer<K, TP, Bits, Cap>(table, args, Phase::Update, grid, stream);
        return;
      }
      // Stream-ordered scratch for the per-CTA partial norms: no host synchronisation.
      const Scratch partials(grid * sizeof(float), device, stream);
      KernelArgs with_partials = args;
      with_partials.partials = partials.as<float>();
      launch_optimizer<K, TP, Bits, Cap>(table, with_partials, Phase::Norm, grid, stream);
      launch_optimizer<K, TP, Bits, Cap>(table, with_partials, Phase::Update, grid, stream);
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
  const KernelArgs args{step, nullptr, nullptr, step.trust_ratio ? p.unorm : nullptr, nullptr, p.g_dtype};
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
  const KernelArgs args{step, p.qmap1, p.qmap2, step.trust_ratio ? p.unorm : nullptr, nullptr, p.g_dtype};
  run_table<8>(kind, p.p_dtype, table, args, device, as_cuda(stream));
}

void optimizer_update_multi(OptimizerKind kind, const OptimStep& step, const OptimizerMultiParams& m, int32_t device,
                            bnb_stream_t stream) {
  DeviceGuard guard(device);
  const KernelArgs args{step, m.qmap1, m.qmap2, nullptr, nullptr, m.g_dtype};
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

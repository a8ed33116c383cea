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
// table of a fused call goes to device memory through a pinned staging copy (host_upload.cuh), so
// one launch with small parameters covers any number of tensors; while the stream is being
// captured it travels in the kernel parameters instead, up to kMulti tensors per launch, and the
// graph replays it as captured. Neither way synchronises the host. The 8-bit update pass overlaps
// each warp's next block's loads with the re-quantization of its current one
// (update_blocks_pipelined).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/backend.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/optim.h"
#include "cuda/code_search.cuh"
#include "cuda/common.cuh"
#include "cuda/host_upload.cuh"
#include "cuda/scratch.cuh"

namespace bnb::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kLaneElems = kOptimBlock / kWarpSize;  // elements per lane
constexpr int kChunk = 4;                              // consecutive elements per lane per access
constexpr int kChunkSpan = kChunk * kWarpSize;         // elements one warp-wide access covers
static_assert(kLaneElems == 2 * kChunk, "the load helpers below move two chunks per lane");
// The 8-bit kernels are compiled for 3 resident CTAs per SM (at most 85 registers). Left free, the
// pipelined loop's next-block registers take 96-128; at 4 CTAs (64) the compiler spills. H100,
// 268M elements, ms: Adam8bit bf16 1.23 (before the pipeline) -> 1.08 at 3 CTAs, 1.13 at 4, 1.12
// at 2; Lion8bit bf16 0.89 -> 0.82; AdamW8bit fp32 1.63 -> 1.60 (1.77 at 4).
constexpr int kMinCtas8bit = 3;
constexpr int kSingle = 1;                                 // table capacity of single-tensor calls
constexpr int kMulti = BNB_OPTIM_MULTI_MAX_TENSORS;        // table capacity of captured fused calls

// Tensors of one launch. Tensor i owns the global blocks [first_block[i], first_block[i + 1]).
// owner(ti, g, lane) moves the cursor ti forward to the tensor owning global block g (a warp's
// blocks only grow; every lane of the warp calls it with the same g).

// In the kernel parameters.
template <int Cap>
struct TensorTable {
  bnb_optimizer_tensor_t t[Cap];
  int64_t first_block[Cap + 1];
  int32_t count;
  __device__ __forceinline__ int owner(int ti, int64_t g, int /*lane*/) const {
    while (g >= first_block[ti + 1]) ++ti;  // constant-bank reads
    return ti;
  }
};
static_assert(sizeof(TensorTable<kMulti>) + 128 < 32764, "kernel parameters are limited to 32764 bytes");

// In device memory.
struct DeviceTensorTable {
  const bnb_optimizer_tensor_t* t;
  const int64_t* first_block;  // [count + 1]
  int32_t count;
  // The next 32 boundaries in one warp-wide load per round, instead of one dependent global load
  // per tensor passed.
  __device__ __forceinline__ int owner(int ti, int64_t g, int lane) const {
    while (true) {
      const int i = ti + 1 + lane;
      const bool beyond = i > count || g < first_block[i];
      const unsigned mask = __ballot_sync(kFullWarpMask, beyond);
      if (mask) return ti + __ffs(mask) - 1;
      ti += kWarpSize;
    }
  }
};

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
__device__ __forceinline__ void expand_code_word(uint32_t w, uint32_t* q) {
#pragma unroll
  for (int k = 0; k < kChunk; ++k) q[k] = __byte_perm(w, 0u, 0x4440u + k);
}

__device__ __forceinline__ void load_codes(const uint8_t* __restrict__ block, int lane, bool full, int64_t remaining,
                                           uint32_t (&q)[8]) {
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    if (full) {
      expand_code_word(*reinterpret_cast<const uint32_t*>(block + lane_offset(lane, c, 0)), q + c * kChunk);
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

// ---- a whole block as loaded ------------------------------------------------------------------------------
// A lane's share of a whole aligned block in the form it arrives in (16-bit pairs, code bytes): the
// 8-bit loop issues the loads of a warp's next block while the current one is still being worked
// on, and holding them packed costs the fewest registers.
template <typename TP>
struct RawBlock {
  Packet<TP, kChunk> p[2];
  Packet<TP, kChunk> g[2];  // gradients of the parameters' dtype (others take update_block's loads)
  uint32_t q1[2], q2[2], q3[2];
  float a1, a2, a3;
};

template <OptimizerKind K, typename TP>
__device__ __forceinline__ void load_raw(RawBlock<TP>& r, const bnb_optimizer_tensor_t& t, int64_t b, int lane) {
  constexpr bool kTwoStates = has_second_state(K);
  constexpr bool kSlowMoment = K == OptimizerKind::AdEMAMix;
  const int64_t begin = b * kOptimBlock;
  const uint8_t* s1 = static_cast<const uint8_t*>(t.state1) + begin;
  const uint8_t* s2 = static_cast<const uint8_t*>(t.state2) + begin;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int off = lane_offset(lane, c, 0);
    r.p[c] = *reinterpret_cast<const Packet<TP, kChunk>*>(static_cast<const TP*>(t.p) + begin + off);
    r.g[c] = *reinterpret_cast<const Packet<TP, kChunk>*>(static_cast<const TP*>(t.g) + begin + off);
    r.q1[c] = *reinterpret_cast<const uint32_t*>(s1 + off);
    if (kTwoStates) r.q2[c] = *reinterpret_cast<const uint32_t*>(s2 + off);
    if (kSlowMoment) r.q3[c] = *reinterpret_cast<const uint32_t*>(s1 + t.n + off);
  }
  const int64_t nb = (t.n + kOptimBlock - 1) / kOptimBlock;
  r.a1 = t.absmax1[b];
  if (kTwoStates) r.a2 = t.absmax2[b];
  if (kSlowMoment) r.a3 = t.absmax1[nb + b];
}

// The two chunks of a lane as 8 floats (16-bit pairs widened by common.cuh's word unpacking).
template <typename T>
__device__ __forceinline__ void unpack_chunks(const Packet<T, kChunk> (&c)[2], float (&x)[8]) {
  if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int k = 0; k < 2 * kChunk; ++k) x[k] = c[k / kChunk].v[k % kChunk];
  } else {
    const uint2 lo = *reinterpret_cast<const uint2*>(&c[0]);
    const uint2 hi = *reinterpret_cast<const uint2*>(&c[1]);
    unpack16<T>(make_uint4(lo.x, lo.y, hi.x, hi.y), x);
  }
}

__device__ __forceinline__ void expand_codes(const uint32_t (&w)[2], uint32_t (&q)[8]) {
#pragma unroll
  for (int c = 0; c < 2; ++c) expand_code_word(w[c], q + c * kChunk);
}

// ---- the kernel ------------------------------------------------------------------------------------------

// One 256-element block by one warp. Full: the whole block is in range and every array is aligned
// for chunk-wide accesses, known at compile time so that the common case carries no per-element
// range tests. An element with a non-finite (or, with skip_zeros, zero) gradient keeps its
// parameter and states: the update is computed for every element and the old values selected back,
// which keeps the loop free of branches.
//
// FromRaw: the block's values come from `raw` (loaded earlier by load_raw; whole blocks only), and
// `between()` runs once the parameters are stored and before the states are re-quantized: the
// pipelined 8-bit loop issues the next block's loads there.
struct NoOp {
  __device__ void operator()() const {}
};

template <OptimizerKind K, typename TP, int Bits, bool Full, bool FromRaw = false, typename Between = NoOp>
__device__ __forceinline__ void update_block(const bnb_optimizer_tensor_t& t, int64_t b, const KernelArgs& args,
                                             Phase phase, const std::conditional_t<Bits == 8, Smem8bit, char>& smem,
                                             float trust, int lane, float& norm_acc,
                                             const RawBlock<TP>* raw = nullptr, Between between = {}) {
  static_assert(!FromRaw || (Full && Bits == 8), "raw blocks are whole 8-bit-state blocks");
  constexpr bool kTwoStates = has_second_state(K);
  constexpr bool kSlowMoment = K == OptimizerKind::AdEMAMix;
  const OptimStep& s = args.step;
  const int64_t begin = b * kOptimBlock;   // first element of the block
  const int64_t remaining = t.n - begin;   // >= 1
  const auto in_range = [&](int k) { return Full || lane_offset(lane, k / kChunk, k % kChunk) < remaining; };

  TP* p = static_cast<TP*>(t.p) + begin;
  float pv[8], gv[8], m[8], v[8], m2[8];
  if constexpr (FromRaw) {
    unpack_chunks(raw->p, pv);
    unpack_chunks(raw->g, gv);
  } else {
    load8(p, lane, Full, remaining, pv);
    load_grad(t.g, args.g_dtype, begin, lane, Full, remaining, gv);
  }
  uint32_t q1[8], q2[8], q3[8];  // the stored codes
  uint8_t c1[8], c2[8], c3[8];   // the new ones
  const int64_t nb = (t.n + kOptimBlock - 1) / kOptimBlock;
  if constexpr (Bits == 32) {
    const float* s1 = static_cast<const float*>(t.state1);
    load8(s1 + begin, lane, Full, remaining, m);
    if (kTwoStates) load8(static_cast<const float*>(t.state2) + begin, lane, Full, remaining, v);
    if (kSlowMoment) load8(s1 + t.n + begin, lane, Full, remaining, m2);
  } else {
    float a1, a2 = 0.0f, a3 = 0.0f;
    if constexpr (FromRaw) {
      expand_codes(raw->q1, q1);
      if (kTwoStates) expand_codes(raw->q2, q2);
      if (kSlowMoment) expand_codes(raw->q3, q3);
      a1 = raw->a1;
      if (kTwoStates) a2 = raw->a2;
      if (kSlowMoment) a3 = raw->a3;
    } else {
      const uint8_t* s1 = static_cast<const uint8_t*>(t.state1);
      load_codes(s1 + begin, lane, Full, remaining, q1);
      if (kTwoStates) load_codes(static_cast<const uint8_t*>(t.state2) + begin, lane, Full, remaining, q2);
      if (kSlowMoment) load_codes(s1 + t.n + begin, lane, Full, remaining, q3);
      a1 = t.absmax1[b];
      if (kTwoStates) a2 = t.absmax2[b];
      if (kSlowMoment) a3 = t.absmax1[nb + b];
    }
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
  uint32_t cleared = 0;  // bit k: element k's states are cleared (optim_clears_states)
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    OptimElement e{pv[k], gv[k], m[k], v[k], m2[k]};
    const bool keep = !in_range(k) || optim_skip(s, e.g);
    if (in_range(k) && optim_clears_states(Bits == 8 && kTwoStates, e.g)) cleared |= 1u << k;
    const float u = optim_states<K>(s, e);
    const float p_new = optim_param<K>(s, e.p, u, trust);
    pv[k] = keep ? pv[k] : p_new;
    m[k] = keep ? m[k] : e.m;
    v[k] = keep ? v[k] : e.v;
    m2[k] = keep ? m2[k] : e.m2;
  }
  // Rare (a non-finite gradient), so tested once here rather than as three more selects per element
  // in the loop above. The clear costs the bf16 Adam8bit step about 2% on the H100 however it is
  // written (same-machine A/B, 2^28 elements, 1.109-1.120 ms against 1.088-1.092 without it): three
  // selects per element, this mask, or an OR of the keep predicates with the gradients read again for
  // the rare blocks. The step is close to issue-bound; kept, as the rule is bitsandbytes' own.
  if (cleared != 0) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (cleared >> k & 1u) m[k] = v[k] = m2[k] = 0.0f;
    }
  }

  store8(p, lane, Full, remaining, pv);
  if constexpr (Bits == 32) {
    float* s1 = static_cast<float*>(t.state1);
    store8(s1 + begin, lane, Full, remaining, m);
    if (kTwoStates) store8(static_cast<float*>(t.state2) + begin, lane, Full, remaining, v);
    if (kSlowMoment) store8(s1 + t.n + begin, lane, Full, remaining, m2);
  } else {
    between();
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

// Whole block: in range and every array aligned for chunk-wide accesses.
template <OptimizerKind K, typename TP, int Bits>
__device__ __forceinline__ bool whole_block(const bnb_optimizer_tensor_t& t, int64_t b) {
  constexpr bool kTwoStates = has_second_state(K);
  constexpr bool kSlowMoment = K == OptimizerKind::AdEMAMix;
  const uintptr_t state_align = Bits == 8 ? kChunk : kChunk * sizeof(float);
  return t.n - b * kOptimBlock >= kOptimBlock && is_aligned(t.p, kChunk * sizeof(TP)) && is_aligned(t.g, kChunk * 4) &&
         is_aligned(t.state1, state_align) && (!kTwoStates || is_aligned(t.state2, state_align)) &&
         (!kSlowMoment || t.n % kChunk == 0);
}

// The grid-stride loop over 256-element blocks.
template <OptimizerKind K, typename TP, int Bits, typename Table>
__device__ __forceinline__ float update_blocks(const Table& table, const KernelArgs& args, Phase phase,
                                               const std::conditional_t<Bits == 8, Smem8bit, char>& smem,
                                               float trust) {
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  float norm_acc = 0.0f;
  const int64_t total = table.first_block[table.count];
  int ti = 0;
  for (int64_t gb = int64_t{blockIdx.x} * kWarps + warp; gb < total; gb += int64_t{gridDim.x} * kWarps) {
    ti = table.owner(ti, gb, lane);
    const bnb_optimizer_tensor_t& t = table.t[ti];
    const int64_t b = gb - table.first_block[ti];
    if (whole_block<K, TP, Bits>(t, b)) update_block<K, TP, Bits, true>(t, b, args, phase, smem, trust, lane, norm_acc);
    else update_block<K, TP, Bits, false>(t, b, args, phase, smem, trust, lane, norm_acc);
  }
  return norm_acc;
}

// The update pass of 8-bit states, software-pipelined: a whole block's loads are issued as soon as
// the block before it no longer needs its inputs (parameters stored, before the block scales and the
// code search), so they travel while that block is re-quantized instead of after it. Blocks that
// are not whole take update_block's own loads.
template <OptimizerKind K, typename TP, typename Table>
__device__ __forceinline__ void update_blocks_pipelined(const Table& table, const KernelArgs& args,
                                                        const Smem8bit& smem, float trust) {
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t total = table.first_block[table.count];
  const int64_t stride = int64_t{gridDim.x} * kWarps;
  int64_t gb = int64_t{blockIdx.x} * kWarps + warp;
  if (gb >= total) return;
  const bool same_dtype = args.g_dtype == dtype_of<TP>();
  int ti = 0;
  const auto locate = [&](int64_t g, int64_t& b) {
    ti = table.owner(ti, g, lane);
    b = g - table.first_block[ti];
    return same_dtype && whole_block<K, TP, 8>(table.t[ti], b);
  };
  float unused_norm = 0.0f;
  RawBlock<TP> raw;
  int64_t b;
  bool whole = locate(gb, b);
  int cur = ti;
  if (whole) load_raw<K>(raw, table.t[cur], b, lane);
  while (true) {
    const int64_t next_gb = gb + stride;
    int64_t next_b = 0;
    const bool has_next = next_gb < total;
    const bool next_whole = has_next && locate(next_gb, next_b);
    const int next = ti;
    const auto load_next = [&] {
      if (next_whole) load_raw<K>(raw, table.t[next], next_b, lane);
    };
    const bnb_optimizer_tensor_t& t = table.t[cur];
    if (whole) {
      update_block<K, TP, 8, true, true>(t, b, args, Phase::Update, smem, trust, lane, unused_norm, &raw, load_next);
    } else {
      update_block<K, TP, 8, false>(t, b, args, Phase::Update, smem, trust, lane, unused_norm);
      load_next();
    }
    if (!has_next) break;
    gb = next_gb, b = next_b, whole = next_whole, cur = next;
  }
}

template <OptimizerKind K, typename TP, int Bits, typename Table>
__global__ void __launch_bounds__(kThreads, Bits == 8 ? kMinCtas8bit : 1)
    optimizer_kernel(const __grid_constant__ Table table, const KernelArgs args, const Phase phase) {
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
  if constexpr (Bits == 8) {
    if (phase == Phase::Update) return update_blocks_pipelined<K, TP, Table>(table, args, smem, trust);
  }
  norm_acc = update_blocks<K, TP, Bits, Table>(table, args, phase, smem, trust);
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

template <OptimizerKind K, typename TP, int Bits, typename Table>
unsigned optimizer_grid(int64_t total_blocks, int32_t device) {
  // One wave: unlike the quantizers, the optimizer step measured no faster with more (H100).
  const int64_t resident = resident_ctas<optimizer_kernel<K, TP, Bits, Table>>(device, kThreads);
  return grid_for((total_blocks + kWarps - 1) / kWarps, resident);
}

template <OptimizerKind K, typename TP, int Bits, typename Table>
void launch_optimizer(const Table& table, const KernelArgs& args, Phase phase, unsigned grid, cudaStream_t stream) {
  optimizer_kernel<K, TP, Bits, Table><<<grid, kThreads, 0, stream>>>(table, args, phase);
  BNB_CUDA_CHECK_LAUNCH("optimizer_kernel");
}

// Runs a table (single or fused, `total_blocks` blocks in all) for the runtime rule and parameter
// dtype; with the trust ratio on, the Norm pass goes first on the same stream.
template <int Bits, typename Table>
void run_table(OptimizerKind kind, bnb_dtype_t p_dtype, const Table& table, int64_t total_blocks,
               const KernelArgs& args, int32_t device, cudaStream_t stream) {
  if (total_blocks == 0) return;
  dispatch_optimizer(kind, [&](auto k) {
    dispatch_float<CudaType>(p_dtype, "p", [&](auto tp) {
      using TP = typename decltype(tp)::type;
      constexpr OptimizerKind K = decltype(k)::value;
      const unsigned grid = optimizer_grid<K, TP, Bits, Table>(total_blocks, device);
      if (!args.unorm) {
        launch_optimizer<K, TP, Bits, Table>(table, args, Phase::Update, grid, stream);
        return;
      }
      // Stream-ordered scratch for the per-CTA partial norms: no host synchronisation.
      const Scratch partials(grid * sizeof(float), device, stream);
      KernelArgs with_partials = args;
      with_partials.partials = partials.as<float>();
      launch_optimizer<K, TP, Bits, Table>(table, with_partials, Phase::Norm, grid, stream);
      launch_optimizer<K, TP, Bits, Table>(table, with_partials, Phase::Update, grid, stream);
    });
  });
}

template <typename Table>
void run_table_bits(int32_t state_bits, OptimizerKind kind, bnb_dtype_t p_dtype, const Table& table,
                    int64_t total_blocks, const KernelArgs& args, int32_t device, cudaStream_t stream) {
  if (state_bits == 8) run_table<8>(kind, p_dtype, table, total_blocks, args, device, stream);
  else run_table<32>(kind, p_dtype, table, total_blocks, args, device, stream);
}

int64_t blocks_of(int64_t n) { return (n + kOptimBlock - 1) / kOptimBlock; }

// first_block[0 .. count] of tensors t[0 .. count - 1]; returns their total block count.
int64_t write_boundaries(const bnb_optimizer_tensor_t* t, int64_t count, int64_t* first_block) {
  first_block[0] = 0;
  for (int64_t i = 0; i < count; ++i) first_block[i + 1] = first_block[i] + blocks_of(t[i].n);
  return first_block[count];
}

TensorTable<kSingle> single_table(const bnb_optimizer_tensor_t& t) {
  TensorTable<kSingle> table{};
  table.t[0] = t;
  write_boundaries(table.t, 1, table.first_block);
  table.count = 1;
  return table;
}

}  // namespace
}  // namespace bnb::cuda

namespace bnb::backend {

using namespace bnb::cuda;

void optimizer_update_32bit(OptimizerKind kind, const OptimStep& step, const Optimizer32bitParams& p, int32_t device,
                            bnb_stream_t stream) {
  DeviceGuard guard(device);
  const auto table = single_table({p.p, p.g, p.state1, p.state2, nullptr, nullptr, p.n});
  const KernelArgs args{step, nullptr, nullptr, step.trust_ratio ? p.unorm : nullptr, nullptr, p.g_dtype};
  run_table<32>(kind, p.p_dtype, table, table.first_block[1], args, device, as_cuda(stream));
}

void optimizer_update_8bit_blockwise(OptimizerKind kind, const OptimStep& step, const Optimizer8bitParams& p,
                                     int32_t device, bnb_stream_t stream) {
  DeviceGuard guard(device);
  const auto table = single_table({p.p, p.g, p.state1, p.state2, p.absmax1, p.absmax2, p.n});
  const KernelArgs args{step, p.qmap1, p.qmap2, step.trust_ratio ? p.unorm : nullptr, nullptr, p.g_dtype};
  run_table<8>(kind, p.p_dtype, table, table.first_block[1], args, device, as_cuda(stream));
}

void optimizer_update_multi(OptimizerKind kind, const OptimStep& step, const OptimizerMultiParams& m, int32_t device,
                            bnb_stream_t stream) {
  DeviceGuard guard(device);
  const cudaStream_t s = as_cuda(stream);
  const KernelArgs args{step, m.qmap1, m.qmap2, nullptr, nullptr, m.g_dtype};
  BNB_CHECK_SUPPORTED(m.count <= INT32_MAX, "a fused CUDA step takes at most ", INT32_MAX, " tensors, got ", m.count);
  if (!stream_capturing(s)) {
    // One launch for every tensor: the table (tensors, then block boundaries) in stream-ordered
    // device memory, written through a pinned staging buffer.
    const size_t tensor_bytes = sizeof(bnb_optimizer_tensor_t) * m.count;
    const size_t bytes = tensor_bytes + sizeof(int64_t) * (m.count + 1);
    const Scratch table_memory(bytes, device, s);
    int64_t total_blocks = 0;
    {  // the staging ring is locked only while its buffer is written and sent
      StagedUpload upload(bytes, device);
      std::memcpy(upload.host(), m.tensors, tensor_bytes);
      total_blocks = write_boundaries(
          m.tensors, m.count, reinterpret_cast<int64_t*>(static_cast<char*>(upload.host()) + tensor_bytes));
      upload.send(table_memory.get(), s);
    }
    const DeviceTensorTable table{table_memory.as<bnb_optimizer_tensor_t>(),
                                  reinterpret_cast<const int64_t*>(table_memory.get() + tensor_bytes),
                                  static_cast<int32_t>(m.count)};
    run_table_bits(m.state_bits, kind, m.p_dtype, table, total_blocks, args, device, s);
    return;
  }
  // Captured: in the kernel parameters, so the graph holds its own copy.
  static thread_local TensorTable<kMulti> table;
  for (int64_t first = 0; first < m.count; first += kMulti) {
    const int count = static_cast<int>(std::min<int64_t>(kMulti, m.count - first));
    std::copy(m.tensors + first, m.tensors + first + count, table.t);
    const int64_t total_blocks = write_boundaries(table.t, count, table.first_block);
    table.count = count;
    run_table_bits(m.state_bits, kind, m.p_dtype, table, total_blocks, args, device, s);
  }
}

}  // namespace bnb::backend

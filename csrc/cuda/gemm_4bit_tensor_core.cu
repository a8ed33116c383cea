// CUDA product of 17..4096 activation rows with a 4-bit weight W [N, K] on Hopper's warpgroup tensor
// cores (sm_90a), expanding the codes on the way: W is never written out in 16 bits.
//
// The product is computed transposed, out^T = W A^T, so that the weight is the MMA's A operand, which
// wgmma takes from registers: each CTA owns 128 rows of W (two consumer warpgroups of 64) and BM rows
// of A (the MMA's N: 64, 128 or 256, chosen per shape; a grid of 256-row tiles whose last wave would be
// partial ends in 128-row tiles instead), and walks K in tiles of 64. One lane of the
// producer warpgroup streams both operands into a ring of 4-8 shared-memory stages with TMA: the
// activations as a 128-byte-swizzled K-major tile (read by wgmma straight from shared memory), the weight
// as packed bytes (32 per row and tile); another warp of it stores each stage's block scales, already in
// 16 bits (double-quantized ones decoded there). Each consumer warpgroup expands its weight rows of a tile
// into MMA fragments (a byte -> pair-of-codes table, one copy per lane so that random bytes never collide
// on a bank, laid out so that a lookup's address is one byte permute; times the row's block scale in 16
// bits) and issues four k16 MMAs for it without waiting: the MMAs of tile k run while tile k + 1 is
// expanded into a second set of fragment registers, and a stage goes back to the producers once the MMAs
// that read it have completed. The epilogue adds the bias, rounds to the activation dtype and writes out
// [M, N] through shared memory in 16-byte rows.
//
// Lane (g, t) of warp w holds, per k16 step, rows g and g + 8 of its warp's 16 and columns 2t, 2t + 1,
// 2t + 8, 2t + 9: byte t of each 4-byte word of a row's packed codes. It reads the row's 32 bytes of
// the tile with two 16-byte loads and selects its bytes.
//
// Measured on the H100 (K = 8192, graph replays, same-run pairs, two rounds): the scales stored by a
// producer warp instead of loaded by every consumer lane a tile ahead, and the wide table (one byte permute
// per lookup instead of a permute and a multiply-add; 4 stages of 256 rows instead of 5), with 114
// instructions per half K tile per consumer warp instead of 132: N = 8192 M = 512 94.1-94.5 -> 90.8-91.3 us
// plain, 99.1-103.8 -> 92.6-93.6 nested, M = 4096 840-867 -> 810-828 plain; N = 28672 M = 512 380-387 ->
// 357-374 plain, 410-430 -> 397-402 nested, M = 4096 2981-2988 -> 2820-2928 plain, 3015-3025 -> 2890-2913
// nested. Then the stage barriers and scales at fixed offsets, the weight stages 32-byte swizzled (no bank
// conflicts between lanes g and g + 4), the epilogue by transposing matrix stores, and the launch overlapping
// the previous kernel: 102 instructions per half K tile, times unchanged within the scatter (two rounds). At
// M = 512, N = 8192 time grows as 2.5 + 11.2 us per 1024 of K (K = 4096, 8192, 16384), cuBLAS's dense product
// as 2.6 + 11.6: the fixed part per call is no larger than cuBLAS's. Before that, with the stages and the table read by
// LDS and the scale rows resolved once (below), N = 8192 M = 512 114-123 -> 93-107 us, M = 1024 248-264 ->
// 194-212 us; N = 28672 M = 1024 843-886 -> 729-751 us. A profile before that (M = 512) had the consumers
// issuing 200 instructions per K tile, stalled on generic loads, and the tensor pipe busy 70% of the time.
// Earlier (K = N = 8192, fp16): M = 512 107 us, M = 1024 231-255 us (114 and 243-254 when
// the two consumer warpgroups took turns on the tensor cores, each waiting for its own MMAs before
// expanding the next tile). At M = 4096 the kernel (1030 us) loses to expanding the weight once and
// multiplying with cuBLAS (835 us). With the turn-taking loop, M = 4096 took 1166 us, 942 without the
// expansion, 583 without the MMAs, 486 with neither. Tried and slower: 256 weight rows per CTA (twice the
// expansion per MMA; M = 512 136-147 us with the pipelined loop, BM = 128) and 2-CTA clusters sharing each
// activation tile by TMA multicast (M = 512: 159 vs 113 us, turn-taking loop).
#include <atomic>

#include "core/error.h"
#include "core/formats.h"
#include "cuda/common.cuh"
#include "cuda/dequantize_vectors.cuh"
#include "cuda/gemm_4bit_tensor_core.cuh"
#include "cuda/gemm_4bit_types.cuh"
#include "cuda/pair_table.cuh"
#include "cuda/sm90.cuh"
#include "cuda/tensor_map.cuh"

namespace bnb::backend {
namespace {

using cuda::kWarpSize;
namespace sm90 = cuda::sm90;

constexpr int kTileK = 64;              // K per stage: one 128-byte swizzled row of 16-bit activations
constexpr int kConsumerThreads = 256;
constexpr int kThreads = 128 + kConsumerThreads;  // warpgroup 0 produces (one lane), 1 and 2 consume
constexpr int kProducerRegisters = 56;  // registers move from the producers to the consumers
constexpr int kConsumerRegisters = 224;
using cuda::kPairTableWords;
// CTAs launched in turn cycle over this many weight tiles (sm90::grouped_tile), so that a wave of CTAs reads
// few activation tiles: at K = N = 8192, M = 4096 a wave then covers about 2 activation tiles (8 MB) and the
// whole 4-bit weight (32 MB), which stays in L2 from one wave to the next. H100, K = 8192, graph replays, two
// rounds, groups of 16 -> 64 (8 -> all in brackets): N = 8192 M = 4096 823-834 -> 790-804 us (824-850 /
// 789-800); N = 28672 M = 4096 2884-2891 -> 2872-2906 (2931-2996 / 3012-3017), M = 512 364-383 -> 364-365;
// N = 8192 M = 512 90.4-90.5 -> 90.2.
constexpr int kGroupN = 64;
constexpr int kSmemBudget = 227 * 1024;

// Named barriers of the consumer warpgroups (0 is __syncthreads).
constexpr int kConsumersDone = 1;
__device__ __forceinline__ void named_barrier_sync(int id) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "n"(kConsumerThreads) : "memory");
}

// A CTA's tile: 128 MB rows of W (each consumer warpgroup MB blocks of 64) by BM rows of A. Larger MB
// reads each activation tile for more weight rows: the activations, not the 4-bit weight, are most of
// the bytes a CTA pulls from L2.
template <int MB, int BM>
struct TileShape {
  static constexpr int kWeightRows = 128 * MB;
  static constexpr int kActBytes = BM * kTileK * 2;
  static constexpr int kWeightBytes = kWeightRows * kTileK / 2;
  static constexpr int kStageBytes = kActBytes + kWeightBytes;
  static constexpr int kScalePairs = kWeightRows / 2;  // per stage: a word of two rows' scales
  // The wide pair table, the nested code, the stage barriers and the stages' scales (room for 8 stages
  // each), then the stages (1024-byte aligned).
  static constexpr int kTableBytes = 2 * kPairTableWords * 4;
  static constexpr int kFixedBytes = kTableBytes + 1024 /* alignment */ + 256 * 4 + 2 * 8 * 8 + 8 * kScalePairs * 4;
  // As many stages as fit (at most 8).
  static constexpr int kRoom = kSmemBudget - kFixedBytes;
  static constexpr int kStages = kRoom / kStageBytes > 8 ? 8 : kRoom / kStageBytes;
  static constexpr int kOutStride = kWeightRows + 8;  // elements per staged output row (no bank conflicts)
  static_assert(BM * kOutStride * 2 <= kStages * kActBytes, "the output tile fits in the activation stages");
  static constexpr int kSmemBytes = kFixedBytes + kStages * kStageBytes;
};

struct TensorCoreArgs {
  const float* absmax;       // per block, or the second-level scales (nested)
  const uint8_t* absmax_q;   // nested: per block codes
  const float* absmax_code;  // nested: [256]
  const float* absmax_offset;
  const void* bias;
  void* out;
  int32_t M, N, K;
  int32_t log2_blocksize;
  float code[16];
};

// One row's block scale for a K tile, fetched a tile ahead: plain scales directly, nested ones as
// their code and second-level scale (decoded when used, as dequantize_blockwise + offset rounds). The
// row's first block is resolved once: a fetch is one load at a small offset from it (the 64-bit
// index arithmetic per tile and row, done by every consumer lane, was once a fifth of their
// instructions).
template <bool Nested>
struct RowScale {
  const float* scales = nullptr;    // plain: the row's first scale; nested: unused
  const uint8_t* codes = nullptr;   // nested: the row's first code
  int64_t first = 0;                // nested: the row's first block (its second-level scale index)
  float v = 0.0f;
  uint32_t q = 0;

  __device__ __forceinline__ void init(const TensorCoreArgs& args, int64_t first_block) {
    if constexpr (Nested) {
      codes = args.absmax_q + first_block;
      first = first_block;
      asm volatile("" : "+l"(codes), "+l"(first));
    } else {
      scales = args.absmax + first_block;
      // Opaque to the compiler, which otherwise recomputed the row's address from the thread index
      // at every tile (about 30 instructions per tile on the consumers' critical path).
      asm volatile("" : "+l"(scales));
    }
  }
  __device__ __forceinline__ void fetch(const TensorCoreArgs& args, int block) {
    if constexpr (Nested) {
      q = __ldg(codes + block);
      v = __ldg(args.absmax + ((first + block) >> 8));
    } else {
      v = __ldg(scales + block);
    }
  }
  __device__ __forceinline__ float value(const float* nested_code, float offset) const {
    if constexpr (Nested) return decode_nested_scale(nested_code[q], v, offset);
    return v;
  }
};

// A weight row's place in a stage's scale words: rows r and r + 8 of each 16 share word (r / 16) * 8 + r % 8
// (r low, r + 8 high), the two rows a consumer lane multiplies.
__device__ __forceinline__ int scale_pair_of(int r) { return (r / 16) * 8 + r % 8; }

// One warp of the producer warpgroup stores every stage's block scales, in the activation dtype and paired
// as the consumers use them, and counts itself (all 32 lanes) on the stage's `full` barrier. The consumers
// then read one word per tile where they waited on global loads, and double-quantized scales are decoded
// here, off their path. Each scale is fetched a tile ahead and read once its stage is free.
template <typename T, int Rows, int Stages, bool Nested>
__device__ __forceinline__ void fill_scales(const TensorCoreArgs& args, int n0, int k_tiles, uint32_t* scale_stages,
                                            uint64_t* full, uint64_t* empty, const float* nested_code, float offset,
                                            int lane) {
  constexpr int kPairs = Rows / 2;
  constexpr int kPerLane = kPairs / kWarpSize;
  static_assert(kPairs % kWarpSize == 0, "every lane fills the same number of scale words");
  const int64_t blocks_per_row = static_cast<int64_t>(args.K) >> args.log2_blocksize;
  RowScale<Nested> scale[kPerLane][2];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int pair = lane + i * kWarpSize;
      const int r = (pair / 8) * 16 + pair % 8 + 8 * h;
      scale[i][h].init(args, min(n0 + r, args.N - 1) * blocks_per_row);
      scale[i][h].fetch(args, 0);
    }
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % Stages;
    sm90::mbar_wait(&empty[s], ((kt / Stages) & 1) ^ 1);
    uint32_t words[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const typename cuda::Vec2<T>::type w =
          cuda::Vec2<T>::pack(scale[i][0].value(nested_code, offset), scale[i][1].value(nested_code, offset));
      words[i] = *reinterpret_cast<const uint32_t*>(&w);
    }
    if (kt + 1 < k_tiles) {
      const int block = ((kt + 1) * kTileK) >> args.log2_blocksize;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) scale[i][h].fetch(args, block);
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) scale_stages[s * kPairs + lane + i * kWarpSize] = words[i];
    sm90::mbar_arrive(&full[s]);
  }
}

// The CTA's work for tile `cta` of the weight rows [n_begin, args.N) with BM activation rows per tile.
// `smem_raw` is the kernel's dynamic shared memory.
template <typename T, int MB, int BM, bool Nested>
__device__ __forceinline__ void multiply_tile(const CUtensorMap& act_map, const CUtensorMap& weight_map,
                                              const TensorCoreArgs& args, uint8_t* smem_raw, int cta,
                                              int n_begin, int n_end) {
  using Shape = TileShape<MB, BM>;
  constexpr int kStages = Shape::kStages;
  constexpr int kWeightRows = Shape::kWeightRows;
  using V2 = cuda::Vec2<T>;
  // Everything but the stages first, at offsets the compiler knows (it rebuilt addresses past the
  // alignment padding at every tile).
  uint32_t* table = reinterpret_cast<uint32_t*>(smem_raw);
  float* nested_code = reinterpret_cast<float*>(smem_raw + Shape::kTableBytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(nested_code + 256);
  uint64_t* empty = full + 8;
  uint32_t* scale_stages = reinterpret_cast<uint32_t*>(empty + 8);  // kStages x [kScalePairs]
  uint8_t* smem = reinterpret_cast<uint8_t*>(scale_stages + 8 * Shape::kScalePairs);
  // Aligned by an offset from the shared array itself: a pointer rebuilt from an integer is generic to
  // the compiler, and every read of the stages then compiled to a generic load (address-space check,
  // 64-bit address, the long scoreboard) instead of an LDS (K = N = 8192, M = 512: 123 -> 104 us).
  smem += (1024 - (sm90::smem_addr(smem) & 1023)) & 1023;
  uint8_t* act_stages = smem;                                        // kStages x [BM][64], 128-byte swizzled
  uint8_t* weight_stages = act_stages + kStages * Shape::kActBytes;  // kStages x [rows][32], 32-byte swizzled

  // Tile order: CTAs launched together share weight tiles (kGroupN of them) and activation tiles.
  const sm90::TileCoord tile =
      sm90::grouped_tile(cta, (args.M + BM - 1) / BM, (n_end - n_begin + kWeightRows - 1) / kWeightRows, kGroupN);
  const int n0 = n_begin + tile.n_tile * kWeightRows;
  const int m0 = tile.m_tile * BM;
  const int k_tiles = args.K / kTileK;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  // Launched to overlap the end of the kernel before it (launch_with_smem_after_previous): the barriers and
  // the pair table (from the parameters) are set up before waiting for it, the inputs read only after.
  cuda::allow_next_kernel();
  if (threadIdx.x == 0) sm90::init_stage_barriers<kStages>(full, empty, kConsumerThreads / kWarpSize, 1 + kWarpSize);
  cuda::fill_pair_table<T>(table, args.code, /*wide=*/true, threadIdx.x, kThreads);
  cuda::wait_for_previous_kernel();
  float offset = 0.0f;
  if constexpr (Nested) {
    for (int i = threadIdx.x; i < 256; i += kThreads) nested_code[i] = args.absmax_code[i];
    offset = *args.absmax_offset;
  }
  __syncthreads();

  if (warp < 4) {
    // Producers: one lane keeps every stage's operands coming, warp 1 stores its scales.
    sm90::set_max_registers_dec<kProducerRegisters>();
    if (threadIdx.x == 0)
      sm90::produce_stages<kStages>(k_tiles, full, empty, {&act_map, act_stages, Shape::kActBytes, kTileK, m0},
                                    {&weight_map, weight_stages, Shape::kWeightBytes, kTileK / 2, n0});
    else if (warp == 1)
      fill_scales<T, kWeightRows, kStages, Nested>(args, n0, k_tiles, scale_stages, full, empty, nested_code, offset,
                                                   lane);
    return;
  }

  // Consumers.
  sm90::set_max_registers_inc<kConsumerRegisters>();
  const int consumer = warp / 4 - 1;  // consumer warpgroup 0 or 1
  const int g = lane / 4, t = lane % 4;
  // This lane's rows of W (within the CTA's tile): r[b] and r[b] + 8 of each 64-row block b.
  int r[MB];
  int64_t row[MB][2];  // the same as global rows, clamped to N - 1 (scales, bias)
#pragma unroll
  for (int b = 0; b < MB; ++b) {
    r[b] = (consumer * MB + b) * 64 + (warp % 4) * 16 + g;
    row[b][0] = min(n0 + r[b], args.N - 1);
    row[b][1] = min(n0 + r[b] + 8, args.N - 1);
  }
  // A lookup's offset into the wide table, byte t of the word * 256 + lane * 4, is one byte permute.
  uint32_t byte_select = 0x5504u | static_cast<uint32_t>(t) << 4;
  uint32_t lane4 = static_cast<uint32_t>(lane) * 4;
  // Byte offsets of the first 16 code bytes of this lane's rows r[b] and r[b] + 8 in a weight stage (the
  // second 16 are at offset ^ 16): the stage is 32-byte swizzled, which swaps the halves of rows 4..7 of
  // every 8 so that lanes g and g + 4 read different banks.
  uint32_t row_bytes[MB][2];
#pragma unroll
  for (int b = 0; b < MB; ++b)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row_in_stage = r[b] + 8 * h;
      row_bytes[b][h] = row_in_stage * 32 + ((row_in_stage >> 2) & 1) * 16;
      // Opaque to the compiler, which otherwise recomputed these from the thread index at every tile.
      asm volatile("" : "+r"(row_bytes[b][h]));
    }
  asm volatile("" : "+r"(byte_select), "+r"(lane4));
  const char* table_bytes = reinterpret_cast<const char*>(table);
  auto expand = [&](uint32_t word, typename V2::type scale) {
    const uint32_t pair = *reinterpret_cast<const uint32_t*>(table_bytes + __byte_perm(word, lane4, byte_select));
    return cuda::scale_pair_word<T>(pair, scale);
  };

  int scale_pair[MB];
#pragma unroll
  for (int b = 0; b < MB; ++b) scale_pair[b] = scale_pair_of(r[b]);

  float acc[MB][BM / 2];
#pragma unroll
  for (int b = 0; b < MB; ++b)
#pragma unroll
    for (int i = 0; i < BM / 2; ++i) acc[b][i] = 0.0f;
  // Software pipeline per consumer warpgroup: tile kt's MMAs run while tile kt + 1 is expanded into the
  // other fragment set (wgmma.wait_group 1 leaves one group in flight); a stage is released once the
  // MMAs that read it have completed.
  auto expand_tile = [&](int kt, uint32_t (&frag)[MB][4][4]) {
    const int s = static_cast<unsigned>(kt) % kStages;
    sm90::mbar_wait(&full[s], (kt / kStages) & 1);
    typename V2::type scale[MB][2];
#pragma unroll
    for (int b = 0; b < MB; ++b) {
      const typename V2::type both =
          *reinterpret_cast<const typename V2::type*>(scale_stages + s * Shape::kScalePairs + scale_pair[b]);
      scale[b][0] = V2::low(both), scale[b][1] = V2::high(both);
    }
    const uint8_t* w = weight_stages + s * Shape::kWeightBytes;
#pragma unroll
    for (int b = 0; b < MB; ++b) {
      uint32_t words[2][8];  // the 32 code bytes of rows r and r + 8
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 lo = *reinterpret_cast<const uint4*>(w + row_bytes[b][h]);
        const uint4 hi = *reinterpret_cast<const uint4*>(w + (row_bytes[b][h] ^ 16));
        words[h][0] = lo.x, words[h][1] = lo.y, words[h][2] = lo.z, words[h][3] = lo.w;
        words[h][4] = hi.x, words[h][5] = hi.y, words[h][6] = hi.z, words[h][7] = hi.w;
      }
#pragma unroll
      for (int step = 0; step < 4; ++step) {
        frag[b][step][0] = expand(words[0][2 * step], scale[b][0]);      // row g, columns 2t, 2t + 1
        frag[b][step][1] = expand(words[1][2 * step], scale[b][1]);      // row g + 8
        frag[b][step][2] = expand(words[0][2 * step + 1], scale[b][0]);  // row g, columns 2t + 8, 2t + 9
        frag[b][step][3] = expand(words[1][2 * step + 1], scale[b][1]);
      }
    }
  };
  // A stage's descriptor is the first one's plus its offset (the start address field counts 16 bytes).
  uint64_t act_desc = sm90::kmajor_sw128_desc(act_stages);
  asm volatile("" : "+l"(act_desc));  // not rebuilt from the stage address at every tile
  auto issue_tile = [&](int kt, uint32_t (&frag)[MB][4][4]) {
    const int s = static_cast<unsigned>(kt) % kStages;
    uint64_t desc[4];
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      desc[step] = act_desc + s * (Shape::kActBytes >> 4) + 2 * step;
#pragma unroll
      for (int b = 0; b < MB; ++b) sm90::fence_operands(frag[b][step], desc[step]);
    }
#pragma unroll
    for (int b = 0; b < MB; ++b) sm90::fence_accumulators(acc[b]);
    sm90::wgmma_fence();
#pragma unroll
    for (int step = 0; step < 4; ++step)
#pragma unroll
      for (int b = 0; b < MB; ++b) sm90::Wgmma<BM, T>::run(acc[b], frag[b][step], desc[step]);
    sm90::wgmma_commit();
  };
  uint32_t frag0[MB][4][4], frag1[MB][4][4];
  expand_tile(0, frag0);
  for (int kt = 0; kt < k_tiles; kt += 2) {
    issue_tile(kt, frag0);
    sm90::wgmma_wait<1>();  // tile kt - 1 is done: frag1 and its stage are free
    if (kt > 0 && lane == 0) sm90::mbar_arrive(&empty[static_cast<unsigned>(kt - 1) % kStages]);
    if (kt + 1 < k_tiles) {
      expand_tile(kt + 1, frag1);
      issue_tile(kt + 1, frag1);
      sm90::wgmma_wait<1>();  // tile kt is done
      if (lane == 0) sm90::mbar_arrive(&empty[static_cast<unsigned>(kt) % kStages]);
      if (kt + 2 < k_tiles) expand_tile(kt + 2, frag0);
    }
  }
  sm90::wgmma_wait<0>();
#pragma unroll
  for (int b = 0; b < MB; ++b) sm90::fence_accumulators(acc[b]);

  // Epilogue: every consumer is done with the stages; stage the [BM][rows] output tile there, four 8 x 8
  // pieces per transposing matrix store (a warp's accumulators hold weight rows by activation rows; the
  // staged tile is activation rows by weight rows). Lane l addresses row l % 8 of piece l / 8: pieces 0 and 1
  // are activation rows 8j.. of the warp's weight rows 0..7 and 8..15, pieces 2 and 3 the same for 8(j + 1)..
  named_barrier_sync(kConsumersDone);
  T* staged = reinterpret_cast<T*>(act_stages);
  const T* bias = static_cast<const T*>(args.bias);
  const int piece = lane / 8, piece_row = lane % 8;
#pragma unroll
  for (int b = 0; b < MB; ++b) {
    const float bias_lo = bias ? cuda::to_f32(bias[row[b][0]]) : 0.0f;
    const float bias_hi = bias ? cuda::to_f32(bias[row[b][1]]) : 0.0f;
    const int warp_rows = (consumer * MB + b) * 64 + (warp % 4) * 16;
#pragma unroll
    for (int j = 0; j < BM / 8; j += 2) {
      uint32_t pieces[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float* sums = &acc[b][4 * (j + q / 2) + 2 * (q % 2)];
        const float add = q % 2 ? bias_hi : bias_lo;
        const typename V2::type v = V2::pack(sums[0] + add, sums[1] + add);
        pieces[q] = *reinterpret_cast<const uint32_t*>(&v);
      }
      sm90::store_matrices_transposed(
          staged + (8 * (j + piece / 2) + piece_row) * Shape::kOutStride + warp_rows + 8 * (piece % 2), pieces);
    }
  }
  named_barrier_sync(kConsumersDone);
  sm90::store_tile<BM, kWeightRows>(staged, Shape::kOutStride, static_cast<T*>(args.out), args.M, args.N, m0, n0,
                                    threadIdx.x - 128, kConsumerThreads);
}

// Tiles of BM activation rows over the weight rows [0, tail_n0), then (BMTail > 0, from CTA tail_cta on)
// tiles of BMTail rows over [tail_n0, N): CTAs start in index order, so the smaller tiles fill the SMs
// that the last, partial wave of large tiles would leave idle.
template <typename T, int MB, int BM, int BMTail, bool Nested>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_4bit_tensor_core(const __grid_constant__ CUtensorMap act_map, const __grid_constant__ CUtensorMap tail_act_map,
                          const __grid_constant__ CUtensorMap weight_map, const __grid_constant__ TensorCoreArgs args,
                          int tail_cta, int tail_n0) {
#ifdef BNB_SM90A_DEVICE
  extern __shared__ uint8_t smem_raw[];
  const int cta = static_cast<int>(blockIdx.x);
  if (BMTail == 0 || cta < tail_cta) {
    multiply_tile<T, MB, BM, Nested>(act_map, weight_map, args, smem_raw, cta, 0, BMTail ? tail_n0 : args.N);
  } else if constexpr (BMTail > 0) {
    multiply_tile<T, MB, BMTail, Nested>(tail_act_map, weight_map, args, smem_raw, cta - tail_cta, tail_n0,
                                         args.N);
  }
#endif
}

bool is_sm90(int32_t device) { return cuda::compute_capability(device) == 90; }

// Tiles of BM rows over [0, tail_n0) and, with BMTail > 0, of BMTail rows over [tail_n0, N).
template <typename T, int MB, int BM, int BMTail, bool Nested>
void launch(const Gemm4bitParams& p, int64_t tail_n0, int32_t device, cudaStream_t stream) {
  using Shape = TileShape<MB, BM>;
  using TailShape = TileShape<MB, BMTail == 0 ? BM : BMTail>;
  constexpr int kSmemBytes = Shape::kSmemBytes > TailShape::kSmemBytes ? Shape::kSmemBytes : TailShape::kSmemBytes;
  auto kernel = gemm_4bit_tensor_core<T, MB, BM, BMTail, Nested>;
  static std::atomic<uint64_t> opted_in{0};
  cuda::allow_dynamic_smem(kernel, kSmemBytes, device, opted_in);
  const CUtensorMapDataType act_type =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUtensorMap act_map = cuda::tensor_map_2d(p.A, act_type, 2, p.M, p.K, BM, kTileK, CU_TENSOR_MAP_SWIZZLE_128B);
  constexpr int kTailRows = BMTail == 0 ? BM : BMTail;
  const CUtensorMap tail_act_map =
      BMTail == 0 ? act_map
                  : cuda::tensor_map_2d(p.A, act_type, 2, p.M, p.K, kTailRows, kTileK, CU_TENSOR_MAP_SWIZZLE_128B);
  const CUtensorMap weight_map = cuda::tensor_map_2d(p.packed, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.N, p.K / 2,
                                                     Shape::kWeightRows, kTileK / 2, CU_TENSOR_MAP_SWIZZLE_32B);
  TensorCoreArgs args{p.absmax, p.absmax_q, p.absmax_code, p.absmax_offset, p.bias, p.out,
                      static_cast<int32_t>(p.M), static_cast<int32_t>(p.N), static_cast<int32_t>(p.K),
                      cuda::log2_of(p.blocksize), {}};
  const float* values = p.qtype == QuantType::NF4 ? kNF4Values : kFP4Values;
  for (int i = 0; i < 16; ++i) args.code[i] = values[i];
  const int64_t rows = Shape::kWeightRows;
  const int64_t head_n = BMTail == 0 ? p.N : tail_n0;
  const int64_t head = ((p.M + BM - 1) / BM) * ((head_n + rows - 1) / rows);
  const int64_t tail = BMTail == 0 ? 0 : ((p.M + BMTail - 1) / BMTail) * ((p.N - tail_n0 + rows - 1) / rows);
  cuda::launch_with_smem_after_previous(kernel, static_cast<unsigned>(head + tail), kThreads, kSmemBytes, stream, device,
                                        /*overlap=*/true, act_map, tail_act_map, weight_map, args,
                                        static_cast<int>(head), static_cast<int>(head_n));
  BNB_CUDA_CHECK_LAUNCH("gemm_4bit_tensor_core");
}

// Cost of a CTA of bm activation rows in the model below: a K tile costs about bm + 64 row-units (the
// expansion and the MMA latency are paid per tile whatever bm is).
constexpr int64_t tile_cost(int64_t bm) { return bm + 64; }

// Activation rows per CTA: the fewest waves of CTAs times the work of one. Fits the H100
// measurements at K = 8192: N = 8192 takes BM = 64 up to M = 128, 128 at 256, 256 from 512 on;
// N = 28672 takes 64 at 32 rows, 128 at 128, 256 from 256 on.
// `cost` receives the chosen size's cost.
int rows_per_cta(int64_t M, int64_t N, int sms, int64_t& cost) {
  int best = 64;
  int64_t best_cost = INT64_MAX;
  for (int bm : {64, 128, 256}) {
    const int64_t ctas = (M + bm - 1) / bm * ((N + 127) / 128);
    const int64_t total = (ctas + sms - 1) / sms * tile_cost(bm);
    if (total < best_cost) best = bm, best_cost = total;
  }
  cost = best_cost;
  return best;
}

// Where the 256-row tiles end when the weight rows past them take 128-row tiles (0: one size for all):
// whole waves of 256-row CTAs, then the remaining weight tiles in 128-row CTAs, which start as the
// large ones finish instead of leaving most SMs idle in a last partial wave of large ones. H100, K =
// 8192, N = 28672, graph replays, two rounds: M = 512 fp16 368 -> 343 us (plain), 374-388 -> 351-363 us
// (nested), bf16 within noise; M = 4096 fp16 plain 2959-3114 -> 2851-2880 us. Tried instead: stream-K, one
// CTA per SM sharing the tiles past the last whole wave by K (fp32 sums handed on through scratch memory,
// added in a fixed order). No gain (fp16, graph replays, two rounds, tail -> stream-K): N = 8192 M = 4096
// plain 849-850 -> 842-858 us, nested 900-902 -> 895-902; N = 28672 M = 512 plain 365-372 -> 370-374, nested
// 403-408 -> 395-406; M = 4096 plain 3005-3034 -> 3021-3026, nested 3128-3133 -> 3077-3081. For a single
// partial wave (N = 8192 M = 512, 128 tiles on 132 SMs) it was slower: 93 -> 103 us. At these shapes the
// GPU runs at its power cap, where the SMs a partial wave leaves idle cost little. Also tried: persistent CTAs
// (one per SM walking the 256-row tiles, the stage ring running on into the next tile while each warp writes its
// output through a 1 KB buffer of its own). N = 8192 M = 4096 plain 814-846 -> 817-847 us, nested 881-885 ->
// 856-859; instead of the 128-row tail at N = 28672: M = 512 plain 371-373 -> 387-388, M = 4096 within the
// scatter. Not kept: 3% on one nested shape only. Also tried: 2-CTA clusters whose CTAs share one activation
// tile, each copying half of every stage's activation box into both by TMA multicast (L2 -> SM bytes per CTA
// and K tile 36 -> 20 KB; a stage freed once both CTAs' consumers released it). Correct, but no gain (fp16,
// graph replays, two rounds, no pairs -> pairs): N = 8192 M = 512 89.6 -> 89.6 us; M = 4096 plain 787-791 ->
// 810-846 (slower), nested 872-873 -> 817-843; N = 28672 M = 4096 within the scatter; pairs instead of the
// 128-row tail at N = 28672 M = 512 361-375 -> 411-427. Branch lab/tc-act-multicast.
int64_t tail_start_256(int64_t M, int64_t N, int sms, int64_t single_cost) {
  const int64_t tiles_n = (N + 127) / 128, tiles_m = (M + 255) / 256;
  const int64_t waves = tiles_m * tiles_n / sms;
  const int64_t head_tiles = waves * sms / tiles_m;  // weight tiles in whole waves of large CTAs
  if (waves == 0 || head_tiles >= tiles_n) return 0;
  const int64_t tail_ctas = (tiles_n - head_tiles) * ((M + 127) / 128);
  const int64_t cost = waves * tile_cost(256) + (tail_ctas + sms - 1) / sms * tile_cost(128);
  return cost < single_cost ? head_tiles * 128 : 0;
}

template <typename T, bool Nested>
void launch_for_rows(const Gemm4bitParams& p, int32_t device, cudaStream_t stream) {
  // One weight block of 64 rows per warpgroup (MB = 1): with two, the expansion per K tile doubles and
  // the kernel was slower at every shape measured, although each CTA reads fewer activation bytes.
  const int sms = cuda::sm_count(device);
  int64_t cost = 0;
  switch (rows_per_cta(p.M, p.N, sms, cost)) {
    case 64: return launch<T, 1, 64, 0, Nested>(p, 0, device, stream);
    case 128: return launch<T, 1, 128, 0, Nested>(p, 0, device, stream);
    default:
      if (const int64_t tail_n0 = tail_start_256(p.M, p.N, sms, cost))
        return launch<T, 1, 256, 128, Nested>(p, tail_n0, device, stream);
      return launch<T, 1, 256, 0, Nested>(p, 0, device, stream);
  }
}

}  // namespace

bool gemm_4bit_tensor_core_serves(const Gemm4bitParams& p, int32_t device) {
#ifndef BNB_CUDA_SM90A
  (void)p, (void)device;
  return false;
#else
  // TMA: 16-byte aligned bases and row strides; 16-byte output rows; K tiles of 64 inside one block.
  const bool shapes = p.M > 0 && p.M <= kTensorCoreMaxRows && p.N <= INT32_MAX && p.K <= INT32_MAX && p.K >= kTileK &&
                      p.K % kTileK == 0 &&
                      p.N % 8 == 0 && p.blocksize >= kTileK && p.K % p.blocksize == 0 &&
                      (p.a_dtype == BNB_DTYPE_FLOAT16 || p.a_dtype == BNB_DTYPE_BFLOAT16);
  const bool aligned = cuda::is_aligned(p.A, 16) && cuda::is_aligned(p.packed, 16) && cuda::is_aligned(p.out, 16);
  return shapes && aligned && is_sm90(device);
#endif
}

void gemm_4bit_tensor_core(const Gemm4bitParams& p, int32_t device, cudaStream_t stream) {
  with_activation_type_and_nesting(p, [&](auto type, auto nested) {
    launch_for_rows<decltype(type), decltype(nested)::value>(p, device, stream);
  });
}

}  // namespace bnb::backend

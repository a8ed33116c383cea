// CUDA product of 9..16 activation rows with a 4-bit weight W [N, K] on Hopper, the weight's codes and
// scales and the activations staged together in shared memory by tensor copies (gemm_4bit_streamed.cu serves
// 1..8 rows; gemm_4bit.cu's register-fed kernel the shapes neither takes).
//
// In the other few-row kernels each warp reads the activation columns of its own weight rows straight from
// global memory. A 16-row weight tile at K = 8192 is 64 KB of codes but 256 KB of 16 activation rows, and
// L1 cannot keep them from one tile to the next: four times the weight's bytes cross from L2 per tile. Here
// the consumer warps of a CTA work on different 16-row tiles at the same columns, so one staged copy of each
// chunk of the activations serves 7 or 8 tiles: the activations' bytes become about half the weight's.
//
// A CTA (at most one per SM, persistent) owns a contiguous range of tiles (the ranges differ by at most one
// tile) and takes them in passes of one tile per consumer warp, each pass over all of K in stages. One producer
// warp copies each stage: per tile the codes (128-byte swizzled, one [16 rows, pieces, 128 bytes] box) and the
// block scales as a [16 rows, blocks] box of floats (instead stored by a scale warp for double-quantized
// weights, decoded from their 8-bit codes, and on split stages: kScaleWarp), and the chunk's activations as
// [16 rows, 64 columns] boxes (128-byte swizzled; rows past M read as zeros). A pass with a tile for every
// consumer has consecutive rows: its scales and codes come as one box each for all its tiles, laid out as the
// per-tile boxes would be. Within a 64-column group lane (g, t) reads 8 bytes (columns [16t, 16t + 16)) of
// weight rows g and g + 8 and the same 16 columns of activation rows g and g + 8, with the mma's k index
// permuted to fit as in gemm_4bit.cu.
//
// Two stage shapes: 512 columns in 3 stages for 8 consumer warps, or 1024 columns in 2 stages for 7 (the
// most that fit shared memory), taken where it needs no more passes (N = 28672 on 132 SMs: 14 tiles per
// CTA, 2 passes either way; N = 16384: 8 tiles, 1 pass against 2). On grids of one wave of the register-fed
// kernel (at most 4 tiles per SM) a CTA has at most 4 tiles, and 8 warps on them split each tile's groups two
// ways (512-column stages), the second warp handing its sums to the first through shared memory. H100, K =
// 8192, graph replays, two rounds, register-fed -> split: N = 4096 M = 16 18.2-18.6 -> 14.4-14.5 us plain,
// 19.9-20.0 -> 16.0 nested (M = 9: 17.1-17.4 -> 14.5, 18.6 -> 16.0); N = 8192 plain 22.0 -> 20.1 (M = 9 21.0
// -> 20.0), nested 22.1 -> 22.2-22.4 (M = 9 20.7-20.9 -> 22.2-22.4, then with the consumers decoding the
// scales; with the scale warp see below); K = 4096, N = 4096 plain
// 10.7 -> 8.65, nested 11.35 -> 9.55. (Before the stages were read by LDS, one warp per tile on those
// grids: N = 8192 M = 16 22.1 -> 26.2 us.)
// H100, K = 8192, graph replays, two rounds (register-fed kernel before): N = 28672 M = 16 86.5-87.0 ->
// 70.1-70.9 us plain, 87.2-87.6 -> 72.4-73.0 nested with narrow stages, wide stages 69.7-69.9 / 64.8-65.0
// (the same run: narrow 69.7-70.1 / 72.3-72.4; on slower instances narrow 73.0 / 73.1, wide 65.2 / 67.1);
// N = 20480 narrow 63.5 / 63.4, wide 57.2 / 57.1; N = 16384 M = 16 46.4-46.6 -> 38.4-39.3 / 46.9-47.0 ->
// 38.9-39.3 narrow, wide 56.8 / 54.6 (two passes). Then reading the stages by LDS instead of generic loads
// (align_shared_1024) and plain weights' codes in row runs: N = 28672 70.2 -> 59.0 plain, 65.5 -> 57.7 nested;
// N = 20480 58.6-58.8 -> 49.2 / 55.6 -> 47.7; N = 16384 39.0-39.5 -> 33.3-33.4 / 39.5 -> 35.8.
// One box per full pass instead of one per tile (scales; plain codes), H100, K = 8192, M = 16, graph replays, two
// rounds on each of two machines: N = 8192 plain 21.4-21.6 -> 20.2-20.3 us and 22.0-22.2 -> 20.8-20.9; N = 16384,
// 28672 and nested weights unchanged within the scatter. Tried with it and not kept (same runs): the activations
// as one 3-D box per stage too (20.5 us); 1024-column split stages (21.2); each CTA starting at its own chunk so
// that the CTAs read different columns at a time (23.1-23.3 at N = 8192, 33.8 -> 33.0 at N = 16384); 4 or 5
// split stages instead of 3 (19.8-20.2 against 20.2-20.3); 256-column stages, 8 of them (24.8).
// Measured and not kept: 1..8 rows here (one operand, 8-row activation boxes): 61-62 us at N = 28672
// whatever M, against 49-64 us streamed, though faster at N = 16384 M = 8 (34.0-34.8 us against 36.8-39.2);
// an L2 prefetch of each row's next 1 KB or 2 KB of codes: 70.9 -> 93.6 / 86.9 us; passes of equal size
// (14 tiles as 7 + 7): N = 28672 73.0 -> 70.8 but N = 20480 63.5 -> 68.6; separate rings with the weights
// two stages ahead of the activations (4 + 2 stages): slower everywhere (N = 28672 72.6-74.9 -> 77.2-78.0);
// 6 consumers with wide stages: 82 us at N = 28672; pairs of CTAs (2-CTA clusters) sharing each stage's
// activations, each copying half of the boxes into both by multicast (the consumers releasing a stage in both):
// N = 4096 M = 16 15.2 -> 14.2 us plain but 14.5 -> 14.6 nested, N = 8192 19.6 -> 19.8 plain, 19.6 -> 20.3
// nested; on the narrow and wide stages too, N = 16384 32.8 -> 33.4, N = 28672 57.3 -> 57.8 (the activations'
// second read from L2 is not what bounds these; a consumer's remote release must not be a cluster-scope
// release, which compiles to a GPU-wide fence per stage: 1.2-1.4 us per stage).
#include <atomic>

#include "core/error.h"
#include "core/formats.h"
#include "cuda/common.cuh"
#include "cuda/gemm_4bit_staged.cuh"
#include "cuda/gemm_4bit_types.cuh"
#include "cuda/gemv_args.cuh"
#include "cuda/pair_table.cuh"
#include "cuda/sm90.cuh"
#include "cuda/tensor_map.cuh"

namespace bnb::backend {
namespace {

using cuda::kWarpSize;
namespace sm90 = cuda::sm90;

constexpr int kTileRows = 16;                     // weight rows per tile: the mma's 16-row operand
constexpr int kBlocksize = 64;                    // the blocksize served
constexpr int kBoxBytes = 128;                    // codes per row in one swizzled box (the swizzle's span)
constexpr int kGroupCols = 64;                    // columns per mma group (4 k16 steps): one block
constexpr int kOps = 2;                           // n8 activation operands: rows 0..7 and 8..15
constexpr int kHandOverBarrier = 1;               // named barrier of the consumers (split tiles)

// Columns per stage, stages, consumer warps (one producer warp besides), consumer warps per tile (each takes
// an equal share of a stage's groups; the first adds the others' sums).
template <int ChunkCols, int Stages, int Consumers, int WarpsPerTile = 1, bool EqualTiles = true>
struct StagedShape {
  static constexpr int kChunkCols = ChunkCols, kStages = Stages, kConsumers = Consumers;
  static constexpr bool kEqualTiles = EqualTiles;  // see staged_grid
  static constexpr int kWarpsPerTile = WarpsPerTile, kTilesPerPass = Consumers / WarpsPerTile;
  static constexpr int kThreads = (Consumers + 1) * kWarpSize;
  static constexpr int kGroups = ChunkCols / kGroupCols;
  static constexpr int kChunkBlocks = ChunkCols / kBlocksize;
  static constexpr int kBoxes = ChunkCols / 2 / kBoxBytes;
  static constexpr int kCodeTileBytes = kTileRows * ChunkCols / 2;
};

// A tile's codes come as one 3-D box per stage, [16 rows][kBoxes][128 bytes], whose requests run along each row;
// the copy engine streams them faster than 2-D boxes of [16 rows][128 bytes] per piece (H100, K = 8192, M = 16,
// graph replays, two rounds, 2-D -> row runs: N = 28672 61.7 -> 59.0 us, N = 20480 50.4-50.6 -> 48.9-49.2,
// N = 16384 33.9-34.0 -> 33.1-33.3). The consumers' code loads then meet 2-way (narrow) or 4-way (wide) bank
// conflicts, as each row's pieces are consecutive 128-byte lines and the swizzle repeats every 8 lines.
//
// Double-quantized weights: a scale warp besides the producer decodes each stage's 8-bit scales into the float
// scales plain weights' stages hold (fill_stage_scales), so the consumers' work is the same for both, and they
// take the narrow stages (with wide ones: N = 28672 M = 16 61.2 us against 59.1-59.4 narrow). H100, K = 8192,
// graph replays, two rounds, consumers decoding (2-D code boxes, wide stages where plain takes them) -> scale
// warp: N = 4096 M = 9..16 16.4-16.7 -> 14.2-14.4 us, N = 8192 20.9-21.8 -> 19.4-19.7 (plain 19.5-19.7),
// N = 16384 36.0-36.3 -> 33.1-33.4 (plain 32.9-33.1), N = 20480 45.3-45.5 -> 49.2-49.4 (plain 45.6-45.9), N =
// 28672 56.9-57.2 -> 59.1-60.4 (plain 57.2-57.6).

// Groups of a stage each consumer warp keeps in flight (the unroll of its loop over them): 4 on passes of 7 or 8
// tiles, 2 on split stages. H100, K = 8192, M = 16, graph replays, two rounds, unroll 2 -> 4: N = 28672 59.0 ->
// 58.0 us plain, 58.6 -> 57.2 nested; split stages (N = 8192) 19.6 -> 21.0 plain, 21.6-21.9 -> 21.6 nested.
// Fully unrolled (8 or 16 groups), the groups' loads were hoisted and spilled.
template <typename S>
constexpr int kGroupUnroll = S::kTilesPerPass > 4 ? 4 : 2;

// Whether a scale warp stores each stage's float scales (fill_stage_scales) instead of the producer copying them
// as boxes: always for double-quantized weights (it decodes them), and for plain ones on split stages. H100, K =
// 8192, M = 16, plain, graph replays, two rounds, boxes -> scale warp: split stages N = 4096 15.0 -> 13.8 us, N =
// 8192 19.2 -> 18.8; narrow N = 16384 31.9-32.1 -> 32.8; wide N = 20480 45.4 -> 48.6-48.8, N = 28672 57.4-57.7 ->
// 61.4-61.6.
template <typename S, bool Nested>
constexpr bool kScaleWarp = Nested || S::kWarpsPerTile > 1;

// Threads of a CTA: the consumers, the producer warp and, where it has one, the scale warp.
template <typename S, bool Nested>
constexpr int kStagedThreads = S::kThreads + (kScaleWarp<S, Nested> ? kWarpSize : 0);

// One stage: [tile][16 rows][box][128 bytes] codes, [group][activation rows][64] activations, [tile][16 rows]
// float scales: a full pass's codes and scales are one box of its rows. The swizzled boxes start on 1024-byte
// boundaries. After the stages, with split tiles: the
// sums the other warps of each tile hand to its first, two passes' worth.
template <typename S>
struct StagedSmem {
  static constexpr int kActRows = 8 * kOps;
  static constexpr int kActBoxBytes = kActRows * kGroupCols * 2;
  static constexpr int kScaleRowBytes = 4 * S::kChunkBlocks;
  static constexpr int kScaleTileBytes = kTileRows * kScaleRowBytes;
  static constexpr int kActOffset = S::kTilesPerPass * S::kCodeTileBytes;
  static constexpr int kScaleOffset = kActOffset + S::kGroups * kActBoxBytes;
  static constexpr int kStageBytes = (kScaleOffset + S::kTilesPerPass * kScaleTileBytes + 1023) / 1024 * 1024;
  static constexpr int kHandedFloats = (S::kWarpsPerTile - 1) * S::kTilesPerPass * kWarpSize * 4 * kOps;
  static constexpr int kBytes = S::kStages * kStageBytes + 2 * kHandedFloats * 4 + 1024;  // + window alignment
};

struct StagedMaps {
  CUtensorMap codes;   // packed [N, K / 2] bytes, boxes [16, boxes, 128], 128-byte swizzle
  CUtensorMap act;     // A [M, K], boxes [16, 64], 128-byte swizzle
  CUtensorMap scales;  // absmax [N, K / 64] floats, boxes [16, blocks per chunk] (unused for nested weights)
  // The same with boxes of a full pass's rows (16 per tile).
  CUtensorMap pass_codes;
  CUtensorMap pass_scales;
};

// Byte offset of 16-byte piece `piece` of line `line` in a box with the 128-byte swizzle.
__device__ __forceinline__ int swizzled(int line, int piece) { return line * 128 + ((piece ^ (line & 7)) << 4); }

// The scale warp (kScaleWarp): for every stage (the producer's order of passes and chunks) the float scales of
// the pass's rows, stored where the scale boxes would land; every lane counts on the stage's `full` barrier.
// Double-quantized scales are decoded from their 8-bit codes and second-level scales as dequantizing the
// statistics rounds them. Lane l takes rows l, l + 32, ... of the pass; a row's codes or scales of a chunk are
// one 8- or 16-byte load or two or four of 16 bytes, fetched a chunk ahead.
template <typename S, typename Smem, bool Nested>
__device__ __forceinline__ void fill_stage_scales(const GemvArgs& args, uint8_t* smem, uint64_t* full,
                                                  uint64_t* empty, const float* nested_code, float offset,
                                                  int64_t first_tile, int64_t end_tile, int lane) {
  using Codes = std::conditional_t<S::kChunkBlocks == 16, uint4, uint2>;
  static_assert(sizeof(Codes) == S::kChunkBlocks, "one load per row and chunk");
  constexpr int kRowsPerLane = (S::kTilesPerPass * kTileRows + kWarpSize - 1) / kWarpSize;
  const int64_t K = args.K, N = args.N, blocks_per_row = K / kBlocksize, chunks = K / S::kChunkCols;
  Codes codes[kRowsPerLane];                    // double-quantized
  float second[kRowsPerLane];
  float4 plain[kRowsPerLane][S::kChunkBlocks / 4];  // plain
  const auto fetch = [&](int64_t pass, int in_pass, int64_t c) {
#pragma unroll
    for (int i = 0; i < kRowsPerLane; ++i) {
      const int r = lane + i * kWarpSize;
      if (r >= in_pass * kTileRows) continue;
      const int64_t block = min(pass * kTileRows + r, N - 1) * blocks_per_row + c * S::kChunkBlocks;
      if constexpr (Nested) {
        codes[i] = __ldg(reinterpret_cast<const Codes*>(args.absmax_q + block));
        second[i] = __ldg(args.absmax + block / kNestedBlocksize);  // one second-level block per chunk
      } else {
#pragma unroll
        for (int b = 0; b < S::kChunkBlocks / 4; ++b)
          plain[i][b] = __ldg(reinterpret_cast<const float4*>(args.absmax + block) + b);
      }
    }
  };
  const auto in_pass_of = [&](int64_t pass) {
    return end_tile - pass < S::kTilesPerPass ? static_cast<int>(end_tile - pass) : S::kTilesPerPass;
  };
  if (first_tile < end_tile) fetch(first_tile, in_pass_of(first_tile), 0);
  int64_t it = 0;
  for (int64_t pass = first_tile; pass < end_tile; pass += S::kTilesPerPass) {
    const int in_pass = in_pass_of(pass);
    for (int64_t c = 0; c < chunks; ++c, ++it) {
      const int s = static_cast<int>(it % S::kStages);
      float values[kRowsPerLane][S::kChunkBlocks];
#pragma unroll
      for (int i = 0; i < kRowsPerLane; ++i) {
        const uint8_t* q = reinterpret_cast<const uint8_t*>(&codes[i]);
#pragma unroll
        for (int b = 0; b < S::kChunkBlocks; ++b) {
          if constexpr (Nested) values[i][b] = decode_nested_scale(nested_code[q[b]], second[i], offset);
          else values[i][b] = reinterpret_cast<const float*>(plain[i])[b];
        }
      }
      if (c + 1 < chunks) fetch(pass, in_pass, c + 1);
      else if (pass + S::kTilesPerPass < end_tile)
        fetch(pass + S::kTilesPerPass, in_pass_of(pass + S::kTilesPerPass), 0);
      sm90::mbar_wait(&empty[s], ((it / S::kStages) & 1) ^ 1);
      float* scales = reinterpret_cast<float*>(smem + s * Smem::kStageBytes + Smem::kScaleOffset);
#pragma unroll
      for (int i = 0; i < kRowsPerLane; ++i) {
        const int r = lane + i * kWarpSize;
        if (r >= in_pass * kTileRows) continue;
#pragma unroll
        for (int b = 0; b < S::kChunkBlocks; b += 4)
          *reinterpret_cast<float4*>(scales + r * S::kChunkBlocks + b) =
              make_float4(values[i][b], values[i][b + 1], values[i][b + 2], values[i][b + 3]);
      }
      sm90::mbar_arrive(&full[s]);
    }
  }
}

template <typename T, bool Nested, typename S>
__global__ void __launch_bounds__(kStagedThreads<S, Nested>, 1)
    gemm_4bit_staged(const __grid_constant__ StagedMaps maps, const __grid_constant__ GemvArgs args) {
#ifdef BNB_SM90A_DEVICE
  using Smem = StagedSmem<S>;
  __shared__ __align__(16) uint32_t table[cuda::kPairTableWords];
  __shared__ float nested_code[Nested ? 256 : 1];
  __shared__ __align__(8) uint64_t full[S::kStages], empty[S::kStages];
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = sm90::align_shared_1024(smem_raw);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t K = args.K, N = args.N;
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  const int64_t first_tile = tiles * blockIdx.x / gridDim.x, end_tile = tiles * (blockIdx.x + 1) / gridDim.x;
  const int64_t chunks = K / S::kChunkCols;

  constexpr int kThreads = kStagedThreads<S, Nested>;
  constexpr bool kScalesStored = kScaleWarp<S, Nested>;  // by the scale warp, not copied as boxes
  cuda::fill_pair_table<T>(table, args.code, /*wide=*/false, threadIdx.x, kThreads);
  if (threadIdx.x == 0)
    sm90::init_stage_barriers<S::kStages>(full, empty, S::kConsumers, kScalesStored ? 1 + kWarpSize : 1);
  if (warp == S::kConsumers && lane == 0) {
    sm90::prefetch_tensor_map(&maps.codes);
    sm90::prefetch_tensor_map(&maps.act);
    sm90::prefetch_tensor_map(&maps.scales);
    sm90::prefetch_tensor_map(&maps.pass_codes);
    sm90::prefetch_tensor_map(&maps.pass_scales);
  }
  // Launched to overlap the kernel before it: nothing in global memory is read before it has finished.
  cuda::allow_next_kernel();
  cuda::wait_for_previous_kernel();
  float offset = 0.0f;
  if constexpr (Nested) {
    for (int i = threadIdx.x; i < 256; i += kThreads) nested_code[i] = args.absmax_code[i];
    offset = *args.absmax_offset;
  }
  __syncthreads();

  if constexpr (kScalesStored) {
    if (warp == S::kConsumers + 1) {
      fill_stage_scales<S, Smem, Nested>(args, smem, full, empty, nested_code, offset, first_tile, end_tile, lane);
      return;
    }
  }
  if (warp == S::kConsumers) {
    // Producer: lane i < (tiles in the pass) copies tile i's codes and scales, lane kTilesPerPass + j the
    // activations of group j. The weight is read once: its lines leave L2 first.
    const uint64_t policy = sm90::evict_first_policy();
    int64_t it = 0;
    for (int64_t pass = first_tile; pass < end_tile; pass += S::kTilesPerPass) {
      const int in_pass = end_tile - pass < S::kTilesPerPass ? static_cast<int>(end_tile - pass) : S::kTilesPerPass;
      for (int64_t c = 0; c < chunks; ++c, ++it) {
        const int s = static_cast<int>(it % S::kStages);
        if (lane == 0) {
          sm90::mbar_wait(&empty[s], ((it / S::kStages) & 1) ^ 1);
          const int scale_bytes = kScalesStored ? 0 : Smem::kScaleTileBytes;
          sm90::mbar_arrive_expect_tx(&full[s],
                                      in_pass * (S::kCodeTileBytes + scale_bytes) + S::kGroups * Smem::kActBoxBytes);
        }
        __syncwarp();
        uint8_t* stage = smem + s * Smem::kStageBytes;
        const auto scale_x = static_cast<int32_t>(c * S::kChunkBlocks);
        const auto box_x = static_cast<int32_t>(c * S::kBoxes);
        // A full pass's tiles are consecutive rows, laid out in the stage as one box of them would be: its
        // scales and codes come as one box each, not one per tile.
        const bool full_pass = in_pass == S::kTilesPerPass;
        if (full_pass && lane == 0) {
          const auto first_row = static_cast<int32_t>(pass * kTileRows);
          sm90::tma_load_3d(stage, &maps.pass_codes, 0, box_x, first_row, &full[s], policy);
          if (!kScalesStored)
            sm90::tma_load_2d(stage + Smem::kScaleOffset, &maps.pass_scales, scale_x, first_row, &full[s], policy);
        }
        const int32_t row = static_cast<int32_t>((pass + lane) * kTileRows);
        if (lane < in_pass) {
          if (!full_pass) {
            sm90::tma_load_3d(stage + lane * S::kCodeTileBytes, &maps.codes, 0, box_x, row, &full[s], policy);
            if (!kScalesStored)
              sm90::tma_load_2d(stage + Smem::kScaleOffset + lane * Smem::kScaleTileBytes, &maps.scales, scale_x,
                                row, &full[s], policy);
          }
        } else if (lane >= S::kTilesPerPass && lane < S::kTilesPerPass + S::kGroups) {
          const int j = lane - S::kTilesPerPass;
          sm90::tma_load_2d(stage + Smem::kActOffset + j * Smem::kActBoxBytes, &maps.act,
                            static_cast<int32_t>(c * S::kChunkCols + j * kGroupCols), 0, &full[s]);
        }
      }
    }
    return;
  }

  // Consumers: warp w multiplies tile w / kWarpsPerTile of each pass (its share w % kWarpsPerTile of the
  // groups). Lane (g, t) accumulates weight rows g and g + 8 against activation rows 2t, 2t + 1 (+ 8 for the
  // second operand).
  const int g = lane / 4, t = lane % 4;
  const uint32_t lane4 = static_cast<uint32_t>(lane) * 4;
  const char* table_bytes = reinterpret_cast<const char*>(table);
  int64_t it = 0;
  const int tile = warp / S::kWarpsPerTile, share = warp % S::kWarpsPerTile;
  constexpr int kShareGroups = S::kGroups / S::kWarpsPerTile;
  int parity = 0;  // which of the two hand-over buffers this pass uses
  for (int64_t pass = first_tile; pass < end_tile; pass += S::kTilesPerPass, parity ^= 1) {
    const bool active = pass + tile < end_tile;
    const int64_t row0 = (pass + tile) * kTileRows;
    float acc[kOps][4] = {};
    for (int64_t c = 0; c < chunks; ++c, ++it) {
      const int s = static_cast<int>(it % S::kStages);
      sm90::mbar_wait(&full[s], (it / S::kStages) & 1);
      if (active) {
        const uint8_t* stage = smem + s * Smem::kStageBytes;
        const uint8_t* codes = stage + tile * S::kCodeTileBytes;  // [16 rows][box][128]
        const uint8_t* scales = stage + Smem::kScaleOffset + tile * Smem::kScaleTileBytes;
#pragma unroll kGroupUnroll<S>
        for (int j = share * kShareGroups; j < (share + 1) * kShareGroups; ++j) {
          // Activation words of rows g (+ 8): columns 16t + 2w, 2w + 1 in word w, pieces 2t and 2t + 1.
          const uint8_t* act = stage + Smem::kActOffset + j * Smem::kActBoxBytes;
          uint32_t x[kOps][8];
#pragma unroll
          for (int op = 0; op < kOps; ++op) {
            const uint4 v0 = *reinterpret_cast<const uint4*>(act + swizzled(g + 8 * op, 2 * t));
            const uint4 v1 = *reinterpret_cast<const uint4*>(act + swizzled(g + 8 * op, 2 * t + 1));
            x[op][0] = v0.x, x[op][1] = v0.y, x[op][2] = v0.z, x[op][3] = v0.w;
            x[op][4] = v1.x, x[op][5] = v1.y, x[op][6] = v1.z, x[op][7] = v1.w;
          }
          // Codes of columns 16t .. 16t + 15 of rows g (lo) and g + 8 (hi): bytes 32 (j % 4) + 8t of 128-byte
          // piece j / 4 of the row: line row * kBoxes + j / 4.
          const int piece = 2 * (j % 4) + t / 2;
          const uint8_t* at = codes + (t % 2) * 8;
          const uint2 lo = *reinterpret_cast<const uint2*>(at + swizzled(g * S::kBoxes + j / 4, piece));
          const uint2 hi = *reinterpret_cast<const uint2*>(at + swizzled((g + 8) * S::kBoxes + j / 4, piece));
          float scale[2];
#pragma unroll
          for (int h = 0; h < 2; ++h)
            scale[h] = reinterpret_cast<const float*>(scales + (g + 8 * h) * Smem::kScaleRowBytes)[j];
          float part[kOps][4] = {};
#pragma unroll
          for (int step = 0; step < 4; ++step) {
            // Columns 16t + 4 step + {0..3}: bytes 2 (step % 2) and 2 (step % 2) + 1 of word step / 2.
            const uint32_t wl = step < 2 ? lo.x : lo.y, wh = step < 2 ? hi.x : hi.y;
            uint32_t a[4];
            cuda::step_fragment<false>(table_bytes, wl, wh, step % 2 == 1, lane4, a);
#pragma unroll
            for (int op = 0; op < kOps; ++op) cuda::mma_16816<T>(part[op], a, x[op][2 * step], x[op][2 * step + 1]);
          }
#pragma unroll
          for (int op = 0; op < kOps; ++op) {
            acc[op][0] += part[op][0] * scale[0];
            acc[op][1] += part[op][1] * scale[0];
            acc[op][2] += part[op][2] * scale[1];
            acc[op][3] += part[op][3] * scale[1];
          }
        }
      }
      __syncwarp();
      if (lane == 0) sm90::mbar_arrive(&empty[s]);
    }
    if constexpr (S::kWarpsPerTile > 1) {
      // The tile's other warps hand their sums to its first. Two buffers, alternating by pass: a warp can
      // finish the next pass only after every consumer has released that pass's stages, so nobody writes a
      // buffer still being read.
      float* handed = reinterpret_cast<float*>(smem + S::kStages * Smem::kStageBytes) + parity * Smem::kHandedFloats;
      float* mine = handed + (((share - 1) * S::kTilesPerPass + tile) * kWarpSize + lane) * 4 * kOps;
      if (share > 0 && active) {
#pragma unroll
        for (int op = 0; op < kOps; ++op)
#pragma unroll
          for (int cc = 0; cc < 4; ++cc) mine[op * 4 + cc] = acc[op][cc];
      }
      sm90::named_barrier_sync<kHandOverBarrier, S::kConsumers * kWarpSize>();
      if (share > 0 || !active) continue;
#pragma unroll
      for (int other = 1; other < S::kWarpsPerTile; ++other) {
        const float* theirs = handed + (((other - 1) * S::kTilesPerPass + tile) * kWarpSize + lane) * 4 * kOps;
#pragma unroll
        for (int op = 0; op < kOps; ++op)
#pragma unroll
          for (int cc = 0; cc < 4; ++cc) acc[op][cc] += theirs[op * 4 + cc];
      }
    }
    if (!active) continue;
    // d[0], d[1]: weight row g, activation rows 8 op + 2t, 2t + 1; d[2], d[3]: weight row g + 8.
    const T* bias = static_cast<const T*>(args.bias);
    T* out = static_cast<T*>(args.out);
#pragma unroll
    for (int op = 0; op < kOps; ++op) {
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const int64_t n = row0 + g + 8 * (cc / 2);
        const int64_t m = 8 * op + 2 * t + cc % 2;
        if (n < N && m < args.M)
          out[m * N + n] = cuda::from_f32<T>(acc[op][cc] + (bias ? cuda::to_f32(bias[n]) : 0.0f));
      }
    }
  }
#endif
}

// CTAs for the product: one per SM, or with `equal_tiles` the fewest that give no CTA more tiles
// than one per SM would: every CTA then has the same number of tiles where the count allows (N = 8192: 128 CTAs
// of 4 tiles instead of 116 of 4 and 16 of 3). H100, K = 8192, M = 9 and 16, graph replays, two rounds, one per
// SM -> equal: N = 4096 15.2 -> 15.0-15.1 us plain, 14.2-14.3 -> 14.0 nested; N = 8192 19.5 -> 19.1 plain,
// 19.3-19.5 -> 18.8-19.1 nested; N = 16384 32.8-32.9 -> 31.9 plain, 33.0-33.1 -> 32.3-32.4 nested; N = 20480
// nested 49.1 -> 48.2-48.3, N = 28672 nested 58.9-59.0 -> 58.0-58.2. Wide stages keep one CTA per SM (plain N =
// 20480 45.3-45.4 -> 45.6-45.8, N = 28672 57.2-57.3 -> 57.6-57.7 with equal tiles): their grids run closest to
// the memory's bandwidth, and there the SMs that would idle add to it.
int64_t staged_grid(const Gemm4bitParams& p, int32_t device, bool equal_tiles) {
  const int64_t tiles = (p.N + kTileRows - 1) / kTileRows;
  if (!equal_tiles) return std::min<int64_t>(tiles, cuda::sm_count(device));
  const int64_t per_cta = tiles_per_sm(p, device);
  return (tiles + per_cta - 1) / per_cta;
}

template <typename T, bool Nested, typename S>
void launch(const Gemm4bitParams& p, int32_t device, cudaStream_t stream) {
  using Smem = StagedSmem<S>;
  auto* kernel = gemm_4bit_staged<T, Nested, S>;
  static std::atomic<uint64_t> opted_in{0};
  cuda::allow_dynamic_smem(kernel, Smem::kBytes, device, opted_in);
  const CUtensorMapDataType act_type =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const int64_t blocks_per_row = p.K / kBlocksize;
  const auto code_map = [&](uint32_t rows) {
    return cuda::tensor_map_row_pieces(p.packed, p.N, p.K / 2, kBoxBytes, rows, S::kBoxes, CU_TENSOR_MAP_SWIZZLE_128B);
  };
  // Plain weights' scale boxes; where a scale warp stores the scales, their map slots are not read.
  const auto scale_map = [&](uint32_t rows) {
    return cuda::tensor_map_2d(p.absmax, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, p.N, blocks_per_row, rows,
                               S::kChunkBlocks, CU_TENSOR_MAP_SWIZZLE_NONE);
  };
  constexpr uint32_t kPassRows = kTileRows * S::kTilesPerPass;
  const CUtensorMap tile_codes = code_map(kTileRows), pass_codes = code_map(kPassRows);
  const StagedMaps maps{
      tile_codes,
      cuda::tensor_map_2d(p.A, act_type, 2, p.M, p.K, Smem::kActRows, kGroupCols, CU_TENSOR_MAP_SWIZZLE_128B),
      kScaleWarp<S, Nested> ? tile_codes : scale_map(kTileRows), pass_codes,
      kScaleWarp<S, Nested> ? pass_codes : scale_map(kPassRows)};
  const GemvArgs args = gemv_args(p);
  const auto grid = static_cast<unsigned>(staged_grid(p, device, S::kEqualTiles));
  cuda::launch_with_smem_after_previous(kernel, grid, kStagedThreads<S, Nested>, Smem::kBytes, stream, device,
                                        /*overlap=*/true, maps, args);
  BNB_CUDA_CHECK_LAUNCH("gemm_4bit_staged");
}

// Wide stages (1024 columns, 2 stages, 7 consumer warps) where they take no more passes than the narrow ones
// (512 columns, 3 stages, 8 consumers), for plain weights only: see the top and the layout notes.
using NarrowStages = StagedShape<512, 3, 8>;
using WideStages = StagedShape<1024, 2, 7, 1, /*EqualTiles=*/false>;

bool wide_stages(const Gemm4bitParams& p, int32_t device) {
  if (p.nested()) return false;
  const int64_t per_cta = tiles_per_sm(p, device);
  const auto passes = [&](int consumers) { return (per_cta + consumers - 1) / consumers; };
  return p.K % WideStages::kChunkCols == 0 && passes(WideStages::kConsumers) == passes(NarrowStages::kConsumers);
}

// Grids of one wave of the register-fed kernel (at most 4 tiles per SM): one pass of at most 4 tiles, two
// warps on each (see the top).
using SplitStages = StagedShape<512, 3, 8, 2>;
constexpr int64_t kSplitMaxTilesPerSm = SplitStages::kTilesPerPass;
template <typename T, bool Nested>
void launch_shape(const Gemm4bitParams& p, int32_t device, cudaStream_t stream) {
  if (tiles_per_sm(p, device) <= kSplitMaxTilesPerSm) return launch<T, Nested, SplitStages>(p, device, stream);
  wide_stages(p, device) ? launch<T, Nested, WideStages>(p, device, stream)
                         : launch<T, Nested, NarrowStages>(p, device, stream);
}

}  // namespace

bool gemm_4bit_staged_serves(const Gemm4bitParams& p, int32_t device) {
#ifndef BNB_CUDA_SM90A
  (void)p, (void)device;
  return false;
#else
  // Tensor maps: 16-byte row strides (absmax_q's row of K / 64 codes: K % 1024 == 0).
  const int64_t k_multiple = p.nested() ? 1024 : NarrowStages::kChunkCols;
  static_assert(kBlocksize == 64, "hopper_staging_operands checks blocksize 64");
  return p.M > 8 && p.M <= 16 && p.K % k_multiple == 0 && hopper_staging_operands(p, device);
#endif
}

void gemm_4bit_staged(const Gemm4bitParams& p, int32_t device, cudaStream_t stream) {
  with_activation_type_and_nesting(p, [&](auto type, auto nested) {
    launch_shape<decltype(type), decltype(nested)::value>(p, device, stream);
  });
}

}  // namespace bnb::backend

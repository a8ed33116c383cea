// CUDA product of up to 8 activation rows with a 4-bit weight W [N, K] on Hopper, the weight streamed
// into shared memory by the bulk-copy engine. Serves grids of several waves (gemm_4bit.cu keeps the
// register-fed kernel for the rest).
//
// The register-fed few-row kernel (gemm_4bit.cu) reads the codes with loads shaped by the mma's operand
// layout: each warp instruction touches 8 weight rows, a few dozen bytes of each, and beyond L2 that
// pattern reads DRAM at about 2.3 TB/s where whole-row streams reach 2.9. Here one producer warp per CTA
// copies each weight row's next 2048 bytes (and their block scales) with one bulk copy per row into a
// ring of shared-memory stages, and eight consumer warps build the same mma fragments from shared memory.
//
// A CTA (one per SM, persistent) takes 16-row tiles of W in turn; its consumer warps split each stage's
// 4096 columns, 8 contiguous 64-column groups per warp, and add their partial sums through shared memory
// at the end of a tile. Within a group lane (g, t) reads 8 bytes (columns [16t, 16t + 16)) of rows g and
// g + 8, and the mma's k index is permuted to fit (as in gemm_4bit.cu), so every mma step lies in one
// 64-column block and its sums are scaled once in float32. Staged rows are 2080 bytes apart so that the
// four rows a half-warp reads land on different banks.
//
// H100, K = 8192, N = 28672, graph replays, two rounds (stream alone: consumers only releasing stages):
// 1024-byte copies, 6 stages: M = 1 87 us (stream alone 65: the per-copy cost of 32 copies per stage
// caps it), two CTAs per SM of 3 such stages 59 us (48); 2048-byte copies, 4 stages: M = 1 50.0-50.6
// us plain, 52.0 nested (46.1 / 41.8) against 59.9 / 58.0 for the register-fed kernel; 4096-byte copies,
// 2 stages: 50.0 / 53.5. Not served: 9..16 rows (two operands: 97-110 us against 87, with 12 consumer
// warps after a producer warpgroup 93; gemm_4bit_staged.cu takes them), grids of one wave (N = 8192 M = 1:
// 18.8 us against 14.1; the other kernel keeps the weight in L2 between calls and starts faster).
#include <atomic>

#include "core/error.h"
#include "core/formats.h"
#include "cuda/common.cuh"
#include "cuda/gemm_4bit_streamed.cuh"
#include "cuda/gemm_4bit_types.cuh"
#include "cuda/gemv_args.cuh"
#include "cuda/pair_table.cuh"
#include "cuda/sm90.cuh"

namespace bnb::backend {
namespace {

using cuda::kWarpSize;
namespace sm90 = cuda::sm90;

constexpr int kTileRows = 16;                  // weight rows per tile: the mma's 16-row operand
constexpr int kMaxRows = 8;                    // activation rows: one n8 operand
constexpr int kBlocksize = 64;                 // the blocksize served
constexpr int kConsumers = 8;                  // consumer warps; one producer warp besides
constexpr int kStages = 4;
constexpr int kThreads = (kConsumers + 1) * kWarpSize;
constexpr int kChunkBytes = 2048;              // codes per weight row and stage
constexpr int kChunkCols = 2 * kChunkBytes;    // columns per stage
constexpr int kCodeStride = kChunkBytes + 32;  // bytes between staged rows (bank spread, see above)
constexpr int kChunkBlocks = kChunkCols / kBlocksize;
constexpr int kGroupCols = 64;                 // columns per mma group (4 k16 steps)
constexpr int kGroups = kChunkCols / kGroupCols / kConsumers;  // groups per consumer warp and stage
constexpr int kPartialFloats = kConsumers * 4 * kWarpSize;     // a tile's partial sums

// Shared memory besides the pair table and the second-level code table (static arrays).
template <bool Nested>
struct StreamSmem {
  // Staged scales per row: the chunk's block scales (float32, or 8-bit codes when nested), padded so the
  // eight rows a warp reads at once land on different banks.
  static constexpr int kScaleBytes = Nested ? kChunkBlocks : 4 * kChunkBlocks;
  static constexpr int kScaleStride = kScaleBytes + 16;
  static constexpr int kStageBytes = kTileRows * (kCodeStride + kScaleStride);
  static constexpr int kBytes = kStages * kStageBytes + 2 * kPartialFloats * 4 + 2 * kStages * 8;
};

__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;" ::"n"(kConsumers * kWarpSize) : "memory");
}

// 168 registers at most: registers go to warps in fours, so 9 warps are budgeted as 12. Each group reads its
// block scales as it goes (a stage's 16 scales held up front spilled).
template <typename T, bool Nested>
__global__ void __launch_bounds__(kThreads, 1) gemm_4bit_streamed(const __grid_constant__ GemvArgs args) {
#ifdef BNB_SM90A_DEVICE
  using Smem = StreamSmem<Nested>;
  __shared__ __align__(16) uint32_t table[cuda::kPairTableWords];
  __shared__ float nested_code[Nested ? 256 : 1];
  extern __shared__ __align__(128) uint8_t smem[];
  float* partials = reinterpret_cast<float*>(smem + kStages * Smem::kStageBytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(partials + 2 * kPartialFloats);
  uint64_t* empty = full + kStages;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t K = args.K, N = args.N;
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  const int64_t chunks = K / kChunkCols;

  cuda::fill_pair_table<T>(table, args.code, /*wide=*/false, threadIdx.x, kThreads);
  if (threadIdx.x == 0) sm90::init_stage_barriers<kStages>(full, empty, kConsumers);
  // Launched to overlap the kernel before it: nothing in global memory is read before it has finished.
  cuda::allow_next_kernel();
  cuda::wait_for_previous_kernel();
  float offset = 0.0f;
  if constexpr (Nested) {
    for (int i = threadIdx.x; i < 256; i += kThreads) nested_code[i] = args.absmax_code[i];
    offset = *args.absmax_offset;
  }
  __syncthreads();

  if (warp == kConsumers) {
    // Producer: lanes 0..15 copy the codes of one tile row each, lanes 16..31 its block scales. The weight
    // is read once: its lines leave L2 first.
    const uint64_t policy = sm90::evict_first_policy();
    const int r = lane % kTileRows;
    int64_t it = 0;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const int64_t row = min(tile * kTileRows + r, N - 1);  // rows past N repeat row N - 1, never stored
      for (int64_t c = 0; c < chunks; ++c, ++it) {
        const int s = static_cast<int>(it % kStages);
        if (lane == 0) {
          sm90::mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
          sm90::mbar_arrive_expect_tx(&full[s], kTileRows * (kChunkBytes + Smem::kScaleBytes));
        }
        __syncwarp();
        uint8_t* stage = smem + s * Smem::kStageBytes;
        if (lane < kTileRows) {
          sm90::bulk_copy_to_smem(stage + r * kCodeStride, args.packed + row * (K / 2) + c * kChunkBytes, kChunkBytes,
                                  &full[s], policy);
        } else {
          const int64_t block = row * (K / kBlocksize) + c * kChunkBlocks;
          const void* src = Nested ? static_cast<const void*>(args.absmax_q + block)
                                   : static_cast<const void*>(args.absmax + block);
          sm90::bulk_copy_to_smem(stage + kTileRows * kCodeStride + r * Smem::kScaleStride, src, Smem::kScaleBytes,
                                  &full[s], policy);
        }
      }
    }
    return;
  }

  // Consumers. Lane (g, t) multiplies rows g and g + 8 of each tile with activation row g.
  const int g = lane / 4, t = lane % 4;
  const uint32_t lane4 = static_cast<uint32_t>(lane) * 4;
  const char* table_bytes = reinterpret_cast<const char*>(table);
  const T* act = static_cast<const T*>(args.A) + int64_t{g} * K + 16 * t;
  const bool has_act = g < args.M;
  int64_t it = 0;
  int parity = 0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, parity ^= 1) {
    float acc[4] = {};
    const int64_t row0 = tile * kTileRows;
    for (int64_t c = 0; c < chunks; ++c, ++it) {
      const int s = static_cast<int>(it % kStages);
      float second[2] = {0.0f, 0.0f};  // nested: the second-level scale of rows g and g + 8 in this chunk
      if constexpr (Nested) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t row = min(row0 + g + 8 * h, N - 1);
          second[h] = __ldg(args.absmax + (row * (K / kBlocksize) + c * kChunkBlocks) / kNestedBlocksize);
        }
      }
      sm90::mbar_wait(&full[s], (it / kStages) & 1);
      const uint8_t* stage = smem + s * Smem::kStageBytes;
      const int first_group = warp * kGroups;  // the warp's groups of the stage
      const uint8_t* scales = stage + kTileRows * kCodeStride + g * Smem::kScaleStride;  // row g; g + 8 below
#pragma unroll
      for (int u = 0; u < kGroups; ++u) {
        const int64_t col = c * kChunkCols + (first_group + u) * kGroupCols;
        // Activation words: row g, columns 16t + 2w, 2w + 1 in word w (zero rows past M).
        const uint4 zero = make_uint4(0, 0, 0, 0);
        const uint4 v0 = has_act ? __ldg(reinterpret_cast<const uint4*>(act + col)) : zero;
        const uint4 v1 = has_act ? __ldg(reinterpret_cast<const uint4*>(act + col + 8)) : zero;
        const uint32_t x[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
        // Codes of columns 16t .. 16t + 15 of rows g (lo) and g + 8 (hi).
        const int byte0 = (first_group + u) * (kGroupCols / 2) + 8 * t;
        const uint2 lo = *reinterpret_cast<const uint2*>(stage + g * kCodeStride + byte0);
        const uint2 hi = *reinterpret_cast<const uint2*>(stage + (g + 8) * kCodeStride + byte0);
        // The block scales of rows g and g + 8 for this group.
        float scale[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint8_t* at = scales + 8 * h * Smem::kScaleStride;
          scale[h] = Nested ? nested_code[at[first_group + u]] * second[h] + offset
                            : *reinterpret_cast<const float*>(at + 4 * (first_group + u));
        }
        float part[4] = {};
#pragma unroll
        for (int step = 0; step < 4; ++step) {
          // Columns 16t + 4 step + {0..3}: bytes 2 (step % 2) and 2 (step % 2) + 1 of word step / 2.
          const uint32_t wl = step < 2 ? lo.x : lo.y, wh = step < 2 ? hi.x : hi.y;
          uint32_t a[4];
          cuda::step_fragment<false>(table_bytes, wl, wh, step % 2 == 1, lane4, a);
          cuda::mma_16816<T>(part, a, x[2 * step], x[2 * step + 1]);
        }
        acc[0] += part[0] * scale[0];
        acc[1] += part[1] * scale[0];
        acc[2] += part[2] * scale[1];
        acc[3] += part[3] * scale[1];
      }
      __syncwarp();
      if (lane == 0) sm90::mbar_arrive(&empty[s]);
    }
    // The consumers' partial sums of the tile, added up (double-buffered: the barrier of the next tile
    // orders this tile's reads before the buffer is written again).
    float* partial = partials + parity * kPartialFloats;
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) partial[(warp * 4 + cc) * kWarpSize + lane] = acc[cc];
    consumers_sync();
    const T* bias = static_cast<const T*>(args.bias);
    T* out = static_cast<T*>(args.out);
    if (threadIdx.x < 4 * kWarpSize) {
      const int l = threadIdx.x % kWarpSize, cc = threadIdx.x / kWarpSize;
      const int64_t n = row0 + l / 4 + 8 * (cc / 2);  // the weight row: output feature
      const int64_t m = 2 * (l % 4) + cc % 2;         // the activation row
      if (n < N && m < args.M) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kConsumers; ++w) sum += partial[(w * 4 + cc) * kWarpSize + l];
        out[m * N + n] = cuda::from_f32<T>(sum + (bias ? cuda::to_f32(bias[n]) : 0.0f));
      }
    }
  }
#endif
}

template <typename T, bool Nested>
void launch(const Gemm4bitParams& p, int32_t device, cudaStream_t stream) {
  auto* kernel = gemm_4bit_streamed<T, Nested>;
  static std::atomic<uint64_t> opted_in{0};
  cuda::allow_dynamic_smem(kernel, StreamSmem<Nested>::kBytes, device, opted_in);
  const GemvArgs args = gemv_args(p);
  const int64_t tiles = (p.N + kTileRows - 1) / kTileRows;
  const auto grid = static_cast<unsigned>(std::min<int64_t>(tiles, cuda::sm_count(device)));
  cuda::launch_with_smem_after_previous(kernel, grid, kThreads, StreamSmem<Nested>::kBytes, stream, device,
                                        /*overlap=*/true, args);
  BNB_CUDA_CHECK_LAUNCH("gemm_4bit_streamed");
}

}  // namespace

bool gemm_4bit_streamed_serves(const Gemm4bitParams& p, int32_t device) {
#ifndef BNB_CUDA_SM90A
  (void)p, (void)device;
  return false;
#else
  static_assert(kBlocksize == 64, "hopper_staging_serves checks blocksize 64");
  return p.M >= 1 && p.M <= kMaxRows && p.K % kChunkCols == 0 && hopper_staging_serves(p, device);
#endif
}

void gemm_4bit_streamed(const Gemm4bitParams& p, int32_t device, cudaStream_t stream) {
  with_activation_type_and_nesting(p, [&](auto type, auto nested) {
    launch<decltype(type), decltype(nested)::value>(p, device, stream);
  });
}

}  // namespace bnb::backend

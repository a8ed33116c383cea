// CUDA product of a few activation rows (M <= 16) with a 4-bit weight W [N, K], reading W once as
// packed codes: at these M the product is bound by the weight's bytes, and 4-bit codes are a quarter
// of a 16-bit weight's.
// On Hopper, grids of several waves go to kernels that stage the weight in shared memory instead: at
// most 8 rows to gemm_4bit_streamed.cu (beyond L2 this kernel's loads read DRAM slower), 9..16 rows to
// gemm_4bit_staged.cu (which also stages the activations once for eight tiles: here each warp reads them
// for its own tile, four times the weight's bytes at 16 rows).
//
// Tensor cores do the arithmetic (mma.sync m16n8k16, float32 accumulation) with the weight as the
// 16-row operand and up to 8 activation rows per 8-column operand, so one activation row costs no
// more than eight; the CUDA cores only expand codes. Each warp owns 16 or 32 rows of W; the warps of
// a CTA on the same rows split K between them in groups of 64 columns (interleaved, so the CTA reads
// each row as one contiguous stream), then add their partial sums through shared memory. Each warp
// requests the codes and scales of kUnroll groups before it uses any, so that many bytes are in flight
// per SM.
//
// Within a 64-column group, lane (g, t) = (lane / 4, lane % 4) loads 16 consecutive codes
// [16t, 16t + 16) of weight rows g and g + 8 of a tile (8 bytes each) and the same 16 columns of
// activation row g. A dot product does not care in which order k is visited, so the mma's k index
// is permuted to fit these loads: in step s (0..3) the fragment pair (2t, 2t+1) takes columns
// 16t + 4s + {0, 1} and (2t+8, 2t+9) takes 16t + 4s + {2, 3}, for both operands. All columns of an
// mma step then lie in one 64-column group, so inside one quantization block (blocksize >= 64,
// K a multiple of it): each step's product is scaled by its rows' block scales once, in float32,
// instead of scaling every code, and lane (g, t) accumulates exactly the rows g and g + 8 whose
// scales it loaded.
//
// Wide loads (grids of one wave, at most kWideMaxRows activation rows): lane (g, t) reads 16 bytes of
// each row per 128-column group instead, columns [32t, 32t + 32), and a warp's batch is 8 such groups
// (512 bytes per row: sixteen 16-byte loads per lane, which the compiler spreads over the batch's groups
// to keep within 128 registers, two groups ahead of their use). The mma steps are permuted the same
// way (step s takes columns 32t + 4s + {0..3}), so a step spans two 64-column blocks: each lane
// multiplies its code pairs by its own block's scale in 16 bits before the mma (as the tensor-core
// kernel does) instead of scaling the step's sums in float32. H100, K = 8192, graph replays, two
// rounds: N = 8192 M = 1 15.7 -> 13.8 us, nested 16.6 -> 14.3, M = 3 16.4 -> 15.5; N = 4096 M = 1 13.6 ->
// 12.7; N = 2048 M = 1 10.3-10.5 -> 9.4-9.6. Slower elsewhere, which keeps the 8-byte loads: 4 rows at
// N = 4096 (14.8 -> 15.2 us), 8 rows at N = 8192 (19.1 -> 21.2-21.6), grids of several waves (N = 28672
// M = 1 59.5 -> 62.6).
//
// Codes are expanded two at a time by a 256-entry table (a byte -> the pair of 16-bit code values),
// stored once per lane in shared memory so that 32 lanes reading random bytes hit 32 different banks.
//
// On Hopper the kernel is launched to overlap the end of the kernel before it (programmatic dependent
// launch): its CTAs build their tables meanwhile. In a model the kernel before is often another
// product (q/k/v, gate/up); H100, K = N = 8192, M = 1, back to back: 17.2 -> 15.9 us.
#include <atomic>

#include "core/backend.h"
#include "core/error.h"
#include "core/formats.h"
#include "cuda/common.cuh"
#include "cuda/dequantize_vectors.cuh"
#include "cuda/gemm_4bit_staged.cuh"
#include "cuda/gemm_4bit_streamed.cuh"
#include "cuda/gemm_4bit_tensor_core.cuh"
#include "cuda/gemm_4bit_types.cuh"
#include "cuda/gemv_args.cuh"
#include "cuda/pair_table.cuh"

namespace bnb::backend {
namespace {

using cuda::CudaType;
using cuda::kPairTableWords;
using cuda::kWarpSize;
using cuda::mma_16816;
using cuda::pair_offset;

constexpr int kGroup = 64;             // columns per group (4 mma k16 steps)
constexpr int kUnroll = 4;             // groups whose loads a warp issues before using them
constexpr int kMaxRows = 16;           // activation rows: two n8 operands
constexpr int kWideGroup = 128;                       // wide loads: columns per group (16 bytes per lane)
constexpr int kWideBatch = 8 * kWideGroup;            // wide loads: columns per batch
constexpr int kWideMaxRows = 3;                       // wide loads serve up to this many activation rows

// The block scales of one CTA row for the kUnroll consecutive groups of a batch: ScalesPerBatch
// consecutive blocks (4 at blocksize 64, 2 at 128, 1 from 256 on), read with one vector load.
// Double-quantized: their 8-bit codes and the one second-level scale they share (a batch's blocks
// never straddle a 256-block boundary: the first is a multiple of ScalesPerBatch).
template <int ScalesPerBatch, bool Nested>
struct BatchScales {
  float v[ScalesPerBatch];  // plain: the scales; nested: the second-level scale in v[0]
  uint32_t q;               // nested: the codes, one byte each

  __device__ __forceinline__ void load(const GemvArgs& args, int64_t block) {
    if constexpr (Nested) {
      v[0] = __ldg(args.absmax + block / kNestedBlocksize);
      if constexpr (ScalesPerBatch == 4) {
        q = __ldg(reinterpret_cast<const uint32_t*>(args.absmax_q + block));
      } else if constexpr (ScalesPerBatch == 2) {
        q = __ldg(reinterpret_cast<const uint16_t*>(args.absmax_q + block));
      } else {
        q = __ldg(args.absmax_q + block);
      }
    } else if constexpr (ScalesPerBatch == 4) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(args.absmax + block));
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else if constexpr (ScalesPerBatch == 2) {
      const float2 f = __ldg(reinterpret_cast<const float2*>(args.absmax + block));
      v[0] = f.x, v[1] = f.y;
    } else {
      v[0] = __ldg(args.absmax + block);
    }
  }

  // Scale of group u (0 .. kUnroll - 1) of the batch.
  __device__ __forceinline__ float of_group(int u, const float* nested_code, float offset) const {
    constexpr int kGroupsPerScale = 4 / ScalesPerBatch;
    const int i = u / kGroupsPerScale;
    if constexpr (Nested) return nested_code[(q >> (8 * i)) & 0xff] * v[0] + offset;
    return v[i];
  }
};

// Launch shape: Tiles 16-row tiles of W per warp; RowGroups groups of warps per CTA, each on its own
// rows, whose KSplit warps split K; MinBlocks CTAs per SM (the register budget). Measured on the H100
// (K = 8192, N = 8192 and 28672): one activation operand streams fastest with small CTAs, four per SM,
// except that a grid of one wave starts faster with two row groups per CTA (see launch); two operands
// need the registers of two CTAs per SM, and two row groups there (sharing the activation through L1)
// measured slower (N = 28672, M = 16: 89 -> 94 us).
template <int NTiles, int RowGroups>
struct GemvShape {
  static constexpr int kTiles = NTiles == 1 ? 1 : 2;
  static constexpr int kRowGroups = RowGroups;
  static constexpr int kKSplit = NTiles == 1 ? 4 : 8;
  static constexpr int kWarps = kKSplit * kRowGroups;
  static constexpr int kMinBlocks = (NTiles == 1 ? 4 : 2) / kRowGroups;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kWarpRows = 16 * kTiles;
  static constexpr int kRows = kWarpRows * kRowGroups;
};

// Dynamic shared memory of a CTA: the pair table, later the partial sums. Kernels of at most two CTAs
// per SM take the wide table (see pair_offset): H100, K = 8192, M = 16, N = 8192 22.6 -> 22.0 us, N =
// 28672 88.3 -> 87.0; nested M = 1 N = 8192 17.3 -> 16.8 us. Four CTAs per SM have no room for it.
template <int NTiles, int RowGroups>
struct GemvSmem {
  static constexpr bool kWide = GemvShape<NTiles, RowGroups>::kMinBlocks <= 2;
  static constexpr int kTableWords = (kWide ? 2 : 1) * kPairTableWords;
  static constexpr int kBytes = 4 * kTableWords;
};

// Rounds of batches ahead that L2Prefetch kernels ask for. Measured on the H100 (K = 8192, M = 1): N =
// 28672 (3.4 waves of CTAs) 63.5 -> 61.5 us; four rounds lose (68 us). Kernels of one wave or less run
// without it: its instructions alone cost N = 8192 0.5 us.
constexpr int kPrefetchRounds = 2;

template <typename T, bool Nested, int NTiles, int RowGroups, int ScalesPerBatch, bool L2Prefetch, bool WideLoads>
__global__ void __launch_bounds__(GemvShape<NTiles, RowGroups>::kThreads, GemvShape<NTiles, RowGroups>::kMinBlocks)
    gemm_4bit_small_m(const __grid_constant__ GemvArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Shape = GemvShape<NTiles, RowGroups>;
  using Smem = GemvSmem<NTiles, RowGroups>;
  constexpr int kTiles = Shape::kTiles, kKSplit = Shape::kKSplit;
  constexpr bool kWide = Smem::kWide;
  extern __shared__ __align__(16) uint32_t smem[];  // the pair table, later the partial sums
  __shared__ float nested_code[Nested ? 256 : 1];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int row_group = RowGroups == 1 ? 0 : warp / kKSplit;
  const int k_part = RowGroups == 1 ? warp : warp % kKSplit;
  const int g = lane / 4;
  const int t = lane % 4;
  const uint32_t lane4 = static_cast<uint32_t>(lane) * 4;

  const T* A = static_cast<const T*>(args.A);
  const int64_t K = args.K;
  // Work unit: a batch of kUnroll consecutive 64-column groups; a row group's warps take batches in turn.
  const int64_t batches = K / (kGroup * kUnroll);
  const int64_t row0 = int64_t{blockIdx.x} * Shape::kRows;
  const int64_t warp_row0 = row0 + row_group * Shape::kWarpRows;
  // Lane (g, t) reads rows g and g + 8 of each tile (h = 0, 1): their codes from byte 8t of each
  // group, and their block scales. Rows past N read row N - 1 (in bounds) and are never stored.
  const uint8_t* codes_at[kTiles][2];
  int64_t first_block[kTiles][2];
#pragma unroll
  for (int j = 0; j < kTiles; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = min(warp_row0 + 16 * j + 8 * h + g, args.N - 1);
      codes_at[j][h] = args.packed + r * (K / 2) + 8 * t;
      first_block[j][h] = r * (K >> args.log2_blocksize);
    }
  const T* act[NTiles];
  bool has_act[NTiles];
#pragma unroll
  for (int i = 0; i < NTiles; ++i) {
    act[i] = A + int64_t{g + 8 * i} * K + 16 * t;
    has_act[i] = g + 8 * i < args.M;
  }

  // The pair table holds the same word for all 32 lanes of a byte: four lanes per 16-byte store.
  cuda::fill_pair_table<T>(smem, args.code, kWide, threadIdx.x, Shape::kThreads);

  // Everything a batch reads from global memory but the activations (read as each group is used).
  struct BatchLoads {
    uint2 codes[kUnroll][kTiles][2];
    BatchScales<ScalesPerBatch, Nested> scales[kTiles][2];
  };
  // Every load of a batch is issued before any is used, so that many bytes are in flight.
  auto load_batch = [&](BatchLoads& b, int64_t batch) {
    const int64_t col0 = batch * (kGroup * kUnroll);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          b.codes[u][j][h] = __ldg(reinterpret_cast<const uint2*>(codes_at[j][h] + col0 / 2 + u * (kGroup / 2)));
#pragma unroll
    for (int j = 0; j < kTiles; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) b.scales[j][h].load(args, first_block[j][h] + (col0 >> args.log2_blocksize));
  };

  // Launched to overlap the kernel before it (typically the previous layer's product): the next kernel
  // may be scheduled once this one's CTAs have all started, and nothing in global memory is read
  // before the previous kernel has finished (it may have written the weight or its statistics).
  cuda::allow_next_kernel();
  cuda::wait_for_previous_kernel();
  // The first batch is requested before the second-level code table: its loads then overlap the
  // table's instead of waiting behind them and the barrier (a one-wave grid pays that wait once per SM).
  // Two activation operands leave no registers for it (the copy of the loop body spills).
  constexpr bool kEarlyFirstBatch = NTiles == 1 && !WideLoads;
  BatchLoads first;
  if (kEarlyFirstBatch && k_part < batches) load_batch(first, k_part);
  float offset = 0.0f;
  if constexpr (Nested) {
    for (int i = threadIdx.x; i < 256; i += Shape::kThreads) nested_code[i] = args.absmax_code[i];
    offset = *args.absmax_offset;
  }
  __syncthreads();
  const char* table = reinterpret_cast<const char*>(smem);
  auto step_fragment = [&](uint32_t lo, uint32_t hi, bool odd, uint32_t (&a)[4]) {
    cuda::step_fragment<kWide>(table, lo, hi, odd, lane4, a);
  };

  float acc[kTiles][NTiles][4] = {};
  auto compute_batch = [&](const BatchLoads& b, int64_t batch) {
    const int64_t col0 = batch * (kGroup * kUnroll);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t col = col0 + u * kGroup;
      // Activation words: row g + 8i, columns 16t + 2w, 2w + 1 in word w (zero rows past M).
      uint32_t x[NTiles][8];
#pragma unroll
      for (int i = 0; i < NTiles; ++i) {
        const uint4 zero = make_uint4(0, 0, 0, 0);
        const uint4 v0 = has_act[i] ? __ldg(reinterpret_cast<const uint4*>(act[i] + col)) : zero;
        const uint4 v1 = has_act[i] ? __ldg(reinterpret_cast<const uint4*>(act[i] + col + 8)) : zero;
        x[i][0] = v0.x, x[i][1] = v0.y, x[i][2] = v0.z, x[i][3] = v0.w;
        x[i][4] = v1.x, x[i][5] = v1.y, x[i][6] = v1.z, x[i][7] = v1.w;
      }
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        float part[NTiles][4] = {};
#pragma unroll
        for (int step = 0; step < 4; ++step) {
          // Codes of columns 16t + 4 step + {0..3}: bytes 2 step and 2 step + 1 of the lane's 8.
          const uint32_t lo = step < 2 ? b.codes[u][j][0].x : b.codes[u][j][0].y;
          const uint32_t hi = step < 2 ? b.codes[u][j][1].x : b.codes[u][j][1].y;
          uint32_t a[4];
          step_fragment(lo, hi, step % 2 == 1, a);
#pragma unroll
          for (int i = 0; i < NTiles; ++i) mma_16816<T>(part[i], a, x[i][2 * step], x[i][2 * step + 1]);
        }
        const float s0 = b.scales[j][0].of_group(u, nested_code, offset);
        const float s1 = b.scales[j][1].of_group(u, nested_code, offset);
#pragma unroll
        for (int i = 0; i < NTiles; ++i) {
          acc[j][i][0] += part[i][0] * s0;
          acc[j][i][1] += part[i][1] * s0;
          acc[j][i][2] += part[i][2] * s1;
          acc[j][i][3] += part[i][3] * s1;
        }
      }
    }
  };

  // Rows of the warp (lanes < kWarpRows), whose codes the L2 prefetch below asks for.
  const uint8_t* prefetch_row = args.packed + min(warp_row0 + lane, args.N - 1) * (K / 2);
  auto prefetch_l2 = [&](int64_t batch) {
    if (L2Prefetch && lane < Shape::kWarpRows) {
      // Grids of several waves: each warp asks L2 for its rows of the batch it takes two rounds later,
      // so that a CTA keeps more bytes in flight than its registers hold (the last, partial wave
      // otherwise streams at the rate of its few CTAs).
      const int64_t ahead = batch + int64_t{kPrefetchRounds} * kKSplit;
      if (ahead < batches)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(prefetch_row + ahead * (kGroup * kUnroll / 2)));
    }
  };
  // Wide loads (see the top of the file): a batch is kWideBatch columns; lane (g, t) reads 32 columns of
  // each 128-column group, codes from byte 16t of the group's 64 per row, activations from column 32t.
  auto stream_wide_batches = [&] {
    constexpr int kGroups = kWideBatch / kWideGroup;
    for (int64_t wb = k_part; wb < K / kWideBatch; wb += kKSplit) {
      const int64_t col0 = wb * kWideBatch;
      uint4 codes[kGroups][kTiles][2];
#pragma unroll
      for (int p = 0; p < kGroups; ++p)
#pragma unroll
        for (int j = 0; j < kTiles; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            codes[p][j][h] =
                __ldg(reinterpret_cast<const uint4*>(codes_at[j][h] + 8 * t + (col0 + p * kWideGroup) / 2));
      // The batch's scales go to L1 now, holding no registers, and are read group by group below.
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t block = first_block[j][h] + (col0 >> args.log2_blocksize);
          if constexpr (Nested) asm volatile("prefetch.global.L1 [%0];" ::"l"(args.absmax_q + block));
          else asm volatile("prefetch.global.L1 [%0];" ::"l"(args.absmax + block));
        }
#pragma unroll
      for (int p = 0; p < kGroups; ++p) {
        const int64_t col = col0 + p * kWideGroup;
        // Activation words: row g + 8i, columns 32t + 2w, 2w + 1 in word w (zero rows past M).
        uint32_t x[NTiles][16];
#pragma unroll
        for (int i = 0; i < NTiles; ++i)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const uint4 v = has_act[i] ? __ldg(reinterpret_cast<const uint4*>(act[i] + 16 * t + col + 8 * q))
                                       : make_uint4(0, 0, 0, 0);
            x[i][4 * q] = v.x, x[i][4 * q + 1] = v.y, x[i][4 * q + 2] = v.z, x[i][4 * q + 3] = v.w;
          }
        const int64_t lane_block = (col + 32 * t) >> args.log2_blocksize;  // the lane's 32 columns share a block
#pragma unroll
        for (int j = 0; j < kTiles; ++j) {
          typename cuda::Vec2<T>::type scale[2];  // rows g and g + 8
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t block = first_block[j][h] + lane_block;
            const float v = Nested ? nested_code[__ldg(args.absmax_q + block)] *
                                             __ldg(args.absmax + block / kNestedBlocksize) + offset
                                   : __ldg(args.absmax + block);
            scale[h] = cuda::Vec2<T>::broadcast(v);
          }
          const uint4 lo4 = codes[p][j][0], hi4 = codes[p][j][1];
          const uint32_t lo_words[4] = {lo4.x, lo4.y, lo4.z, lo4.w}, hi_words[4] = {hi4.x, hi4.y, hi4.z, hi4.w};
#pragma unroll
          for (int step = 0; step < 8; ++step) {
            // Codes of columns 32t + 4 step + {0..3}: bytes 2 (step % 2) and 2 (step % 2) + 1 of word step / 2.
            const uint32_t lo = lo_words[step / 2], hi = hi_words[step / 2];
            uint32_t a[4];
            step_fragment(lo, hi, step % 2 == 1, a);
            a[0] = cuda::scale_pair_word<T>(a[0], scale[0]), a[2] = cuda::scale_pair_word<T>(a[2], scale[0]);
            a[1] = cuda::scale_pair_word<T>(a[1], scale[1]), a[3] = cuda::scale_pair_word<T>(a[3], scale[1]);
#pragma unroll
            for (int i = 0; i < NTiles; ++i) mma_16816<T>(acc[j][i], a, x[i][2 * step], x[i][2 * step + 1]);
          }
        }
      }
    }
  };

  if constexpr (WideLoads) {
    stream_wide_batches();
  } else {
    int64_t batch = k_part;
    if (kEarlyFirstBatch && batch < batches) {
      prefetch_l2(batch);
      compute_batch(first, batch);
      batch += kKSplit;
    }
    for (; batch < batches; batch += kKSplit) {
      prefetch_l2(batch);
      BatchLoads b;
      load_batch(b, batch);
      compute_batch(b, batch);
    }
  }

  // Sum the warps' partial products: warp w's accumulators go to smem, then each thread adds up
  // the kKSplit partials of a few outputs of its row group.
  constexpr int kPerWarp = kTiles * NTiles * 4;  // accumulators per lane
  static_assert(Shape::kWarps * kPerWarp * kWarpSize <= Smem::kTableWords, "the partial sums fit in the table's space");
  __syncthreads();  // every warp is done with the pair table
  float* partial = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int j = 0; j < kTiles; ++j)
#pragma unroll
    for (int i = 0; i < NTiles; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) partial[((warp * kTiles + j) * NTiles * 4 + i * 4 + c) * kWarpSize + lane] = acc[j][i][c];
  __syncthreads();
  const T* bias = static_cast<const T*>(args.bias);
  T* out = static_cast<T*>(args.out);
  for (int idx = threadIdx.x; idx < RowGroups * kPerWarp * kWarpSize; idx += Shape::kThreads) {
    const int l = idx % kWarpSize, slot = (idx / kWarpSize) % kPerWarp, rg = idx / (kPerWarp * kWarpSize);
    const int c = slot % 4, i = (slot / 4) % NTiles, j = slot / (4 * NTiles);
    const int lg = l / 4, lt = l % 4;
    const int64_t n = row0 + rg * Shape::kWarpRows + 16 * j + lg + 8 * (c / 2);  // the weight row: output feature
    const int64_t m = 8 * i + 2 * lt + (c % 2);                                   // the activation row
    if (n >= args.N || m >= args.M) continue;
    float sum = 0.0f;
    for (int w = rg * kKSplit; w < (rg + 1) * kKSplit; ++w) sum += partial[(w * kPerWarp + slot) * kWarpSize + l];
    const float b = bias ? cuda::to_f32(bias[n]) : 0.0f;
    out[m * args.N + n] = cuda::from_f32<T>(sum + b);
  }
#endif
}

bool tensor_cores_available(int32_t device) { return cuda::compute_capability(device) >= 80; }

// One kernel of the family, its dynamic shared memory allowed once per device.
template <typename T, bool Nested, int NT, int RG, int S, bool L2Prefetch, bool WideLoads>
void launch_small_m(const GemvArgs& args, unsigned ctas, int32_t device, cudaStream_t stream) {
  using Smem = GemvSmem<NT, RG>;
  auto* kernel = gemm_4bit_small_m<T, Nested, NT, RG, S, L2Prefetch, WideLoads>;
  static std::atomic<uint64_t> opted_in{0};
  cuda::allow_dynamic_smem(kernel, Smem::kBytes, device, opted_in);
  cuda::launch_with_smem_after_previous(kernel, ctas, GemvShape<NT, RG>::kThreads, Smem::kBytes, stream, device,
                                        /*overlap=*/true, args);
}

template <typename T, bool Nested>
void launch(const Gemm4bitParams& p, int32_t device, cudaStream_t stream) {
  const GemvArgs args = gemv_args(p);
  auto run = [&](auto scales_per_batch) {
    constexpr int S = decltype(scales_per_batch)::value;
    // Grids of several waves stream better from many small CTAs, each with an L2 prefetch; a grid of
    // one wave or less starts faster from half as many CTAs of twice the rows (one pair table per 32
    // rows): H100, K = N = 8192, M = 1, nested statistics 18.6 -> 17.5 us, plain unchanged.
    auto go = [&](auto n_tiles, auto row_groups) -> bool {
      constexpr int NT = decltype(n_tiles)::value, RG = decltype(row_groups)::value;
      using Shape = GemvShape<NT, RG>;
      const int64_t ctas = (p.N + Shape::kRows - 1) / Shape::kRows;
      BNB_CHECK_SUPPORTED(ctas <= cuda::kMaxGridX, "N = ", p.N, " is too large for the 4-bit GEMV grid");
      const bool one_wave = ctas <= int64_t{cuda::sm_count(device)} * Shape::kMinBlocks;
      if (NT == 1 && RG == 1 && one_wave) return false;  // the larger CTAs serve it
      // One activation operand streams from L2 ahead of its loads where the grid takes several waves.
      const auto grid = static_cast<unsigned>(ctas);
      // The two-row-group CTAs of a one-wave grid read 16 bytes per lane where few activation rows leave
      // the registers for it (see the top of the file).
      if constexpr (NT == 1 && RG == 2) {
        if (p.M <= kWideMaxRows && p.K % kWideBatch == 0 && cuda::is_aligned(p.packed, 16)) {
          launch_small_m<T, Nested, NT, RG, S, false, true>(args, grid, device, stream);
          return true;
        }
      }
      constexpr bool kPrefetching = NT == 1 && RG == 1;
      kPrefetching && !one_wave ? launch_small_m<T, Nested, NT, RG, S, kPrefetching, false>(args, grid, device, stream)
                                : launch_small_m<T, Nested, NT, RG, S, false, false>(args, grid, device, stream);
      return true;
    };
    using One = std::integral_constant<int, 1>;
    using Two = std::integral_constant<int, 2>;
    if (p.M > 8) go(Two{}, One{});
    else if (!go(One{}, One{})) go(One{}, Two{});
  };
  if (p.blocksize == 64) {
    run(std::integral_constant<int, 4>{});
  } else if (p.blocksize == 128) {
    run(std::integral_constant<int, 2>{});
  } else {
    run(std::integral_constant<int, 1>{});
  }
  BNB_CUDA_CHECK_LAUNCH("gemm_4bit_small_m");
}

}  // namespace

void gemm_4bit(const Gemm4bitParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  if (p.M > kMaxRows && gemm_4bit_tensor_core_serves(p, device)) {
    gemm_4bit_tensor_core(p, device, cuda::as_cuda(stream));
    return;
  }
  if (p.M <= kMaxRows && gemm_4bit_streamed_serves(p, device)) {
    gemm_4bit_streamed(p, device, cuda::as_cuda(stream));
    return;
  }
  if (p.M <= kMaxRows && gemm_4bit_staged_serves(p, device)) {
    gemm_4bit_staged(p, device, cuda::as_cuda(stream));
    return;
  }
  // Scales are read as vectors of up to 4 (codes: 4 bytes) per row and batch.
  const bool aligned = cuda::is_aligned(p.A, 16) && cuda::is_aligned(p.packed, 8) && cuda::is_aligned(p.absmax, 16) &&
                       (p.absmax_q == nullptr || cuda::is_aligned(p.absmax_q, 4));
  const bool supported = p.M <= kMaxRows && p.a_dtype != BNB_DTYPE_FLOAT32 && p.blocksize >= kGroup &&
                         p.K % (kGroup * kUnroll) == 0 && p.K % p.blocksize == 0 && aligned && tensor_cores_available(device);
  if (!supported)
    fail(BNB_STATUS_NOT_IMPLEMENTED,
         "the CUDA 4-bit kernels serve 1..16 rows of float16/bfloat16 activations (16-byte aligned) with K a "
         "multiple of 256 and of the blocksize (>= 64) on compute capability >= 8.0, and more rows on 9.0 with "
         "K a multiple of 64 and N of 8; got M = ",
         p.M, ", K = ", p.K, ", blocksize ", p.blocksize, ", ", dtype_name(p.a_dtype));
  const cudaStream_t s = cuda::as_cuda(stream);
  with_activation_type_and_nesting(
      p, [&](auto type, auto nested) { launch<decltype(type), decltype(nested)::value>(p, device, s); });
}

}  // namespace bnb::backend

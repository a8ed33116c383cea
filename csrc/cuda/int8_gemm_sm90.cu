// Many-row int8 products on Hopper's warpgroup tensor cores with the dequantization (row and column
// scales, bias, output dtype) applied to the int32 accumulators before anything is written: the int32
// matrix that cuBLASLt's GEMM writes and the dequantization kernel reads back never exists.
//
// Each CTA owns 128 rows of the weight B (two consumer warpgroups of 64, the MMA's M) and 256 rows of A
// (the MMA's N), and walks K in tiles of 128 bytes. One lane of the producer warpgroup keeps
// a ring of shared-memory stages filled by TMA, both operands as 128-byte-swizzled K-major tiles that the
// MMAs read straight from shared memory; a consumer warpgroup issues the four k32 MMAs of a tile without
// waiting for them and releases the stage of the tile before once those have completed. The epilogue
// scales each exact int32 sum as int8_mm_dequant does (same bits), adds the bias, rounds to the output
// dtype and writes out [M, N] through shared memory in 16-byte rows. For int8_linear with outliers it
// first adds the outlier columns as its dequantization kernel does: packed coefficients of the tile's
// rows and CB at those columns staged in shared memory, summed column by column in float32.
//
// Measured on the H100 (K = 8192, fp16, graph replays, two rounds, against cuBLASLt's int8 GEMM plus the
// dequantization kernel): M = 4096 N = 8192 504-506 -> 424-430 us (nn.Linear 782 us), N = 28672 1658 ->
// 1481 us; M = 2048 N = 8192 250-256 -> 207-211 us; M = 512 N = 8192 70.4 -> 52.2 us, N = 28672 244 -> 198-203
// us; bf16 M = 4096 N = 8192 496-502 -> 429 us. 128 activation rows per CTA (seven stages) were slower
// everywhere (M = 4096 N = 8192 545 us). Threshold 6 (8 outlier columns, Linear8bitLt, graph replays,
// two rounds, against cuBLASLt's GEMM plus the outlier-adding dequantization): M = 4096 N = 8192 fp16
// 527-528 -> 477-481 us, bf16 522-527 -> 487-490 us, N = 28672 1685-1695 -> 1580-1608 us; M = 512 N =
// 8192 79.8-79.9 -> 73.4-73.5 us.
#include "cuda/int8_gemm_sm90.cuh"

#include <atomic>

#include "core/error.h"
#include "cuda/common.cuh"
#include "cuda/int8_arith.cuh"
#include "cuda/sm90.cuh"
#include "cuda/tensor_map.cuh"

namespace bnb::backend {
namespace {

using cuda::kWarpSize;
namespace sm90 = cuda::sm90;

constexpr int kTileK = 128;       // int8 K per stage: one 128-byte swizzled row
constexpr int kWeightRows = 128;  // per CTA: two consumer warpgroups of 64
constexpr int kActRows = 256;     // per CTA: the MMA's N
constexpr int kConsumerThreads = 256;
constexpr int kThreads = 128 + kConsumerThreads;  // warpgroup 0 produces (one lane), 1 and 2 consume
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
constexpr int kGroupN = 16;  // CTAs launched in turn cycle over this many weight tiles
constexpr int kSmemBudget = 227 * 1024;
constexpr int kConsumersDone = 1;  // named barrier of the consumer warpgroups

__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync %0, %1;" ::"n"(kConsumersDone), "n"(kConsumerThreads) : "memory");
}

// The CTA's shared-memory layout: a ring of stages, each one K tile of A and of B.
struct Tile {
  static constexpr int kActBytes = kActRows * kTileK;
  static constexpr int kWeightBytes = kWeightRows * kTileK;
  static constexpr int kStageBytes = kActBytes + kWeightBytes;
  static constexpr int kFixedBytes = 1024 /* alignment */ + 2 * 8 * 8 /* barriers */;
  static constexpr int kRoom = (kSmemBudget - kFixedBytes) / kStageBytes;
  static constexpr int kStages = kRoom > 8 ? 8 : kRoom;
  static constexpr int kOutStride = kWeightRows + 8;  // elements per staged output row (no bank conflicts)
  static constexpr int kOutBytes = kActRows * kOutStride * 2;
  // With outliers, after the output tile: the packed coefficients of the tile's activation rows,
  // [kPackedOutliers][kActRows] floats, and CB at the outlier columns, [kPackedOutliers][kWeightRows] floats.
  static constexpr int kCoefBytes = cuda::kPackedOutliers * kActRows * 4;
  static constexpr int kOutlierCbBytes = cuda::kPackedOutliers * kWeightRows * 4;
  static_assert(kOutBytes + kCoefBytes + kOutlierCbBytes <= kStages * kStageBytes, "the epilogue fits in the stages");
  static constexpr int kSmemBytes = kFixedBytes + kStages * kStageBytes;
};

struct Int8GemmArgs {
  const float* row_stats;
  const float* col_stats;
  const void* bias;
  void* out;
  int32_t M, N, K;
  // Threshold > 0 (int8_linear): the outlier columns, added with StoreLinear's float32 operations in
  // StoreLinear's order. More than kPackedOutliers of them are taken unpacked from X, A and B.
  cuda::Outliers outliers;
  const void* X;
  const int8_t* A;
  const int8_t* B;
};

template <typename Out, bool WithOutliers>
__global__ void __launch_bounds__(kThreads, 1)
    int8_gemm_dequant_sm90_kernel(const __grid_constant__ CUtensorMap act_map,
                                  const __grid_constant__ CUtensorMap weight_map,
                                  const __grid_constant__ Int8GemmArgs args) {
#ifdef BNB_SM90A_DEVICE
  constexpr int BM = kActRows, kStages = Tile::kStages;
  extern __shared__ uint8_t smem_raw[];
  // Aligned by an offset from the shared array itself, so that the compiler keeps it a shared pointer.
  uint8_t* smem = smem_raw + ((1024 - (sm90::smem_addr(smem_raw) & 1023)) & 1023);
  uint8_t* act_stages = smem;                                       // kStages x [BM][128] swizzled
  uint8_t* weight_stages = act_stages + kStages * Tile::kActBytes;  // kStages x [128][128] swizzled
  uint64_t* full = reinterpret_cast<uint64_t*>(weight_stages + kStages * Tile::kWeightBytes);
  uint64_t* empty = full + kStages;

  // Tile order: CTAs launched together share weight tiles (kGroupN of them) and activation tiles.
  const sm90::TileCoord tile = sm90::grouped_tile(static_cast<int>(blockIdx.x), (args.M + BM - 1) / BM,
                                                  (args.N + kWeightRows - 1) / kWeightRows, kGroupN);
  const int n0 = tile.n_tile * kWeightRows;
  const int m0 = tile.m_tile * BM;
  const int k_tiles = (args.K + kTileK - 1) / kTileK;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (threadIdx.x == 0) sm90::init_stage_barriers<kStages>(full, empty, kConsumerThreads / kWarpSize);
  __syncthreads();
  // Launched to overlap the quantization of A: nothing it writes is read before it has finished.
  cuda::wait_for_previous_kernel();

  if (warp < 4) {
    // Producer: one lane keeps every stage filled.
    sm90::set_max_registers_dec<kProducerRegisters>();
    if (threadIdx.x == 0)
      sm90::produce_stages<kStages>(k_tiles, full, empty, {&act_map, act_stages, Tile::kActBytes, kTileK, m0},
                                    {&weight_map, weight_stages, Tile::kWeightBytes, kTileK, n0});
    return;
  }

  // Consumers.
  sm90::set_max_registers_inc<kConsumerRegisters>();
  const int consumer = warp / 4 - 1;  // consumer warpgroup 0 or 1: the tile's weight rows 64 consumer + 0..63
  int32_t acc[BM / 2];
#pragma unroll
  for (int i = 0; i < BM / 2; ++i) acc[i] = 0;
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % kStages;
    sm90::mbar_wait(&full[s], (kt / kStages) & 1);
    const uint64_t desc_a = sm90::kmajor_sw128_desc(weight_stages + s * Tile::kWeightBytes + consumer * 64 * kTileK);
    const uint64_t desc_b = sm90::kmajor_sw128_desc(act_stages + s * Tile::kActBytes);
    sm90::fence_accumulators(acc);
    sm90::wgmma_fence();
#pragma unroll
    for (int step = 0; step < kTileK / 32; ++step)  // k32 slices start 32 bytes apart: 2 descriptor units
      sm90::WgmmaS8<BM>::run(acc, desc_a + 2 * step, desc_b + 2 * step);
    sm90::wgmma_commit();
    sm90::wgmma_wait<1>();  // the tile before is done: its stage goes back to the producer
    if (kt > 0 && lane == 0) sm90::mbar_arrive(&empty[(kt - 1) % kStages]);
  }
  sm90::wgmma_wait<0>();
  sm90::fence_accumulators(acc);

  // Epilogue: every consumer is done with the stages; stage the [BM][128] output tile there.
  consumers_sync();
  const int g = lane / 4, t = lane % 4;
  const int r = consumer * 64 + (warp % 4) * 16 + g;  // this lane's weight rows r and r + 8 of the tile
  const int n_lo = min(n0 + r, args.N - 1), n_hi = min(n0 + r + 8, args.N - 1);
  const float col_lo = args.col_stats[n_lo], col_hi = args.col_stats[n_hi];
  const Out* bias = static_cast<const Out*>(args.bias);
  const float bias_lo = bias ? cuda::to_f32(bias[n_lo]) : 0.0f;
  const float bias_hi = bias ? cuda::to_f32(bias[n_hi]) : 0.0f;
  Out* staged = reinterpret_cast<Out*>(smem);
  auto stage_out = [&](int m, int c, float v) {  // m: the tile's activation row of accumulator c
    if (bias) v = cuda::plus_bias(v, c < 2 ? bias_lo : bias_hi);
    staged[(m + c % 2) * Tile::kOutStride + r + 8 * (c / 2)] = cuda::from_f32<Out>(v);
  };
  const int32_t outliers = WithOutliers ? *args.outliers.count : 0;
  if (outliers == 0) {
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) {
      const int m = 8 * j + 2 * t;  // activation rows m and m + 1
      const float row0 = args.row_stats[min(m0 + m, args.M - 1)];
      const float row1 = args.row_stats[min(m0 + m + 1, args.M - 1)];
#pragma unroll
      for (int c = 0; c < 4; ++c) stage_out(m, c, cuda::dequant_acc(acc[4 * j + c], c % 2 ? row1 : row0, c < 2 ? col_lo : col_hi));
    }
  } else if constexpr (WithOutliers) {  // compiled only where there can be outliers
    if (outliers <= cuda::kPackedOutliers) {
      // The tile's coefficients (transposed: a lane's rows m, m + 1 are one 8-byte load) and CB values
      // of the outlier columns go to shared memory once; each lane then sums over the columns for 8 row
      // pairs at a time (32 sums in registers beside the 128 accumulators).
      float* coef = reinterpret_cast<float*>(smem + Tile::kOutBytes);  // [outliers][BM]
      float* cb = coef + cuda::kPackedOutliers * BM;                   // [outliers][kWeightRows]
      const int tid = threadIdx.x - 128;
      for (int idx = tid; idx < outliers * BM; idx += kConsumerThreads) {
        const int m = idx / outliers, i = idx % outliers;
        coef[i * BM + m] = m0 + m < args.M ? args.outliers.coef[int64_t{m0 + m} * cuda::kPackedOutliers + i] : 0.0f;
      }
      for (int idx = tid; idx < outliers * kWeightRows; idx += kConsumerThreads) {
        const int i = idx / kWeightRows, n = idx % kWeightRows;
        cb[idx] = n0 + n < args.N ? static_cast<float>(args.outliers.cb[int64_t{i} * args.N + n0 + n]) : 0.0f;
      }
      consumers_sync();
  #pragma unroll
      for (int chunk = 0; chunk < BM / 64; ++chunk) {
        float sum[8][4] = {};
        for (int i = 0; i < outliers; ++i) {
          const float w_lo = cb[i * kWeightRows + r], w_hi = cb[i * kWeightRows + r + 8];
  #pragma unroll
          for (int jj = 0; jj < 8; ++jj) {
            const float2 k = *reinterpret_cast<const float2*>(coef + i * BM + 8 * (8 * chunk + jj) + 2 * t);
            sum[jj][0] = cuda::add_product(sum[jj][0], k.x, w_lo);
            sum[jj][1] = cuda::add_product(sum[jj][1], k.y, w_lo);
            sum[jj][2] = cuda::add_product(sum[jj][2], k.x, w_hi);
            sum[jj][3] = cuda::add_product(sum[jj][3], k.y, w_hi);
          }
        }
  #pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
          const int j = 8 * chunk + jj, m = 8 * j + 2 * t;
          const float row0 = args.row_stats[min(m0 + m, args.M - 1)];
          const float row1 = args.row_stats[min(m0 + m + 1, args.M - 1)];
  #pragma unroll
          for (int c = 0; c < 4; ++c) {
            const float col = c < 2 ? col_lo : col_hi;
            const float v = cuda::dequant_acc(acc[4 * j + c], c % 2 ? row1 : row0, col);
            stage_out(m, c, cuda::add_product(v, sum[jj][c], col));
          }
        }
      }
    } else {
      // More outlier columns than the packed arrays hold (rare): each output reads them from X, A and B.
      const Out* X = static_cast<const Out*>(args.X);
  #pragma unroll
      for (int j = 0; j < BM / 8; ++j) {
        const int m = 8 * j + 2 * t;
  #pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t gm = min(m0 + m + c % 2, args.M - 1), gn = c < 2 ? n_lo : n_hi;
          const float row = args.row_stats[gm], col = c < 2 ? col_lo : col_hi;
          const float v = cuda::dequant_acc(acc[4 * j + c], row, col);
          stage_out(m, c, cuda::add_unpacked_outliers(v, args.outliers.cols, outliers, X, args.A, args.B, args.K, gm, gn,
                                                      row, col));
        }
      }
    }
  }
  consumers_sync();
  sm90::store_tile<BM, kWeightRows>(staged, Tile::kOutStride, static_cast<Out*>(args.out), args.M, args.N, m0, n0,
                                    threadIdx.x - 128, kConsumerThreads);
#endif
}

template <typename Out, bool WithOutliers>
void launch(const Int8MatmulParams& mm, const Int8DequantParams& dq, const Int8LinearOutliers* outliers,
            int32_t device, cudaStream_t stream, bool overlap) {
  constexpr int BM = kActRows;
  auto kernel = int8_gemm_dequant_sm90_kernel<Out, WithOutliers>;
  static std::atomic<uint64_t> opted_in{0};
  cuda::allow_dynamic_smem(kernel, Tile::kSmemBytes, device, opted_in);
  const CUtensorMap act_map = cuda::tensor_map_2d(mm.A, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, mm.M, mm.K, BM, kTileK,
                                                  CU_TENSOR_MAP_SWIZZLE_128B);
  const CUtensorMap weight_map = cuda::tensor_map_2d(mm.B, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, mm.N, mm.K, kWeightRows,
                                                     kTileK, CU_TENSOR_MAP_SWIZZLE_128B);
  const Int8GemmArgs args{dq.row_stats,
                          dq.col_stats,
                          dq.bias,
                          dq.out,
                          static_cast<int32_t>(mm.M),
                          static_cast<int32_t>(mm.N),
                          static_cast<int32_t>(mm.K),
                          outliers ? outliers->packed : cuda::Outliers{},
                          outliers ? outliers->X : nullptr,
                          mm.A,
                          mm.B};
  const int64_t ctas = (mm.M + BM - 1) / BM * ((mm.N + kWeightRows - 1) / kWeightRows);
  BNB_CHECK_SUPPORTED(ctas <= cuda::kMaxGridX, "int8 product of ", mm.M, " x ", mm.N, " is too large for the grid");
  cuda::launch_with_smem_after_previous(kernel, static_cast<unsigned>(ctas), kThreads, Tile::kSmemBytes, stream,
                                        device, overlap, act_map, weight_map, args);
  BNB_CUDA_CHECK_LAUNCH("int8_gemm_dequant_sm90");
}

}  // namespace

bool int8_gemm_dequant_sm90_serves(const Int8MatmulParams& mm, const Int8DequantParams& dq, int32_t device) {
#ifndef BNB_CUDA_SM90A
  (void)mm, (void)dq, (void)device;
  return false;
#else
  const bool out16 = dq.out_dtype == BNB_DTYPE_FLOAT16 || dq.out_dtype == BNB_DTYPE_BFLOAT16;
  const bool bias_ok = dq.bias == nullptr || dq.bias_dtype == dq.out_dtype;
  const bool shapes = mm.M > 0 && mm.N > 0 && mm.K > 0 && mm.M <= INT32_MAX && mm.N <= INT32_MAX &&
                      mm.K <= INT32_MAX && mm.K % 16 == 0 && mm.N % 8 == 0;
  const bool aligned = cuda::is_aligned(mm.A, 16) && cuda::is_aligned(mm.B, 16) && cuda::is_aligned(dq.out, 16);
  // A grid of under three quarters of a wave (N = 8192 up to 256 rows) leaves SMs idle that cuBLASLt's
  // smaller tiles would use.
  const int64_t ctas = (mm.M + kActRows - 1) / kActRows * ((mm.N + kWeightRows - 1) / kWeightRows);
  return out16 && bias_ok && shapes && aligned && cuda::compute_capability(device) == 90 &&
         4 * ctas >= 3 * int64_t{cuda::sm_count(device)};
#endif
}

void int8_gemm_dequant_sm90(const Int8MatmulParams& mm, const Int8DequantParams& dq, int32_t device,
                            cudaStream_t stream, bool overlap, const Int8LinearOutliers* outliers) {
  const bool half = dq.out_dtype == BNB_DTYPE_FLOAT16;
  if (outliers) {
    half ? launch<__half, true>(mm, dq, outliers, device, stream, overlap)
         : launch<__nv_bfloat16, true>(mm, dq, outliers, device, stream, overlap);
  } else {
    half ? launch<__half, false>(mm, dq, nullptr, device, stream, overlap)
         : launch<__nv_bfloat16, false>(mm, dq, nullptr, device, stream, overlap);
  }
}

}  // namespace bnb::backend

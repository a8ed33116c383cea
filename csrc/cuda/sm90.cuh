// Hopper (sm_90a) building blocks: warpgroup MMA with the A operand in registers, shared-memory matrix
// descriptors, mbarriers and TMA tile loads. Everything here compiles to nothing for other targets;
// kernels that use it check `BNB_SM90A_DEVICE` and their hosts check that the library carries an sm_90a
// image (BNB_CUDA_SM90A) before launching them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define BNB_SM90A_DEVICE 1
#endif

namespace bnb::cuda::sm90 {

// ---- mbarriers (shared-memory transaction barriers) ---------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The first 1024-byte boundary (the 128-byte swizzle's period) at or after `window`, a dynamic shared array.
// Aligned by an offset from the array itself: a pointer rebuilt from an integer is generic to the compiler,
// and every read through it compiles to a generic load (address-space check, 64-bit address, the long
// scoreboard) instead of an LDS.
__device__ __forceinline__ uint8_t* align_shared_1024(uint8_t* window) {
  return window + ((1024 - (smem_addr(window) & 1023)) & 1023);
}

// Waits until `Threads` threads (whole warps) of the CTA have arrived at named barrier `Id` (0 is
// __syncthreads').
template <int Id, int Threads>
__device__ __forceinline__ void named_barrier_sync() {
  asm volatile("bar.sync %0, %1;" ::"n"(Id), "n"(Threads) : "memory");
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#ifdef BNB_SM90A_DEVICE
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
#endif
}

// Makes the initialised barriers visible to the TMA unit (the async proxy).
__device__ __forceinline__ void fence_barrier_init() {
#ifdef BNB_SM90A_DEVICE
  asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;" ::: "memory");
#endif
}

__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#ifdef BNB_SM90A_DEVICE
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#ifdef BNB_SM90A_DEVICE
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
#endif
}

// Returns once the barrier's phase with the given parity has completed. On a fresh barrier, parity 1
// counts as completed (the phase "before" the first), which lets a producer start on empty slots.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#ifdef BNB_SM90A_DEVICE
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
#endif
}

// ---- TMA ---------------------------------------------------------------------------------------------
// Copies the box at (x, y) (x the contiguous dimension, in elements) of a 2-D tensor map into shared
// memory; the bytes are counted on `bar`.
__device__ __forceinline__ void tma_load_2d(void* dst, const void* tensor_map, int32_t x, int32_t y, uint64_t* bar) {
#ifdef BNB_SM90A_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(x), "r"(y), "r"(smem_addr(bar))
      : "memory");
#endif
}

// The same with an L2 cache policy for the box's lines (evict_first_policy for data read once).
__device__ __forceinline__ void tma_load_2d(void* dst, const void* tensor_map, int32_t x, int32_t y, uint64_t* bar,
                                            uint64_t policy) {
#ifdef BNB_SM90A_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3}], [%4], %5;" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(x), "r"(y), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
#endif
}

// Copies the box at (x, y, z) of a 3-D tensor map into shared memory with an L2 cache policy; the bytes are
// counted on `bar`.
__device__ __forceinline__ void tma_load_3d(void* dst, const void* tensor_map, int32_t x, int32_t y, int32_t z,
                                            uint64_t* bar, uint64_t policy) {
#ifdef BNB_SM90A_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3, %4}], [%5], %6;" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(x), "r"(y), "r"(z), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
#endif
}

// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to shared memory with the
// bulk-copy engine; the bytes are counted on `bar`. The source is marked first to leave L2: a weight
// streamed once should not push out what is read again.
__device__ __forceinline__ void bulk_copy_to_smem(void* dst, const void* src, uint32_t bytes, uint64_t* bar,
                                                  uint64_t evict_first_policy) {
#ifdef BNB_SM90A_DEVICE
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(smem_addr(bar)), "l"(evict_first_policy)
      : "memory");
#endif
}

// An L2 policy for bulk copies: evict the lines first.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy = 0;
#ifdef BNB_SM90A_DEVICE
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
#endif
  return policy;
}

__device__ __forceinline__ void prefetch_tensor_map(const void* tensor_map) {
#ifdef BNB_SM90A_DEVICE
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(tensor_map)) : "memory");
#endif
}

// ---- warp-specialised tiles: order, TMA-fed stage ring, output ------------------------------------------
// The output tile of CTA `cta` when CTAs launched together should share weight tiles: groups of `group_n`
// weight tiles (the last group may be smaller), the activation tile changing slowest within a group.
struct TileCoord {
  int n_tile, m_tile;
};
__device__ __forceinline__ TileCoord grouped_tile(int cta, int tiles_m, int tiles_n, int group_n) {
  const int per_group = group_n * tiles_m;
  const int first_n = cta / per_group * group_n;
  const int group_size = min(tiles_n - first_n, group_n);
  const int in_group = cta % per_group;
  return {first_n + in_group % group_size, in_group / group_size};
}

// One operand of a stage ring: K tile kt is the box at (kt * x_per_tile, row) of a 2-D tensor map, and goes
// to stages + s * stage_bytes in stage s.
struct StageOperand {
  const void* map;
  uint8_t* stages;
  int stage_bytes;
  int x_per_tile;
  int row;
};

// Initialises a ring's barriers (one thread): stage s is full once `fillers` arrivals (the TMA producer's
// and any threads that store into the stage themselves) have been made and its bytes have landed, empty
// once `consumers` arrivals have released it.
template <int Stages>
__device__ __forceinline__ void init_stage_barriers(uint64_t* full, uint64_t* empty, uint32_t consumers,
                                                    uint32_t fillers = 1) {
  for (int s = 0; s < Stages; ++s) {
    mbar_init(&full[s], fillers);
    mbar_init(&empty[s], consumers);
  }
  fence_barrier_init();
}

// The producer (one thread) of a ring of Stages stages, each one tile of both operands: every K tile
// waits until its stage has been released (`empty`), then loads both boxes into it, counted on `full`.
template <int Stages>
__device__ __forceinline__ void produce_stages(int k_tiles, uint64_t* full, uint64_t* empty, const StageOperand& a,
                                               const StageOperand& b) {
  prefetch_tensor_map(a.map);
  prefetch_tensor_map(b.map);
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % Stages;
    mbar_wait(&empty[s], ((kt / Stages) & 1) ^ 1);
    mbar_arrive_expect_tx(&full[s], a.stage_bytes + b.stage_bytes);
    tma_load_2d(a.stages + s * a.stage_bytes, a.map, kt * a.x_per_tile, a.row, &full[s]);
    tma_load_2d(b.stages + s * b.stage_bytes, b.map, kt * b.x_per_tile, b.row, &full[s]);
  }
}

// Copies a [Rows][Cols] tile of 16-bit T staged in shared memory (rows `stride` elements apart) to out [M, N]
// at (m0, n0) in 16-byte pieces, by `threads` threads of which this is number `thread`; pieces past M or N
// are skipped (N a multiple of 8).
template <int Rows, int Cols, typename T>
__device__ __forceinline__ void store_tile(const T* staged, int stride, T* out, int M, int N, int m0, int n0,
                                           int thread, int threads) {
  constexpr int kPieces = Cols / 8;  // 16-byte pieces per row
  for (int i = thread; i < Rows * kPieces; i += threads) {
    const int m = i / kPieces, n = (i % kPieces) * 8;
    if (m0 + m < M && n0 + n < N)
      *reinterpret_cast<uint4*>(out + static_cast<int64_t>(m0 + m) * N + n0 + n) =
          *reinterpret_cast<const uint4*>(staged + m * stride + n);
  }
}

// ---- register budget ----------------------------------------------------------------------------------
// Hands registers between warpgroups of a CTA (warp-specialised kernels): the producer drops to N, the
// consumers grow to N. Every warp of a warpgroup executes the same one.
template <int N>
__device__ __forceinline__ void set_max_registers_dec() {
#ifdef BNB_SM90A_DEVICE
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void set_max_registers_inc() {
#ifdef BNB_SM90A_DEVICE
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
#endif
}

// ---- warpgroup MMA -----------------------------------------------------------------------------------
// Descriptor of a K-major operand tile in shared memory written by TMA with 128-byte swizzling: rows of
// 64 16-bit elements (128 bytes), 8-row groups 1024 bytes apart. The tile must start on a 1024-byte
// boundary; the k16 slice s of a row starts 32 s bytes in (add 2 s to the descriptor).
__device__ __forceinline__ uint64_t kmajor_sw128_desc(const void* tile) {
  const uint64_t start = (smem_addr(tile) & 0x3FFFF) >> 4;
  constexpr uint64_t kLeading = 1;            // unused by swizzled K-major layouts
  constexpr uint64_t kStride = 1024 >> 4;     // between 8-row groups
  constexpr uint64_t kSwizzle128 = 1ull << 62;
  return start | (kLeading << 16) | (kStride << 32) | kSwizzle128;
}

// Stores four 8 x 8 matrices of 16-bit values transposed (stmatrix .x4 .trans): register q of lane (g, t) holds
// row g, columns 2t and 2t + 1 of matrix q (as an mma accumulator fragment does); lane l gives the address of
// row l % 8 of matrix l / 8 as stored, i.e. of column l % 8 of the matrix as held (16 contiguous bytes).
__device__ __forceinline__ void store_matrices_transposed(void* row, const uint32_t (&v)[4]) {
#ifdef BNB_SM90A_DEVICE
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(smem_addr(row)),
               "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3])
               : "memory");
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef BNB_SM90A_DEVICE
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef BNB_SM90A_DEVICE
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef BNB_SM90A_DEVICE
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving reads or writes of the accumulators across an asynchronous MMA.
template <int R>
__device__ __forceinline__ void fence_accumulators(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Makes the A fragment and B descriptor of an MMA complete before the MMAs are issued: the compiler
// would otherwise sink their computation between the asynchronous MMAs, which serialises them.
__device__ __forceinline__ void fence_operands(uint32_t (&a)[4], uint64_t& desc_b) {
#pragma unroll
  for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[i])::"memory");
  asm volatile("" : "+l"(desc_b)::"memory");
}

// d (64 x N, float32) += a (64 x 16, registers, the mma.sync m16n8k16 A layout per warp) * b (16 x N,
// shared memory, K-major, `desc_b`), for N = 64, 128, 256 and 16-bit T (__half or __nv_bfloat16).
//
// Inline assembly needs every accumulator named as an operand: the lists per N are spelled out once
// below (placeholders, operands, and the numbers of the A and B operands that follow them).
#define BNB_WGMMA_D64_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define BNB_WGMMA_D64_OUTS "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define BNB_WGMMA_D64_INS "{%32, %33, %34, %35}, %36"
#define BNB_WGMMA_D128_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define BNB_WGMMA_D128_OUTS "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define BNB_WGMMA_D128_INS "{%64, %65, %66, %67}, %68"
#define BNB_WGMMA_D256_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define BNB_WGMMA_D256_OUTS "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define BNB_WGMMA_D256_INS "{%128, %129, %130, %131}, %132"

#ifdef BNB_SM90A_DEVICE
#define BNB_WGMMA_ASM(N, TYPE)                                                                              \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                 \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " " BNB_WGMMA_D##N##_REGS   \
               ", " BNB_WGMMA_D##N##_INS ", p, 1, 1, 0;\n}\n"                                               \
               : BNB_WGMMA_D##N##_OUTS                                                                     \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b))
#define BNB_WGMMA_CASE(N)                                          \
  if constexpr (N_ == N) {                                         \
    if constexpr (std::is_same_v<T, __half>) BNB_WGMMA_ASM(N, "f16"); \
    else BNB_WGMMA_ASM(N, "bf16");                                 \
  }
#else
#define BNB_WGMMA_CASE(N)
#endif

template <int N_, typename T>
struct Wgmma {
  static_assert(N_ == 64 || N_ == 128 || N_ == 256, "MMA widths 64, 128 and 256");
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "16-bit operands");
  __device__ __forceinline__ static void run(float (&d)[N_ / 2], const uint32_t (&a)[4], uint64_t desc_b) {
    BNB_WGMMA_CASE(64)
    BNB_WGMMA_CASE(128)
    BNB_WGMMA_CASE(256)
  }
};

#undef BNB_WGMMA_CASE
#undef BNB_WGMMA_ASM
#undef BNB_WGMMA_D64_REGS
#undef BNB_WGMMA_D64_OUTS
#undef BNB_WGMMA_D64_INS
#undef BNB_WGMMA_D128_REGS
#undef BNB_WGMMA_D128_OUTS
#undef BNB_WGMMA_D128_INS
#undef BNB_WGMMA_D256_REGS
#undef BNB_WGMMA_D256_OUTS
#undef BNB_WGMMA_D256_INS

// d (64 x N, int32) += a (64 x 32 int8, shared memory, K-major, `desc_a`) * b (32 x N int8, shared memory,
// K-major, `desc_b`), for N = 256 (the one width int8_gemm_sm90.cu uses). The int32 sums are exact (wrapping as
// the int8 GEMMs do).
#define BNB_WGMMA_S8_D256_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define BNB_WGMMA_S8_D256_OUTS "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]), "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]), "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]), "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]), "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
#define BNB_WGMMA_S8_D256_INS "%128, %129"

#ifdef BNB_SM90A_DEVICE
#define BNB_WGMMA_S8_CASE(N)                                                                                 \
  if constexpr (N_ == N) {                                                                                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.s32.s8.s8 " BNB_WGMMA_S8_D##N##_REGS ", "        \
                 BNB_WGMMA_S8_D##N##_INS ", p;\n}\n"                                                          \
                 : BNB_WGMMA_S8_D##N##_OUTS                                                                  \
                 : "l"(desc_a), "l"(desc_b));                                                                \
  }
#else
#define BNB_WGMMA_S8_CASE(N)
#endif

template <int N_>
struct WgmmaS8 {
  static_assert(N_ == 256, "MMA width 256");
  __device__ __forceinline__ static void run(int32_t (&d)[N_ / 2], uint64_t desc_a, uint64_t desc_b) {
    BNB_WGMMA_S8_CASE(256)
  }
};

template <int R>
__device__ __forceinline__ void fence_accumulators(int32_t (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

#undef BNB_WGMMA_S8_CASE
#undef BNB_WGMMA_S8_D256_REGS
#undef BNB_WGMMA_S8_D256_OUTS
#undef BNB_WGMMA_S8_D256_INS

}  // namespace bnb::cuda::sm90

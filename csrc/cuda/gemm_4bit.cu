// CUDA product of a few activation rows (M <= 16) with a 4-bit weight W [N, K], reading W once as
// packed codes: at these M the product is bound by the weight's bytes, and 4-bit codes are a quarter
// of a 16-bit weight's.
//
// Tensor cores do the arithmetic (mma.sync m16n8k16, float32 accumulation), so the 16 activation
// rows cost no more than one; the CUDA cores only expand codes. Each CTA owns 8 * kTiles rows of W
// and its 8 warps split K between them in groups of 64 columns (interleaved, so the CTA reads each
// row as one contiguous stream), then add their partial sums through shared memory.
//
// Within a 64-column group, lane (g, t) = (lane / 4, lane % 4) loads 16 consecutive codes
// [16t, 16t + 16) of weight row g of a tile (8 bytes) and the same 16 columns of activation rows g
// and g + 8. A dot product does not care in which order k is visited, so the mma's k index is
// permuted to fit these loads: in step s (0..3) the fragment pair (2t, 2t+1) takes columns
// 16t + 4s + {0, 1} and (2t+8, 2t+9) takes 16t + 4s + {2, 3}, for both A and B. All columns of an
// mma step then lie in one 64-column group, so inside one quantization block (blocksize >= 64,
// K a multiple of it): each step's product is scaled by its rows' block scales once, in float32,
// instead of scaling every code.
//
// Codes are expanded two at a time by a 256-entry table (a byte -> the pair of 16-bit code values),
// stored once per lane in shared memory so that 32 lanes reading random bytes hit 32 different banks.
#include "core/backend.h"
#include "core/error.h"
#include "core/formats.h"
#include "cuda/common.cuh"
#include "cuda/dequantize_vectors.cuh"

namespace bnb::backend {
namespace {

using cuda::CudaType;
using cuda::kWarpSize;

constexpr int kWarps = 8;              // warps per CTA, splitting K
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kTiles = 4;              // 8-row tiles of W per CTA
constexpr int kRowsPerCta = 8 * kTiles;
constexpr int kGroup = 64;             // columns per group (one mma k16 step per lane quarter x 4)
constexpr int kUnroll = 2;             // groups whose loads a warp issues before using them
constexpr int kMaxRows = 16;           // activation rows: one m16 tile
constexpr int kPairTableWords = 256 * kWarpSize;

template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};
template <>
struct Pair<__nv_bfloat16> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

// d += a * b for one m16n8k16 tile (row-major A, column-major B, float32 accumulators).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

struct GemvArgs {
  const void* A;
  const uint8_t* packed;
  const float* absmax;
  const uint8_t* absmax_q;
  const float* absmax_code;
  const float* absmax_offset;
  const void* bias;
  void* out;
  int64_t M, K, N;
  int log2_blocksize;
  float code[16];  // the 16 values of the 4-bit type, read once per CTA to build the pair table
};

template <typename T, bool Nested>
__global__ void __launch_bounds__(kThreads) gemm_4bit_small_m(const __grid_constant__ GemvArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ uint32_t smem[kPairTableWords];  // the pair table, later the partial sums
  __shared__ float nested_code[256];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int g = lane / 4;
  const int t = lane % 4;

  for (int i = threadIdx.x; i < kPairTableWords; i += kThreads) {
    const int byte = i / kWarpSize;
    // Element 2j of the flat weight is the high nibble and the lower k: it goes in the low half.
    smem[i] = Pair<T>::pack(args.code[byte >> 4], args.code[byte & 15]);
  }
  float offset = 0.0f;
  if constexpr (Nested) {
    for (int i = threadIdx.x; i < 256; i += kThreads) nested_code[i] = args.absmax_code[i];
    offset = *args.absmax_offset;
  }
  __syncthreads();

  const T* A = static_cast<const T*>(args.A);
  const int64_t K = args.K;
  const int64_t row0 = int64_t{blockIdx.x} * kRowsPerCta;
  // Rows past N load row N - 1 (in bounds) and are never stored.
  int64_t wrow[kTiles];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) wrow[j] = min(row0 + 8 * j + g, args.N - 1);
  const bool has_row_lo = g < args.M;
  const bool has_row_hi = g + 8 < args.M;
  const T* a_lo = A + int64_t{g} * K + 16 * t;
  const T* a_hi = A + int64_t{g + 8} * K + 16 * t;

  float acc[kTiles][4] = {};
  const int64_t groups = K / kGroup;
  for (int64_t base = warp; base < groups; base += int64_t{kWarps} * kUnroll) {
    uint2 codes[kUnroll][kTiles];
    uint4 act[kUnroll][4];
    float scale[kUnroll][kTiles];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t grp = base + int64_t{u} * kWarps;
      if (grp >= groups) break;
      const int64_t col = grp * kGroup;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int64_t elem = wrow[j] * K + col;
        codes[u][j] = __ldg(reinterpret_cast<const uint2*>(args.packed + (elem + 16 * t) / 2));
        const int64_t block = elem >> args.log2_blocksize;
        if constexpr (Nested) {
          scale[u][j] = nested_code[__ldg(args.absmax_q + block)] * __ldg(args.absmax + block / kNestedBlocksize) +
                        offset;
        } else {
          scale[u][j] = __ldg(args.absmax + block);
        }
      }
      const uint4 zero = make_uint4(0, 0, 0, 0);
      act[u][0] = has_row_lo ? __ldg(reinterpret_cast<const uint4*>(a_lo + col)) : zero;
      act[u][1] = has_row_lo ? __ldg(reinterpret_cast<const uint4*>(a_lo + col + 8)) : zero;
      act[u][2] = has_row_hi ? __ldg(reinterpret_cast<const uint4*>(a_hi + col)) : zero;
      act[u][3] = has_row_hi ? __ldg(reinterpret_cast<const uint4*>(a_hi + col + 8)) : zero;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + int64_t{u} * kWarps >= groups) break;
      // Activation words: lo row columns 16t + 2w, 2w+1 in word w of act[u][0..1], hi row in act[u][2..3].
      const uint32_t lo[8] = {act[u][0].x, act[u][0].y, act[u][0].z, act[u][0].w,
                              act[u][1].x, act[u][1].y, act[u][1].z, act[u][1].w};
      const uint32_t hi[8] = {act[u][2].x, act[u][2].y, act[u][2].z, act[u][2].w,
                              act[u][3].x, act[u][3].y, act[u][3].z, act[u][3].w};
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        // Block scales of the two W rows (2t, 2t + 1) whose outputs this lane accumulates.
        const float s0 = __shfl_sync(cuda::kFullWarpMask, scale[u][j], 8 * t);
        const float s1 = __shfl_sync(cuda::kFullWarpMask, scale[u][j], 8 * t + 4);
        const uint32_t bytes[2] = {codes[u][j].x, codes[u][j].y};
        float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const uint32_t word = bytes[s / 2];
          const int shift = 16 * (s % 2);
          const uint32_t b0 = smem[((word >> shift) & 0xff) * kWarpSize + lane];
          const uint32_t b1 = smem[((word >> (shift + 8)) & 0xff) * kWarpSize + lane];
          const uint32_t a[4] = {lo[2 * s], hi[2 * s], lo[2 * s + 1], hi[2 * s + 1]};
          mma_16816<T>(part, a, b0, b1);
        }
        acc[j][0] += part[0] * s0;
        acc[j][1] += part[1] * s1;
        acc[j][2] += part[2] * s0;
        acc[j][3] += part[3] * s1;
      }
    }
  }

  // Sum the warps' partial products: warp w's accumulators go to smem, warp j adds up tile j.
  __syncthreads();  // every warp is done with the pair table
  float* partial = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int j = 0; j < kTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) partial[((warp * kTiles + j) * 4 + c) * kWarpSize + lane] = acc[j][c];
  __syncthreads();
  if (warp >= kTiles) return;
  const int j = warp;
  float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int w = 0; w < kWarps; ++w)
#pragma unroll
    for (int c = 0; c < 4; ++c) sum[c] += partial[((w * kTiles + j) * 4 + c) * kWarpSize + lane];
  const T* bias = static_cast<const T*>(args.bias);
  T* out = static_cast<T*>(args.out);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t n = row0 + 8 * j + 2 * t + (c % 2);
    const int64_t m = g + 8 * (c / 2);
    if (n >= args.N || m >= args.M) continue;
    const float b = bias ? cuda::to_f32(bias[n]) : 0.0f;
    out[m * args.N + n] = cuda::from_f32<T>(sum[c] + b);
  }
#endif
}

bool tensor_cores_available(int32_t device) {
  int major = 0;
  BNB_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 8;
}

template <typename T, bool Nested>
void launch(const Gemm4bitParams& p, cudaStream_t stream) {
  GemvArgs args{p.A, p.packed, p.absmax, p.absmax_q, p.absmax_code, p.absmax_offset, p.bias, p.out,
                p.M, p.K, p.N, cuda::log2_of(p.blocksize), {}};
  const float* values = p.qtype == QuantType::NF4 ? kNF4Values : kFP4Values;
  for (int i = 0; i < 16; ++i) args.code[i] = values[i];
  const int64_t ctas = (p.N + kRowsPerCta - 1) / kRowsPerCta;
  BNB_CHECK_SUPPORTED(ctas <= cuda::kMaxGridX, "N = ", p.N, " is too large for the 4-bit GEMV grid");
  gemm_4bit_small_m<T, Nested><<<static_cast<unsigned>(ctas), kThreads, 0, stream>>>(args);
  BNB_CUDA_CHECK_LAUNCH("gemm_4bit_small_m");
}

}  // namespace

void gemm_4bit(const Gemm4bitParams& p, int32_t device, bnb_stream_t stream) {
  cuda::DeviceGuard guard(device);
  const bool aligned = cuda::is_aligned(p.A, 16) && cuda::is_aligned(p.packed, 8);
  const bool supported = p.M <= kMaxRows && p.a_dtype != BNB_DTYPE_FLOAT32 && p.blocksize >= kGroup &&
                         p.K % kGroup == 0 && p.K % p.blocksize == 0 && aligned && tensor_cores_available(device);
  if (!supported)
    fail(BNB_STATUS_NOT_IMPLEMENTED,
         "the CUDA 4-bit GEMV serves 1..16 rows of float16/bfloat16 activations (16-byte aligned) with K a "
         "multiple of 64 and of the blocksize (>= 64) on compute capability >= 8.0; got M = ",
         p.M, ", K = ", p.K, ", blocksize ", p.blocksize, ", ", dtype_name(p.a_dtype));
  const cudaStream_t s = cuda::as_cuda(stream);
  const bool half = p.a_dtype == BNB_DTYPE_FLOAT16;
  if (p.nested()) {
    half ? launch<__half, true>(p, s) : launch<__nv_bfloat16, true>(p, s);
  } else {
    half ? launch<__half, false>(p, s) : launch<__nv_bfloat16, false>(p, s);
  }
}

}  // namespace bnb::backend

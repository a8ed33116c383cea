// CPU LLM.int8() products: exact int32 dot products of int8 rows, optionally finished in place by the
// dequantization (row and column scales, bias, output dtype) so no int32 matrix is written.
//
// Threads split the output columns (rows of B) into blocks that stay in cache while every row of A
// passes over them. On AMX-INT8 the tile unit multiplies (for_each_product_amx); otherwise VNNI or
// AVX-512BW register tiles, or a dot product compiled for AVX-512BW, AVX2 and baseline x86-64 that the
// loader picks the widest of (GCC function multi-versioning).
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "core/dispatch.h"
#include "cpu/amx.h"
#include "cpu/isa.h"
#include "cpu/threading.h"
#include "cpu/types.h"

namespace bnb::backend {
namespace {

// Summed modulo 2^32 (defined wrap-around, as the int32 GEMMs of GPUs): exact whenever the true
// result fits an int32, which holds for K < 2^17 whatever the values.
BNB_ISA_CLONES int32_t dot_i8(const int8_t* __restrict a, const int8_t* __restrict b, int64_t K) {
  uint32_t s = 0;
  for (int64_t k = 0; k < K; ++k) s += static_cast<uint32_t>(int32_t{a[k]} * int32_t{b[k]});
  return static_cast<int32_t>(s);
}

constexpr int64_t kBlockBytes = 256 * 1024;  // B rows per task: about an L2's share

// Register tiles of MR rows of A times kTileN rows of B (AVX-512BW): each 32-column step loads MR + 4
// rows once and feeds MR * 4 multiply-adds, instead of two loads per multiply-add for single dots.
constexpr int kTileN = 4;

#ifdef BNB_X86_INTRINSICS
template <int MR>
__attribute__((target("avx512f,avx512bw"))) void tile_avx512(const int8_t* A, const int8_t* B, int64_t K,
                                                               int32_t (&out)[4][kTileN]) {
  __m512i acc[MR][kTileN];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i b[kTileN];
    for (int j = 0; j < kTileN; ++j)
      b[j] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + j * K + k)));
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(A + i * K + k)));
      // Pairs of int16 products summed into int32 lanes: exact (|a b| <= 2^14, two of them < 2^31).
      for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_add_epi32(acc[i][j], _mm512_madd_epi16(a, b[j]));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kTileN; ++j) {
      uint32_t s = static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[i][j]));
      for (int64_t t = k; t < K; ++t) s += static_cast<uint32_t>(int32_t{A[i * K + t]} * int32_t{B[j * K + t]});
      out[i][j] = static_cast<int32_t>(s);
    }
}

// The same tile by AVX512-VNNI: vpdpbusd multiplies unsigned by signed bytes, four products per int32
// lane, so A is offset to unsigned (a + 128, one XOR) and 128 * sum(b) is taken back out of every sum.
// Modulo 2^32 both ways: the result is the exact int32 product whenever that fits, as above.
// b_offsets[j] = 128 * sum of B row j (mod 2^32), from vnni_offsets once per tile of B rows.
#define BNB_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

BNB_TARGET_VNNI void vnni_offsets(const int8_t* B, int64_t K, uint32_t (&b_offsets)[kTileN]) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int j = 0; j < kTileN; ++j) {
    __m512i sum = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) sum = _mm512_dpbusd_epi32(sum, ones, _mm512_loadu_si512(B + j * K + k));
    // Only the 64-wide steps went through vpdpbusd; the tail is multiplied exactly below.
    b_offsets[j] = 128u * static_cast<uint32_t>(_mm512_reduce_add_epi32(sum));
  }
}

template <int MR>
BNB_TARGET_VNNI void tile_vnni(const int8_t* A, const int8_t* B, int64_t K, const uint32_t (&b_offsets)[kTileN],
                               int32_t (&out)[4][kTileN]) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[MR][kTileN];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    __m512i b[kTileN];
    for (int j = 0; j < kTileN; ++j) b[j] = _mm512_loadu_si512(B + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_xor_si512(_mm512_loadu_si512(A + i * K + k), flip);
      for (int j = 0; j < kTileN; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, b[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kTileN; ++j) {
      uint32_t s = static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[i][j])) - b_offsets[j];
      for (int64_t t = k; t < K; ++t) s += static_cast<uint32_t>(int32_t{A[i * K + t]} * int32_t{B[j * K + t]});
      out[i][j] = static_cast<int32_t>(s);
    }
}
#endif

// A tile of MR rows of A by kTileN rows of B with the widest byte product the processor has
// (b_offsets: from vnni_offsets when vnni).
template <int MR>
void tile_product(bool vnni, const int8_t* A, const int8_t* B, int64_t K, const uint32_t (&b_offsets)[kTileN],
                  int32_t (&out)[4][kTileN]) {
#ifdef BNB_X86_INTRINSICS
  if (vnni) return tile_vnni<MR>(A, B, K, b_offsets, out);
  tile_avx512<MR>(A, B, K, out);
#endif
}

#ifdef BNB_X86_INTRINSICS
// On AMX-INT8: rows of B in passes of 32 (two 16-row A tiles, read straight from B) times all rows of A,
// laid out once per call as int8 quadruples per column (the B operand). Rows of K in 64-byte steps: K a
// multiple of 64. A last pass of fewer than 32 rows multiplies a zero-padded copy of them. Faster than the
// VNNI register tiles from one row of A on (Intel Xeon, K = N = 4096: 0.37 against 0.39 ms at M = 1, 0.37
// against 0.52 ms at M = 4).
constexpr int kAmxRows = 32;
constexpr int kAmxDepth = 64;

bool amx_serves(const Int8MatmulParams& p) { return p.K % kAmxDepth == 0 && cpu::amx_int8_active(); }

template <typename Emit>
void for_each_product_amx(const Int8MatmulParams& p, Emit emit) {
  const int64_t m_pad = (p.M + 15) / 16 * 16, quads = p.K / 4, m_blocks = (m_pad + 31) / 32;
  std::vector<uint32_t> xt(static_cast<size_t>(quads * m_pad));
  cpu::amx::column_words(p.A, p.M, p.K, m_pad, quads, xt.data());  // int8 quadruples
  const int64_t passes = (p.N + kAmxRows - 1) / kAmxRows;
  cpu::parallel_for(passes, 1, [&](int64_t pass0, int64_t pass1) {
    std::vector<int32_t> sums(static_cast<size_t>(m_blocks * kAmxRows * kAmxRows));  // [m block][B row][m]
    std::vector<int8_t> tail;
    cpu::amx::configure_tiles();
    for (int64_t pass = pass0; pass < pass1; ++pass) {
      const int64_t n0 = pass * kAmxRows;
      const int rows = static_cast<int>(std::min<int64_t>(kAmxRows, p.N - n0));
      const int8_t* w = p.B + n0 * p.K;
      if (rows < kAmxRows) {
        tail.assign(static_cast<size_t>(kAmxRows * p.K), 0);
        std::memcpy(tail.data(), w, static_cast<size_t>(rows * p.K));
        w = tail.data();
      }
      const int n_tiles = rows > 16 ? 2 : 1;
      for (int64_t mb = 0; mb < m_blocks; ++mb) {
        const int m_tiles = m_pad - 32 * mb >= 32 ? 2 : 1;
        cpu::amx::int8_product(w, p.K, xt.data() + 32 * mb, m_pad * 4, p.K / kAmxDepth, n_tiles, m_tiles,
                               sums.data() + mb * kAmxRows * kAmxRows, kAmxRows, cpu::amx::Sums::kZero, true);
      }
      for (int64_t m = 0; m < p.M; ++m) {
        const int32_t* row = sums.data() + (m / 32) * kAmxRows * kAmxRows + m % 32;
        for (int j = 0; j < rows; ++j) emit(m, n0 + j, row[j * kAmxRows]);
      }
    }
    cpu::amx::release_tiles();
  });
}
#endif

// Calls emit(m, n, acc) for every output, block by block of B rows.
template <typename Emit>
void for_each_product(const Int8MatmulParams& p, Emit emit) {
#ifdef BNB_X86_INTRINSICS
  if (amx_serves(p)) return for_each_product_amx(p, emit);
#endif
  const int64_t rows_per_block = std::max<int64_t>(1, kBlockBytes / std::max<int64_t>(p.K, 1));
  cpu::parallel_for(p.N, rows_per_block, [&](int64_t n0, int64_t n1) {
    int64_t tiled_end = n0;
#ifdef BNB_X86_INTRINSICS
    if (cpu::avx512_active()) {
      const bool vnni = cpu::avx512_vnni_active();
      tiled_end = n0 + (n1 - n0) / kTileN * kTileN;
      int32_t tile[4][kTileN];
      uint32_t b_offsets[kTileN] = {};
      for (int64_t n = n0; n < tiled_end; n += kTileN) {
        const int8_t* b = p.B + n * p.K;
        if (vnni) vnni_offsets(b, p.K, b_offsets);
        int64_t m = 0;
        for (; m + 4 <= p.M; m += 4) {
          tile_product<4>(vnni, p.A + m * p.K, b, p.K, b_offsets, tile);
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < kTileN; ++j) emit(m + i, n + j, tile[i][j]);
        }
        for (; m < p.M; ++m) {
          tile_product<1>(vnni, p.A + m * p.K, b, p.K, b_offsets, tile);
          for (int j = 0; j < kTileN; ++j) emit(m, n + j, tile[0][j]);
        }
      }
    }
#endif
    for (int64_t m = 0; m < p.M; ++m) {
      const int8_t* a = p.A + m * p.K;
      for (int64_t n = tiled_end; n < n1; ++n) emit(m, n, dot_i8(a, p.B + n * p.K, p.K));
    }
  });
}

template <typename Out>
struct Dequant {
  const Int8DequantParams& p;
  template <typename Bias>
  void store(int64_t m, int64_t n, int32_t acc, const Bias* bias) const {
    float v = static_cast<float>(acc) * p.row_stats[m] * p.col_stats[n] * kInt8DequantScale;
    if (bias) v += cpu::to_float(bias[n]);
    static_cast<Out*>(p.out)[m * p.N + n] = cpu::from_float<Out>(v);
  }
};

// Runs body(dequant, bias) with the output and bias element types resolved.
template <typename Body>
void with_dequant_types(const Int8DequantParams& p, Body body) {
  dispatch_float<cpu::CpuType>(p.out_dtype, "out", [&](auto out_tag) {
    using Out = typename decltype(out_tag)::type;
    const Dequant<Out> dq{p};
    if (p.bias == nullptr) {
      body(dq, static_cast<const float*>(nullptr));
      return;
    }
    dispatch_float<cpu::CpuType>(p.bias_dtype, "bias", [&](auto bias_tag) {
      body(dq, static_cast<const typename decltype(bias_tag)::type*>(p.bias));
    });
  });
}

}  // namespace

void int8_linear_matmul(const Int8MatmulParams& p, int32_t, bnb_stream_t) {
  for_each_product(p, [&](int64_t m, int64_t n, int32_t acc) { p.out[m * p.N + n] = acc; });
}

void int8_mm_dequant(const int32_t* acc, const Int8DequantParams& p, int32_t, bnb_stream_t) {
  with_dequant_types(p, [&](const auto& dq, const auto* bias) {
    cpu::parallel_for(p.M, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(p.N, 1)), [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = 0; n < p.N; ++n) dq.store(m, n, acc[m * p.N + n], bias);
    });
  });
}

void int8_scaled_mm(const Int8MatmulParams& mm, const Int8DequantParams& dq_params, int32_t, bnb_stream_t) {
  with_dequant_types(dq_params, [&](const auto& dq, const auto* bias) {
    for_each_product(mm, [&](int64_t m, int64_t n, int32_t acc) { dq.store(m, n, acc, bias); });
  });
}

void int8_linear(const Int8LinearParams& p, int32_t device, bnb_stream_t stream) {
  const bool outliers = p.threshold > 0.0f;
  std::vector<int8_t> CA(static_cast<size_t>(p.M * p.K));
  std::vector<float> SCA(static_cast<size_t>(p.M));
  std::vector<uint8_t> mask(outliers ? static_cast<size_t>(p.K) : 0);
  int8_vectorwise_quant({p.X, CA.data(), SCA.data(), outliers ? mask.data() : nullptr, p.M, p.K, p.threshold,
                         p.x_dtype},
                        device, stream);
  std::vector<int64_t> cols;
  for (int64_t k = 0; k < static_cast<int64_t>(mask.size()); ++k)
    if (mask[k]) cols.push_back(k);
  if (p.outlier_mask) std::copy(mask.begin(), mask.end(), p.outlier_mask);
  const int64_t c = static_cast<int64_t>(cols.size());
  dispatch_float<cpu::CpuType>(p.x_dtype, "X", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* X = static_cast<const T*>(p.X);
    const T* bias = static_cast<const T*>(p.bias);
    T* out = static_cast<T*>(p.out);
    // Outlier columns: their float product replaces the int8 one (CA zeroed only the outlier values). Per
    // row m and outlier column i, what one unit of CB there adds before the column scale:
    // coef[m][i] = X / 127 - CA * SCA / 127^2, so each output adds one product per outlier column.
    std::vector<float> coef(static_cast<size_t>(p.M * c));
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t i = 0; i < c; ++i) {
        const int64_t k = cols[i];
        coef[m * c + i] = cpu::to_float(X[m * p.K + k]) * (1.0f / 127.0f) -
                          static_cast<float>(CA[m * p.K + k]) * SCA[m] * kInt8DequantScale;
      }
    // From kGatheredOutlierRows rows on, CB at the outlier columns is gathered once per call (cb_cols[n][i]),
    // so each output reads its c values in one piece instead of c bytes 4 KB apart in a row of CB. Intel
    // Xeon, K = N = 4096, 8 outlier columns, bf16, alternating in one process: M = 16 0.69 -> 0.61 ms,
    // M = 128 4.18 -> 2.94 ms; equal at M = 8, and the gather costs more than it saves below.
    constexpr int64_t kGatheredOutlierRows = 8;
    const bool gathered = p.M >= kGatheredOutlierRows;
    std::vector<float> cb_cols(gathered ? static_cast<size_t>(p.N * c) : 0);
    if (gathered) {
      for (int64_t n = 0; n < p.N; ++n)
        for (int64_t i = 0; i < c; ++i) cb_cols[n * c + i] = static_cast<float>(p.CB[n * p.K + cols[i]]);
    }
    for_each_product({CA.data(), p.CB, nullptr, p.M, p.N, p.K}, [&](int64_t m, int64_t n, int32_t acc) {
      const float col = p.SCB[n];
      float v = static_cast<float>(acc) * SCA[m] * col * kInt8DequantScale;
      const float* coef_row = coef.data() + m * c;
      float sum = 0.0f;
      if (gathered) {
        const float* cb_row = cb_cols.data() + n * c;
        for (int64_t i = 0; i < c; ++i) sum += coef_row[i] * cb_row[i];
      } else {
        const int8_t* cb_row = p.CB + n * p.K;
        for (int64_t i = 0; i < c; ++i) sum += coef_row[i] * static_cast<float>(cb_row[cols[i]]);
      }
      v += sum * col;
      if (bias) v += cpu::to_float(bias[n]);
      out[m * p.N + n] = cpu::from_float<T>(v);
    });
  });
}

void set_blas_library(const char*) {}  // the CPU backend multiplies without a BLAS library

}  // namespace bnb::backend

// CPU product of activations with a 4-bit weight, read as 4-bit codes (a quarter of its 16-bit size)
// and never materialised whole. Four ways, by what the processor has and how many activation rows:
//  - up to 4 rows (AVX-512): codes expanded in registers and multiplied at once (fused_rows);
//  - bfloat16 activations on AMX: rows of W expanded to bfloat16 a chunk at a time and multiplied on the
//    tile unit (gemm_4bit_bf16_amx);
//  - bfloat16 activations on AVX512-BF16: each thread decodes rows of W, rounds them to bfloat16 and
//    multiplies them with vdpbf16ps in register tiles (gemm_4bit_bf16_rows);
//  - otherwise: decoded float rows times the activations in float register tiles (AVX-512) or single
//    dot products compiled for AVX-512, AVX2 and baseline x86-64 (the loader picks the widest).
// Rows that start on a block boundary (K a multiple of the blocksize, the usual case) are decoded by
// the active SIMD 4-bit dequantizer (16 codes per AVX-512 table lookup).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/backend.h"
#include "core/dispatch.h"
#include "core/formats.h"
#include "cpu/amx.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/threading.h"
#include "cpu/types.h"

namespace bnb::backend {
namespace {

constexpr int64_t kWorkPerTask = 1 << 16;  // weight elements a thread task should at least decode
constexpr int kLanes = 16;                 // independent partial sums: one AVX-512 vector (or two AVX2 ones)

BNB_ISA_CLONES float dot(const float* __restrict a, const float* __restrict w, int64_t k) {
  float part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += a[i + l] * w[i + l];
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += part[l];
  for (; i < k; ++i) s += a[i] * w[i];
  return s;
}

float block_scale(const Gemm4bitParams& p, int64_t block) {
  if (!p.nested()) return p.absmax[block];
  return p.absmax_code[p.absmax_q[block]] * p.absmax[block / kNestedBlocksize] + *p.absmax_offset;
}

// Row n of W in float: codes of elements n*K .. n*K + K - 1 times their block scales.
void decode_row_scalar(const Gemm4bitParams& p, const float* table, int64_t n, float* w) {
  const int64_t first = n * p.K;
  int64_t k = 0;
  while (k < p.K) {
    const int64_t idx = first + k;
    const int64_t block = idx / p.blocksize;
    const int64_t end = std::min(p.K, (block + 1) * p.blocksize - first);
    const float scale = block_scale(p, block);
    for (; k < end; ++k) {
      const int64_t e = first + k;
      const uint8_t byte = p.packed[e >> 1];
      const uint8_t code = (e & 1) ? (byte & 0xf) : (byte >> 4);
      w[k] = table[code] * scale;
    }
  }
}

// The block scales of row n (whole blocks): plain ones in place, double-quantized ones decoded into
// `scales`.
const float* row_scales(const Gemm4bitParams& p, int64_t n, std::vector<float>& scales) {
  const int64_t blocks = p.K / p.blocksize, first_block = n * blocks;
  if (!p.nested()) return p.absmax + first_block;
  scales.resize(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) scales[b] = block_scale(p, first_block + b);
  return scales.data();
}

// Row n of W in `dtype` by the SIMD dequantizer; the row must be whole blocks (it then starts on a byte
// and a block boundary).
void dequantize_row(const Gemm4bitParams& p, int64_t n, void* w, bnb_dtype_t dtype, std::vector<float>& scales) {
  const Dequantize4bitParams row{p.packed + n * p.K / 2, row_scales(p, n, scales), w, p.K, p.blocksize, dtype, p.qtype};
  cpu::active_kernels().dequantize_4bit(row, 0, (p.K + 1) / 2);
}

// Row n of W in float: by the SIMD dequantizer when the row is whole blocks.
void decode_row(const Gemm4bitParams& p, const float* table, int64_t n, float* w, std::vector<float>& scales) {
  if (p.K % p.blocksize != 0) return decode_row_scalar(p, table, n, w);
  dequantize_row(p, n, w, BNB_DTYPE_FLOAT32, scales);
}

// Register tiles of up to 4 activation rows times 4 decoded weight rows (AVX-512): each 16-column
// step loads 4 + MR vectors for 4 * MR multiply-adds, where single dot products load two per one.
constexpr int kWeightTile = 4;

// Stores rows [m, m + count) of a register tile for weight rows [n, n + rows), bias added.
template <typename T>
void store_tile(const Gemm4bitParams& p, const float (&tile)[4][kWeightTile], int64_t m, int count, int64_t n,
                int rows) {
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  for (int i = 0; i < count; ++i)
    for (int j = 0; j < rows; ++j) {
      const float b = bias ? cpu::to_float(bias[n + j]) : 0.0f;
      out[(m + i) * p.N + n + j] = cpu::from_float<T>(tile[i][j] + b);
    }
}

#ifdef BNB_X86_INTRINSICS
template <int MR>
__attribute__((target("avx512f"))) void dot_tile_avx512(const float* a, int64_t K, const float* w,
                                                          float (&out)[4][kWeightTile]) {
  __m512 acc[MR][kWeightTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kWeightTile; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[kWeightTile];
    for (int j = 0; j < kWeightTile; ++j) wv[j] = _mm512_loadu_ps(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_loadu_ps(a + i * K + k);
      for (int j = 0; j < kWeightTile; ++j) acc[i][j] = _mm512_fmadd_ps(av, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kWeightTile; ++j) {
      float s = _mm512_reduce_add_ps(acc[i][j]);
      for (int64_t t = k; t < K; ++t) s += a[i * K + t] * w[j * K + t];
      out[i][j] = s;
    }
}

// bfloat16 activations on AVX512-BF16: decoded weight rows are rounded to bfloat16 (as dequantize_4bit
// to bfloat16 rounds them) and each vdpbf16ps multiplies 32 pairs into 16 float sums, twice the work
// of a float FMA per instruction on half the bytes.
constexpr int kBf16Step = 32;  // bfloat16 values per 512-bit vector
#define BNB_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

BNB_TARGET_BF16 void round_row_to_bf16(const float* w, int64_t K, cpu::bfloat16_t* out) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(w + k));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), reinterpret_cast<const __m256i&>(v));
  }
  for (; k < K; ++k) out[k] = cpu::to_bfloat16(w[k]);
}

// Columns [k0, k1) of a weight row in bfloat16 from its codes (`codes` and `scales` the row's), 32 at a
// time: per block, the 16 values of the 4-bit type times the block's scale are rounded to bfloat16 once
// (the same rounding as each product on its own), and one word permute maps 32 nibbles to their
// bfloat16 values. k0, k1 and the blocksize are multiples of 32.
BNB_TARGET_BF16 void expand_codes_bf16(const uint8_t* codes, const float* scales, int64_t k0, int64_t k1,
                                       int64_t blocksize, const float* table, cpu::bfloat16_t* out) {
  const __m512 values = _mm512_loadu_ps(table);
  // Word 2j takes the high nibble of byte j (shift 4), word 2j + 1 the low one.
  const __m512i shift = _mm512_set1_epi32(4);
  const __m512i nibble = _mm512_set1_epi16(0xf);
  int64_t k = k0;
  while (k < k1) {
    const int64_t block = k / blocksize, end = std::min(k1, (block + 1) * blocksize);
    const __m256bh scaled = _mm512_cvtneps_pbh(_mm512_mul_ps(values, _mm512_set1_ps(scales[block])));
    const __m512i lut = _mm512_castsi256_si512(reinterpret_cast<const __m256i&>(scaled));
    for (; k < end; k += 32) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k / 2));
      const __m512i words = _mm512_cvtepu8_epi16(
          _mm256_set_m128i(_mm_unpackhi_epi8(bytes, bytes), _mm_unpacklo_epi8(bytes, bytes)));
      const __m512i idx = _mm512_and_si512(_mm512_srlv_epi16(words, shift), nibble);
      _mm512_storeu_si512(out + (k - k0), _mm512_permutexvar_epi16(idx, lut));
    }
  }
}

// Whether rows of W expand straight from codes to bfloat16 (expand_codes_bf16): whole blocks of a
// multiple of 32 codes.
bool expands_to_bf16(const Gemm4bitParams& p) { return p.K % p.blocksize == 0 && p.blocksize % 32 == 0; }

// Row n of W in bfloat16, rounded as dequantize_4bit to bfloat16 rounds: expanded straight from the codes
// where expands_to_bf16, else through a float row (`w`, K values).
void decode_row_bf16(const Gemm4bitParams& p, const float* table, int64_t n, float* w, cpu::bfloat16_t* out,
                     std::vector<float>& scales) {
  if (!expands_to_bf16(p)) {
    decode_row(p, table, n, w, scales);
    return round_row_to_bf16(w, p.K, out);
  }
  expand_codes_bf16(p.packed + n * p.K / 2, row_scales(p, n, scales), 0, p.K, p.blocksize, table, out);
}

template <int MR>
BNB_TARGET_BF16 void dot_tile_bf16(const cpu::bfloat16_t* a, int64_t K, const cpu::bfloat16_t* w,
                                   float (&out)[4][kWeightTile]) {
  __m512 acc[MR][kWeightTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kWeightTile; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kBf16Step <= K; k += kBf16Step) {
    __m512bh wv[kWeightTile];
    for (int j = 0; j < kWeightTile; ++j) {
      const __m512i raw = _mm512_loadu_si512(w + j * K + k);
      wv[j] = reinterpret_cast<const __m512bh&>(raw);
    }
    for (int i = 0; i < MR; ++i) {
      const __m512i raw = _mm512_loadu_si512(a + i * K + k);
      const __m512bh av = reinterpret_cast<const __m512bh&>(raw);
      for (int j = 0; j < kWeightTile; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kWeightTile; ++j) {
      float s = _mm512_reduce_add_ps(acc[i][j]);
      for (int64_t t = k; t < K; ++t) s += cpu::to_float(a[i * K + t]) * cpu::to_float(w[j * K + t]);
      out[i][j] = s;
    }
}

// Weight rows [n0, n1) by the bfloat16 dot, kWeightTile at a time (a last, shorter tile repeats its
// final row in the unused slots and stores only its own rows).
void gemm_4bit_bf16_rows(const Gemm4bitParams& p, const float* table, int64_t n0, int64_t n1) {
  const auto* A = static_cast<const cpu::bfloat16_t*>(p.A);
  std::vector<float> w(static_cast<size_t>(p.K));
  std::vector<cpu::bfloat16_t> wb(static_cast<size_t>(p.K) * kWeightTile);
  std::vector<float> scales;
  float tile[4][kWeightTile];
  for (int64_t n = n0; n < n1; n += kWeightTile) {
    const int rows = static_cast<int>(std::min<int64_t>(kWeightTile, n1 - n));
    for (int j = 0; j < kWeightTile; ++j) {
      if (j < rows) {
        decode_row_bf16(p, table, n + j, w.data(), wb.data() + j * p.K, scales);
      } else {
        std::copy_n(wb.data() + (rows - 1) * p.K, p.K, wb.data() + j * p.K);
      }
    }
    int64_t m = 0;
    for (; m + 4 <= p.M; m += 4) {
      dot_tile_bf16<4>(A + m * p.K, p.K, wb.data(), tile);
      store_tile<cpu::bfloat16_t>(p, tile, m, 4, n, rows);
    }
    for (; m < p.M; ++m) {
      dot_tile_bf16<1>(A + m * p.K, p.K, wb.data(), tile);
      store_tile<cpu::bfloat16_t>(p, tile, m, 1, n, rows);
    }
  }
}

// bfloat16 activations on AMX: each thread takes 32 weight rows at a time, expands them to bfloat16 (as
// dequantize_4bit rounds them) kAmxChunk columns at a time and multiplies each chunk with every activation
// row on the tile unit, the weight rows as the A operand and the activation, laid out once per call as
// bfloat16 pairs per column, as the B operand.
constexpr int kAmxRows = 32;  // weight rows per pass: two 16-row tiles
constexpr int kAmxDepth = 32;  // k per tile step
constexpr int64_t kAmxChunk = 128;  // columns expanded and multiplied at a time: 32 rows of them are 8 KB

void gemm_4bit_bf16_amx(const Gemm4bitParams& p, const float* table) {
  using cpu::amx::Sums;
  const int64_t m_pad = (p.M + 15) / 16 * 16, k_pad = (p.K + kAmxDepth - 1) / kAmxDepth * kAmxDepth;
  std::vector<uint32_t> xt(static_cast<size_t>(k_pad / 2 * m_pad));
  cpu::amx::column_words(p.A, p.M, 2 * p.K, m_pad, k_pad / 2, xt.data());  // bfloat16 pairs, zero past K
  // Rows that expand straight from their codes do so kAmxChunk columns at a time, each chunk multiplied
  // while it is in L1; other rows are decoded whole first (one chunk of k_pad columns).
  const bool expand = expands_to_bf16(p);
  const int64_t chunk = expand ? std::min(kAmxChunk, k_pad) : k_pad;
  const int64_t m_blocks = (m_pad + 31) / 32;
  const int64_t passes = (p.N + kAmxRows - 1) / kAmxRows;
  cpu::parallel_for(passes, 1, [&](int64_t pass0, int64_t pass1) {
    std::vector<float> w(expand ? 0 : static_cast<size_t>(p.K)), scales;
    std::vector<std::vector<float>> nested(kAmxRows);  // double-quantized rows' decoded scales
    std::vector<cpu::bfloat16_t> wb(static_cast<size_t>(kAmxRows * chunk));  // zero past K: never written
    std::vector<float> sums(static_cast<size_t>(m_blocks * kAmxRows * kAmxRows));  // [m block][weight row][m]
    const cpu::bfloat16_t* bias = static_cast<const cpu::bfloat16_t*>(p.bias);
    auto* out = static_cast<cpu::bfloat16_t*>(p.out);
    cpu::amx::configure_tiles();
    for (int64_t pass = pass0; pass < pass1; ++pass) {
      const int64_t n0 = pass * kAmxRows;
      const int rows = static_cast<int>(std::min<int64_t>(kAmxRows, p.N - n0));
      const int n_tiles = rows > 16 ? 2 : 1;
      const float* row_scale[kAmxRows] = {};
      for (int j = 0; j < rows; ++j) {
        if (expand) row_scale[j] = row_scales(p, n0 + j, nested[j]);
        else decode_row_bf16(p, table, n0 + j, w.data(), wb.data() + j * chunk, scales);
      }
      for (int64_t c0 = 0; c0 < k_pad; c0 += chunk) {
        const int64_t width = std::min(chunk, k_pad - c0);
        if (expand) {
          for (int j = 0; j < rows; ++j)
            expand_codes_bf16(p.packed + (n0 + j) * p.K / 2, row_scale[j], c0, c0 + width, p.blocksize, table,
                              wb.data() + j * chunk);
        }
        // One block of activation rows keeps its sums in the tiles from chunk to chunk; several swap theirs
        // through memory.
        const bool last = c0 + width == k_pad;
        const auto start = c0 == 0 ? Sums::kZero : m_blocks == 1 ? Sums::kInTiles : Sums::kFromMemory;
        for (int64_t mb = 0; mb < m_blocks; ++mb) {
          const int m_tiles = m_pad - 32 * mb >= 32 ? 2 : 1;
          cpu::amx::bf16_product(reinterpret_cast<const uint16_t*>(wb.data()), chunk * 2,
                                 xt.data() + c0 / 2 * m_pad + 32 * mb, m_pad * 4, width / kAmxDepth, n_tiles, m_tiles,
                                 sums.data() + mb * kAmxRows * kAmxRows, kAmxRows, start, last || m_blocks > 1);
        }
      }
      for (int64_t m = 0; m < p.M; ++m) {
        const float* row = sums.data() + (m / 32) * kAmxRows * kAmxRows + m % 32;
        for (int j = 0; j < rows; ++j) {
          const float b = bias ? cpu::to_float(bias[n0 + j]) : 0.0f;
          out[m * p.N + n0 + j] = cpu::to_bfloat16(row[j * kAmxRows] + b);
        }
      }
    }
    cpu::amx::release_tiles();
  });
}

// Few activation rows (token-by-token generation): the codes are expanded in registers and multiplied
// at once, never stored as a decoded row. Per 16 codes of each of 4 weight rows: one 8-byte load, the
// nibbles spread over 16 lanes (high nibble first, as packed), one table permute, one scale multiply,
// then MR multiply-adds. Needs rows of whole blocks (each 16-code step inside one block).
constexpr int kFusedMaxRows = 4;
#define BNB_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

template <int MR>
BNB_TARGET_AVX512 void fused_tile(const Gemm4bitParams& p, const float* table,
                                  const uint8_t* const (&codes)[kWeightTile], const float* const (&scales)[kWeightTile],
                                  const float* a, float (&out)[4][kWeightTile]) {
  const __m512 lut = _mm512_loadu_ps(table);
  // Lane 2j takes the high nibble of byte j (shift 4), lane 2j + 1 the low one.
  const __m512i shift = _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
  const __m512i nibble = _mm512_set1_epi32(0xf);
  __m512 acc[MR][kWeightTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kWeightTile; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t K = p.K, bs = p.blocksize;
  for (int64_t b0 = 0; b0 < K; b0 += bs) {
    __m512 scale[kWeightTile];
    for (int j = 0; j < kWeightTile; ++j) scale[j] = _mm512_set1_ps(scales[j][b0 / bs]);
    for (int64_t k = b0; k < b0 + bs; k += 16) {
      __m512 w[kWeightTile];
      for (int j = 0; j < kWeightTile; ++j) {
        uint64_t bytes;
        std::memcpy(&bytes, codes[j] + k / 2, sizeof(bytes));
        const __m128i b = _mm_cvtsi64_si128(static_cast<long long>(bytes));
        const __m512i bytes_twice = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));  // byte j in lanes 2j, 2j + 1
        const __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(bytes_twice, shift), nibble);
        w[j] = _mm512_mul_ps(_mm512_permutexvar_ps(idx, lut), scale[j]);
      }
      for (int i = 0; i < MR; ++i) {
        const __m512 av = _mm512_loadu_ps(a + i * K + k);
        for (int j = 0; j < kWeightTile; ++j) acc[i][j] = _mm512_fmadd_ps(av, w[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kWeightTile; ++j) out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
}

template <typename T>
void fused_rows(const Gemm4bitParams& p, const float* table, const float* a, int64_t n0, int64_t n1) {
  const int64_t blocks = p.K / p.blocksize;
  std::vector<float> nested(p.nested() ? static_cast<size_t>(blocks * kWeightTile) : 0);
  float tile[4][kWeightTile];
  for (int64_t n = n0; n < n1; n += kWeightTile) {
    const int rows = static_cast<int>(std::min<int64_t>(kWeightTile, n1 - n));
    const uint8_t* codes[kWeightTile];
    const float* scales[kWeightTile];
    for (int j = 0; j < kWeightTile; ++j) {
      const int64_t r = n + std::min(j, rows - 1);  // a short last tile repeats its final row
      codes[j] = p.packed + r * p.K / 2;
      if (p.nested()) {
        float* s = nested.data() + j * blocks;
        for (int64_t b = 0; b < blocks; ++b) s[b] = block_scale(p, r * blocks + b);
        scales[j] = s;
      } else {
        scales[j] = p.absmax + r * blocks;
      }
    }
    auto run = [&](auto mr) {
      constexpr int MR = decltype(mr)::value;
      fused_tile<MR>(p, table, codes, scales, a, tile);
      store_tile<T>(p, tile, 0, MR, n, rows);
    };
    switch (p.M) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      default: run(std::integral_constant<int, 4>{}); break;
    }
  }
}

bool fused_serves(const Gemm4bitParams& p) {
  return cpu::avx512_active() && p.M <= kFusedMaxRows && p.K % p.blocksize == 0 && p.blocksize % 16 == 0;
}
#endif

template <typename T>
void gemm_4bit_t(const Gemm4bitParams& p) {
  const T* A = static_cast<const T*>(p.A);
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  const float* table = p.qtype == QuantType::NF4 ? kNF4Values : kFP4Values;
  const int64_t grain = std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(p.K, 1));
#ifdef BNB_X86_INTRINSICS
  if constexpr (std::is_same_v<T, cpu::bfloat16_t>) {
    if (cpu::amx_bf16_active() && !fused_serves(p)) {
      gemm_4bit_bf16_amx(p, table);
      return;
    }
    if (cpu::avx512_bf16_active() && !fused_serves(p)) {
      cpu::parallel_for(p.N, grain, [&](int64_t n0, int64_t n1) { gemm_4bit_bf16_rows(p, table, n0, n1); });
      return;
    }
  }
#endif
  std::vector<float> a(static_cast<size_t>(p.M * p.K));
  for (int64_t i = 0; i < p.M * p.K; ++i) a[i] = cpu::to_float(A[i]);
#ifdef BNB_X86_INTRINSICS
  if (fused_serves(p)) {
    cpu::parallel_for(p.N, grain, [&](int64_t n0, int64_t n1) { fused_rows<T>(p, table, a.data(), n0, n1); });
    return;
  }
#endif
  cpu::parallel_for(p.N, grain, [&](int64_t n0, int64_t n1) {
    std::vector<float> w(static_cast<size_t>(p.K) * kWeightTile), scales;
    int64_t n = n0;
#ifdef BNB_X86_INTRINSICS
    if (cpu::avx512_active()) {
      float tile[4][kWeightTile];
      for (; n + kWeightTile <= n1; n += kWeightTile) {
        for (int j = 0; j < kWeightTile; ++j) decode_row(p, table, n + j, w.data() + j * p.K, scales);
        int64_t m = 0;
        for (; m + 4 <= p.M; m += 4) {
          dot_tile_avx512<4>(&a[m * p.K], p.K, w.data(), tile);
          store_tile<T>(p, tile, m, 4, n, kWeightTile);
        }
        for (; m < p.M; ++m) {
          dot_tile_avx512<1>(&a[m * p.K], p.K, w.data(), tile);
          store_tile<T>(p, tile, m, 1, n, kWeightTile);
        }
      }
    }
#endif
    for (; n < n1; ++n) {
      decode_row(p, table, n, w.data(), scales);
      const float b = bias ? cpu::to_float(bias[n]) : 0.0f;
      for (int64_t m = 0; m < p.M; ++m) out[m * p.N + n] = cpu::from_float<T>(dot(&a[m * p.K], w.data(), p.K) + b);
    }
  });
}

}  // namespace

void gemm_4bit(const Gemm4bitParams& p, int32_t, bnb_stream_t) {
  dispatch_float<cpu::CpuType>(p.a_dtype, "A", [&](auto tag) { gemm_4bit_t<typename decltype(tag)::type>(p); });
}

}  // namespace bnb::backend

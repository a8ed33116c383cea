// AVX-512 (F, BW, VL, DQ) kernels, 16 float lanes; compiled with those flags for this file only.
// Tails use masked loads and stores, so no element outside the caller's range is touched.
#include <immintrin.h>

#include <cstddef>
#include <limits>
#include <type_traits>

#include "cpu/x86/quant_simd.h"

namespace bnb::cpu {
namespace {

using namespace simd;

struct Avx512 {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;

  static M first(int k) { return static_cast<M>((1u << k) - 1u); }

  // ---- float32 <-> storage types ----
  template <class T>
  static F load(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return _mm512_loadu_ps(p);
    } else if constexpr (std::is_same_v<T, half_t>) {
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    } else {
      const I w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
  }
  template <class T>
  static F load_part(const T* p, int k) {
    if constexpr (std::is_same_v<T, float>) {
      return _mm512_maskz_loadu_ps(first(k), p);
    } else if constexpr (std::is_same_v<T, half_t>) {
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first(k), p));
    } else {
      const I w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first(k), p));
      return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
  }

  // to_half: round to nearest even (the immediate overrides MXCSR); every NaN becomes the quiet
  // NaN sign | 0x7e00 without payload, as types.h writes it.
  static __m256i to_half_bits(F v) {
    const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i nan = _mm256_or_si256(_mm256_and_si256(h, _mm256_set1_epi16(static_cast<short>(0x8000))),
                                        _mm256_set1_epi16(0x7e00));
    return _mm256_mask_mov_epi16(h, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), nan);
  }
  // to_bfloat16: round to nearest even on the bit pattern; NaN keeps its top bits and is made quiet.
  static I to_bf16_bits(F v) {
    const I x = _mm512_castps_si512(v);
    const I odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    const I rounded = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    const I nan = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), nan);
  }
  template <class T>
  static void store(T* p, F v) {
    if constexpr (std::is_same_v<T, float>) {
      _mm512_storeu_ps(p, v);
    } else if constexpr (std::is_same_v<T, half_t>) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_half_bits(v));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(to_bf16_bits(v)));
    }
  }
  template <class T>
  static void store_part(T* p, F v, int k) {
    if constexpr (std::is_same_v<T, float>) {
      _mm512_mask_storeu_ps(p, first(k), v);
    } else if constexpr (std::is_same_v<T, half_t>) {
      _mm256_mask_storeu_epi16(p, first(k), to_half_bits(v));
    } else {
      _mm512_mask_cvtepi32_storeu_epi16(p, first(k), to_bf16_bits(v));
    }
  }

  // ---- arithmetic ----
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float f) { return _mm512_set1_ps(f); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F abs(F v) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff))); }
  // For x, acc >= 0 or NaN: signed integer maxima of the bit patterns order like the values and keep NaN.
  static F max_magnitude(F x, F acc) {
    return _mm512_castsi512_ps(_mm512_max_epi32(_mm512_castps_si512(x), _mm512_castps_si512(acc)));
  }
  static float hmax_magnitude(F v) {
    const int32_t bits = _mm512_reduce_max_epi32(_mm512_castps_si512(v));
    float m;
    std::memcpy(&m, &bits, sizeof(m));
    return m;
  }

  // ---- 256-entry lookups ----
  // The 256-entry code book held in 16 registers: vpermt2ps picks from each 32-entry pair with
  // index bits 0-4, then bits 5, 6 and 7 select among the 8 candidates. Cheaper than a 16-lane gather.
  struct Table256 {
    F t[16];
  };
  static Table256 table256(const float* code) {
    Table256 r;
    for (int j = 0; j < 16; ++j) r.t[j] = _mm512_loadu_ps(code + 16 * j);
    return r;
  }
  static F lookup256_idx(const Table256& t, I idx) {
    F c[8];
    for (int j = 0; j < 8; ++j) c[j] = _mm512_permutex2var_ps(t.t[2 * j], idx, t.t[2 * j + 1]);
    const M b5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(1 << 5));
    const M b6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(1 << 6));
    const M b7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(1 << 7));
    const F c01 = _mm512_mask_mov_ps(c[0], b5, c[1]), c23 = _mm512_mask_mov_ps(c[2], b5, c[3]);
    const F c45 = _mm512_mask_mov_ps(c[4], b5, c[5]), c67 = _mm512_mask_mov_ps(c[6], b5, c[7]);
    const F c03 = _mm512_mask_mov_ps(c01, b6, c23), c47 = _mm512_mask_mov_ps(c45, b6, c67);
    return _mm512_mask_mov_ps(c03, b7, c47);
  }
  // ---- 8-bit code search (CodeSearch::search, 16 lanes at a time) ----
  // The midpoints live in registers too (padded with +inf to 256), for the fixed-step comparisons.
  struct Searcher {
    const CodeSearch* cs;
    int steps;
    Table256 mid;
  };
  static Searcher searcher(const CodeSearch& cs, int steps) {
    alignas(64) float m[256];
    std::memcpy(m, cs.mid, sizeof(cs.mid));
    m[CodeSearch::kMidpoints] = std::numeric_limits<float>::infinity();
    return {&cs, steps, table256(m)};
  }
  static I search(const Searcher& sr, F v) {
    const CodeSearch& cs = *sr.cs;
    const int steps = sr.steps;
    const I bits = _mm512_castps_si512(v);
    const I abs_bits = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff));
    I mb = _mm512_sub_epi32(_mm512_srli_epi32(abs_bits, kBucketShift), _mm512_set1_epi32(kBucketBias));
    mb = _mm512_min_epi32(_mm512_max_epi32(mb, _mm512_setzero_si512()), _mm512_set1_epi32(CodeSearch::kBucketsPerSign - 1));
    // Negative values count down from the middle, positive ones up from it.
    const I pos = _mm512_add_epi32(mb, _mm512_set1_epi32(CodeSearch::kBucketsPerSign));
    const I bucket = _mm512_mask_sub_epi32(pos, _mm512_movepi32_mask(bits), _mm512_set1_epi32(CodeSearch::kBucketsPerSign - 1), mb);
    const I lo = _mm512_srli_epi32(_mm512_i32gather_epi32(bucket, cs.lo - 3, 1), 24);
    const I last = _mm512_set1_epi32(CodeSearch::kMidpoints);
    const I one = _mm512_set1_epi32(1);
    if (steps <= kFixedScanSteps) {
      // Midpoints are sorted, so #{s < steps : v > mid[lo + s]} is exactly the scan length.
      I idx = lo, probe = lo;
      for (int s = 0; s < steps; ++s) {
        const M valid = _mm512_cmplt_epi32_mask(probe, last);
        const F m = lookup256_idx(sr.mid, probe);
        idx = _mm512_mask_add_epi32(idx, _mm512_mask_cmp_ps_mask(valid, v, m, _CMP_GT_OQ), idx, one);
        probe = _mm512_add_epi32(probe, one);
      }
      return idx;
    }
    // Crowded code books: forward scan; each round advances the lanes still above their midpoint.
    I idx = lo;
    for (;;) {
      const M valid = _mm512_cmplt_epi32_mask(idx, last);
      const F m = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, cs.mid, 4);
      const M up = _mm512_mask_cmp_ps_mask(valid, v, m, _CMP_GT_OQ);
      if (up == 0) return idx;
      idx = _mm512_mask_add_epi32(idx, up, idx, one);
    }
  }
  static void store_u8(uint8_t* p, I v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v)); }
  static void store_u8_part(uint8_t* p, I v, int k) { _mm512_mask_cvtepi32_storeu_epi8(p, first(k), v); }

  static F lookup256(const Table256& t, const uint8_t* p) {
    return lookup256_idx(t, _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static F lookup256_part(const Table256& t, const uint8_t* p, int k) {
    return lookup256_idx(t, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(first(k), p)));
  }

  // ---- 4-bit ----
  // Thresholds padded to 16 with +inf (never below any value), for a 4-step branch-free binary
  // search: code = #{k : x > t[k]}, exactly the sum of the 15 comparisons of encode_nf4.
  static F nf4_thresholds() {
    alignas(64) static constexpr float t[16] = {
        kNF4Thresholds[0], kNF4Thresholds[1], kNF4Thresholds[2],  kNF4Thresholds[3],  kNF4Thresholds[4],
        kNF4Thresholds[5], kNF4Thresholds[6], kNF4Thresholds[7],  kNF4Thresholds[8],  kNF4Thresholds[9],
        kNF4Thresholds[10], kNF4Thresholds[11], kNF4Thresholds[12], kNF4Thresholds[13], kNF4Thresholds[14],
        std::numeric_limits<float>::infinity()};
    return _mm512_load_ps(t);
  }
  static F fp4_thresholds() {
    alignas(64) static constexpr float t[16] = {
        kFP4Thresholds[0], kFP4Thresholds[1], kFP4Thresholds[2], kFP4Thresholds[3],
        kFP4Thresholds[4], kFP4Thresholds[5], kFP4Thresholds[6], std::numeric_limits<float>::infinity(),
        std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity(),
        std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity(),
        std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity(),
        std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity()};
    return _mm512_load_ps(t);
  }
  // Adds `step` where x > t[idx + step - 1].
  static I search_step(I idx, F x, F t, int step) {
    const F th = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(step - 1)), t);
    return _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(x, th, _CMP_GT_OQ), idx, _mm512_set1_epi32(step));
  }
  template <QuantType Q>
  static I encode4(F x) {
    if constexpr (Q == QuantType::NF4) {
      const F t = nf4_thresholds();
      I idx = _mm512_setzero_si512();
      idx = search_step(idx, x, t, 8);
      idx = search_step(idx, x, t, 4);
      idx = search_step(idx, x, t, 2);
      return search_step(idx, x, t, 1);
    } else {
      const F t = fp4_thresholds();
      const F a = abs(x);  // -0.0 and NaN give magnitude code 0 either way, as in encode_fp4
      I cnt = _mm512_setzero_si512();
      cnt = search_step(cnt, a, t, 4);
      cnt = search_step(cnt, a, t, 2);
      cnt = search_step(cnt, a, t, 1);
      const I mag = _mm512_permutexvar_epi32(cnt, _mm512_castsi256_si512(_mm256_loadu_si256(
                                                     reinterpret_cast<const __m256i*>(kFP4CodeByCount))));
      const M neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
      return _mm512_mask_or_epi32(mag, neg, mag, _mm512_set1_epi32(kFP4SignBit));
    }
  }
  // Lanes 2j, 2j+1 -> one byte (2j high): as 64-bit lanes, (lane << 4) | (lane >> 32) has it in the low byte.
  static I pair_bytes(I c) { return _mm512_or_si512(_mm512_slli_epi64(c, 4), _mm512_srli_epi64(c, 32)); }
  static void store_nibbles(uint8_t* p, I c) { _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm512_cvtepi64_epi8(pair_bytes(c))); }
  static void store_nibbles_part(uint8_t* p, I c, int k) {
    const I padded = _mm512_maskz_mov_epi32(first(k), c);  // an odd tail pads a zero low nibble
    _mm512_mask_cvtepi64_storeu_epi8(p, static_cast<__mmask8>((1u << ((k + 1) / 2)) - 1u), pair_bytes(padded));
  }

  using Table4 = F;
  static Table4 table4(const float* t16) { return _mm512_loadu_ps(t16); }
  // 8 bytes -> 16 values. As 16-bit words, (b >> 4) | (b << 8) lays the high nibble then the byte
  // itself out in element order; vpermps reads only the low 4 bits of each index.
  static F lut4_bytes(const Table4& t, __m128i bytes) {
    __m128i w = _mm_cvtepu8_epi16(bytes);
    w = _mm_or_si128(_mm_srli_epi16(w, 4), _mm_slli_epi16(w, 8));
    return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(w), t);
  }
  static F lut4(const Table4& t, const uint8_t* p) { return lut4_bytes(t, _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static F lut4_part(const Table4& t, const uint8_t* p, int nbytes) { return lut4_bytes(t, _mm_maskz_loadu_epi8(first(nbytes), p)); }

  // ---- int8 ----
  static M ge(F a, F thr) { return _mm512_cmp_ps_mask(a, thr, _CMP_GE_OQ); }
  static unsigned mask_bits(M m) { return m; }
  static F clear(F v, M m) { return _mm512_mask_mov_ps(v, m, _mm512_setzero_ps()); }
  // vcvtps2dq rounds in the MXCSR mode, the same mode std::nearbyint uses: round-half-even by default.
  static I round_i32(F v) { return _mm512_cvtps_epi32(v); }
  static I clear_i(I v, M m) { return _mm512_mask_mov_epi32(v, m, _mm512_setzero_si512()); }
  static void store_i8(int8_t* p, I v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v)); }
  static void store_i8_part(int8_t* p, I v, int k) { _mm512_mask_cvtepi32_storeu_epi8(p, first(k), v); }
};

// Only plain feature tests run before the check passes: the table is constant-initialised, so
// no code built with this file's flags executes on a machine without them.
constexpr KernelTable kAvx512Table = make_table<Avx512>("avx512");

bool machine_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

}  // namespace

const KernelTable* avx512_kernels() { return machine_has_avx512() ? &kAvx512Table : nullptr; }

}  // namespace bnb::cpu

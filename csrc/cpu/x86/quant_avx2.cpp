// AVX2 + FMA + F16C kernels, 8 float lanes; compiled with those flags for this file only.
// AVX2 has no byte/word masked memory access, so tails go through a small stack buffer: only the
// caller's elements are read or written.
#include <immintrin.h>

#include <cstddef>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/x86/quant_simd.h"

namespace bnb::cpu {
namespace {

using namespace simd;

struct Avx2 {
  static constexpr int W = 8;
  using F = __m256;
  using I = __m256i;
  using M = __m256;  // all-ones lanes

  // ---- float32 <-> storage types ----
  template <class T>
  static F load(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return _mm256_loadu_ps(p);
    } else if constexpr (std::is_same_v<T, half_t>) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else {
      const I w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
  }
  template <class T>
  static F load_part(const T* p, int k) {
    T buf[W];
    std::memset(buf, 0, sizeof(buf));
    std::memcpy(buf, p, static_cast<size_t>(k) * sizeof(T));
    return load<T>(buf);
  }

  // to_half: round to nearest even (the immediate overrides MXCSR); every NaN becomes the quiet
  // NaN sign | 0x7e00 without payload, as types.h writes it.
  static __m128i to_half_bits(F v) {
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m128i nan = _mm_or_si128(_mm_and_si128(h, _mm_set1_epi16(static_cast<short>(0x8000))), _mm_set1_epi16(0x7e00));
    const I is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m128i is_nan16 = _mm_packs_epi32(_mm256_castsi256_si128(is_nan), _mm256_extracti128_si256(is_nan, 1));
    return _mm_blendv_epi8(h, nan, is_nan16);
  }
  // to_bfloat16: round to nearest even on the bit pattern; NaN keeps its top bits and is made quiet.
  static __m128i to_bf16_bits(F v) {
    const I x = _mm256_castps_si256(v);
    const I odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const I rounded = _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    const I nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    const I r = _mm256_blendv_epi8(rounded, nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // Lanes hold values <= 0xffff, so unsigned saturation is a plain narrowing; then join the two halves.
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0b1000));
  }
  template <class T>
  static void store(T* p, F v) {
    if constexpr (std::is_same_v<T, float>) {
      _mm256_storeu_ps(p, v);
    } else if constexpr (std::is_same_v<T, half_t>) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_half_bits(v));
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bf16_bits(v));
    }
  }
  template <class T>
  static void store_part(T* p, F v, int k) {
    T buf[W];
    store<T>(buf, v);
    std::memcpy(p, buf, static_cast<size_t>(k) * sizeof(T));
  }

  // ---- arithmetic ----
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float f) { return _mm256_set1_ps(f); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F abs(F v) { return _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fffffff))); }
  // For x, acc >= 0 or NaN: signed integer maxima of the bit patterns order like the values and keep NaN.
  static F max_magnitude(F x, F acc) {
    return _mm256_castsi256_ps(_mm256_max_epi32(_mm256_castps_si256(x), _mm256_castps_si256(acc)));
  }
  static float hmax_magnitude(F v) {
    const I x = _mm256_castps_si256(v);
    __m128i q = _mm_max_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    q = _mm_max_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(1, 0, 3, 2)));
    q = _mm_max_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(_mm_castsi128_ps(q));
  }

  // int32 lanes -> their low bytes, in lane order, in the low 8 bytes.
  static __m128i narrow_bytes(I v) {
    const I pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                    0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const I s = _mm256_shuffle_epi8(v, pick);
    return _mm_unpacklo_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  }
  static void store_bytes_part(void* p, __m128i bytes, int k) {
    alignas(16) uint8_t buf[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), bytes);
    std::memcpy(p, buf, static_cast<size_t>(k));
  }

  // ---- 8-bit code search (CodeSearch::search, 8 lanes at a time) ----
  struct Searcher {
    const CodeSearch* cs;
    int steps;
  };
  static Searcher searcher(const CodeSearch& cs, int steps) { return {&cs, steps}; }
  static I search(const Searcher& sr, F v) {
    const CodeSearch& cs = *sr.cs;
    const int steps = sr.steps;
    const I bits = _mm256_castps_si256(v);
    const I abs_bits = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
    I mb = _mm256_sub_epi32(_mm256_srli_epi32(abs_bits, kBucketShift), _mm256_set1_epi32(kBucketBias));
    mb = _mm256_min_epi32(_mm256_max_epi32(mb, _mm256_setzero_si256()), _mm256_set1_epi32(CodeSearch::kBucketsPerSign - 1));
    // Negative values count down from the middle, positive ones up from it.
    const I pos = _mm256_add_epi32(mb, _mm256_set1_epi32(CodeSearch::kBucketsPerSign));
    const I neg = _mm256_sub_epi32(_mm256_set1_epi32(CodeSearch::kBucketsPerSign - 1), mb);
    const I bucket = _mm256_blendv_epi8(pos, neg, _mm256_srai_epi32(bits, 31));
    const I lo = _mm256_srli_epi32(_mm256_i32gather_epi32(reinterpret_cast<const int*>(cs.lo - 3), bucket, 1), 24);
    const I last = _mm256_set1_epi32(CodeSearch::kMidpoints);
    if (steps <= kFixedScanSteps) {
      // Midpoints are sorted, so #{s < steps : v > mid[lo + s]} is exactly the scan length.
      I idx = lo, probe = lo;
      for (int s = 0; s < steps; ++s) {
        const I valid = _mm256_cmpgt_epi32(last, probe);
        const F m = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), cs.mid, probe, _mm256_castsi256_ps(valid), 4);
        idx = _mm256_sub_epi32(idx, _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v, m, _CMP_GT_OQ)), valid));
        probe = _mm256_add_epi32(probe, _mm256_set1_epi32(1));
      }
      return idx;
    }
    // Crowded code books: forward scan; each round advances the lanes still above their midpoint.
    I idx = lo;
    for (;;) {
      const I valid = _mm256_cmpgt_epi32(last, idx);
      const F m = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), cs.mid, idx, _mm256_castsi256_ps(valid), 4);
      const I up = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v, m, _CMP_GT_OQ)), valid);
      if (_mm256_testz_si256(up, up)) return idx;
      idx = _mm256_sub_epi32(idx, up);  // up lanes are -1
    }
  }
  static void store_u8(uint8_t* p, I v) { _mm_storel_epi64(reinterpret_cast<__m128i*>(p), narrow_bytes(v)); }
  static void store_u8_part(uint8_t* p, I v, int k) { store_bytes_part(p, narrow_bytes(v), k); }

  using Table256 = const float*;
  static Table256 table256(const float* code) { return code; }
  static F lookup256(Table256 code, const uint8_t* p) {
    return _mm256_i32gather_ps(code, _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 4);
  }
  static F lookup256_part(Table256 code, const uint8_t* p, int k) {
    uint8_t buf[W] = {};
    std::memcpy(buf, p, static_cast<size_t>(k));
    return lookup256(code, buf);
  }

  // ---- 4-bit ----
  // NF4: the 15 comparisons of encode_nf4, each subtracting its all-ones mask (= adding 1).
  // FP4: the number of thresholds below |x| picks the magnitude code from an 8-entry table.
  template <QuantType Q>
  static I encode4(F x) {
    if constexpr (Q == QuantType::NF4) {
      I code = _mm256_setzero_si256();
      for (int k = 0; k < 15; ++k)
        code = _mm256_sub_epi32(code, _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_set1_ps(kNF4Thresholds[k]), _CMP_GT_OQ)));
      return code;
    } else {
      const F a = abs(x);  // -0.0 and NaN give magnitude code 0 either way, as in encode_fp4
      I cnt = _mm256_setzero_si256();
      for (int k = 0; k < 7; ++k)
        cnt = _mm256_sub_epi32(cnt, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(kFP4Thresholds[k]), _CMP_GT_OQ)));
      const I mag = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kFP4CodeByCount)), cnt);
      const I neg = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
      return _mm256_or_si256(mag, _mm256_and_si256(neg, _mm256_set1_epi32(kFP4SignBit)));
    }
  }
  // Lanes 2j, 2j+1 -> one byte (2j high): as 64-bit lanes, (lane << 4) | (lane >> 32) has it in the
  // low byte; then gather bytes 0 and 8 of each 128-bit half.
  static __m128i pack_nibbles(I c) {
    const I t = _mm256_or_si256(_mm256_slli_epi64(c, 4), _mm256_srli_epi64(c, 32));
    const I pick = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                    0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const I s = _mm256_shuffle_epi8(t, pick);
    return _mm_unpacklo_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  }
  static void store_nibbles(uint8_t* p, I c) {
    const int32_t v = _mm_cvtsi128_si32(pack_nibbles(c));
    std::memcpy(p, &v, 4);
  }
  static void store_nibbles_part(uint8_t* p, I c, int k) {
    // An odd tail pads a zero low nibble: clear the lanes past k first.
    const I lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const I keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(k), lane);
    store_bytes_part(p, pack_nibbles(_mm256_and_si256(c, keep)), (k + 1) / 2);
  }

  // A 16-entry table as two 8-entry halves; bit 3 of the index chooses the half.
  struct Table4 {
    F lo, hi;
  };
  static Table4 table4(const float* t16) { return {_mm256_loadu_ps(t16), _mm256_loadu_ps(t16 + 8)}; }
  // 4 bytes -> 8 values. As 16-bit words, (b >> 4) | (b << 8) lays the high nibble then the byte
  // itself out in element order; vpermps reads only the low 3 bits of each index.
  static F lut4_word(const Table4& t, int32_t four_bytes) {
    __m128i w = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(four_bytes));
    w = _mm_or_si128(_mm_srli_epi16(w, 4), _mm_slli_epi16(w, 8));
    const I idx = _mm256_cvtepu8_epi32(w);
    const F lo = _mm256_permutevar8x32_ps(t.lo, idx);
    const F hi = _mm256_permutevar8x32_ps(t.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
  static F lut4(const Table4& t, const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return lut4_word(t, v);
  }
  static F lut4_part(const Table4& t, const uint8_t* p, int nbytes) {
    int32_t v = 0;
    std::memcpy(&v, p, static_cast<size_t>(nbytes));
    return lut4_word(t, v);
  }

  // ---- int8 ----
  static M ge(F a, F thr) { return _mm256_cmp_ps(a, thr, _CMP_GE_OQ); }
  static unsigned mask_bits(M m) { return static_cast<unsigned>(_mm256_movemask_ps(m)); }
  static F clear(F v, M m) { return _mm256_andnot_ps(m, v); }
  // vcvtps2dq rounds in the MXCSR mode, the same mode std::nearbyint uses: round-half-even by default.
  static I round_i32(F v) { return _mm256_cvtps_epi32(v); }
  static I clear_i(I v, M m) { return _mm256_andnot_si256(_mm256_castps_si256(m), v); }
  static void store_i8(int8_t* p, I v) { _mm_storel_epi64(reinterpret_cast<__m128i*>(p), narrow_bytes(v)); }
  static void store_i8_part(int8_t* p, I v, int k) { store_bytes_part(p, narrow_bytes(v), k); }
};

// Only plain feature tests run before the check passes: the table is constant-initialised, so
// no code built with this file's flags executes on a machine without them.
constexpr KernelTable kAvx2Table = make_table<Avx2>("avx2");

bool machine_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

}  // namespace

const KernelTable* avx2_kernels() { return machine_has_avx2() ? &kAvx2Table : nullptr; }

}  // namespace bnb::cpu

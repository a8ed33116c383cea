// The loops shared by the AVX2 and AVX-512 kernel tables. Each ISA file defines a struct `S` of
// vector primitives in an anonymous namespace and instantiates these templates with it, so every
// instantiation has internal linkage and is compiled only with that file's ISA flags.
//
// ODR caution: code compiled here must not call non-template inline functions of other headers
// (types.h conversions, CodeSearch::search, formats.h encoders, std::min on plain types...). The
// linker keeps one copy of such a function for the whole library; if it kept the copy built with
// AVX-512 flags, the scalar reference would fault on an AVX2-only machine. Hence the local
// static helpers and the vector re-implementations below.
//
// The primitives each ISA struct provides (W = lanes; F float vector, I int32 vector, M lane mask):
//   load<T>(p) / load_part<T>(p, k)          W elements as float32 (lanes >= k read as 0)
//   store<T>(p, v) / store_part<T>(p, v, k)  float32 -> T with the rounding of types.h
//   zero, set1, mul, abs
//   max_magnitude(x, acc), hmax_magnitude    maxima for x, acc >= 0 or NaN, as integer maxima of the
//                                            bit patterns: a NaN is kept (bnb::magnitude_bits)
//   searcher(cs, max_scan_steps(cs)), search(searcher, v)   CodeSearch::search, lane by lane
//   store_u8 / store_u8_part                 int32 lanes -> bytes (truncating)
//   Table256, table256(code), lookup256(t, p) / lookup256_part(t, p, k)   code[p[i]] for W bytes
//   encode4<Q>(v)                            encode_nf4 / encode_fp4
//   store_nibbles(p, c) / store_nibbles_part(p, c, k)   W (or k, padded with 0) codes -> bytes
//   Table4, table4(t16), lut4(t, p) / lut4_part(t, p, nbytes)   t16[nibble] for the 2 nibbles of W/2 bytes
//   ge(a, thr) -> M, mask_bits(M), clear(F, M), round_i32(F), clear_i(I, M)
//   store_i8 / store_i8_part
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/code_search.h"
#include "core/formats.h"
#include "core/params.h"
#include "cpu/kernels.h"
#include "cpu/types.h"

namespace bnb::cpu::simd {

static inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Same expression as bnb::inverse_absmax / bnb::int8_scale (formats.h), kept local (see above).
static inline float inverse_scale(float amax) { return amax >= kSmallestScaledAbsmax ? 1.0f / amax : 0.0f; }
static inline float int8_scale_of(float amax) { return amax >= kSmallestInt8Absmax ? kInt8Scale / amax : 0.0f; }

// max |A[i]| over [begin, end) that keeps NaN, as blocks and rows holding inf or NaN need it
// (core/formats.h): integer maxima of the bit patterns of |x|, which cost the same as vmaxps; four
// accumulators so the max latency chain does not bound throughput.
template <class S, class T>
float block_absmax_keeping_nan(const T* A, int64_t begin, int64_t end) {
  constexpr int W = S::W;
  auto a0 = S::zero(), a1 = S::zero(), a2 = S::zero(), a3 = S::zero();
  int64_t i = begin;
  for (; i + 4 * W <= end; i += 4 * W) {
    a0 = S::max_magnitude(S::abs(S::template load<T>(A + i)), a0);
    a1 = S::max_magnitude(S::abs(S::template load<T>(A + i + W)), a1);
    a2 = S::max_magnitude(S::abs(S::template load<T>(A + i + 2 * W)), a2);
    a3 = S::max_magnitude(S::abs(S::template load<T>(A + i + 3 * W)), a3);
  }
  for (; i + W <= end; i += W) a0 = S::max_magnitude(S::abs(S::template load<T>(A + i)), a0);
  if (i < end) a1 = S::max_magnitude(S::abs(S::template load_part<T>(A + i, static_cast<int>(end - i))), a1);
  return S::hmax_magnitude(S::max_magnitude(S::max_magnitude(a0, a1), S::max_magnitude(a2, a3)));
}

// False for +inf and NaN (amax >= 0 otherwise). Such blocks (rows) are rare and go to the reference kernel,
// which holds the rule for them (core/formats.h); kept local, see the ODR caution above.
static inline bool finite_absmax(float amax) { return amax <= __FLT_MAX__; }

// The most midpoints inside one bucket: a value of bucket b lies below every value of bucket b + 1,
// so its search advances at most lo[b + 1] - lo[b] steps past lo[b].
static inline int max_scan_steps(const CodeSearch& cs) {
  int steps = 0;
  for (int b = 0; b < CodeSearch::kBuckets; ++b) {
    const int next = b + 1 < CodeSearch::kBuckets ? cs.lo[b + 1] : CodeSearch::kMidpoints;
    steps = steps > next - cs.lo[b] ? steps : next - cs.lo[b];
  }
  return steps;
}

template <class S, class T>
void quantize_blockwise(const QuantizeBlockwiseParams& p, const CodeSearch& cs, int64_t b0, int64_t b1) {
  constexpr int W = S::W;
  const T* A = static_cast<const T*>(p.A);
  const auto search = S::searcher(cs, max_scan_steps(cs));
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * p.blocksize;
    const int64_t end = min_i64(begin + p.blocksize, p.n);
    const float amax = block_absmax_keeping_nan<S>(A, begin, end);
    if (!finite_absmax(amax)) {
      reference_kernels().quantize_blockwise(p, cs, b, b + 1);
      continue;
    }
    p.absmax[b] = amax;
    const auto scale = S::set1(inverse_scale(amax));
    int64_t i = begin;
    for (; i + W <= end; i += W) S::store_u8(p.out + i, S::search(search, S::mul(S::template load<T>(A + i), scale)));
    if (i < end) {
      const int k = static_cast<int>(end - i);
      S::store_u8_part(p.out + i, S::search(search, S::mul(S::template load_part<T>(A + i, k), scale)), k);
    }
  }
}

// Elements [begin, end), walked one block segment at a time so the scale is a broadcast.
template <class S, class T>
void dequantize_blockwise(const DequantizeBlockwiseParams& p, int64_t begin, int64_t end) {
  constexpr int W = S::W;
  T* out = static_cast<T*>(p.out);
  const auto table = S::table256(p.code);
  int64_t i = begin;
  while (i < end) {
    const int64_t b = i / p.blocksize;
    const int64_t seg_end = min_i64(end, (b + 1) * p.blocksize);
    const auto scale = S::set1(p.absmax[b]);
    for (; i + W <= seg_end; i += W) S::template store<T>(out + i, S::mul(S::lookup256(table, p.A + i), scale));
    if (i < seg_end) {
      const int k = static_cast<int>(seg_end - i);
      S::template store_part<T>(out + i, S::mul(S::lookup256_part(table, p.A + i, k), scale), k);
      i = seg_end;
    }
  }
}

// Blocks start at even elements (blocksize is even), so each block owns whole bytes of `packed`.
template <class S, class T, QuantType Q>
void quantize_4bit(const Quantize4bitParams& p, int64_t b0, int64_t b1) {
  constexpr int W = S::W;
  const T* A = static_cast<const T*>(p.A);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * p.blocksize;
    const int64_t end = min_i64(begin + p.blocksize, p.n);
    const float amax = block_absmax_keeping_nan<S>(A, begin, end);
    if (!finite_absmax(amax)) {
      reference_kernels().quantize_4bit(p, b, b + 1);
      continue;
    }
    p.absmax[b] = amax;
    const auto scale = S::set1(inverse_scale(amax));
    int64_t i = begin;
    for (; i + W <= end; i += W)
      S::store_nibbles(p.packed + i / 2, S::template encode4<Q>(S::mul(S::template load<T>(A + i), scale)));
    if (i < end) {
      const int k = static_cast<int>(end - i);
      S::store_nibbles_part(p.packed + i / 2, S::template encode4<Q>(S::mul(S::template load_part<T>(A + i, k), scale)),
                            k);
    }
  }
}

// Bytes [byte_begin, byte_end) = elements [2 byte_begin, min(2 byte_end, n)), per block segment.
template <class S, class T>
void dequantize_4bit(const Dequantize4bitParams& p, int64_t byte_begin, int64_t byte_end) {
  constexpr int W = S::W;
  T* out = static_cast<T*>(p.out);
  const auto table = S::table4(p.qtype == QuantType::NF4 ? kNF4Values : kFP4Values);
  const int64_t end = min_i64(2 * byte_end, p.n);
  int64_t i = 2 * byte_begin;
  while (i < end) {
    const int64_t b = i / p.blocksize;
    const int64_t seg_end = min_i64(end, (b + 1) * p.blocksize);
    const auto scale = S::set1(p.absmax[b]);
    for (; i + W <= seg_end; i += W) S::template store<T>(out + i, S::mul(S::lut4(table, p.packed + i / 2), scale));
    if (i < seg_end) {
      const int k = static_cast<int>(seg_end - i);
      S::template store_part<T>(out + i, S::mul(S::lut4_part(table, p.packed + i / 2, (k + 1) / 2), scale), k);
      i = seg_end;
    }
  }
}

template <class S, class T>
void int8_vectorwise_quant(const Int8VectorwiseQuantParams& p, int64_t r0, int64_t r1) {
  constexpr int W = S::W;
  const T* A = static_cast<const T*>(p.A);
  const int64_t cols = p.cols;
  if (!(p.threshold > 0.0f)) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = A + r * cols;
      int8_t* out = p.out + r * cols;
      const float amax = block_absmax_keeping_nan<S>(row, 0, cols);
      if (!finite_absmax(amax)) {  // NaN or inf in the row: the reference holds the rule (all codes 0)
        reference_kernels().int8_vectorwise_quant(p, r, r + 1);
        continue;
      }
      p.row_stats[r] = amax;
      const auto scale = S::set1(int8_scale_of(amax));
      int64_t c = 0;
      for (; c + W <= cols; c += W) S::store_i8(out + c, S::round_i32(S::mul(S::template load<T>(row + c), scale)));
      if (c < cols) {
        const int k = static_cast<int>(cols - c);
        S::store_i8_part(out + c, S::round_i32(S::mul(S::template load_part<T>(row + c, k), scale)), k);
      }
    }
    return;
  }
  // Outliers: |x| >= threshold is left out of the absmax, flags its column and quantizes to 0.
  // Several rows may flag the same column at once, hence relaxed atomic stores (all write the same value).
  const auto thr = S::set1(p.threshold);
  const uint8_t flag_value = p.flag_value();
  auto flag = [&](int64_t c, unsigned bits) {
    while (bits) {
      __atomic_store_n(&p.outlier_cols[c + __builtin_ctz(bits)], flag_value, __ATOMIC_RELAXED);
      bits &= bits - 1;
    }
  };
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = A + r * cols;
    int8_t* out = p.out + r * cols;
    auto acc = S::zero();
    int64_t c = 0;
    for (; c + W <= cols; c += W) {
      const auto a = S::abs(S::template load<T>(row + c));
      const auto m = S::ge(a, thr);
      if (const unsigned bits = S::mask_bits(m)) flag(c, bits);
      acc = S::max_magnitude(S::clear(a, m), acc);  // a NaN lane is no outlier (ge is false): kept
    }
    if (c < cols) {
      // Padding lanes read 0, which is never >= a positive threshold.
      const auto a = S::abs(S::template load_part<T>(row + c, static_cast<int>(cols - c)));
      const auto m = S::ge(a, thr);
      if (const unsigned bits = S::mask_bits(m)) flag(c, bits);
      acc = S::max_magnitude(S::clear(a, m), acc);
    }
    const float amax = S::hmax_magnitude(acc);
    if (!finite_absmax(amax)) {  // a NaN among the non-outliers (inf is always an outlier here)
      reference_kernels().int8_vectorwise_quant(p, r, r + 1);
      continue;
    }
    p.row_stats[r] = amax;
    const auto scale = S::set1(int8_scale_of(amax));
    for (c = 0; c + W <= cols; c += W) {
      const auto x = S::template load<T>(row + c);
      S::store_i8(out + c, S::clear_i(S::round_i32(S::mul(x, scale)), S::ge(S::abs(x), thr)));
    }
    if (c < cols) {
      const int k = static_cast<int>(cols - c);
      const auto x = S::template load_part<T>(row + c, k);
      S::store_i8_part(out + c, S::clear_i(S::round_i32(S::mul(x, scale)), S::ge(S::abs(x), thr)), k);
    }
  }
}

// ---- the dtype switch for the table entries (dtypes were validated by the C entry points; an unknown
// one falls back to the reference, which reports it) ----

template <class S>
void quantize_blockwise_entry(const QuantizeBlockwiseParams& p, const CodeSearch& cs, int64_t b0, int64_t b1) {
  switch (p.a_dtype) {
    case BNB_DTYPE_FLOAT32: return quantize_blockwise<S, float>(p, cs, b0, b1);
    case BNB_DTYPE_FLOAT16: return quantize_blockwise<S, half_t>(p, cs, b0, b1);
    case BNB_DTYPE_BFLOAT16: return quantize_blockwise<S, bfloat16_t>(p, cs, b0, b1);
    default: return reference_kernels().quantize_blockwise(p, cs, b0, b1);
  }
}

template <class S>
void dequantize_blockwise_entry(const DequantizeBlockwiseParams& p, int64_t i0, int64_t i1) {
  switch (p.out_dtype) {
    case BNB_DTYPE_FLOAT32: return dequantize_blockwise<S, float>(p, i0, i1);
    case BNB_DTYPE_FLOAT16: return dequantize_blockwise<S, half_t>(p, i0, i1);
    case BNB_DTYPE_BFLOAT16: return dequantize_blockwise<S, bfloat16_t>(p, i0, i1);
    default: return reference_kernels().dequantize_blockwise(p, i0, i1);
  }
}

template <class S, QuantType Q>
void quantize_4bit_q(const Quantize4bitParams& p, int64_t b0, int64_t b1) {
  switch (p.a_dtype) {
    case BNB_DTYPE_FLOAT32: return quantize_4bit<S, float, Q>(p, b0, b1);
    case BNB_DTYPE_FLOAT16: return quantize_4bit<S, half_t, Q>(p, b0, b1);
    case BNB_DTYPE_BFLOAT16: return quantize_4bit<S, bfloat16_t, Q>(p, b0, b1);
    default: return reference_kernels().quantize_4bit(p, b0, b1);
  }
}

// An odd blocksize (never accepted by the C entry points) would split bytes between blocks; the
// reference handles whatever such a call means.
template <class S>
void quantize_4bit_entry(const Quantize4bitParams& p, int64_t b0, int64_t b1) {
  if (p.blocksize % 2 != 0) return reference_kernels().quantize_4bit(p, b0, b1);
  if (p.qtype == QuantType::NF4) quantize_4bit_q<S, QuantType::NF4>(p, b0, b1);
  else quantize_4bit_q<S, QuantType::FP4>(p, b0, b1);
}

template <class S>
void dequantize_4bit_entry(const Dequantize4bitParams& p, int64_t j0, int64_t j1) {
  if (p.blocksize % 2 != 0) return reference_kernels().dequantize_4bit(p, j0, j1);
  switch (p.out_dtype) {
    case BNB_DTYPE_FLOAT32: return dequantize_4bit<S, float>(p, j0, j1);
    case BNB_DTYPE_FLOAT16: return dequantize_4bit<S, half_t>(p, j0, j1);
    case BNB_DTYPE_BFLOAT16: return dequantize_4bit<S, bfloat16_t>(p, j0, j1);
    default: return reference_kernels().dequantize_4bit(p, j0, j1);
  }
}

template <class S>
void int8_vectorwise_quant_entry(const Int8VectorwiseQuantParams& p, int64_t r0, int64_t r1) {
  switch (p.a_dtype) {
    case BNB_DTYPE_FLOAT32: return int8_vectorwise_quant<S, float>(p, r0, r1);
    case BNB_DTYPE_FLOAT16: return int8_vectorwise_quant<S, half_t>(p, r0, r1);
    case BNB_DTYPE_BFLOAT16: return int8_vectorwise_quant<S, bfloat16_t>(p, r0, r1);
    default: return reference_kernels().int8_vectorwise_quant(p, r0, r1);
  }
}

template <class S>
constexpr KernelTable make_table(const char* isa) {
  return KernelTable{isa,
                     quantize_blockwise_entry<S>,
                     dequantize_blockwise_entry<S>,
                     quantize_4bit_entry<S>,
                     dequantize_4bit_entry<S>,
                     int8_vectorwise_quant_entry<S>};
}

// CodeSearch lookups read 4 bytes ending at lo[bucket] (a 32-bit gather cannot fetch one byte);
// the 3 bytes before lo[0] belong to `mid`, so every read stays inside the object.
static_assert(offsetof(CodeSearch, lo) >= 3, "CodeSearch::lo must follow at least 3 bytes of the struct");
constexpr int kFirstSliceExponent = CodeSearch::kTopExponent - CodeSearch::kOctaves;
// magnitude_bucket(|v|) = clamp((|v| bits >> kBucketShift) - kBucketBias, 0, kBucketsPerSign - 1): the
// exponent and the slice bits are contiguous, so one shift and one subtraction give the bucket inside the
// sliced range.
constexpr int kBucketShift = 23 - CodeSearch::kMantissaBits;
constexpr int kBucketBias = (kFirstSliceExponent << CodeSearch::kMantissaBits) - 1;
static_assert(CodeSearch::kBucketsPerSign == (CodeSearch::kOctaves << CodeSearch::kMantissaBits) + 2,
              "bucket layout changed: revisit search()");
// Up to this many midpoints per bucket (the dynamic, linear and quantile maps need 2-4), the search does
// that many independent comparisons instead of a data-dependent scan: no mispredicted loop exits,
// and the lookups do not wait on each other.
constexpr int kFixedScanSteps = 6;

// FP4 magnitude code indexed by the number of thresholds below |x| (0 -> 0b000, k -> kFP4CodeAbove[k-1]).
constexpr int32_t kFP4CodeByCount[8] = {0,
                                        kFP4CodeAbove[0],
                                        kFP4CodeAbove[1],
                                        kFP4CodeAbove[2],
                                        kFP4CodeAbove[3],
                                        kFP4CodeAbove[4],
                                        kFP4CodeAbove[5],
                                        kFP4CodeAbove[6]};

}  // namespace bnb::cpu::simd

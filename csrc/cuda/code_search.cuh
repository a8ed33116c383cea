// Building bnb::CodeSearch tables in shared memory, shared by the kernels that quantize against an
// arbitrary 256-entry code book (blockwise quantization, 8-bit optimizer states).
#pragma once

#include "core/code_search.h"
#include "cuda/common.cuh"

namespace bnb::cuda {

// The CTA's copy of a code in ascending order, as bnb::sort_code makes it on the host (same order,
// same tie-breaking, so the same indices): returns true, with sorted.value a plain copy, when the code
// already is ascending, which one comparison per thread and a vote find out. Only a code out of order
// pays for the rank sort (each thread counts the entries before its own: 256 steps). The result is
// uniform over the CTA. Contains barriers: every thread of the CTA must call it.
__device__ inline bool sort_code_in_cta(const float* __restrict__ code, SortedCode& sorted) {
  for (int i = threadIdx.x; i < SortedCode::kSize; i += blockDim.x) sorted.value[i] = __ldg(code + i);
  __syncthreads();
  bool ascending = true;
  for (int i = threadIdx.x; i + 1 < SortedCode::kSize; i += blockDim.x)
    ascending = ascending && in_ascending_order(sorted.value[i], sorted.value[i + 1]);
  if (__syncthreads_and(ascending)) return true;
  // Everybody has read sorted.value (the vote is a barrier): the ranks read the code from global memory.
  for (int i = threadIdx.x; i < SortedCode::kSize; i += blockDim.x) {
    const int k = sorted_position(code, i);
    sorted.value[k] = __ldg(code + i);
    sorted.index[k] = static_cast<uint8_t>(i);
  }
  __syncthreads();
  return false;
}

// Fills the CTA's copy of the search tables from an ascending code book (global or shared memory).
// Same arithmetic as CodeSearch::build on the host, so the tables (and therefore the codes) are
// identical. Contains barriers: every thread of the CTA must call it.
__device__ inline void build_code_search(CodeSearch& s, const float* __restrict__ code) {
  for (int i = threadIdx.x; i < CodeSearch::kMidpoints; i += blockDim.x)
    s.mid[i] = (code[i] + code[i + 1]) * 0.5f;
  if (threadIdx.x == 0) s.mid[CodeSearch::kMidpoints] = CodeSearch::kSentinel;
  __syncthreads();
  for (int b = threadIdx.x; b < CodeSearch::kBuckets; b += blockDim.x) {
    const int below = count_below(s.mid, CodeSearch::kMidpoints, CodeSearch::bucket_min(b));
    s.lo[b] = static_cast<uint8_t>(below > CodeSearch::kMidpoints ? CodeSearch::kMidpoints : below);
  }
  __syncthreads();
}

// CodeSearch with one 32-bit word per bucket and a branch-free fast path, for kernels that search
// many values per CTA (blockwise quantization, 8-bit optimizer states).
//
// Same rule as bnb::CodeSearch (index = number of midpoints strictly below v) and the same buckets:
// sign, exponent and 6 mantissa bits of v pick a bucket, lo = #midpoints below the bucket. In a
// bucket of one octave slice every value shares bits 17..31, so comparing v with the one midpoint
// m inside it is comparing their low 17 bits (reversed for negative values, where a larger
// magnitude is a smaller value):
//
//   x = low17(v bits ^ sign mask)                       (0x1ffff - low17 for v < 0)
//   entry = lo << 24 | 0x7f << 17 | K,  K = 0x1ffff - x(m)   (K = 0 when no midpoint is inside)
//   entry + x: the low 17 bits carry out iff x > x(m), i.e. iff v > m; the carry ripples through
//   the seven ones into bits 24..31, which then hold lo + (v > m), the index.
//
// One shared-memory word per element instead of two (entry and midpoint), spread over all 32 banks:
// the table lookups were what held 16-bit inputs back (three times the element rate of fp32 per byte).
// Buckets with two or more midpoints, and the tiny and |v| >= 1 buckets (which span several
// exponents) when a midpoint lies inside, clear bit 23 and take CodeSearch's forward scan from lo.
// A NaN lands in the |v| >= 1 bucket of its sign, as in CodeSearch; no comparison with it holds, so
// it gets lo there on either path, as CodeSearch gives it.
// A code searched as its ascending copy (SortedCode) maps each position found back to the caller's
// index through code_index (search4 with mapped). The one-comparison path cannot (its result is lo
// plus a carry), so such tables send every value through the scan, which maps. Searches of an
// ascending code (search4 without mapped, and the optimizers' search4_nonnegative and search4_signed)
// skip that load, which they do not need.
struct FineCodeSearch {
  static constexpr int kSliceBits = CodeSearch::kMantissaBits;  // 64 slices per octave
  static constexpr int kOctaves = CodeSearch::kOctaves;          // [2^-24, 1) get slices
  static constexpr int kTopExponent = 127;
  static constexpr int kShift = 23 - kSliceBits;                 // bits below the bucket key
  static constexpr uint32_t kLowMask = (1u << kShift) - 1u;
  static constexpr int kFirstKey = (kTopExponent - kOctaves) << kSliceBits;
  static constexpr int kMagBuckets = 1 + (kOctaves << kSliceBits) + 1;  // tiny | slices | |v| >= 1
  static constexpr int kSignStride = 2048;  // negative buckets start here: a power of two, so OR adds it
  static_assert(kMagBuckets <= kSignStride, "magnitude buckets fit below the sign stride");
  static constexpr int kEntries = 2 * kSignStride;
  static constexpr int kIndexShift = 24;                        // lo (and the result) in bits 24..31
  static constexpr uint32_t kCarryOnes = 0x7fu << kShift;      // bits 17..23: carry path to bit 24
  static constexpr uint32_t kFastBit = 1u << (kIndexShift - 1);  // bit 23: set iff one comparison suffices
  static_assert(kShift + 7 == kIndexShift, "the carry path spans bits kShift..23");
  static constexpr uint32_t kPositiveInfBits = 0x7f800000u;

  float mid[CodeSearch::kMidpoints];
  uint32_t entry[kEntries];
  uint8_t code_index[SortedCode::kSize];  // the caller's index of each position of the code searched

  // Table slot of v: magnitude bucket (clamped: tiny below, |v| >= 1 and NaN above) | sign stride.
  __device__ __forceinline__ static int slot(uint32_t bits) {
    const int m = static_cast<int>((bits & 0x7fffffffu) >> kShift) - kFirstKey + 1;
    const int sign = static_cast<int>(bits) >> 31;  // 0 or -1
    return min(max(m, 0), kMagBuckets - 1) | (sign & kSignStride);
  }
  // v's low bits in comparison order: larger means a larger value within the bucket.
  __device__ __forceinline__ static uint32_t order_bits(uint32_t bits) {
    return (bits ^ static_cast<uint32_t>(static_cast<int>(bits) >> 31)) & kLowMask;
  }
  // Bits of the smallest magnitude in magnitude bucket m (m <= kMagBuckets - 1).
  __device__ static uint32_t lower_bits(int m) { return m == 0 ? 0u : static_cast<uint32_t>(m - 1 + kFirstKey) << kShift; }

  // Position of v in the ascending code searched (CodeSearch's forward scan from the entry's lo).
  __device__ __forceinline__ int scan(float v, uint32_t e) const {
    int idx = static_cast<int>(e >> kIndexShift);
    while (idx < CodeSearch::kMidpoints && v > mid[idx]) ++idx;
    return idx;
  }

  // Indices of kGroup values at once; byte 3 of each result is the index. The fast path is taken
  // when all of them land in one-comparison buckets (one test per group). The caller must round v
  // on its own (__fmul_rn): the bits compared are those of the rounded product.
  // mapped: the tables were built for a code out of order (index_of_position), and positions found by
  // the scan are mapped to the caller's indices; an ascending code's search skips that load. (A flag
  // rather than a second copy of the caller's loop, which made ptxas spill in quantize_blockwise.)
  static constexpr int kGroup = 4;
  __device__ __forceinline__ void search4(const float* v, uint32_t* idx, bool mapped = false) const {
    search_group(v, idx, slot, order_bits, [&](int i, uint32_t e) {
      const int position = scan(v[i], e);
      return mapped ? code_index[position] : position;
    });
  }

  // search4 for values expected to be >= 0 (the second moment of Adam): with no sign bit set the
  // slot and order bits need no sign handling, three instructions fewer per value; a group with a
  // negative value (possible with a code book of another shape) takes the general search4. Tables of an
  // ascending code only (the index found is the position).
  __device__ __forceinline__ void search4_nonnegative(const float* v, uint32_t* idx) const {
    uint32_t signs = 0;
#pragma unroll
    for (int i = 0; i < kGroup; ++i) signs |= __float_as_uint(v[i]);
    if (signs >> 31) return search4(v, idx);
    const auto slot_of = [](uint32_t bits) {
      return min(max(static_cast<int>(bits >> kShift) - kFirstKey + 1, 0), kMagBuckets - 1);
    };
    const auto low_of = [](uint32_t bits) { return bits & kLowMask; };
    search_group(v, idx, slot_of, low_of, [&](int i, uint32_t e) { return scan(v[i], e); });
  }

  // search4 for a signed state: byte 3 of idx[i] = keep_sign(code, index, x[i]) as
  // quantize_signed_state gives it (v = the scaled values searched, x = the values themselves,
  // whose signs keep_sign keeps). Needs tables built with signed_codes.
  __device__ __forceinline__ void search4_signed(const float* v, const float* x, const float* code,
                                                 uint32_t* idx) const {
    search_group(v, idx, slot, order_bits,
                 [&](int i, uint32_t e) { return keep_sign(code, scan(v[i], e), x[i]); });
  }

  // The group search behind the three: slot_of(bits) is a value's table slot, low_of(bits) its
  // bits in comparison order, scan_of(i, entry) the index of value i where one comparison is not
  // enough.
  template <typename SlotOf, typename LowOf, typename ScanOf>
  __device__ __forceinline__ void search_group(const float* v, uint32_t* idx, SlotOf slot_of, LowOf low_of,
                                               ScanOf scan_of) const {
    uint32_t e[kGroup];
    uint32_t all = kFastBit;
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      e[i] = entry[slot_of(__float_as_uint(v[i]))];
      all &= e[i];
    }
    if (all) {
#pragma unroll
      for (int i = 0; i < kGroup; ++i) idx[i] = e[i] + low_of(__float_as_uint(v[i]));
    } else {
#pragma unroll
      for (int i = 0; i < kGroup; ++i) idx[i] = static_cast<uint32_t>(scan_of(i, e[i])) << kIndexShift;
    }
  }

  __device__ static int count_at_most(const float* sorted, int count, float v) {
    int lo = 0, hi = count;  // first index with sorted[i] > v
    while (lo < hi) {
      const int m = (lo + hi) / 2;
      if (sorted[m] <= v) lo = m + 1;
      else hi = m;
    }
    return lo;
  }

  // signed_codes: the tables serve keep_sign (signed optimizer states, search4_signed): a bucket
  // keeps the one-comparison path only where every code it can answer has the sign of the bucket's
  // values, so that path needs no sign fix; elsewhere (next to the zero code) the scan answers and
  // keep_sign runs there.
  // code: ascending, in global or shared memory. index_of_position: for a code searched as its
  // ascending copy, the caller's index of each entry of `code` (SortedCode::index); nullptr when `code`
  // is the caller's code itself. Not with signed_codes: keep_sign steps through the caller's order.
  __device__ void build(const float* __restrict__ code, bool signed_codes = false,
                        const uint8_t* index_of_position = nullptr) {
    for (int i = threadIdx.x; i < CodeSearch::kMidpoints; i += blockDim.x)
      mid[i] = (code[i] + code[i + 1]) * 0.5f;
    for (int i = threadIdx.x; i < SortedCode::kSize; i += blockDim.x)
      code_index[i] = index_of_position ? index_of_position[i] : static_cast<uint8_t>(i);
    __syncthreads();
    for (int idx = threadIdx.x; idx < kEntries; idx += blockDim.x) {
      const int m = idx % kSignStride;
      if (m >= kMagBuckets) continue;  // never looked up
      const bool negative = idx >= kSignStride;
      const bool top = m == kMagBuckets - 1;
      const float small = __uint_as_float(lower_bits(m));                                   // smallest |v|
      const float large = __uint_as_float(top ? kPositiveInfBits : lower_bits(m + 1) - 1u); // largest |v|
      const float vmin = negative ? -large : small;
      const float vmax = negative ? -small : large;
      const int lo = count_below(mid, CodeSearch::kMidpoints, vmin);
      const int count = count_at_most(mid, CodeSearch::kMidpoints, vmax) - lo;
      // One octave slice: all its values share bits kShift..31 (checked on the midpoint itself, so a
      // code book with NaN or inf entries, whose counts mean nothing, keeps the scan).
      const bool narrow = m != 0 && !top;
      uint32_t e = static_cast<uint32_t>(lo) << kIndexShift;
      bool same_sign = true;
      if (signed_codes) {
        for (int i = lo; i <= lo + count && i <= CodeSearch::kMidpoints; ++i)
          same_sign = same_sign && sign_bit(code[i]) == negative;
      }
      if (!same_sign || index_of_position) {
        // scan only
      } else if (count == 0) {
        e |= kCarryOnes;  // K = 0: x never carries
      } else if (count == 1 && narrow &&
                 (__float_as_uint(mid[lo]) >> kShift) == (__float_as_uint(vmin) >> kShift)) {
        e |= kCarryOnes | (kLowMask - order_bits(__float_as_uint(mid[lo])));
      }
      entry[idx] = e;
    }
    __syncthreads();
  }
};

}  // namespace bnb::cuda

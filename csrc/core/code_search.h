// Exact nearest-code search for 8-bit blockwise quantization with an arbitrary sorted
// 256-entry code book, shared by the CPU and CUDA backends so both produce the same bytes.
//
// The rule (compat.md §1.4.3): index = number of midpoints m[i] = (code[i] + code[i+1]) / 2
// that are strictly below v, i.e. torch.bucketize(v, m, right=False). A value exactly on a
// midpoint goes to the lower code.
//
// A binary search costs 8 dependent loads per element. Instead the value's float bits pick a
// coarse bucket, a table gives the count of midpoints below the bucket's smallest value, and a
// short forward scan over the few midpoints inside the bucket finishes the job:
//
//      v = -0.7                                         v = 0.3
//       |  sign | exponent (24 kept) | 6 mantissa bits |
//       +-------+--------------------+-----------------+  -> bucket -> lo = #{m < bucket_min}
//                                                          -> while (v > m[lo]) ++lo
//
// Normalised values lie in [-1, 1] (|x| <= absmax), so only exponents 2^-24 .. 2^0 need their
// own buckets; anything smaller shares the "tiny" bucket. The scan is exact for any sorted code;
// for the dynamic, linear and quantile maps it takes at most a few steps.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace bnb {

struct CodeSearch {
  // Mantissa bits that refine a bucket: 64 slices per octave leave at most one midpoint in almost
  // every bucket of the usual code books, so the scan below is a single comparison.
  static constexpr int kMantissaBits = 6;
  static constexpr int kOctaves = 24;       // octaves [2^-24, 1] get their own buckets
  static constexpr int kTopExponent = 127;  // biased exponent of 1.0f
  // Per sign: bucket 0 = tiny (|v| < 2^-24), then kOctaves * 16 octave slices, then 1 for |v| >= 1.
  static constexpr int kBucketsPerSign = 1 + (kOctaves << kMantissaBits) + 1;
  static constexpr int kBuckets = 2 * kBucketsPerSign;
  static constexpr int kMidpoints = 255;
  static constexpr float kSentinel = __builtin_huge_valf();  // +inf: no value is above it

  float mid[kMidpoints + 1];  // midpoints between consecutive codes, then a +inf sentinel that ends every scan
  uint8_t lo[kBuckets];      // #midpoints strictly below the smallest value of each bucket

  // Magnitude bucket in [0, kBucketsPerSign) of |v| given its bit pattern without the sign.
  BNB_HD static int magnitude_bucket(uint32_t abs_bits) {
    const int32_t exponent = static_cast<int32_t>(abs_bits >> 23);
    const int32_t first = kTopExponent - kOctaves;  // smallest exponent with its own slices
    if (exponent < first) return 0;
    if (exponent >= kTopExponent) return kBucketsPerSign - 1;
    const int32_t slice = static_cast<int32_t>((abs_bits >> (23 - kMantissaBits)) & ((1u << kMantissaBits) - 1));
    return 1 + ((exponent - first) << kMantissaBits) + slice;
  }

  // Global bucket index, increasing with v: negative buckets first (largest magnitude first).
  BNB_HD static int bucket(float v) {
    const uint32_t bits = float_bits(v);
    const int mb = magnitude_bucket(bits & 0x7fffffffu);
    return (bits >> 31) ? (kBucketsPerSign - 1 - mb) : (kBucketsPerSign + mb);
  }

  // The nearest code index for a normalised value v (a NaN maps to some valid index).
  BNB_HD int search(float v) const {
    int idx = lo[bucket(v)];
    while (v > mid[idx]) ++idx;  // the +inf sentinel stops the scan at index kMidpoints
    return idx;
  }

  // Bit pattern of the smallest |v| in magnitude bucket mb.
  BNB_HD static uint32_t magnitude_lower_bits(int mb) {
    constexpr int first = kTopExponent - kOctaves;
    if (mb == 0) return 0u;
    if (mb == kBucketsPerSign - 1) return static_cast<uint32_t>(kTopExponent) << 23;
    const int k = mb - 1;
    const uint32_t exponent = static_cast<uint32_t>(first + (k >> kMantissaBits));
    const uint32_t slice = static_cast<uint32_t>(k & ((1 << kMantissaBits) - 1));
    return (exponent << 23) | (slice << (23 - kMantissaBits));
  }

  // Smallest float value that falls into bucket b (used only to build `lo`). Shared by the host
  // build below and the CUDA kernels, which build the same table in shared memory.
  BNB_HD static float bucket_min(int b) {
    if (b >= kBucketsPerSign) return float_from_bits(magnitude_lower_bits(b - kBucketsPerSign));
    // Negative side: bucket b holds magnitudes of bucket mb = kBucketsPerSign - 1 - b; its smallest
    // value is minus the largest magnitude in it, i.e. just below the next magnitude bucket's lower bound.
    const int mb = kBucketsPerSign - 1 - b;
    if (mb == kBucketsPerSign - 1) return float_from_bits(kNegativeInfinityBits);
    return -float_from_bits(magnitude_lower_bits(mb + 1) - 1u);
  }

  // Fill `mid` and `lo` from a sorted 256-entry code (host-side build).
  void build(const float* code);

 private:
  static constexpr uint32_t kNegativeInfinityBits = 0xff800000u;
};

// ---- codes in any order ----------------------------------------------------------------------------
// CodeSearch needs ascending midpoints, but a code may come in any order (create_linear_map pads with
// zeros after its positive entries; users pass their own tables). Such a code is searched as its
// ascending copy, and the position found there is mapped back to the caller's index: the result is
// still the nearest entry. An ascending code is used as it is, so its results stay those of the
// midpoint rule bit for bit.
struct SortedCode {
  static constexpr int kSize = 256;
  float value[kSize];    // the code's entries in ascending order (order of sorts_before)
  uint8_t index[kSize];  // index[k]: the caller's index of value[k]; filled only for a code out of order
};

// Whether the code is ascending as CodeSearch needs it (equal neighbours allowed; a NaN breaks the order).
BNB_HD bool in_ascending_order(float a, float b) { return a <= b; }

// The order of an out-of-order code: a total order on (value, index), identical on host and device, so
// that every backend picks the same entry among equal values. Values compare by their bits mapped to
// unsigned integers (negative patterns reversed), which orders -NaN < -inf < ... < -0 < +0 < ... < +inf
// < +NaN; ties go to the lower index.
BNB_HD uint32_t total_order_key(float x) {
  const uint32_t bits = float_bits(x);
  return (bits >> 31) ? ~bits : (bits | 0x80000000u);
}
BNB_HD bool sorts_before(float a, int i, float b, int j) {
  const uint32_t ka = total_order_key(a), kb = total_order_key(b);
  return ka < kb || (ka == kb && i < j);
}

// Position of entry i in the ascending copy of the 256-entry code: the number of entries sorting before it.
BNB_HD int sorted_position(const float* code, int i) {
  int position = 0;
  for (int j = 0; j < SortedCode::kSize; ++j) position += sorts_before(code[j], j, code[i], i) ? 1 : 0;
  return position;
}

// Fills sorted.value with the code in ascending order; returns true when the code already was ascending
// (then value is a plain copy and index is left unset: positions are the caller's indices).
bool sort_code(const float* code, SortedCode& sorted);

// Number of entries of the ascending array `sorted` strictly below v (binary search).
BNB_HD int count_below(const float* sorted, int count, float v) {
  int lo = 0, hi = count;  // first index with sorted[i] >= v
  while (lo < hi) {
    const int m = (lo + hi) / 2;
    if (sorted[m] < v) lo = m + 1;
    else hi = m;
  }
  return lo;
}

// Signed states keep their sign through re-quantization: a momentum whose sign flipped through
// rounding would push the parameter the wrong way, so such an index is nudged one code towards the
// value's side. `idx` is the nearest-code index of `value` in the 256-entry code book `qmap`.
BNB_HD uint8_t keep_sign(const float* qmap, int idx, float value) {
  if (sign_bit(qmap[idx]) != sign_bit(value)) idx += value > 0.0f ? 1 : -1;
  idx = idx < 0 ? 0 : (idx > 255 ? 255 : idx);
  return static_cast<uint8_t>(idx);
}

}  // namespace bnb

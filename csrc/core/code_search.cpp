#include "core/code_search.h"

#include <cmath>
#include <limits>

namespace bnb {

int count_below(const float* sorted, int count, float v) {
  int lo = 0, hi = count;  // first index with sorted[i] >= v
  while (lo < hi) {
    const int m = (lo + hi) / 2;
    if (sorted[m] < v) lo = m + 1;
    else hi = m;
  }
  return lo;
}

namespace {
// Smallest |v| (as bits) of magnitude bucket mb, and largest |v| bits of it.
uint32_t magnitude_lower_bits(int mb) {
  constexpr int first = CodeSearch::kTopExponent - CodeSearch::kOctaves;
  if (mb == 0) return 0u;
  if (mb == CodeSearch::kBucketsPerSign - 1) return static_cast<uint32_t>(CodeSearch::kTopExponent) << 23;
  const int k = mb - 1;
  const uint32_t exponent = static_cast<uint32_t>(first + (k >> CodeSearch::kMantissaBits));
  const uint32_t slice = static_cast<uint32_t>(k & ((1 << CodeSearch::kMantissaBits) - 1));
  return (exponent << 23) | (slice << (23 - CodeSearch::kMantissaBits));
}

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}
}  // namespace

float CodeSearch::bucket_min(int b) {
  if (b >= kBucketsPerSign) return from_bits(magnitude_lower_bits(b - kBucketsPerSign));
  // Negative side: bucket b holds magnitudes of bucket mb = kBucketsPerSign - 1 - b; its smallest
  // value is minus the largest magnitude in it, i.e. just below the next magnitude bucket's lower bound.
  const int mb = kBucketsPerSign - 1 - b;
  if (mb == kBucketsPerSign - 1) return -std::numeric_limits<float>::infinity();
  const uint32_t next_lower = magnitude_lower_bits(mb + 1);
  return -from_bits(next_lower - 1u);
}

void CodeSearch::build(const float* code) {
  for (int i = 0; i < kMidpoints; ++i) mid[i] = (code[i] + code[i + 1]) * 0.5f;
  for (int b = 0; b < kBuckets; ++b) {
    const float v = bucket_min(b);
    int below = count_below(mid, kMidpoints, v);  // midpoints strictly below v
    lo[b] = static_cast<uint8_t>(below > kMidpoints ? kMidpoints : below);
  }
}

}  // namespace bnb

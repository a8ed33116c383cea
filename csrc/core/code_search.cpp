#include "core/code_search.h"

namespace bnb {

void CodeSearch::build(const float* code) {
  for (int i = 0; i < kMidpoints; ++i) mid[i] = (code[i] + code[i + 1]) * 0.5f;
  mid[kMidpoints] = kSentinel;
  for (int b = 0; b < kBuckets; ++b) {
    const int below = count_below(mid, kMidpoints, bucket_min(b));  // midpoints strictly below
    lo[b] = static_cast<uint8_t>(below > kMidpoints ? kMidpoints : below);
  }
}

}  // namespace bnb

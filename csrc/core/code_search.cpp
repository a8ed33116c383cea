#include "core/code_search.h"

#include <algorithm>
#include <numeric>

namespace bnb {

void CodeSearch::build(const float* code) {
  for (int i = 0; i < kMidpoints; ++i) mid[i] = (code[i] + code[i + 1]) * 0.5f;
  mid[kMidpoints] = kSentinel;
  // lo[b] = count_below(mid, kMidpoints, bucket_min(b)), as the CUDA kernels compute it per bucket. When
  // the midpoints ascend (those of any ascending code without NaN do) that is one merge of two ascending
  // sequences rather than a binary search per bucket: this table is most of a small call's time.
  bool midpoints_ascend = true;
  for (int i = 0; i + 1 < kMidpoints; ++i) midpoints_ascend = midpoints_ascend && mid[i] <= mid[i + 1];
  int below = 0;  // midpoints strictly below bucket_min(b)
  for (int b = 0; b < kBuckets; ++b) {
    const float v = bucket_min(b);
    if (midpoints_ascend) {
      while (below < kMidpoints && mid[below] < v) ++below;
    } else {
      below = count_below(mid, kMidpoints, v);
    }
    lo[b] = static_cast<uint8_t>(below);
  }
}

bool sort_code(const float* code, SortedCode& sorted) {
  std::copy(code, code + SortedCode::kSize, sorted.value);
  bool ascending = true;
  for (int i = 0; i + 1 < SortedCode::kSize; ++i) ascending = ascending && in_ascending_order(code[i], code[i + 1]);
  if (ascending) return true;
  // sorts_before is a strict total order, so the sorted permutation is unique: the same one the CUDA
  // kernels get from sorted_position.
  int order[SortedCode::kSize];
  std::iota(order, order + SortedCode::kSize, 0);
  std::sort(order, order + SortedCode::kSize, [&](int i, int j) { return sorts_before(code[i], i, code[j], j); });
  for (int k = 0; k < SortedCode::kSize; ++k) {
    sorted.value[k] = code[order[k]];
    sorted.index[k] = static_cast<uint8_t>(order[k]);
  }
  return false;
}

}  // namespace bnb

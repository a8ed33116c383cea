// CPU product of activations with a 4-bit weight: each thread decodes rows of W into a float
// buffer once and takes the dot products of every activation row with it, so the weight is read
// as 4-bit codes (a quarter of its 16-bit size) and never materialised whole.
#include <algorithm>
#include <vector>

#include "core/backend.h"
#include "core/dispatch.h"
#include "core/formats.h"
#include "cpu/threading.h"
#include "cpu/types.h"

namespace bnb::backend {
namespace {

constexpr int64_t kWorkPerTask = 1 << 16;  // weight elements a thread task should at least decode
constexpr int kLanes = 8;                  // independent partial sums: lets the compiler vectorise the dot

float dot(const float* a, const float* w, int64_t k) {
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
void decode_row(const Gemm4bitParams& p, const float* table, int64_t n, float* w) {
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

template <typename T>
void gemm_4bit_t(const Gemm4bitParams& p) {
  const T* A = static_cast<const T*>(p.A);
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  const float* table = p.qtype == QuantType::NF4 ? kNF4Values : kFP4Values;
  std::vector<float> a(static_cast<size_t>(p.M * p.K));
  for (int64_t i = 0; i < p.M * p.K; ++i) a[i] = cpu::to_float(A[i]);
  const int64_t grain = std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(p.K, 1));
  cpu::parallel_for(p.N, grain, [&](int64_t n0, int64_t n1) {
    std::vector<float> w(static_cast<size_t>(p.K));
    for (int64_t n = n0; n < n1; ++n) {
      decode_row(p, table, n, w.data());
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

// Shared helpers for the C++ tests: deterministic data, dtype plumbing and the kernel tables to check.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bnb/bnb.h"
#include "cpu/kernels.h"
#include "cpu/types.h"

namespace bnb::test {

inline size_t dtype_size(bnb_dtype_t d) { return d == BNB_DTYPE_FLOAT32 ? 4 : 2; }

inline const char* dtype_label(bnb_dtype_t d) {
  switch (d) {
    case BNB_DTYPE_FLOAT32: return "fp32";
    case BNB_DTYPE_FLOAT16: return "fp16";
    case BNB_DTYPE_BFLOAT16: return "bf16";
    default: return "?";
  }
}

constexpr bnb_dtype_t kFloatDtypes[] = {BNB_DTYPE_FLOAT32, BNB_DTYPE_FLOAT16, BNB_DTYPE_BFLOAT16};

// Floats stored as `dtype` (rounded by the reference conversions), as raw bytes.
inline std::vector<uint8_t> to_dtype(const std::vector<float>& v, bnb_dtype_t d) {
  std::vector<uint8_t> out(v.size() * dtype_size(d));
  for (size_t i = 0; i < v.size(); ++i) {
    if (d == BNB_DTYPE_FLOAT32) {
      std::memcpy(&out[4 * i], &v[i], 4);
    } else {
      const uint16_t bits = d == BNB_DTYPE_FLOAT16 ? cpu::to_half(v[i]).bits : cpu::to_bfloat16(v[i]).bits;
      std::memcpy(&out[2 * i], &bits, 2);
    }
  }
  return out;
}

inline std::vector<float> normal(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// The SIMD tables this machine can run (possibly none).
inline std::vector<const cpu::KernelTable*> simd_tables() {
  std::vector<const cpu::KernelTable*> t;
  if (const auto* k = cpu::avx2_kernels()) t.push_back(k);
  if (const auto* k = cpu::avx512_kernels()) t.push_back(k);
  return t;
}

// Index of the first differing byte, or -1.
inline int64_t first_diff(const void* a, const void* b, size_t bytes) {
  const auto* x = static_cast<const uint8_t*>(a);
  const auto* y = static_cast<const uint8_t*>(b);
  for (size_t i = 0; i < bytes; ++i)
    if (x[i] != y[i]) return static_cast<int64_t>(i);
  return -1;
}

// The signed dynamic map, built from its definition (compat.md §1.3).
inline std::vector<float> dynamic_map() {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int items = (1 << i) + 1;
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    for (int j = 0; j + 1 < items; ++j) {
      const float a = 0.1f + 0.9f * static_cast<float>(j) / static_cast<float>(items - 1);
      const float b = 0.1f + 0.9f * static_cast<float>(j + 1) / static_cast<float>(items - 1);
      const float mean = (a + b) / 2.0f;
      data.push_back(scale * mean);
      data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  while (data.size() < 256) data.push_back(0.0f);
  std::sort(data.begin(), data.end());
  return data;
}

inline std::vector<float> random_sorted_code(uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> c(256);
  for (auto& x : c) x = u(rng);
  std::sort(c.begin(), c.end());
  return c;
}

// 200 codes packed into [0.5, 0.52]: one bucket holds many midpoints, so the search scans far.
inline std::vector<float> clustered_code() {
  std::vector<float> c;
  for (int i = 0; i < 28; ++i) c.push_back(-1.0f + i / 28.0f);
  for (int i = 0; i < 200; ++i) c.push_back(0.5f + 0.02f * i / 200.0f);
  for (int i = 0; i < 28; ++i) c.push_back(0.6f + 0.4f * i / 27.0f);
  std::sort(c.begin(), c.end());
  return c;
}

inline std::vector<float> midpoints(const std::vector<float>& code) {
  std::vector<float> m(255);
  for (int i = 0; i < 255; ++i) m[i] = (code[i] + code[i + 1]) / 2.0f;
  return m;
}

inline uint32_t f32_bits(float f) { return cpu::f32_bits(f); }
inline float bits_f32(uint32_t u) { return cpu::bits_f32(u); }

}  // namespace bnb::test

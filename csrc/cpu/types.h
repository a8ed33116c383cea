// CPU storage types for the 16-bit floats and their exact conversions to/from float32.
#pragma once

#include <cstdint>
#include <cstring>

#include "bnb/bnb.h"

namespace bnb::cpu {

struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 -> binary32, exact (subnormals, inf and NaN included).
inline float to_float(half_t h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    // Subnormal: normalise.
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    mant &= 0x3ffu;
    return bits_f32(sign | ((112u - e) << 23) | (mant << 13));
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline float to_float(bfloat16_t b) { return bits_f32(static_cast<uint32_t>(b.bits) << 16); }
inline float to_float(float f) { return f; }

// binary32 -> binary16 with round-to-nearest-even (matches torch's .half()).
inline half_t to_half(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u))};
  if (ax >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {                                                 // result is subnormal or zero
    if (ax < 0x33000000u) return {static_cast<uint16_t>(sign)};           // < 2^-25: rounds to 0
    const uint32_t shift = 126u - (ax >> 23);                            // 14..24
    const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    // value = mant * 2^(e - 150) and the half subnormal unit is 2^-24, so q = mant >> (126 - e).
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return {static_cast<uint16_t>(sign | h)};
  }
  uint32_t h = ((ax - 0x38000000u) >> 13);  // rebias exponent 127 -> 15
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return {static_cast<uint16_t>(sign | h)};
}

// binary32 -> bfloat16 with round-to-nearest-even; NaN stays NaN.
inline bfloat16_t to_bfloat16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((x >> 16) | 0x40u)};
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return {static_cast<uint16_t>((x + rounding) >> 16)};
}

template <typename T>
inline T from_float(float f);
template <>
inline float from_float<float>(float f) { return f; }
template <>
inline half_t from_float<half_t>(float f) { return to_half(f); }
template <>
inline bfloat16_t from_float<bfloat16_t>(float f) { return to_bfloat16(f); }

template <bnb_dtype_t D>
struct CpuType;
template <>
struct CpuType<BNB_DTYPE_FLOAT32> {
  using type = float;
};
template <>
struct CpuType<BNB_DTYPE_FLOAT16> {
  using type = half_t;
};
template <>
struct CpuType<BNB_DTYPE_BFLOAT16> {
  using type = bfloat16_t;
};

}  // namespace bnb::cpu

// Lets the format and math helpers be shared verbatim by the C++ and CUDA backends.
#pragma once

#if defined(__CUDACC__)
#define BNB_HD __host__ __device__ __forceinline__
#else
#define BNB_HD inline
#endif

// Constant tables read by kernels (the 4-bit code books and decision thresholds): __constant__
// memory in CUDA translation units, ordinary constexpr arrays everywhere else. Functions that index
// them are device-only under nvcc (host code of a .cu file cannot read __constant__ memory) and plain
// inline functions in C++ translation units.
#if defined(__CUDACC__)
#define BNB_TABLE __constant__
#define BNB_TABLE_FN __device__ __forceinline__
#else
#define BNB_TABLE
#define BNB_TABLE_FN inline
#endif

#include <cstdint>
#include <cstring>

namespace bnb {

// Bit-level float classification usable on host and device alike (no <cmath> overload questions).
BNB_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}
BNB_HD float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}
BNB_HD bool is_finite(float x) { return (float_bits(x) & 0x7f800000u) != 0x7f800000u; }
BNB_HD bool sign_bit(float x) { return (float_bits(x) >> 31) != 0; }
// Bit pattern of |x|. Patterns of non-negative floats order like their values, and every NaN pattern
// lies above +inf's, so an integer maximum over them is max |x| that keeps NaN (std::max and fmaxf drop it).
BNB_HD uint32_t magnitude_bits(float x) { return float_bits(x) & 0x7fffffffu; }

}  // namespace bnb

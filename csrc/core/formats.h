// The numerical formats, defined once. The CPU backend, the CUDA backend and the
// Python package (through bnb_code_table_4bit) all read them from here.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace bnb {

enum class QuantType : int32_t { FP4 = 1, NF4 = 2 };

// ---- 4-bit code tables ---------------------------------------------------------------------------
// NF4: quantiles of N(0, 1) normalised to [-1, 1], index order = code order (sorted).
BNB_TABLE constexpr float kNF4Values[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// FP4 (sign = bit 3, 2 exponent bits, 1 mantissa bit, bias 2), values / 12, in bit-pattern
// order: the table is NOT sorted. Index 8 is negative zero.
BNB_TABLE constexpr float kFP4Values[16] = {
    0.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 1.0f, 4.0f / 12.0f, 6.0f / 12.0f, 2.0f / 12.0f, 3.0f / 12.0f,
    -0.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -1.0f, -4.0f / 12.0f, -6.0f / 12.0f, -2.0f / 12.0f, -3.0f / 12.0f};

// NF4 decision thresholds: code k+1 is chosen when x > kNF4Thresholds[k] (strict, so a value
// exactly on a threshold goes to the lower code). These are the midpoints of kNF4Values as
// published with the format; they are data, not recomputed, so every backend agrees bit for bit.
BNB_TABLE constexpr float kNF4Thresholds[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};

// FP4 thresholds on |x|, ascending, and the 3-bit magnitude code chosen above each one.
// |x| <= kFP4Thresholds[0] gives 0b000.
BNB_TABLE constexpr float kFP4Thresholds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                     0.4166667f,  0.583333f,  0.8333333f};
BNB_TABLE constexpr uint8_t kFP4CodeAbove[7] = {0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};
constexpr uint8_t kFP4SignBit = 0b1000;

// ---- block layouts ---------------------------------------------------------------------------------
constexpr int kCodeSize8bit = 256;          // entries of an 8-bit code book
constexpr int kMinBlocksize4bit = 32;       // smallest 4-bit block the op registry accepts
constexpr int kMaxBlocksize = 4096;         // largest block of the fixed-size (pow2) tables
constexpr int kMinBlocksizeCuda8bit = 64;   // CUDA 8-bit blockwise: pow2 in [64, 4096]
constexpr float kInt8Scale = 127.0f;        // LLM.int8(): q = round(x * 127 / absmax)

static_assert(sizeof(kNF4Values) / sizeof(float) == 16, "NF4 has 16 codes");
static_assert(sizeof(kFP4Values) / sizeof(float) == 16, "FP4 has 16 codes");
static_assert(sizeof(kNF4Thresholds) / sizeof(float) == 15, "15 NF4 decision boundaries");

constexpr bool is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// 4-bit blocks: a power of two in [32, 4096] (even, so blocks never split a byte).
constexpr bool is_valid_blocksize_4bit(int64_t bs) {
  return is_pow2(bs) && bs >= kMinBlocksize4bit && bs <= kMaxBlocksize;
}

// ---- 4-bit scalar encoders (the reference; SIMD and CUDA paths must agree bit for bit) -------------
// `x` is already scaled to [-1, 1] by 1/absmax.
BNB_TABLE_FN uint8_t encode_nf4(float x) {
  uint8_t code = 0;
#pragma unroll
  for (int k = 0; k < 15; ++k) code += (x > kNF4Thresholds[k]) ? 1 : 0;
  return code;
}

BNB_TABLE_FN uint8_t encode_fp4(float x) {
  const uint8_t sign = (x < 0.0f) ? kFP4SignBit : 0;
  const float a = x < 0.0f ? -x : x;
  uint8_t mag = 0;
#pragma unroll
  for (int k = 0; k < 7; ++k) mag = (a > kFP4Thresholds[k]) ? kFP4CodeAbove[k] : mag;
  return static_cast<uint8_t>(sign | mag);
}

template <QuantType Q>
BNB_TABLE_FN uint8_t encode_4bit(float x) {
  if constexpr (Q == QuantType::NF4) return encode_nf4(x);
  else return encode_fp4(x);
}

// The scale applied before encoding. A block of zeros (absmax == 0) maps every element to 0
// instead of NaN, so its codes are the zero code and it dequantizes to exact zeros. So does a block whose
// absmax is below the smallest normal float: 1 / absmax would overflow to inf (from 2^-128 down) and make
// its values inf and NaN before the encoding; its values (all below 2^-126 in magnitude) come back as 0.
constexpr float kSmallestScaledAbsmax = 1.17549435e-38f;  // 2^-126, FLT_MIN
BNB_HD float inverse_absmax(float absmax) { return absmax >= kSmallestScaledAbsmax ? 1.0f / absmax : 0.0f; }

// ---- blocks holding inf or NaN (8-bit blockwise and 4-bit alike) ----------------------------------------
// A block's absmax keeps the block's non-finite values, so that dequantization (code[q] * absmax) never
// turns them into plausible finite numbers:
//   - any NaN in the block: absmax = NaN (stored as kAbsmaxNaNBits on every backend), and every element
//     of the block dequantizes to NaN;
//   - otherwise any +-inf: absmax = +inf; +inf gets the largest code and -inf the smallest, so each comes
//     back as an infinity of its own sign when the code has entries of both signs (as the dynamic, NF4 and
//     FP4 codes do), and every finite value of the block gets the code nearest 0: it comes back as
//     0 * inf = NaN (or as an infinity when the code has no zero).
// Blocks of finite values do not take this path: their results are those of the midpoint rule.

// max(acc, |x|) for a running block maximum acc >= 0 that keeps NaN (see magnitude_bits).
BNB_HD float absmax_keeping_nan(float acc, float x) {
  const uint32_t a = float_bits(acc), m = magnitude_bits(x);
  return float_from_bits(m > a ? m : a);
}

// One NaN pattern for the absmax of every NaN block (a maximum of NaN patterns is whichever NaN had the
// largest payload), so that all backends store the same bytes.
constexpr uint32_t kAbsmaxNaNBits = 0x7fc00000u;
BNB_HD float stored_absmax(float absmax) { return absmax != absmax ? float_from_bits(kAbsmaxNaNBits) : absmax; }

constexpr uint32_t kInfinityBits = 0x7f800000u;  // +inf's bits, the magnitude bits of either infinity

// The value quantized in place of x in a block whose absmax is not finite: +-inf themselves (they find
// the largest / smallest code), 0 for everything else (finite values and NaN, which the NaN absmax covers).
BNB_HD float value_in_non_finite_block(float x) { return magnitude_bits(x) == kInfinityBits ? x : 0.0f; }

// LLM.int8() scale: 127 / absmax, 0 for an all-zero (or all-outlier) row, and for a row whose absmax is so
// small that 127 / absmax could overflow to inf (it does a little below 2^-121, where 127 * 2^121 is still
// finite); such a row's values (all below 2^-121 in magnitude) quantize to 0.
constexpr float kSmallestInt8Absmax = 3.76158192e-37f;  // 2^-121
BNB_HD float int8_scale(float absmax) { return absmax >= kSmallestInt8Absmax ? kInt8Scale / absmax : 0.0f; }

}  // namespace bnb

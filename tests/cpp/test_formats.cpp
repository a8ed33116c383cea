// The formats against their definitions: CodeSearch against a plain bucketize over the midpoints,
// the 4-bit tables and encoders against the spec (compat.md §1.4.1-1.4.2), and the fp16 / bf16
// conversions against exhaustive round trips and a double-precision nearest-value oracle.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "bnb/quant.h"
#include "core/code_search.h"
#include "core/formats.h"
#include "test_util.h"

namespace bnb::test {
namespace {

// ---- CodeSearch ----------------------------------------------------------------------------------------

// torch.bucketize(v, midpoints, right=False): the number of midpoints strictly below v.
int bucketize(const std::vector<float>& mid, float v) {
  return static_cast<int>(std::lower_bound(mid.begin(), mid.end(), v) - mid.begin());
}

std::vector<float> linear_map() {
  std::vector<float> c(256);
  for (int i = 0; i < 256; ++i) c[i] = -1.0f + 2.0f * static_cast<float>(i) / 255.0f;
  return c;
}

// Probe values: every code and midpoint, their float neighbours, signed zeros and ones, the
// bucket boundaries of CodeSearch, tiny values and uniform random values in [-1, 1].
std::vector<float> probes(const std::vector<float>& code, uint32_t seed) {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 1e-30f, -1e-30f, 1e-8f, -1e-8f, 0.5f, -0.5f,
                          std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min()};
  auto add_with_neighbours = [&](float x) {
    v.push_back(x);
    v.push_back(std::nextafter(x, 2.0f));
    v.push_back(std::nextafter(x, -2.0f));
  };
  for (float c : code) add_with_neighbours(c);
  for (float m : midpoints(code)) add_with_neighbours(m);
  for (int b = 0; b < CodeSearch::kBuckets; ++b) {
    const float lo = CodeSearch::bucket_min(b);
    if (std::isfinite(lo)) add_with_neighbours(lo);
  }
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int i = 0; i < 20000; ++i) v.push_back(u(rng));
  for (int i = 0; i < 2000; ++i) v.push_back(u(rng) * 1e-4f);
  return v;
}

void check_code_search(const std::vector<float>& code, const char* name) {
  SCOPED_TRACE(name);
  ASSERT_TRUE(std::is_sorted(code.begin(), code.end()));
  CodeSearch cs;
  cs.build(code.data());
  const auto mid = midpoints(code);
  int failures = 0;
  for (float v : probes(code, 5)) {
    const int expected = bucketize(mid, v);
    const int got = cs.search(v);
    if (got != expected && ++failures <= 10) ADD_FAILURE() << "v=" << v << " expected " << expected << " got " << got;
  }
  EXPECT_EQ(failures, 0);
}

TEST(CodeSearch, DynamicMapMatchesItsDefinition) {
  const auto code = dynamic_map();
  ASSERT_EQ(code.size(), 256u);
  EXPECT_NEAR(code[0], -0.99296875f, 1e-7f);
  EXPECT_EQ(code[127], 0.0f);
  EXPECT_EQ(code[255], 1.0f);
  float smallest = 1.0f;
  for (float c : code)
    if (c != 0.0f) smallest = std::min(smallest, std::fabs(c));
  EXPECT_NEAR(smallest, 5.5e-7f, 1e-9f);
}

TEST(CodeSearch, MatchesBucketize) {
  check_code_search(dynamic_map(), "dynamic");
  check_code_search(linear_map(), "linear");
  check_code_search(clustered_code(), "clustered");
  for (uint32_t seed : {1u, 2u, 3u}) check_code_search(random_sorted_code(seed), "random");
}

TEST(CodeSearch, MidpointTiesGoToTheLowerCode) {
  const auto code = dynamic_map();
  CodeSearch cs;
  cs.build(code.data());
  const auto mid = midpoints(code);
  for (int i = 0; i < 255; ++i) {
    if (code[i] == code[i + 1]) continue;  // zero padding: equal neighbours share a midpoint
    EXPECT_EQ(cs.search(mid[i]), bucketize(mid, mid[i])) << "midpoint " << i;
    EXPECT_LE(code[cs.search(mid[i])], mid[i]) << "midpoint " << i;
  }
  EXPECT_EQ(cs.search(1.0f), 255);
  EXPECT_EQ(code[cs.search(0.0f)], 0.0f);
  EXPECT_EQ(code[cs.search(-0.0f)], 0.0f);
  EXPECT_EQ(cs.search(-1.0f), 0);
}

// A code out of order: sort_code gives the entries ascending with ties in index order, and the search
// over that copy, mapped back, lands on a nearest entry (a permuted dynamic map; a code of repeated values).
TEST(CodeSearch, AnyOrderThroughSortCode) {
  std::vector<float> permuted = dynamic_map();
  std::mt19937 rng(11);
  std::shuffle(permuted.begin(), permuted.end(), rng);
  std::vector<float> repeated(256);
  for (int i = 0; i < 256; ++i) repeated[i] = static_cast<float>((i * 37) % 9 - 4) / 4.0f;
  for (const auto& code : {permuted, repeated}) {
    SortedCode sorted;
    ASSERT_FALSE(sort_code(code.data(), sorted));
    for (int k = 0; k < 256; ++k) {
      EXPECT_EQ(sorted.value[k], code[sorted.index[k]]);
      if (k > 0) {
        EXPECT_LE(sorted.value[k - 1], sorted.value[k]);
        if (sorted.value[k - 1] == sorted.value[k]) EXPECT_LT(sorted.index[k - 1], sorted.index[k]);
      }
      EXPECT_EQ(sorted_position(code.data(), sorted.index[k]), k) << "the CUDA kernels' rank differs";
    }
    CodeSearch cs;
    cs.build(sorted.value);
    for (float v : probes(code, 9)) {
      const float chosen = code[sorted.index[cs.search(v)]];
      double best = 1e30;
      for (float c : code) best = std::min(best, std::fabs(static_cast<double>(v) - c));
      const double excess = std::fabs(static_cast<double>(v) - chosen) - best;
      // float32 midpoints may move the choice between two neighbours a and b by 2^-24 (|a| + |b|).
      ASSERT_LE(excess, 1e-7 * (std::fabs(chosen) + std::fabs(v) + best) + 1e-44) << "v=" << v << " chose " << chosen;
    }
  }
  // An ascending code is used as it is.
  SortedCode sorted;
  const auto code = dynamic_map();
  ASSERT_TRUE(sort_code(code.data(), sorted));
  EXPECT_TRUE(std::equal(code.begin(), code.end(), sorted.value));
}

// ---- 4-bit tables and encoders ------------------------------------------------------------------------

// Literal values from compat.md §1.4.1.
constexpr double kSpecNF4[16] = {-1.0,
                                 -0.6961928009986877,
                                 -0.5250730514526367,
                                 -0.39491748809814453,
                                 -0.28444138169288635,
                                 -0.18477343022823334,
                                 -0.09105003625154495,
                                 0.0,
                                 0.07958029955625534,
                                 0.16093020141124725,
                                 0.24611230194568634,
                                 0.33791524171829224,
                                 0.44070982933044434,
                                 0.5626170039176941,
                                 0.7229568362236023,
                                 1.0};
// FP4 low 3 bits 000..111 (values / 12); bit 3 is the sign.
constexpr double kSpecFP4Magnitude[8] = {0.0, 0.0625 / 12, 8.0 / 12, 1.0, 4.0 / 12, 6.0 / 12, 2.0 / 12, 3.0 / 12};

TEST(FourBit, TablesMatchSpec) {
  for (int i = 0; i < 16; ++i) EXPECT_EQ(kNF4Values[i], static_cast<float>(kSpecNF4[i])) << "nf4 " << i;
  for (int i = 0; i < 16; ++i) {
    const double expected = (i & 8 ? -1.0 : 1.0) * kSpecFP4Magnitude[i & 7];
    EXPECT_EQ(kFP4Values[i], static_cast<float>(expected)) << "fp4 " << i;
    EXPECT_EQ(std::signbit(kFP4Values[i]), (i & 8) != 0) << "fp4 sign " << i;
  }
  float out[16];
  ASSERT_EQ(bnb_code_table_4bit(BNB_QUANT_NF4, out), BNB_STATUS_OK);
  EXPECT_EQ(std::memcmp(out, kNF4Values, sizeof(out)), 0);
  ASSERT_EQ(bnb_code_table_4bit(BNB_QUANT_FP4, out), BNB_STATUS_OK);
  EXPECT_EQ(std::memcmp(out, kFP4Values, sizeof(out)), 0);
}

TEST(FourBit, EachCodeEncodesToItself) {
  for (int i = 0; i < 16; ++i) EXPECT_EQ(encode_nf4(kNF4Values[i]), i) << "nf4 " << i;
  for (int i = 0; i < 16; ++i) {
    // -0.0 is not < 0, so it takes the positive zero code.
    const int expected = i == 8 ? 0 : i;
    EXPECT_EQ(encode_fp4(kFP4Values[i]), expected) << "fp4 " << i;
  }
}

TEST(FourBit, Nf4ThresholdsFromSpec) {
  // compat.md §1.4.2: code k+1 strictly above the k-th threshold (ascending), ties go down.
  // Float literals, as the kernels compare in float: going through double first would round twice
  // and move some of these midpoints by one ulp.
  const float spec[15] = {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
                          -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
                          0.1202552504837513f,  0.2035212516784668f,  0.2920137718319893f,  0.3893125355243683f,
                          0.5016634166240692f,  0.6427869200706482f,  0.8614784181118011f};
  for (int k = 0; k < 15; ++k) {
    const float t = spec[k];
    EXPECT_EQ(kNF4Thresholds[k], t);
    EXPECT_EQ(encode_nf4(t), k) << "on threshold " << k;
    EXPECT_EQ(encode_nf4(std::nextafter(t, 2.0f)), k + 1) << "above threshold " << k;
  }
  EXPECT_EQ(encode_nf4(-1.0f), 0);
  EXPECT_EQ(encode_nf4(1.0f), 15);
  EXPECT_EQ(encode_nf4(0.0f), 7);
  EXPECT_EQ(encode_nf4(-0.0f), 7);
}

TEST(FourBit, Fp4ThresholdsFromSpec) {
  // compat.md §1.4.2, on |x|: >0.8333333 -> 011, >0.583333 -> 010, >0.4166667 -> 101, >0.29166667 -> 100,
  // >0.20833333 -> 111, >0.0859375 -> 110, >0.00260417 -> 001, else 000; sign bit 0b1000 if x < 0.
  const struct {
    float t;
    int code_above, code_at;
  } spec[7] = {{0.00260417f, 0b001, 0b000}, {0.0859375f, 0b110, 0b001}, {0.20833333f, 0b111, 0b110},
               {0.29166667f, 0b100, 0b111}, {0.4166667f, 0b101, 0b100},  {0.583333f, 0b010, 0b101},
               {0.8333333f, 0b011, 0b010}};
  for (const auto& s : spec) {
    EXPECT_EQ(encode_fp4(s.t), s.code_at) << s.t;
    EXPECT_EQ(encode_fp4(std::nextafter(s.t, 2.0f)), s.code_above) << s.t;
    EXPECT_EQ(encode_fp4(-s.t), s.code_at | 0b1000) << -s.t;
    EXPECT_EQ(encode_fp4(-std::nextafter(s.t, 2.0f)), s.code_above | 0b1000) << -s.t;
  }
  EXPECT_EQ(encode_fp4(0.0f), 0);
  EXPECT_EQ(encode_fp4(-0.0f), 0);
  EXPECT_EQ(encode_fp4(1.0f), 0b011);
  EXPECT_EQ(encode_fp4(-1.0f), 0b1011);
}

// Every encoder result is the nearest table value (up to the published thresholds' rounding).
TEST(FourBit, EncodersPickANearestValue) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = u(rng);
    for (int nf = 0; nf < 2; ++nf) {
      const float* table = nf ? kNF4Values : kFP4Values;
      const int code = nf ? encode_nf4(x) : encode_fp4(x);
      const float err = std::fabs(table[code] - x);
      float best = 2.0f;
      for (int c = 0; c < 16; ++c) best = std::min(best, std::fabs(table[c] - x));
      ASSERT_LE(err, best + 1e-6f) << (nf ? "nf4 " : "fp4 ") << x;
    }
  }
}

// ---- fp16 / bf16 conversions ---------------------------------------------------------------------------

// Exact value of a half bit pattern, in double.
double half_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double v;
  if (exp == 0x1f) v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (exp == 0) v = std::ldexp(static_cast<double>(mant), -24);
  else v = std::ldexp(static_cast<double>(mant | 0x400), exp - 25);
  return sign ? -v : v;
}

TEST(Conversions, HalfToFloatIsExactAndRoundTrips) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const cpu::half_t h{static_cast<uint16_t>(b)};
    const float f = cpu::to_float(h);
    const double v = half_value(h.bits);
    if (std::isnan(v)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << b;
      ASSERT_TRUE(std::isnan(cpu::to_float(cpu::to_half(f)))) << std::hex << b;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), v) << std::hex << b;
    ASSERT_EQ(std::signbit(f), (b & 0x8000) != 0) << std::hex << b;
    ASSERT_EQ(cpu::to_half(f).bits, b) << std::hex << b;
  }
}

TEST(Conversions, BFloat16RoundTrips) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = cpu::to_float(cpu::bfloat16_t{static_cast<uint16_t>(b)});
    ASSERT_EQ(f32_bits(f), b << 16);
    if (std::isnan(f)) ASSERT_TRUE(std::isnan(cpu::to_float(cpu::to_bfloat16(f))));
    else ASSERT_EQ(cpu::to_bfloat16(f).bits, b) << std::hex << b;
  }
}

// Nearest finite half to x by exhaustive search over the sorted magnitudes, ties to the even pattern;
// beyond the largest half by half an ulp or more: infinity.
uint16_t nearest_half(float f, const std::vector<double>& magnitudes) {
  const double x = f;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(x);
  if (a >= 65520.0) return sign | 0x7c00;
  const auto it = std::lower_bound(magnitudes.begin(), magnitudes.end(), a);
  const size_t hi = static_cast<size_t>(it - magnitudes.begin());
  if (hi == magnitudes.size()) return sign | static_cast<uint16_t>(hi - 1);  // in (65504, 65520)
  if (magnitudes[hi] == a) return sign | static_cast<uint16_t>(hi);
  const size_t lo = hi - 1;
  const double dlo = a - magnitudes[lo], dhi = magnitudes[hi] - a;
  const size_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return sign | static_cast<uint16_t>(pick);
}

std::vector<float> conversion_probes() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e-8f, 2.9802322e-8f,
                          5.9604645e-8f, 8.940697e-8f, 6.1035156e-5f, 6.1035153e-5f, 3.4028235e38f, 1e-45f};
  std::mt19937 rng(9);
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = rng();
    switch (i % 4) {
      case 0: break;
      case 1: bits = (bits & 0x807fffffu) | ((100u + rng() % 45u) << 23); break;  // fp16's range and just around it
      case 2: bits = (bits & 0xffffe000u) | 0x1000u; break;                       // exact fp16 ties (normal range)
      case 3: bits = (bits & 0xffff0000u) | 0x8000u; break;                       // exact bf16 ties
    }
    const float f = bits_f32(bits);
    if (!std::isnan(f)) v.push_back(f);
  }
  return v;
}

TEST(Conversions, FloatToHalfRoundsToNearestEven) {
  std::vector<double> magnitudes;  // all finite non-negative halves, index = bit pattern
  for (uint32_t b = 0; b < 0x7c00; ++b) magnitudes.push_back(half_value(static_cast<uint16_t>(b)));
  int failures = 0;
  for (float f : conversion_probes()) {
    if (std::isinf(f)) continue;
    const uint16_t expected = nearest_half(f, magnitudes);
    const uint16_t got = cpu::to_half(f).bits;
    if (got != expected && ++failures <= 10) ADD_FAILURE() << f << ": expected " << std::hex << expected << " got " << got;
  }
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(cpu::to_half(std::numeric_limits<float>::infinity()).bits, 0x7c00);
  EXPECT_EQ(cpu::to_half(-std::numeric_limits<float>::infinity()).bits, 0xfc00);
  EXPECT_EQ(cpu::to_half(std::numeric_limits<float>::quiet_NaN()).bits & 0x7e00, 0x7e00);
  EXPECT_EQ(cpu::to_half(2.9802322e-8f).bits, 0x0000);   // 2^-25: tie between 0 and the smallest subnormal
  EXPECT_EQ(cpu::to_half(8.940697e-8f).bits, 0x0002);    // 1.5 * 2^-24: tie, rounds to even (2)
  EXPECT_EQ(cpu::to_half(65504.0f).bits, 0x7bff);
}

TEST(Conversions, FloatToBFloat16RoundsToNearestEven) {
  int failures = 0;
  for (float f : conversion_probes()) {
    const uint32_t bits = f32_bits(f);
    const uint32_t down = bits & 0xffff0000u;
    uint16_t expected;
    if (std::isinf(f)) {
      expected = static_cast<uint16_t>(bits >> 16);
    } else {
      // Distances in double to the two candidates (toward zero and away from zero).
      const double x = std::fabs(static_cast<double>(f));
      const double lo = std::fabs(static_cast<double>(bits_f32(down)));
      const uint32_t up_bits = down + 0x10000u;
      const double hi = (up_bits & 0x7fffffffu) >= 0x7f800000u ? std::ldexp(1.0, 128)
                                                               : std::fabs(static_cast<double>(bits_f32(up_bits)));
      const double dlo = x - lo, dhi = hi - x;
      const bool take_up = dhi < dlo || (dhi == dlo && ((down >> 16) & 1u));
      expected = static_cast<uint16_t>((take_up ? up_bits : down) >> 16);
    }
    const uint16_t got = cpu::to_bfloat16(f).bits;
    if (got != expected && ++failures <= 10) ADD_FAILURE() << f << ": expected " << std::hex << expected << " got " << got;
  }
  EXPECT_EQ(failures, 0);
  const uint16_t nan = cpu::to_bfloat16(bits_f32(0x7f800001u)).bits;  // NaN whose payload is all in the low half
  EXPECT_TRUE((nan & 0x7f80) == 0x7f80 && (nan & 0x7f) != 0) << std::hex << nan;
  EXPECT_EQ(cpu::to_bfloat16(bits_f32(0x7f7fffffu)).bits, 0x7f80);  // FLT_MAX rounds to inf
}

}  // namespace
}  // namespace bnb::test

// The unsigned dynamic map (optimizer second state): twice the fractions per decade, no negatives.
static std::vector<float> unsigned_dynamic_map() {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int items = (1 << (i + 1)) + 1;
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    for (int j = 0; j + 1 < items; ++j) {
      const float a = 0.1f + 0.9f * static_cast<float>(j) / static_cast<float>(items - 1);
      const float b = 0.1f + 0.9f * static_cast<float>(j + 1) / static_cast<float>(items - 1);
      data.push_back(scale * (a + b) / 2.0f);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

// The scan ends on the +inf sentinel, so a value above every midpoint gets the last code, and a
// value on a midpoint goes to the lower code, for both optimizer maps.
TEST(CodeSearch, SentinelEndsEveryScan) {
  const std::vector<std::vector<float>> codes = {bnb::test::dynamic_map(), unsigned_dynamic_map()};
  for (const auto& code : codes) {
    ASSERT_EQ(code.size(), 256u);
    bnb::CodeSearch cs;
    cs.build(code.data());
    EXPECT_TRUE(std::isinf(cs.mid[bnb::CodeSearch::kMidpoints]));
    EXPECT_EQ(cs.search(1.0f), 255);
    EXPECT_EQ(cs.search(3.0e38f), 255);
    for (int i = 0; i < bnb::CodeSearch::kMidpoints; ++i) ASSERT_EQ(cs.search(cs.mid[i]), i);
  }
}

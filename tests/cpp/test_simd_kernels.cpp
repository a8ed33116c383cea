// Every SIMD kernel table against the scalar reference (the oracle): bit-identical outputs for every
// entry, dtype, size and blocksize, with ties on thresholds and midpoints, zero blocks and ranges that
// start and end inside blocks. Inputs end right before an unreadable page and outputs carry guard
// bytes, so reads or writes past the caller's range fail too.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/code_search.h"
#include "core/formats.h"
#include "test_util.h"

namespace bnb::test {
namespace {

using cpu::KernelTable;

constexpr uint8_t kSentinel = 0xab;
constexpr size_t kGuardBytes = 64;

// `bytes` of data whose last byte sits just before a PROT_NONE page.
class GuardedInput {
 public:
  explicit GuardedInput(const std::vector<uint8_t>& data) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t pages = (data.size() + page - 1) / page + 1;
    size_ = pages * page;
    base_ = static_cast<uint8_t*>(mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base_ == MAP_FAILED) std::abort();
    uint8_t* guard = base_ + (pages - 1) * page;
    data_ = guard - data.size();
    if (!data.empty()) std::memcpy(data_, data.data(), data.size());
    mprotect(guard, page, PROT_NONE);
  }
  ~GuardedInput() { munmap(base_, size_); }
  GuardedInput(const GuardedInput&) = delete;
  GuardedInput& operator=(const GuardedInput&) = delete;
  const void* data() const { return data_; }

 private:
  uint8_t* base_;
  uint8_t* data_;
  size_t size_;
};

// Output buffer of `bytes` plus sentinel-filled guard bytes.
std::vector<uint8_t> out_buffer(size_t bytes) { return std::vector<uint8_t>(bytes + kGuardBytes, kSentinel); }

// Normal data with special blocks: block 0 all zeros (when there are several blocks), block 1 with
// absmax exactly 1 (scale 1) holding the `ties` values and their negatives, block 2 with absmax 2
// (scale 0.5, exact) holding twice the ties, a block with one large value (everything else lands in
// the tiny buckets), some signed zeros, and blocks holding a NaN, +-inf or both (the rule of formats.h).
std::vector<float> quant_input(int64_t n, int64_t blocksize, uint32_t seed, const std::vector<float>& ties) {
  std::vector<float> v = normal(static_cast<size_t>(n), seed);
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  auto fill_block = [&](int64_t b, float scale) {
    const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    for (int64_t i = begin; i < end; ++i) v[i] = std::max(-0.99f, std::min(0.99f, v[i] * 0.3f)) * scale;
    int64_t i = begin;
    if (i < end) v[i++] = scale;  // the block's absmax
    for (size_t t = 0; t < ties.size() && i < end; ++t) {
      v[i++] = ties[t] * scale;
      if (i < end) v[i++] = -ties[t] * scale;
    }
  };
  if (blocks > 1) {
    for (int64_t i = 0; i < std::min(n, blocksize); ++i) v[i] = (i % 3 == 0) ? -0.0f : 0.0f;
  }
  if (blocks > 2) fill_block(1, 1.0f);
  if (blocks > 3) fill_block(2, 2.0f);
  if (blocks > 4) {
    const int64_t begin = 3 * blocksize, end = std::min(n, begin + blocksize);
    for (int64_t i = begin; i < end; ++i) v[i] *= 1e-9f;
    v[begin] = 1e4f;
  }
  if (blocks == 1 && !ties.empty()) fill_block(0, 1.0f);
  if (n > 5) v[n - 2] = -0.0f;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  auto put = [&](int64_t b, int64_t offset, float x) {
    if (b < blocks && b * blocksize + offset < n) v[b * blocksize + offset] = x;
  };
  put(5, 1, std::numeric_limits<float>::quiet_NaN());
  put(6, 0, kInf);
  put(6, 2, -kInf);
  put(7, 1, -kInf);
  put(7, 3, -std::numeric_limits<float>::quiet_NaN());
  return v;
}

// Split points covering [0, count) in three uneven calls, to check ranges that start mid-way.
std::vector<int64_t> splits(int64_t count) {
  std::vector<int64_t> s = {0, count / 3, (2 * count) / 3 + 1, count};
  for (auto& x : s) x = std::min(x, count);
  return s;
}

const std::vector<int64_t> kSizes = {1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 100, 255, 257, 1000, 4095, 4097, 9999};

// ---- 8-bit blockwise -------------------------------------------------------------------------------

void check_quantize_blockwise(const KernelTable& simd, const std::vector<float>& code, int64_t n, int64_t bs,
                              bnb_dtype_t dtype, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << simd.isa << " n=" << n << " blocksize=" << bs << " " << dtype_label(dtype));
  CodeSearch cs;
  cs.build(code.data());
  const GuardedInput A(to_dtype(quant_input(n, bs, seed, midpoints(code)), dtype));
  const int64_t blocks = (n + bs - 1) / bs;
  auto run = [&](const KernelTable& k, std::vector<uint8_t>& out, std::vector<uint8_t>& absmax) {
    QuantizeBlockwiseParams p{A.data(), code.data(), out.data(), reinterpret_cast<float*>(absmax.data()), n, bs, dtype};
    const auto s = splits(blocks);
    for (size_t i = 0; i + 1 < s.size(); ++i)
      if (s[i] < s[i + 1]) k.quantize_blockwise(p, cs, s[i], s[i + 1]);
  };
  auto out_ref = out_buffer(n), out_simd = out_buffer(n);
  auto am_ref = out_buffer(4 * blocks), am_simd = out_buffer(4 * blocks);
  run(cpu::reference_kernels(), out_ref, am_ref);
  run(simd, out_simd, am_simd);
  EXPECT_EQ(first_diff(out_ref.data(), out_simd.data(), out_ref.size()), -1) << "codes differ";
  EXPECT_EQ(first_diff(am_ref.data(), am_simd.data(), am_ref.size()), -1) << "absmax differs";
}

TEST(SimdKernels, QuantizeBlockwise) {
  const auto tables = simd_tables();
  if (tables.empty()) GTEST_SKIP() << "no SIMD table on this machine";
  const std::vector<std::vector<float>> codes = {dynamic_map(), random_sorted_code(7), clustered_code()};
  for (const auto* k : tables)
    for (const auto& code : codes)
      for (int64_t bs : {1, 3, 32, 64, 100, 4096})
        for (int64_t n : kSizes)
          for (bnb_dtype_t d : kFloatDtypes) check_quantize_blockwise(*k, code, n, bs, d, static_cast<uint32_t>(n * 31 + bs));
}

// Codes chosen as arbitrary float bit patterns (with absmax 1 the output is the code itself): this
// drives the SIMD float -> fp16/bf16 stores through every rounding case, ties, overflow to inf,
// subnormals and NaNs.
std::vector<float> conversion_code(uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> c(256);
  for (size_t i = 0; i < c.size(); ++i) {
    uint32_t bits = rng();
    switch (i % 8) {
      case 0: bits = (bits & 0xffffe000u) | 0x1000u; break;  // fp16 tie
      case 1: bits = (bits & 0xffff0000u) | 0x8000u; break;  // bf16 tie
      case 2: bits = (bits & 0x807fffffu) | (static_cast<uint32_t>(100 + rng() % 20) << 23); break;  // fp16 subnormal range
      case 3: bits = (bits & 0x807fffffu) | (static_cast<uint32_t>(140 + rng() % 4) << 23); break;   // around fp16 max
      case 4: bits = (bits & 0x807fffffu) | (static_cast<uint32_t>(127 + rng() % 8) << 23); break;
      default: break;
    }
    c[i] = bits_f32(bits);
  }
  c[0] = std::numeric_limits<float>::quiet_NaN();
  c[1] = -std::numeric_limits<float>::infinity();
  c[2] = bits_f32(0x7f800001u);  // signalling NaN with payload
  c[3] = bits_f32(0xffc12345u);  // negative quiet NaN with payload
  c[4] = 65520.0f;               // rounds to inf in fp16
  c[5] = 65519.996f;             // rounds to 65504
  c[6] = bits_f32(0x7f7fffffu);  // rounds to inf in bf16
  c[7] = -0.0f;
  c[8] = bits_f32(0x7fffffffu);  // NaNs whose rounding increment would carry into the sign / wrap
  c[9] = bits_f32(0xffffffffu);
  c[10] = bits_f32(0x7fbfffffu);  // signalling NaN (quieted by the multiplication)
  return c;
}

void check_dequantize_blockwise(const KernelTable& simd, const std::vector<float>& code, int64_t n, int64_t bs,
                                bnb_dtype_t dtype, uint32_t seed, bool unit_absmax) {
  SCOPED_TRACE(testing::Message() << simd.isa << " n=" << n << " blocksize=" << bs << " " << dtype_label(dtype)
                                  << (unit_absmax ? " absmax=1" : ""));
  const int64_t blocks = (n + bs - 1) / bs;
  std::mt19937 rng(seed);
  std::vector<uint8_t> a(static_cast<size_t>(n));
  for (auto& x : a) x = static_cast<uint8_t>(rng());
  std::vector<float> absmax(static_cast<size_t>(blocks), 1.0f);
  if (!unit_absmax) {
    std::lognormal_distribution<float> ln(0.0f, 4.0f);
    for (auto& x : absmax) x = ln(rng);
    if (blocks > 1) absmax[0] = 0.0f;
    if (blocks > 2) absmax[1] = 1e5f;
    if (blocks > 3) absmax[2] = 3e-7f;
    if (blocks > 4) absmax[3] = std::numeric_limits<float>::quiet_NaN();
  }
  const GuardedInput A(a);
  auto run = [&](const KernelTable& k, std::vector<uint8_t>& out) {
    DequantizeBlockwiseParams p{static_cast<const uint8_t*>(A.data()), code.data(), absmax.data(), out.data(), n, bs,
                                dtype};
    const auto s = splits(n);
    for (size_t i = 0; i + 1 < s.size(); ++i)
      if (s[i] < s[i + 1]) k.dequantize_blockwise(p, s[i], s[i + 1]);
  };
  auto ref = out_buffer(n * dtype_size(dtype)), got = out_buffer(n * dtype_size(dtype));
  run(cpu::reference_kernels(), ref);
  run(simd, got);
  EXPECT_EQ(first_diff(ref.data(), got.data(), ref.size()), -1);
}

TEST(SimdKernels, DequantizeBlockwise) {
  const auto tables = simd_tables();
  if (tables.empty()) GTEST_SKIP() << "no SIMD table on this machine";
  const auto dyn = dynamic_map();
  const auto conv = conversion_code(11);
  for (const auto* k : tables)
    for (int64_t bs : {1, 3, 32, 64, 100, 4096})
      for (int64_t n : kSizes)
        for (bnb_dtype_t d : kFloatDtypes) {
          const auto seed = static_cast<uint32_t>(n * 7 + bs);
          check_dequantize_blockwise(*k, dyn, n, bs, d, seed, false);
          check_dequantize_blockwise(*k, conv, n, bs, d, seed, true);
        }
}

// ---- 4-bit -----------------------------------------------------------------------------------------

// NF4 thresholds and values, FP4 thresholds and values: exact ties once scaled by absmax 1 or 2.
std::vector<float> four_bit_ties() {
  std::vector<float> t(std::begin(kNF4Thresholds), std::end(kNF4Thresholds));
  t.insert(t.end(), std::begin(kNF4Values), std::end(kNF4Values));
  t.insert(t.end(), std::begin(kFP4Thresholds), std::end(kFP4Thresholds));
  t.insert(t.end(), std::begin(kFP4Values), std::end(kFP4Values));
  for (float x : kNF4Thresholds) t.push_back(std::nextafter(x, 2.0f));
  for (float x : kFP4Thresholds) t.push_back(std::nextafter(x, 2.0f));
  return t;
}

void check_quantize_4bit(const KernelTable& simd, QuantType q, int64_t n, int64_t bs, bnb_dtype_t dtype,
                         uint32_t seed) {
  SCOPED_TRACE(testing::Message() << simd.isa << (q == QuantType::NF4 ? " nf4" : " fp4") << " n=" << n
                                  << " blocksize=" << bs << " " << dtype_label(dtype));
  const GuardedInput A(to_dtype(quant_input(n, bs, seed, four_bit_ties()), dtype));
  const int64_t blocks = (n + bs - 1) / bs;
  const int64_t bytes = (n + 1) / 2;
  auto run = [&](const KernelTable& k, std::vector<uint8_t>& packed, std::vector<uint8_t>& absmax) {
    Quantize4bitParams p{A.data(), packed.data(), reinterpret_cast<float*>(absmax.data()), n, bs, dtype, q};
    const auto s = splits(blocks);
    for (size_t i = 0; i + 1 < s.size(); ++i)
      if (s[i] < s[i + 1]) k.quantize_4bit(p, s[i], s[i + 1]);
  };
  auto pk_ref = out_buffer(bytes), pk_simd = out_buffer(bytes);
  auto am_ref = out_buffer(4 * blocks), am_simd = out_buffer(4 * blocks);
  run(cpu::reference_kernels(), pk_ref, am_ref);
  run(simd, pk_simd, am_simd);
  EXPECT_EQ(first_diff(pk_ref.data(), pk_simd.data(), pk_ref.size()), -1) << "packed bytes differ";
  EXPECT_EQ(first_diff(am_ref.data(), am_simd.data(), am_ref.size()), -1) << "absmax differs";
}

TEST(SimdKernels, Quantize4bit) {
  const auto tables = simd_tables();
  if (tables.empty()) GTEST_SKIP() << "no SIMD table on this machine";
  for (const auto* k : tables)
    for (QuantType q : {QuantType::NF4, QuantType::FP4})
      for (int64_t bs : {32, 64, 128, 4096})
        for (int64_t n : kSizes)
          for (bnb_dtype_t d : kFloatDtypes) check_quantize_4bit(*k, q, n, bs, d, static_cast<uint32_t>(n * 13 + bs));
}

void check_dequantize_4bit(const KernelTable& simd, QuantType q, int64_t n, int64_t bs, bnb_dtype_t dtype,
                           uint32_t seed) {
  SCOPED_TRACE(testing::Message() << simd.isa << (q == QuantType::NF4 ? " nf4" : " fp4") << " n=" << n
                                  << " blocksize=" << bs << " " << dtype_label(dtype));
  const int64_t blocks = (n + bs - 1) / bs;
  const int64_t bytes = (n + 1) / 2;
  std::mt19937 rng(seed);
  std::vector<uint8_t> packed(static_cast<size_t>(bytes));
  for (auto& x : packed) x = static_cast<uint8_t>(rng());
  std::vector<float> absmax(static_cast<size_t>(blocks));
  std::lognormal_distribution<float> ln(0.0f, 4.0f);
  for (auto& x : absmax) x = ln(rng);
  if (blocks > 1) absmax[0] = 0.0f;
  if (blocks > 2) absmax[1] = 1e5f;
  if (blocks > 3) absmax[2] = 1e-6f;
  const GuardedInput P(packed);
  auto run = [&](const KernelTable& k, std::vector<uint8_t>& out) {
    Dequantize4bitParams p{static_cast<const uint8_t*>(P.data()), absmax.data(), out.data(), n, bs, dtype, q};
    const auto s = splits(bytes);
    for (size_t i = 0; i + 1 < s.size(); ++i)
      if (s[i] < s[i + 1]) k.dequantize_4bit(p, s[i], s[i + 1]);
  };
  auto ref = out_buffer(n * dtype_size(dtype)), got = out_buffer(n * dtype_size(dtype));
  run(cpu::reference_kernels(), ref);
  run(simd, got);
  EXPECT_EQ(first_diff(ref.data(), got.data(), ref.size()), -1);
}

TEST(SimdKernels, Dequantize4bit) {
  const auto tables = simd_tables();
  if (tables.empty()) GTEST_SKIP() << "no SIMD table on this machine";
  for (const auto* k : tables)
    for (QuantType q : {QuantType::NF4, QuantType::FP4})
      for (int64_t bs : {32, 64, 128, 4096})
        for (int64_t n : kSizes)
          for (bnb_dtype_t d : kFloatDtypes) check_dequantize_4bit(*k, q, n, bs, d, static_cast<uint32_t>(n * 17 + bs));
}

// ---- LLM.int8() row-wise -----------------------------------------------------------------------------

void check_int8_vectorwise(const KernelTable& simd, int64_t rows, int64_t cols, float threshold, bnb_dtype_t dtype,
                           uint32_t seed) {
  SCOPED_TRACE(testing::Message() << simd.isa << " rows=" << rows << " cols=" << cols << " threshold=" << threshold
                                  << " " << dtype_label(dtype));
  const int64_t n = rows * cols;
  std::vector<float> v = normal(static_cast<size_t>(n), seed);
  std::mt19937 rng(seed + 1);
  for (int64_t i = 0; i < n; ++i) {
    if (rng() % 50 == 0) v[i] *= 8.0f;  // outliers for the thresholds below
  }
  if (rows > 2) {
    for (int64_t c = 0; c < cols; ++c) v[1 * cols + c] = 0.0f;                     // all-zero row
    for (int64_t c = 0; c < cols; ++c) v[2 * cols + c] = (c % 2 ? 9.0f : -9.0f);  // all-outlier row
  }
  if (threshold > 0.0f && n > 0) v[0] = threshold;  // exactly on the threshold counts as an outlier
  if (rows > 3 && cols > 2) {
    // Ties for the rounding: absmax 127 makes the scale exactly 1, so x.5 values round half to even.
    for (int64_t c = 0; c < cols; ++c) v[3 * cols + c] = static_cast<float>(c % 254) - 126.5f;
    v[3 * cols] = 127.0f;
  }
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (rows > 6) {
    // Non-finite rows (the reference's rule: NaN stats or, threshold 0, inf stats, and all-zero codes):
    // NaNs with payloads and sign, inf among the finite values, both; some in the SIMD tail.
    v[4 * cols + cols / 2] = std::numeric_limits<float>::quiet_NaN();
    v[4 * cols + cols - 1] = bits_f32(0xffc12345u);
    v[5 * cols] = kInf;
    v[5 * cols + cols - 1] = -kInf;
    v[6 * cols + cols - 1] = bits_f32(0x7fbfffffu);  // signalling NaN
    v[6 * cols + cols / 3] = -kInf;
  }
  const GuardedInput A(to_dtype(v, dtype));
  auto run = [&](const KernelTable& k, std::vector<uint8_t>& out, std::vector<uint8_t>& stats,
                 std::vector<uint8_t>& cols_flag) {
    std::fill(cols_flag.begin(), cols_flag.begin() + cols, 0);
    Int8VectorwiseQuantParams p{A.data(),  reinterpret_cast<int8_t*>(out.data()),
                                reinterpret_cast<float*>(stats.data()),
                                threshold > 0.0f ? cols_flag.data() : nullptr,
                                rows,      cols,
                                threshold, dtype};
    const auto s = splits(rows);
    for (size_t i = 0; i + 1 < s.size(); ++i)
      if (s[i] < s[i + 1]) k.int8_vectorwise_quant(p, s[i], s[i + 1]);
  };
  auto out_ref = out_buffer(n), out_simd = out_buffer(n);
  auto st_ref = out_buffer(4 * rows), st_simd = out_buffer(4 * rows);
  auto oc_ref = out_buffer(cols), oc_simd = out_buffer(cols);
  run(cpu::reference_kernels(), out_ref, st_ref, oc_ref);
  run(simd, out_simd, st_simd, oc_simd);
  EXPECT_EQ(first_diff(out_ref.data(), out_simd.data(), out_ref.size()), -1) << "int8 values differ";
  EXPECT_EQ(first_diff(st_ref.data(), st_simd.data(), st_ref.size()), -1) << "row_stats differ";
  EXPECT_EQ(first_diff(oc_ref.data(), oc_simd.data(), oc_ref.size()), -1) << "outlier_cols differ";
}

TEST(SimdKernels, Int8VectorwiseQuant) {
  const auto tables = simd_tables();
  if (tables.empty()) GTEST_SKIP() << "no SIMD table on this machine";
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 1},  {1, 7},   {3, 16},  {5, 17},  {4, 33},
                                                           {7, 64}, {9, 100}, {6, 255}, {4, 4101}, {2, 1},
                                                           {7, 1},  {8, 37},  {7, 4101}};
  for (const auto* k : tables)
    for (const auto& [rows, cols] : shapes)
      for (float thr : {0.0f, 0.8f, 2.5f, 6.0f})
        for (bnb_dtype_t d : kFloatDtypes)
          check_int8_vectorwise(*k, rows, cols, thr, d, static_cast<uint32_t>(rows * 1000 + cols));
}

// The rule for rows holding NaN or inf, on every table: a NaN among the non-outliers makes row_stats the
// one NaN pattern kAbsmaxNaNBits; an infinity makes it inf at threshold 0 and is an outlier otherwise;
// a row without a finite scale gets all-zero codes. Finite rows are untouched by their neighbours.
TEST(SimdKernels, Int8NonFiniteRows) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr int64_t kCols = 37;  // a full vector or more, then a tail, for either ISA
  std::vector<float> v = normal(4 * kCols, 5);
  v[0 * kCols + 3] = bits_f32(0xffc12345u);  // row 0: a negative NaN with a payload
  v[1 * kCols + 36] = kInf;                  // row 1: +inf (in the tail) and -inf
  v[1 * kCols + 2] = -kInf;
  v[2 * kCols + 5] = kInf;                   // row 2: inf and NaN
  v[2 * kCols + 30] = std::numeric_limits<float>::quiet_NaN();
  auto tables = simd_tables();
  tables.push_back(&cpu::reference_kernels());
  for (const KernelTable* k : tables)
    for (float thr : {0.0f, 6.0f})
      for (bnb_dtype_t d : kFloatDtypes) {
        SCOPED_TRACE(testing::Message() << k->isa << " threshold=" << thr << " " << dtype_label(d));
        const auto A = to_dtype(v, d);
        std::vector<int8_t> out(v.size(), 1);
        std::vector<float> stats(4);
        std::vector<uint8_t> flags(kCols, 0);
        Int8VectorwiseQuantParams p{A.data(), out.data(), stats.data(), thr > 0.0f ? flags.data() : nullptr,
                                    4,        kCols,      thr,          d};
        k->int8_vectorwise_quant(p, 0, 4);
        EXPECT_EQ(f32_bits(stats[0]), kAbsmaxNaNBits);
        EXPECT_EQ(f32_bits(stats[2]), kAbsmaxNaNBits);
        if (thr > 0.0f) {
          EXPECT_TRUE(std::isfinite(stats[1]));
          EXPECT_EQ(flags[36] + flags[2] + flags[5], 3) << "every infinity is an outlier";
        } else {
          EXPECT_EQ(stats[1], kInf);
        }
        for (int64_t r = 0; r < 3; ++r) {
          if (r == 1 && thr > 0.0f) continue;
          for (int64_t c = 0; c < kCols; ++c) EXPECT_EQ(out[r * kCols + c], 0) << "row " << r << " col " << c;
        }
        EXPECT_TRUE(std::isfinite(stats[3]) && stats[3] > 0.0f);
      }
}

// Rounding of x * 127 / absmax follows round-half-even, not round-half-away (2.5 -> 2, -3.5 -> -4).
TEST(SimdKernels, Int8RoundsHalfToEven) {
  const std::vector<float> row = {127.0f, 2.5f, -3.5f, 0.5f, -0.5f, 1.5f, 126.5f, -126.5f, 4.5f};
  for (const KernelTable* k : [] {
         auto t = simd_tables();
         t.push_back(&cpu::reference_kernels());
         return t;
       }()) {
    SCOPED_TRACE(k->isa);
    std::vector<int8_t> out(row.size());
    float stat = 0;
    Int8VectorwiseQuantParams p{row.data(), out.data(), &stat, nullptr, 1, static_cast<int64_t>(row.size()), 0.0f,
                                BNB_DTYPE_FLOAT32};
    k->int8_vectorwise_quant(p, 0, 1);
    EXPECT_EQ(stat, 127.0f);
    EXPECT_EQ(std::vector<int>(out.begin(), out.end()), (std::vector<int>{127, 2, -4, 0, 0, 2, 126, -126, 4}));
  }
}

TEST(SimdKernels, TablesNameTheirIsa) {
  EXPECT_STREQ(cpu::reference_kernels().isa, "scalar");
  if (const auto* k = cpu::avx2_kernels()) EXPECT_STREQ(k->isa, "avx2");
  if (const auto* k = cpu::avx512_kernels()) EXPECT_STREQ(k->isa, "avx512");
  const char* active = cpu::active_kernels().isa;
  EXPECT_TRUE(std::strcmp(active, "scalar") == 0 || std::strcmp(active, "avx2") == 0 ||
              std::strcmp(active, "avx512") == 0);
}

}  // namespace
}  // namespace bnb::test

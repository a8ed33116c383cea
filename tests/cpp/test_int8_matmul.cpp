// LLM.int8() products through the C entry points of the CPU library, against int64 / double oracles
// computed here: exact int32 sums (including the extreme -128 * -128 case), the fused dequantization,
// the one-call linear with outlier columns, and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bnb/gemm.h"
#include "bnb/quant.h"

namespace bnb::test {
namespace {

std::vector<int8_t> random_int8(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(-128, 127);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(dist(gen));
  return v;
}

int64_t dot(const int8_t* a, const int8_t* b, int64_t k) {
  int64_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += int64_t{a[i]} * int64_t{b[i]};
  return s;
}

TEST(Int8Matmul, ExactProductsForOddShapes) {
  for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{{1, 7, 5}, {3, 33, 127}, {17, 8, 4096}}) {
    const auto A = random_int8(static_cast<size_t>(M * K), 1), B = random_int8(static_cast<size_t>(N * K), 2);
    std::vector<int32_t> out(static_cast<size_t>(M * N), -1);
    ASSERT_EQ(bnb_int8_linear_matmul(A.data(), B.data(), out.data(), M, N, K, 0, nullptr), BNB_STATUS_OK);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        ASSERT_EQ(out[m * N + n], dot(&A[m * K], &B[n * K], K)) << "m=" << m << " n=" << n << " K=" << K;
  }
}

TEST(Int8Matmul, ExtremeValuesStayExact) {
  const int64_t K = 8192;  // 8192 * 128 * 128 = 2^27: far from int32 overflow, every term at its maximum
  std::vector<int8_t> A(K, -128), B(2 * K, -128);
  std::vector<int32_t> out(2);
  ASSERT_EQ(bnb_int8_linear_matmul(A.data(), B.data(), out.data(), 1, 2, K, 0, nullptr), BNB_STATUS_OK);
  EXPECT_EQ(out[0], 128 * 128 * K);
  EXPECT_EQ(out[1], 128 * 128 * K);
}

TEST(Int8Matmul, ScaledProductMatchesDoubleOracle) {
  const int64_t M = 4, N = 9, K = 70;
  const auto A = random_int8(M * K, 3), B = random_int8(N * K, 4);
  std::vector<float> row(M), col(N), bias(N), out(M * N);
  for (int64_t i = 0; i < M; ++i) row[i] = 0.5f + 0.25f * i;
  for (int64_t i = 0; i < N; ++i) col[i] = 1.0f + 0.1f * i, bias[i] = 0.01f * i;
  ASSERT_EQ(bnb_int8_scaled_mm(A.data(), B.data(), row.data(), col.data(), bias.data(), BNB_DTYPE_FLOAT32, out.data(),
                               BNB_DTYPE_FLOAT32, M, N, K, 0, nullptr),
            BNB_STATUS_OK);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double ref = double(dot(&A[m * K], &B[n * K], K)) * row[m] * col[n] / (127.0 * 127.0) + bias[n];
      EXPECT_NEAR(out[m * N + n], ref, 1e-5 * std::fabs(ref) + 1e-6);
    }
}

TEST(Int8Matmul, LinearWithOutliersMatchesTheDecomposition) {
  // X has one outlier feature (column 2): its float product with the dequantized weight column
  // replaces the int8 one; the other columns go through the int8 product.
  const int64_t M = 3, N = 5, K = 8;
  std::vector<float> X(M * K);
  for (int64_t i = 0; i < M * K; ++i) X[i] = 0.1f * static_cast<float>((i * 7) % 11) - 0.5f;
  for (int64_t m = 0; m < M; ++m) X[m * K + 2] = 9.0f + m;
  const auto CB = random_int8(N * K, 5);
  std::vector<float> SCB(N), out(M * N);
  for (int64_t n = 0; n < N; ++n) SCB[n] = 0.5f + 0.1f * n;
  std::vector<uint8_t> mask(K, 7);
  ASSERT_EQ(bnb_int8_linear(X.data(), BNB_DTYPE_FLOAT32, M, K, CB.data(), SCB.data(), N, 6.0f, nullptr, out.data(),
                            mask.data(), 0, nullptr),
            BNB_STATUS_OK);
  for (int64_t k = 0; k < K; ++k) EXPECT_EQ(mask[k], k == 2 ? 1 : 0) << "k=" << k;
  // Oracle: row-wise quantization of the non-outlier columns (absmax over them, round half to even).
  for (int64_t m = 0; m < M; ++m) {
    double absmax = 0;
    for (int64_t k = 0; k < K; ++k)
      if (k != 2) absmax = std::max(absmax, std::fabs(double(X[m * K + k])));
    for (int64_t n = 0; n < N; ++n) {
      double int8_part = 0;
      for (int64_t k = 0; k < K; ++k)
        if (k != 2) int8_part += std::nearbyint(X[m * K + k] * 127.0 / absmax) * CB[n * K + k];
      const double ref = int8_part * absmax * SCB[n] / (127.0 * 127.0) + X[m * K + 2] * CB[n * K + 2] * SCB[n] / 127.0;
      EXPECT_NEAR(out[m * N + n], ref, 1e-4 * std::fabs(ref) + 1e-5) << "m=" << m << " n=" << n;
    }
  }
}

TEST(Int8Matmul, ArgumentErrors) {
  int8_t a[4] = {}, b[4] = {};
  int32_t out[1];
  EXPECT_EQ(bnb_int8_linear_matmul(a, b, out, -1, 1, 4, 0, nullptr), BNB_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(bnb_last_error()).find("bnb_int8_linear_matmul"), std::string::npos);
  EXPECT_EQ(bnb_int8_linear_matmul(nullptr, b, out, 1, 1, 4, 0, nullptr), BNB_STATUS_INVALID_ARGUMENT);
  float row = 1, col = 1, y = 0;
  EXPECT_EQ(bnb_int8_scaled_mm(a, b, &row, &col, nullptr, BNB_DTYPE_FLOAT32, &y, BNB_DTYPE_INT8, 1, 1, 4, 0, nullptr),
            BNB_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(bnb_last_error()).find("output dtype"), std::string::npos);
  float x[4] = {};
  EXPECT_EQ(bnb_int8_linear(x, BNB_DTYPE_FLOAT32, 1, 4, b, &col, 1, -1.0f, nullptr, &y, nullptr, 0, nullptr),
            BNB_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(bnb_last_error()).find("threshold"), std::string::npos);
  // Empty products succeed without touching anything.
  EXPECT_EQ(bnb_int8_linear_matmul(nullptr, nullptr, nullptr, 0, 0, 0, 0, nullptr), BNB_STATUS_OK);
}

}  // namespace
}  // namespace bnb::test

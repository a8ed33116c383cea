// The public C entry points: status codes and bnb_last_error() text for bad arguments, n = 0, and
// full calls through the thread pool and the active kernel table checked against the reference.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bnb/quant.h"
#include "core/code_search.h"
#include "test_util.h"

namespace bnb::test {
namespace {

std::string last_error() { return bnb_last_error(); }

// The call failed with `status` and the message names the function and `needle`.
#define EXPECT_FAILS(call, status, function, needle)                             \
  do {                                                                           \
    EXPECT_EQ((call), (status));                                                 \
    const std::string msg = last_error();                                        \
    EXPECT_NE(msg.find(function), std::string::npos) << msg;                     \
    EXPECT_NE(msg.find(needle), std::string::npos) << "missing '" << needle << "' in: " << msg; \
  } while (0)

TEST(CApi, LibraryInfo) {
  EXPECT_STREQ(bnb_backend_name(), "cpu");
  EXPECT_EQ(bnb_abi_version(), BNB_ABI_VERSION);
  EXPECT_NE(std::string(bnb_version()), "");
  int64_t needed = 0;
  ASSERT_EQ(bnb_backend_info(nullptr, 0, &needed), BNB_STATUS_OK);
  ASSERT_GT(needed, 1);
  std::string buf(static_cast<size_t>(needed), '\0');
  ASSERT_EQ(bnb_backend_info(buf.data(), needed, &needed), BNB_STATUS_OK);
  EXPECT_NE(buf.find("\"isa\""), std::string::npos) << buf;
}

TEST(CApi, Quantize4bitErrors) {
  float a[64] = {};
  uint8_t packed[32];
  float absmax[2];
  const char* f = "bnb_quantize_4bit";
  EXPECT_FAILS(bnb_quantize_4bit(nullptr, BNB_DTYPE_FLOAT32, BNB_QUANT_NF4, packed, absmax, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "A");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_FLOAT32, BNB_QUANT_NF4, nullptr, absmax, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "packed");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_FLOAT32, BNB_QUANT_NF4, packed, nullptr, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "absmax");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_FLOAT32, BNB_QUANT_NF4, packed, absmax, 64, 48, 0, nullptr),
               BNB_STATUS_UNSUPPORTED, f, "blocksize");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_FLOAT32, BNB_QUANT_NF4, packed, absmax, 64, 16, 0, nullptr),
               BNB_STATUS_UNSUPPORTED, f, "blocksize");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_FLOAT32, BNB_QUANT_NF4, packed, absmax, 64, 8192, 0, nullptr),
               BNB_STATUS_UNSUPPORTED, f, "blocksize");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_INT32, BNB_QUANT_NF4, packed, absmax, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "A");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_FLOAT32, static_cast<bnb_quant_t>(7), packed, absmax, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "quant_type");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_FLOAT32, BNB_QUANT_NF4, packed, absmax, -1, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "n");
  EXPECT_FAILS(bnb_quantize_4bit(a, BNB_DTYPE_FLOAT32, BNB_QUANT_NF4, packed, absmax, 64, 64, 3, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "device");
  // n = 0: nothing to do, null buffers allowed, and the error text is cleared.
  EXPECT_EQ(bnb_quantize_4bit(nullptr, BNB_DTYPE_FLOAT16, BNB_QUANT_FP4, nullptr, nullptr, 0, 64, 0, nullptr),
            BNB_STATUS_OK);
  EXPECT_EQ(last_error(), "");
}

TEST(CApi, Dequantize4bitErrors) {
  uint8_t packed[32] = {};
  float absmax[1] = {1.0f};
  float out[64];
  const char* f = "bnb_dequantize_4bit";
  EXPECT_FAILS(bnb_dequantize_4bit(nullptr, absmax, BNB_QUANT_NF4, out, BNB_DTYPE_FLOAT32, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "packed");
  EXPECT_FAILS(bnb_dequantize_4bit(packed, absmax, BNB_QUANT_NF4, nullptr, BNB_DTYPE_FLOAT32, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "out");
  EXPECT_FAILS(bnb_dequantize_4bit(packed, absmax, BNB_QUANT_NF4, out, BNB_DTYPE_UINT8, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "out");
  EXPECT_FAILS(bnb_dequantize_4bit(packed, absmax, BNB_QUANT_NF4, out, BNB_DTYPE_FLOAT32, 64, 48, 0, nullptr),
               BNB_STATUS_UNSUPPORTED, f, "blocksize");
  EXPECT_FAILS(bnb_dequantize_4bit(packed, absmax, static_cast<bnb_quant_t>(0), out, BNB_DTYPE_FLOAT32, 64, 64, 0,
                                   nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "quant_type");
  EXPECT_FAILS(bnb_dequantize_4bit(packed, absmax, BNB_QUANT_NF4, out, BNB_DTYPE_FLOAT32, -5, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "n");
  EXPECT_EQ(bnb_dequantize_4bit(nullptr, nullptr, BNB_QUANT_NF4, nullptr, BNB_DTYPE_BFLOAT16, 0, 64, 0, nullptr),
            BNB_STATUS_OK);
}

TEST(CApi, BlockwiseErrors) {
  const auto code = dynamic_map();
  float a[64] = {};
  uint8_t q[64];
  float absmax[64];
  const char* f = "bnb_quantize_blockwise";
  EXPECT_FAILS(bnb_quantize_blockwise(a, BNB_DTYPE_FLOAT32, code.data(), q, absmax, 64, 0, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "blocksize");
  EXPECT_FAILS(bnb_quantize_blockwise(a, BNB_DTYPE_FLOAT32, code.data(), q, absmax, 64, -64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "blocksize");
  EXPECT_FAILS(bnb_quantize_blockwise(a, BNB_DTYPE_FLOAT32, nullptr, q, absmax, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "code");
  EXPECT_FAILS(bnb_quantize_blockwise(a, BNB_DTYPE_INT8, code.data(), q, absmax, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "A");
  EXPECT_FAILS(bnb_quantize_blockwise(a, BNB_DTYPE_FLOAT32, code.data(), nullptr, absmax, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "out");
  EXPECT_FAILS(bnb_quantize_blockwise(a, BNB_DTYPE_FLOAT32, code.data(), q, absmax, -1, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "n");
  // The CPU accepts any positive blocksize, including ones CUDA rejects.
  EXPECT_EQ(bnb_quantize_blockwise(a, BNB_DTYPE_FLOAT32, code.data(), q, absmax, 64, 7, 0, nullptr), BNB_STATUS_OK);
  EXPECT_EQ(bnb_quantize_blockwise(nullptr, BNB_DTYPE_FLOAT32, code.data(), nullptr, nullptr, 0, 64, 0, nullptr),
            BNB_STATUS_OK);

  const char* g = "bnb_dequantize_blockwise";
  float out[64];
  EXPECT_FAILS(bnb_dequantize_blockwise(q, code.data(), absmax, out, BNB_DTYPE_FLOAT32, 64, 0, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, g, "blocksize");
  EXPECT_FAILS(bnb_dequantize_blockwise(nullptr, code.data(), absmax, out, BNB_DTYPE_FLOAT32, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, g, "A");
  EXPECT_FAILS(bnb_dequantize_blockwise(q, code.data(), nullptr, out, BNB_DTYPE_FLOAT32, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, g, "absmax");
  EXPECT_FAILS(bnb_dequantize_blockwise(q, code.data(), absmax, out, BNB_DTYPE_INT64, 64, 64, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, g, "out");
  EXPECT_EQ(bnb_dequantize_blockwise(nullptr, code.data(), nullptr, nullptr, BNB_DTYPE_FLOAT32, 0, 64, 0, nullptr),
            BNB_STATUS_OK);
}

TEST(CApi, Int8AndQuantileErrors) {
  float a[300] = {};
  int8_t out[300];
  float stats[30];
  uint8_t cols[30];
  const char* f = "bnb_int8_vectorwise_quant";
  EXPECT_FAILS(bnb_int8_vectorwise_quant(a, BNB_DTYPE_FLOAT32, -1, 10, 0.0f, out, stats, nullptr, 0, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "rows");
  EXPECT_FAILS(bnb_int8_vectorwise_quant(a, BNB_DTYPE_FLOAT32, 10, -1, 0.0f, out, stats, nullptr, 0, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "cols");
  EXPECT_FAILS(bnb_int8_vectorwise_quant(a, BNB_DTYPE_FLOAT32, 10, 30, -1.0f, out, stats, cols, 0, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "threshold");
  EXPECT_FAILS(bnb_int8_vectorwise_quant(a, BNB_DTYPE_FLOAT32, 10, 30, 6.0f, out, stats, nullptr, 0, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "outlier_cols");
  EXPECT_FAILS(bnb_int8_vectorwise_quant(a, BNB_DTYPE_FLOAT32, 10, 30, 0.0f, out, nullptr, nullptr, 0, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "row_stats");
  EXPECT_FAILS(bnb_int8_vectorwise_quant(a, BNB_DTYPE_UINT8, 10, 30, 0.0f, out, stats, nullptr, 0, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, f, "A");
  EXPECT_EQ(bnb_int8_vectorwise_quant(a, BNB_DTYPE_FLOAT32, 10, 30, 0.0f, out, stats, nullptr, 0, 0, nullptr),
            BNB_STATUS_OK);
  EXPECT_EQ(bnb_int8_vectorwise_quant(nullptr, BNB_DTYPE_FLOAT32, 0, 30, 6.0f, nullptr, nullptr, cols, 0, 0, nullptr),
            BNB_STATUS_OK);

  // Listing the outlier columns: the bytes equal to the tag count (others, zero or not, do not),
  // ascending; with a matrix, exactly those columns of every row become 0; an empty array lists none.
  const uint8_t flags[7] = {0, 1, 0, 2, 255, 0, 1};
  int8_t matrix[3 * 7];
  for (int i = 0; i < 3 * 7; ++i) matrix[i] = static_cast<int8_t>(i + 1);
  int64_t listed[7] = {-1, -1, -1, -1, -1, -1, -1};
  int64_t count = -1;
  EXPECT_EQ(bnb_int8_outlier_columns(flags, 1, 3, 7, matrix, listed, &count, 0, nullptr), BNB_STATUS_OK);
  ASSERT_EQ(count, 2);
  EXPECT_EQ(std::vector<int64_t>(listed, listed + 2), (std::vector<int64_t>{1, 6}));
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 7; ++c)
      EXPECT_EQ(matrix[r * 7 + c], flags[c] == 1 ? 0 : r * 7 + c + 1) << "row " << r << " column " << c;
  EXPECT_EQ(bnb_int8_outlier_columns(flags, 255, 0, 7, nullptr, listed, &count, 0, nullptr), BNB_STATUS_OK);
  EXPECT_EQ(count, 1);
  EXPECT_EQ(listed[0], 4);
  EXPECT_EQ(bnb_int8_outlier_columns(flags, 3, 0, 7, nullptr, listed, &count, 0, nullptr), BNB_STATUS_OK);
  EXPECT_EQ(count, 0);
  EXPECT_EQ(bnb_int8_outlier_columns(nullptr, 1, 0, 0, nullptr, nullptr, &count, 0, nullptr), BNB_STATUS_OK);
  EXPECT_EQ(count, 0);
  const char* c = "bnb_int8_outlier_columns";
  EXPECT_FAILS(bnb_int8_outlier_columns(flags, 0, 1, 7, nullptr, listed, &count, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, c, "tag");
  EXPECT_FAILS(bnb_int8_outlier_columns(nullptr, 1, 1, 3, nullptr, listed, &count, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, c, "flags");
  EXPECT_FAILS(bnb_int8_outlier_columns(flags, 1, 1, 7, nullptr, nullptr, &count, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, c, "columns");
  EXPECT_FAILS(bnb_int8_outlier_columns(flags, 1, 1, 7, nullptr, listed, nullptr, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, c, "count");
  EXPECT_FAILS(bnb_int8_outlier_columns(flags, 1, 1, -1, nullptr, listed, &count, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, c, "cols");
  EXPECT_FAILS(bnb_int8_outlier_columns(flags, 1, -1, 7, nullptr, listed, &count, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, c, "rows");

  // A tagged quantization leaves other entries of the flag buffer as they are and marks the outlier
  // columns with the tag; untagged (0) clears the buffer and marks with 1.
  float b[2 * 4] = {1.0f, 9.0f, 0.5f, -2.0f, 0.25f, 0.5f, -8.0f, 1.0f};
  uint8_t tagged[4] = {7, 7, 0, 3};
  EXPECT_EQ(bnb_int8_vectorwise_quant(b, BNB_DTYPE_FLOAT32, 2, 4, 6.0f, out, stats, tagged, 7 + 1, 0, nullptr),
            BNB_STATUS_OK);
  EXPECT_EQ(std::vector<uint8_t>(tagged, tagged + 4), (std::vector<uint8_t>{7, 8, 8, 3}));
  EXPECT_EQ(bnb_int8_vectorwise_quant(b, BNB_DTYPE_FLOAT32, 2, 4, 6.0f, out, stats, tagged, 0, 0, nullptr),
            BNB_STATUS_OK);
  EXPECT_EQ(std::vector<uint8_t>(tagged, tagged + 4), (std::vector<uint8_t>{0, 1, 1, 0}));

  const char* g = "bnb_estimate_quantiles";
  float q[256];
  EXPECT_FAILS(bnb_estimate_quantiles(a, BNB_DTYPE_FLOAT32, 100, 1.0f / 512, q, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, g, "256");
  EXPECT_FAILS(bnb_estimate_quantiles(a, BNB_DTYPE_FLOAT32, 300, 0.7f, q, 0, nullptr), BNB_STATUS_INVALID_ARGUMENT,
               g, "offset");
  EXPECT_FAILS(bnb_estimate_quantiles(a, BNB_DTYPE_FLOAT32, 300, 1.0f / 512, nullptr, 0, nullptr),
               BNB_STATUS_INVALID_ARGUMENT, g, "out");
  EXPECT_EQ(bnb_estimate_quantiles(a, BNB_DTYPE_FLOAT32, 300, 1.0f / 512, q, 0, nullptr), BNB_STATUS_OK);
}

// Whole ops through the C ABI (thread pool + active table) against one reference call over the
// full range; large enough to be split across threads.
TEST(CApi, OpsMatchReferenceThroughThreadPool) {
  const int64_t n = (1 << 19) + 12345;
  const auto x = normal(static_cast<size_t>(n), 21, 2.0f);
  const auto& ref = cpu::reference_kernels();
  for (bnb_dtype_t d : kFloatDtypes) {
    SCOPED_TRACE(dtype_label(d));
    const auto A = to_dtype(x, d);
    {  // 4-bit round trip
      const int64_t bs = 64, blocks = (n + bs - 1) / bs;
      std::vector<uint8_t> pk(static_cast<size_t>((n + 1) / 2)), pk_ref(pk.size());
      std::vector<float> am(static_cast<size_t>(blocks)), am_ref(am.size());
      ASSERT_EQ(bnb_quantize_4bit(A.data(), d, BNB_QUANT_NF4, pk.data(), am.data(), n, bs, 0, nullptr), BNB_STATUS_OK);
      ref.quantize_4bit({A.data(), pk_ref.data(), am_ref.data(), n, bs, d, QuantType::NF4}, 0, blocks);
      EXPECT_EQ(pk, pk_ref);
      EXPECT_EQ(std::memcmp(am.data(), am_ref.data(), am.size() * 4), 0);
      std::vector<uint8_t> out(static_cast<size_t>(n) * dtype_size(d)), out_ref(out.size());
      ASSERT_EQ(bnb_dequantize_4bit(pk.data(), am.data(), BNB_QUANT_NF4, out.data(), d, n, bs, 0, nullptr),
                BNB_STATUS_OK);
      ref.dequantize_4bit({pk.data(), am.data(), out_ref.data(), n, bs, d, QuantType::NF4}, 0, (n + 1) / 2);
      EXPECT_EQ(out, out_ref);
    }
    {  // 8-bit blockwise round trip
      const auto code = dynamic_map();
      CodeSearch cs;
      cs.build(code.data());
      const int64_t bs = 256, blocks = (n + bs - 1) / bs;
      std::vector<uint8_t> q(static_cast<size_t>(n)), q_ref(q.size());
      std::vector<float> am(static_cast<size_t>(blocks)), am_ref(am.size());
      ASSERT_EQ(bnb_quantize_blockwise(A.data(), d, code.data(), q.data(), am.data(), n, bs, 0, nullptr),
                BNB_STATUS_OK);
      ref.quantize_blockwise({A.data(), code.data(), q_ref.data(), am_ref.data(), n, bs, d}, cs, 0, blocks);
      EXPECT_EQ(q, q_ref);
      EXPECT_EQ(std::memcmp(am.data(), am_ref.data(), am.size() * 4), 0);
      std::vector<uint8_t> out(static_cast<size_t>(n) * dtype_size(d)), out_ref(out.size());
      ASSERT_EQ(bnb_dequantize_blockwise(q.data(), code.data(), am.data(), out.data(), d, n, bs, 0, nullptr),
                BNB_STATUS_OK);
      ref.dequantize_blockwise({q.data(), code.data(), am.data(), out_ref.data(), n, bs, d}, 0, n);
      EXPECT_EQ(out, out_ref);
    }
    {  // int8 row-wise with outliers: many rows write the same outlier columns concurrently
      const int64_t rows = 512, cols = n / rows;
      std::vector<int8_t> o(static_cast<size_t>(rows * cols)), o_ref(o.size());
      std::vector<float> st(static_cast<size_t>(rows)), st_ref(st.size());
      std::vector<uint8_t> oc(static_cast<size_t>(cols), 7), oc_ref(oc.size(), 0);
      ASSERT_EQ(bnb_int8_vectorwise_quant(A.data(), d, rows, cols, 5.0f, o.data(), st.data(), oc.data(), 0, 0, nullptr),
                BNB_STATUS_OK);
      ref.int8_vectorwise_quant({A.data(), o_ref.data(), st_ref.data(), oc_ref.data(), rows, cols, 5.0f, d}, 0, rows);
      EXPECT_EQ(o, o_ref);
      EXPECT_EQ(std::memcmp(st.data(), st_ref.data(), st.size() * 4), 0);
      EXPECT_EQ(oc, oc_ref);
      EXPECT_GT(std::count(oc.begin(), oc.end(), 1), 0);
      // Tagged: the same columns now hold 9, the earlier flags (1) of the others are kept.
      ASSERT_EQ(bnb_int8_vectorwise_quant(A.data(), d, rows, cols, 5.0f, o.data(), st.data(), oc.data(), 9, 0, nullptr),
                BNB_STATUS_OK);
      for (size_t c = 0; c < oc.size(); ++c) EXPECT_EQ(oc[c], oc_ref[c] ? 9 : 0) << "column " << c;
    }
  }
}

}  // namespace
}  // namespace bnb::test

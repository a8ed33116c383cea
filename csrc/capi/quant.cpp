// extern "C" entry points of the quantization family. Each one validates, fills a params
// struct and calls the backend; the same file is compiled into every backend library.
#include <cmath>
#include <cstring>

#include "bnb/quant.h"
#include "core/backend.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/formats.h"

namespace bnb {
namespace {

void check_ptr(const void* p, const char* arg, int64_t n) {
  BNB_CHECK_ARG(n == 0 || p != nullptr, arg, " is a null pointer but ", n, " elements were requested");
}

void check_count(int64_t n, const char* arg) { BNB_CHECK_ARG(n >= 0, arg, " must be >= 0, got ", n); }

void check_float(bnb_dtype_t dtype, const char* arg) {
  BNB_CHECK_ARG(is_float_dtype(dtype), arg, " must be float32, float16 or bfloat16, got ", dtype_name(dtype));
}

QuantType check_qtype(bnb_quant_t q) {
  BNB_CHECK_ARG(q == BNB_QUANT_FP4 || q == BNB_QUANT_NF4, "quant_type must be fp4 (", int(BNB_QUANT_FP4),
                ") or nf4 (", int(BNB_QUANT_NF4), "), got ", int(q));
  return static_cast<QuantType>(q);
}

void check_blocksize_8bit(int64_t blocksize) {
  BNB_CHECK_ARG(blocksize > 0, "blocksize must be positive, got ", blocksize);
  BNB_CHECK_SUPPORTED(backend::supports_blocksize_8bit(blocksize), "blocksize ", blocksize, " is not supported by the ",
                      backend::name(), " backend (", backend::blocksize_8bit_rule(), ")");
}

void check_blocksize_4bit(int64_t blocksize) {
  BNB_CHECK_SUPPORTED(is_valid_blocksize_4bit(blocksize), "4-bit blocksize must be a power of two in [",
                      kMinBlocksize4bit, ", ", kMaxBlocksize, "], got ", blocksize);
}

int64_t num_blocks(int64_t n, int64_t blocksize) { return (n + blocksize - 1) / blocksize; }

}  // namespace
}  // namespace bnb

using namespace bnb;

extern "C" {

BNB_API bnb_status_t bnb_code_table_4bit(bnb_quant_t qtype, float* out16) {
  return capi_guard(__func__, [&] {
    const QuantType q = check_qtype(qtype);
    BNB_CHECK_ARG(out16 != nullptr, "out16 is a null pointer");
    std::memcpy(out16, q == QuantType::NF4 ? kNF4Values : kFP4Values, 16 * sizeof(float));
  });
}

BNB_API bnb_status_t bnb_quantize_blockwise(const void* A, bnb_dtype_t a_dtype, const float* code, uint8_t* out,
                                            float* absmax, int64_t n, int64_t blocksize, int32_t device,
                                            bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_count(n, "n");
    check_float(a_dtype, "A");
    check_blocksize_8bit(blocksize);
    BNB_CHECK_ARG(code != nullptr, "code is a null pointer");
    check_ptr(A, "A", n);
    check_ptr(out, "out", n);
    check_ptr(absmax, "absmax", num_blocks(n, blocksize));
    if (n == 0) return;
    backend::check_device(device);
    backend::quantize_blockwise({A, code, out, absmax, n, blocksize, a_dtype}, device, stream);
  });
}

BNB_API bnb_status_t bnb_dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, void* out,
                                              bnb_dtype_t out_dtype, int64_t n, int64_t blocksize, int32_t device,
                                              bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_count(n, "n");
    check_float(out_dtype, "out");
    check_blocksize_8bit(blocksize);
    BNB_CHECK_ARG(code != nullptr, "code is a null pointer");
    check_ptr(A, "A", n);
    check_ptr(out, "out", n);
    check_ptr(absmax, "absmax", num_blocks(n, blocksize));
    if (n == 0) return;
    backend::check_device(device);
    backend::dequantize_blockwise({A, code, absmax, out, n, blocksize, out_dtype}, device, stream);
  });
}

BNB_API bnb_status_t bnb_quantize_4bit(const void* A, bnb_dtype_t a_dtype, bnb_quant_t qtype, uint8_t* packed,
                                       float* absmax, int64_t n, int64_t blocksize, int32_t device,
                                       bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_count(n, "n");
    check_float(a_dtype, "A");
    const QuantType q = check_qtype(qtype);
    check_blocksize_4bit(blocksize);
    check_ptr(A, "A", n);
    check_ptr(packed, "packed", (n + 1) / 2);
    check_ptr(absmax, "absmax", num_blocks(n, blocksize));
    if (n == 0) return;
    backend::check_device(device);
    backend::quantize_4bit({A, packed, absmax, n, blocksize, a_dtype, q}, device, stream);
  });
}

BNB_API bnb_status_t bnb_dequantize_4bit(const uint8_t* packed, const float* absmax, bnb_quant_t qtype, void* out,
                                         bnb_dtype_t out_dtype, int64_t n, int64_t blocksize, int32_t device,
                                         bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_count(n, "n");
    check_float(out_dtype, "out");
    const QuantType q = check_qtype(qtype);
    check_blocksize_4bit(blocksize);
    check_ptr(packed, "packed", (n + 1) / 2);
    check_ptr(absmax, "absmax", num_blocks(n, blocksize));
    check_ptr(out, "out", n);
    if (n == 0) return;
    backend::check_device(device);
    backend::dequantize_4bit({packed, absmax, out, n, blocksize, out_dtype, q}, device, stream);
  });
}

BNB_API bnb_status_t bnb_int8_vectorwise_quant(const void* A, bnb_dtype_t a_dtype, int64_t rows, int64_t cols,
                                               float threshold, int8_t* out, float* row_stats, uint8_t* outlier_cols,
                                               uint8_t tag, int32_t device, bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_count(rows, "rows");
    check_count(cols, "cols");
    check_float(a_dtype, "A");
    BNB_CHECK_ARG(std::isfinite(threshold) && threshold >= 0.0f, "threshold must be finite and >= 0, got ", threshold);
    const int64_t n = rows * cols;
    check_ptr(A, "A", n);
    check_ptr(out, "out", n);
    check_ptr(row_stats, "row_stats", rows);
    if (threshold > 0.0f) check_ptr(outlier_cols, "outlier_cols", cols);
    if (rows == 0) return;
    backend::check_device(device);
    backend::int8_vectorwise_quant(
        {A, out, row_stats, threshold > 0.0f ? outlier_cols : nullptr, rows, cols, threshold, a_dtype, tag}, device,
        stream);
  });
}

BNB_API bnb_status_t bnb_int8_outlier_columns(const uint8_t* flags, uint8_t tag, int64_t rows, int64_t cols,
                                              int8_t* out, int64_t* columns, int64_t* count, int32_t device,
                                              bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    BNB_CHECK_ARG(tag != 0, "tag must be 1..255 (the value flagged columns hold), got 0");
    check_count(rows, "rows");
    check_count(cols, "cols");
    check_ptr(flags, "flags", cols);
    check_ptr(columns, "columns", cols);
    check_ptr(count, "count", 1);
    if (out != nullptr) check_ptr(out, "out", rows * cols);
    *count = 0;
    if (cols == 0) return;
    backend::check_device(device);
    *count = backend::int8_outlier_columns(flags, tag, rows, cols, rows > 0 ? out : nullptr, columns, device, stream);
  });
}

BNB_API bnb_status_t bnb_int8_colwise_quant(const void* A, bnb_dtype_t a_dtype, int64_t rows, int64_t cols,
                                            float threshold, int8_t* out, float* col_stats, int32_t device,
                                            bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_count(rows, "rows");
    check_count(cols, "cols");
    check_float(a_dtype, "A");
    BNB_CHECK_ARG(std::isfinite(threshold) && threshold >= 0.0f, "threshold must be finite and >= 0, got ", threshold);
    const int64_t n = rows * cols;
    check_ptr(A, "A", n);
    check_ptr(out, "out", n);
    check_ptr(col_stats, "col_stats", cols);
    if (cols == 0) return;
    backend::check_device(device);
    backend::int8_colwise_quant({A, out, col_stats, rows, cols, threshold, a_dtype}, device, stream);
  });
}

BNB_API bnb_status_t bnb_estimate_quantiles(const void* A, bnb_dtype_t a_dtype, int64_t n, float offset, float* out,
                                            int32_t device, bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    check_float(a_dtype, "A");
    BNB_CHECK_ARG(n >= kNumQuantiles, "estimate_quantiles needs at least ", kNumQuantiles, " elements, got ", n);
    BNB_CHECK_ARG(offset > 0.0f && offset < 0.5f, "offset must be in (0, 0.5), got ", offset);
    check_ptr(A, "A", n);
    BNB_CHECK_ARG(out != nullptr, "out is a null pointer");
    backend::check_device(device);
    backend::estimate_quantiles({A, out, n, offset, a_dtype}, device, stream);
  });
}

}  // extern "C"

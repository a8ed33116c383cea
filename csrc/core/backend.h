// What each backend library (CPU, CUDA) implements. The C entry points in csrc/capi validate
// their arguments against the backend's support table, fill a params struct and call these.
// Every function runs on `device` / `stream` (ignored by the CPU backend) and never synchronises.
#pragma once

#include <string>

#include "core/optim.h"
#include "core/params.h"

namespace bnb::backend {

// ---- the support table: the only place that says which configurations exist ----
const char* name();                                   // "cpu" or "cuda"
bool supports_blocksize_8bit(int64_t blocksize);      // quantize/dequantize_blockwise
const char* blocksize_8bit_rule();                    // human-readable form of the rule, for errors
std::string info_json();                              // bnb_backend_info payload
void check_device(int32_t device);                    // throws if `device` cannot run this backend

// ---- op families ----
void quantize_blockwise(const QuantizeBlockwiseParams& p, int32_t device, bnb_stream_t stream);
void dequantize_blockwise(const DequantizeBlockwiseParams& p, int32_t device, bnb_stream_t stream);
void quantize_4bit(const Quantize4bitParams& p, int32_t device, bnb_stream_t stream);
void dequantize_4bit(const Dequantize4bitParams& p, int32_t device, bnb_stream_t stream);
void int8_vectorwise_quant(const Int8VectorwiseQuantParams& p, int32_t device, bnb_stream_t stream);
void int8_colwise_quant(const Int8ColwiseQuantParams& p, int32_t device, bnb_stream_t stream);
// Lists the columns whose flag equals tag into columns [cols] (ascending), zeroes them in out
// [rows, cols] unless out is null, and returns their count (waits for the stream on CUDA).
int64_t int8_outlier_columns(const uint8_t* flags, uint8_t tag, int64_t rows, int64_t cols, int8_t* out,
                             int64_t* columns, int32_t device, bnb_stream_t stream);
void estimate_quantiles(const EstimateQuantilesParams& p, int32_t device, bnb_stream_t stream);
void gemm_4bit(const Gemm4bitParams& p, int32_t device, bnb_stream_t stream);
void int8_linear_matmul(const Int8MatmulParams& p, int32_t device, bnb_stream_t stream);
void int8_mm_dequant(const int32_t* acc, const Int8DequantParams& p, int32_t device, bnb_stream_t stream);
void int8_scaled_mm(const Int8MatmulParams& mm, const Int8DequantParams& dq, int32_t device, bnb_stream_t stream);
void int8_linear(const Int8LinearParams& p, int32_t device, bnb_stream_t stream);
void set_blas_library(const char* path);
bool use_threading_runtime(const char* path);  // bnb_set_cpu_threading_runtime (false: not usable)
void optimizer_update_32bit(OptimizerKind kind, const OptimStep& step, const Optimizer32bitParams& p, int32_t device,
                            bnb_stream_t stream);
void optimizer_update_8bit_blockwise(OptimizerKind kind, const OptimStep& step, const Optimizer8bitParams& p,
                                     int32_t device, bnb_stream_t stream);
// Fused step; `tensors` is a host array of `count` entries (already validated).
void optimizer_update_multi(OptimizerKind kind, const OptimStep& step, const OptimizerMultiParams& p, int32_t device,
                            bnb_stream_t stream);

}  // namespace bnb::backend

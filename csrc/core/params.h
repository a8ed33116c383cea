// Torch-free parameter blocks, one per op family. Kernels (CPU and CUDA) take one of these;
// the C entry points fill them after validation. Sizes are int64_t everywhere.
#pragma once

#include <cstdint>

#include "bnb/bnb.h"
#include "bnb/optim.h"
#include "core/formats.h"

namespace bnb {

struct QuantizeBlockwiseParams {
  const void* A;         // [n] input, dtype = a_dtype
  const float* code;     // [256] sorted code book
  uint8_t* out;          // [n] code indices
  float* absmax;         // [ceil(n / blocksize)] per-block max |A|
  int64_t n;
  int64_t blocksize;
  bnb_dtype_t a_dtype;
};

struct DequantizeBlockwiseParams {
  const uint8_t* A;      // [n] code indices
  const float* code;     // [256] code book
  const float* absmax;   // [ceil(n / blocksize)]
  void* out;             // [n], dtype = out_dtype
  int64_t n;
  int64_t blocksize;
  bnb_dtype_t out_dtype;
};

struct Quantize4bitParams {
  const void* A;         // [n] input, dtype = a_dtype
  uint8_t* packed;       // [ceil(n / 2)] two codes per byte, element 2j in the high nibble
  float* absmax;         // [ceil(n / blocksize)]
  int64_t n;
  int64_t blocksize;     // pow2 in [32, 4096]
  bnb_dtype_t a_dtype;
  QuantType qtype;
};

struct Dequantize4bitParams {
  const uint8_t* packed; // [ceil(n / 2)]
  const float* absmax;   // [ceil(n / blocksize)]
  void* out;             // [n], dtype = out_dtype
  int64_t n;
  int64_t blocksize;
  bnb_dtype_t out_dtype;
  QuantType qtype;
};

struct Int8VectorwiseQuantParams {
  const void* A;         // [rows, cols] row-major, dtype = a_dtype
  int8_t* out;           // [rows, cols]
  float* row_stats;      // [rows] absmax of the non-outlier values of each row
  uint8_t* outlier_cols; // [cols] flag_value() where the column holds an |x| >= threshold; null if threshold == 0
                         // or (CUDA) when the caller finds the outlier columns itself
  int64_t rows;
  int64_t cols;
  float threshold;       // 0 = no outlier handling
  bnb_dtype_t a_dtype;
  // What an outlier column's flag is set to. 0: the backend clears outlier_cols first and flags with 1;
  // 1..255: outlier_cols is not cleared and flagged columns get this tag (a caller that reuses one flag
  // buffer advances the tag per call and clears only when it wraps, so no clearing per call).
  uint8_t flag_tag = 0;
  BNB_HD uint8_t flag_value() const { return flag_tag != 0 ? flag_tag : uint8_t{1}; }
};

struct Int8ColwiseQuantParams {
  const void* A;         // [rows, cols] row-major, dtype = a_dtype
  int8_t* out;           // [rows, cols]
  float* col_stats;      // [cols] absmax of the non-outlier values of each column
  int64_t rows;
  int64_t cols;
  float threshold;
  bnb_dtype_t a_dtype;
};

struct EstimateQuantilesParams {
  const void* A;         // [n], dtype = a_dtype
  float* out;            // [256]
  int64_t n;
  float offset;          // probabilities run linspace(offset, 1 - offset, 256)
  bnb_dtype_t a_dtype;
};

constexpr int kNumQuantiles = 256;

}  // namespace bnb

namespace bnb {

// One optimizer step over one tensor. Which state pointers are used depends on the rule:
// state1 always ([2, n] for AdEMAMix), state2 for Adam and AdEMAMix.
struct Optimizer32bitParams {
  void* p;             // [n] parameters, dtype = p_dtype, updated in place
  const void* g;       // [n] gradients, dtype = g_dtype
  float* state1;       // [n] (AdEMAMix: [2, n]: fast moment, then slow moment)
  float* state2;       // [n] or null
  float* unorm;        // [1] squared update norm, when max_unorm > 0
  int64_t n;
  bnb_dtype_t p_dtype;
  bnb_dtype_t g_dtype;
};

struct Optimizer8bitParams {
  void* p;              // [n] parameters, dtype = p_dtype
  const void* g;        // [n] gradients, dtype = g_dtype
  uint8_t* state1;      // [n] codes into qmap1 (AdEMAMix: [2, n])
  uint8_t* state2;      // [n] codes into qmap2, or null
  const float* qmap1;   // [256] signed code book
  const float* qmap2;   // [256] unsigned code book, or null
  float* absmax1;       // [nb] per-block scale of state1 (AdEMAMix: [2, nb])
  float* absmax2;       // [nb] or null
  float* unorm;         // [1] squared update norm, when max_unorm > 0
  int64_t n;
  bnb_dtype_t p_dtype;
  bnb_dtype_t g_dtype;
};

// A fused step over many tensors with one rule, one set of hyper-parameters and one state layout.
struct OptimizerMultiParams {
  const bnb_optimizer_tensor_t* tensors;  // [count] host array
  int64_t count;
  int32_t state_bits;                     // 8 or 32
  const float* qmap1;                     // [256] (8-bit states)
  const float* qmap2;                     // [256] or null
  bnb_dtype_t p_dtype;
  bnb_dtype_t g_dtype;
};

// A [M, K] times the transposed 4-bit weight W [N, K] (+ bias), accumulated in float32.
struct Gemm4bitParams {
  const void* A;          // [M, K], dtype = a_dtype
  const uint8_t* packed;  // [ceil(N K / 2)] codes of W, row-major flat, element 2j in the high nibble
  const float* absmax;    // [ceil(N K / blocksize)], or the second-level scales when absmax_q is set
  const uint8_t* absmax_q;      // double quantization: [ceil(N K / blocksize)] codes, or null
  const float* absmax_code;     // [256] (with absmax_q)
  const float* absmax_offset;   // one value (with absmax_q)
  const void* bias;       // [N], dtype = a_dtype, or null
  void* out;              // [M, N], dtype = a_dtype
  int64_t M, K, N;
  int64_t blocksize;
  bnb_dtype_t a_dtype;
  QuantType qtype;

  bool nested() const { return absmax_q != nullptr; }
};

// LLM.int8() products. acc/out are row-major [M, N]; A [M, K] and B [N, K] row-major int8.
struct Int8MatmulParams {
  const int8_t* A;
  const int8_t* B;
  int32_t* out;
  int64_t M, N, K;
};

struct Int8DequantParams {
  const float* row_stats;  // [M]
  const float* col_stats;  // [N]
  const void* bias;        // [N] or null
  bnb_dtype_t bias_dtype;
  void* out;               // [M, N]
  bnb_dtype_t out_dtype;
  int64_t M, N;
};

// bnb_int8_linear: X [M, K] float, CB [N, K] int8, SCB [N]; bias and out in X's dtype.
struct Int8LinearParams {
  const void* X;
  bnb_dtype_t x_dtype;
  const int8_t* CB;
  const float* SCB;
  const void* bias;
  void* out;
  uint8_t* outlier_mask;  // [K] or null: where to leave the outlier columns (threshold > 0)
  int64_t M, N, K;
  float threshold;
};

// 1 / 127^2: both operands were scaled by 127 / absmax of their row.
constexpr float kInt8DequantScale = 1.0f / (127.0f * 127.0f);

// Second-level block of the double-quantized scales of gemm_4bit (fixed by the op's contract).
constexpr int64_t kNestedBlocksize = 256;

}  // namespace bnb

// Scalar reference kernels: straightforward loops that define the results every SIMD path
// must reproduce (bit for bit for codes and packing; tolerance only where noted).
#include <algorithm>
#include <cmath>

#include "core/dispatch.h"
#include "core/formats.h"
#include "cpu/kernels.h"
#include "cpu/types.h"

namespace bnb::cpu {
namespace {

template <typename T>
void quantize_blockwise_t(const QuantizeBlockwiseParams& p, const CodeSearch& search, int64_t b0, int64_t b1) {
  const T* A = static_cast<const T*>(p.A);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * p.blocksize;
    const int64_t end = std::min(begin + p.blocksize, p.n);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = absmax_keeping_nan(amax, to_float(A[i]));
    p.absmax[b] = stored_absmax(amax);
    const bool finite = is_finite(amax);  // else the rule for blocks holding inf or NaN (formats.h)
    const float scale = inverse_absmax(amax);
    for (int64_t i = begin; i < end; ++i) {
      const float x = to_float(A[i]);
      p.out[i] = static_cast<uint8_t>(search.search(finite ? x * scale : value_in_non_finite_block(x)));
    }
  }
}

template <typename T>
void dequantize_blockwise_t(const DequantizeBlockwiseParams& p, int64_t begin, int64_t end) {
  T* out = static_cast<T*>(p.out);
  for (int64_t i = begin; i < end; ++i) out[i] = from_float<T>(p.code[p.A[i]] * p.absmax[i / p.blocksize]);
}

template <typename T, QuantType Q>
void quantize_4bit_t(const Quantize4bitParams& p, int64_t b0, int64_t b1) {
  const T* A = static_cast<const T*>(p.A);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * p.blocksize;
    const int64_t end = std::min(begin + p.blocksize, p.n);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = absmax_keeping_nan(amax, to_float(A[i]));
    p.absmax[b] = stored_absmax(amax);
    const bool finite = is_finite(amax);  // else the rule for blocks holding inf or NaN (formats.h)
    const float scale = inverse_absmax(amax);
    auto encode = [&](int64_t i) {
      const float x = to_float(A[i]);
      return encode_4bit<Q>(finite ? x * scale : value_in_non_finite_block(x));
    };
    for (int64_t i = begin; i < end; i += 2) {
      const uint8_t hi = encode(i);
      const uint8_t lo = (i + 1 < end) ? encode(i + 1) : 0;
      p.packed[i / 2] = static_cast<uint8_t>((hi << 4) | lo);
    }
  }
}

template <typename T>
void dequantize_4bit_t(const Dequantize4bitParams& p, int64_t byte0, int64_t byte1) {
  const float* table = p.qtype == QuantType::NF4 ? kNF4Values : kFP4Values;
  T* out = static_cast<T*>(p.out);
  for (int64_t j = byte0; j < byte1; ++j) {
    const uint8_t byte = p.packed[j];
    const int64_t i = 2 * j;
    out[i] = from_float<T>(table[byte >> 4] * p.absmax[i / p.blocksize]);
    if (i + 1 < p.n) out[i + 1] = from_float<T>(table[byte & 0xf] * p.absmax[(i + 1) / p.blocksize]);
  }
}

// Round half to even, as torch.round and the CUDA kernels (rintf) do.
inline int8_t round_to_int8(float v) { return static_cast<int8_t>(std::nearbyint(v)); }

template <typename T>
void int8_vectorwise_quant_t(const Int8VectorwiseQuantParams& p, int64_t r0, int64_t r1) {
  const T* A = static_cast<const T*>(p.A);
  const bool outliers = p.threshold > 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = A + r * p.cols;
    int8_t* out = p.out + r * p.cols;
    float amax = 0.0f;
    for (int64_t c = 0; c < p.cols; ++c) {
      const float a = std::fabs(to_float(row[c]));
      if (outliers && a >= p.threshold) {
        __atomic_store_n(&p.outlier_cols[c], p.flag_value(), __ATOMIC_RELAXED);
        continue;
      }
      amax = absmax_keeping_nan(amax, a);  // NaN is never an outlier (a >= threshold is false)
    }
    p.row_stats[r] = stored_absmax(amax);
    // A row whose absmax is NaN or inf has no finite scale: all codes 0, and row_stats carries the
    // NaN / inf into the dequantized row. (Also avoids converting NaN = inf * 0 to int8, undefined.)
    if (!is_finite(amax)) {
      std::fill(out, out + p.cols, int8_t{0});
      continue;
    }
    const float scale = int8_scale(amax);
    for (int64_t c = 0; c < p.cols; ++c) {
      const float x = to_float(row[c]);
      out[c] = (outliers && std::fabs(x) >= p.threshold) ? int8_t{0} : round_to_int8(x * scale);
    }
  }
}

void quantize_blockwise(const QuantizeBlockwiseParams& p, const CodeSearch& s, int64_t b0, int64_t b1) {
  dispatch_float<CpuType>(p.a_dtype, "A",
                          [&](auto tag) { quantize_blockwise_t<typename decltype(tag)::type>(p, s, b0, b1); });
}
void dequantize_blockwise(const DequantizeBlockwiseParams& p, int64_t i0, int64_t i1) {
  dispatch_float<CpuType>(p.out_dtype, "out",
                          [&](auto tag) { dequantize_blockwise_t<typename decltype(tag)::type>(p, i0, i1); });
}
void quantize_4bit(const Quantize4bitParams& p, int64_t b0, int64_t b1) {
  dispatch_float<CpuType>(p.a_dtype, "A", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (p.qtype == QuantType::NF4) quantize_4bit_t<T, QuantType::NF4>(p, b0, b1);
    else quantize_4bit_t<T, QuantType::FP4>(p, b0, b1);
  });
}
void dequantize_4bit(const Dequantize4bitParams& p, int64_t j0, int64_t j1) {
  dispatch_float<CpuType>(p.out_dtype, "out",
                          [&](auto tag) { dequantize_4bit_t<typename decltype(tag)::type>(p, j0, j1); });
}
void int8_vectorwise_quant(const Int8VectorwiseQuantParams& p, int64_t r0, int64_t r1) {
  dispatch_float<CpuType>(p.a_dtype, "A",
                          [&](auto tag) { int8_vectorwise_quant_t<typename decltype(tag)::type>(p, r0, r1); });
}

}  // namespace

const KernelTable& reference_kernels() {
  static const KernelTable table{"scalar",      quantize_blockwise, dequantize_blockwise, quantize_4bit,
                                 dequantize_4bit, int8_vectorwise_quant};
  return table;
}

}  // namespace bnb::cpu

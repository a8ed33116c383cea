// The CPU backend: splits each op over the thread pool and runs the active kernel table.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "cpu/amx.h"
#include "cpu/huge_pages.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/threading.h"
#include "cpu/types.h"

namespace bnb::backend {

using cpu::active_kernels;
using cpu::parallel_for;

namespace {
// Smallest amount of work (elements) worth a thread of its own: below this, waking a worker
// costs more than the work.
constexpr int64_t kGrainElements = 1 << 16;

int64_t grain_in(int64_t unit_elements) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(unit_elements, 1)); }
}  // namespace

const char* name() { return "cpu"; }

// Any positive blocksize: the CPU kernels loop over arbitrary block lengths.
bool supports_blocksize_8bit(int64_t blocksize) { return blocksize > 0; }
const char* blocksize_8bit_rule() { return "any positive integer"; }

void check_device(int32_t device) {
  BNB_CHECK_ARG(device <= 0, "the CPU backend has no device ", device);
}

std::string info_json() {
  // products: the wider instructions the quantized products use on top of the kernel table.
  std::string products;
  auto add = [&](bool active, const char* name) {
    if (active) products += concat(products.empty() ? "" : ", ", "\"", name, "\"");
  };
  add(cpu::avx512_vnni_active(), "avx512_vnni");
  add(cpu::avx512_bf16_active(), "avx512_bf16");
  add(cpu::amx_int8_active(), "amx_int8");
  add(cpu::amx_bf16_active(), "amx_bf16");
  return concat("{\"backend\": \"cpu\", \"isa\": \"", active_kernels().isa, "\", \"threads\": ", cpu::num_threads(),
                ", \"threading\": \"", cpu::threading_runtime(), "\"",
                ", \"isa_available\": [\"scalar\"", cpu::avx2_kernels() ? ", \"avx2\"" : "",
                cpu::avx512_kernels() ? ", \"avx512\"" : "", "], \"products\": [", products, "]}");
}

void quantize_blockwise(const QuantizeBlockwiseParams& p, int32_t, bnb_stream_t) {
  // The kernels search the code in ascending order (see SortedCode) and write positions in it; for a
  // code out of order each block's positions are then mapped back to the caller's indices, while the
  // block is still in cache.
  SortedCode sorted;
  const bool ascending = sort_code(p.code, sorted);
  CodeSearch search;
  search.build(sorted.value);
  const int64_t blocks = (p.n + p.blocksize - 1) / p.blocksize;
  const auto& k = active_kernels();
  parallel_for(blocks, grain_in(p.blocksize), [&](int64_t b0, int64_t b1) {
    k.quantize_blockwise(p, search, b0, b1);
    if (ascending) return;
    const int64_t end = std::min(b1 * p.blocksize, p.n);
    for (int64_t i = b0 * p.blocksize; i < end; ++i) p.out[i] = sorted.index[p.out[i]];
  });
}

// Outputs from this size on are worth advising huge pages for (see cpu/huge_pages.h).
constexpr size_t kHugePageOutputBytes = size_t{8} << 20;

void advise_output(void* out, int64_t n, bnb_dtype_t dtype) {
  const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
  if (bytes >= kHugePageOutputBytes) cpu::advise_huge_pages(out, bytes);
}

void dequantize_blockwise(const DequantizeBlockwiseParams& p, int32_t, bnb_stream_t) {
  advise_output(p.out, p.n, p.out_dtype);
  const auto& k = active_kernels();
  parallel_for(p.n, kGrainElements, [&](int64_t i0, int64_t i1) { k.dequantize_blockwise(p, i0, i1); });
}

void quantize_4bit(const Quantize4bitParams& p, int32_t, bnb_stream_t) {
  const int64_t blocks = (p.n + p.blocksize - 1) / p.blocksize;
  const auto& k = active_kernels();
  parallel_for(blocks, grain_in(p.blocksize), [&](int64_t b0, int64_t b1) { k.quantize_4bit(p, b0, b1); });
}

void dequantize_4bit(const Dequantize4bitParams& p, int32_t, bnb_stream_t) {
  advise_output(p.out, p.n, p.out_dtype);
  const int64_t bytes = (p.n + 1) / 2;
  const auto& k = active_kernels();
  parallel_for(bytes, kGrainElements / 2, [&](int64_t j0, int64_t j1) { k.dequantize_4bit(p, j0, j1); });
}

void int8_vectorwise_quant(const Int8VectorwiseQuantParams& p, int32_t, bnb_stream_t) {
  if (p.outlier_cols && p.flag_tag == 0) std::memset(p.outlier_cols, 0, static_cast<size_t>(p.cols));
  const auto& k = active_kernels();
  parallel_for(p.rows, grain_in(p.cols), [&](int64_t r0, int64_t r1) { k.int8_vectorwise_quant(p, r0, r1); });
}

int64_t int8_outlier_columns(const uint8_t* flags, uint8_t tag, int64_t rows, int64_t cols, int8_t* out,
                             int64_t* columns, int32_t, bnb_stream_t) {
  int64_t count = 0;
  for (int64_t c = 0; c < cols; ++c)
    if (flags[c] == tag) columns[count++] = c;
  if (out != nullptr && count > 0) {
    parallel_for(rows, grain_in(count), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < count; ++j) out[r * cols + columns[j]] = 0;
    });
  }
  return count;
}

namespace {
template <typename T>
void int8_colwise_quant_t(const Int8ColwiseQuantParams& p) {
  const T* A = static_cast<const T*>(p.A);
  const bool outliers = p.threshold > 0.0f;
  // Column ranges per thread; each walks the rows so reads stay sequential within a row slice.
  parallel_for(p.cols, grain_in(p.rows), [&](int64_t c0, int64_t c1) {
    std::vector<float> amax(static_cast<size_t>(c1 - c0), 0.0f);
    for (int64_t r = 0; r < p.rows; ++r) {
      const T* row = A + r * p.cols;
      for (int64_t c = c0; c < c1; ++c) {
        const float a = std::fabs(cpu::to_float(row[c]));
        if (outliers && a >= p.threshold) continue;
        amax[c - c0] = absmax_keeping_nan(amax[c - c0], a);  // as the row absmax: a NaN is kept
      }
    }
    for (int64_t c = c0; c < c1; ++c) p.col_stats[c] = stored_absmax(amax[c - c0]);
    for (int64_t r = 0; r < p.rows; ++r) {
      const T* row = A + r * p.cols;
      int8_t* out = p.out + r * p.cols;
      for (int64_t c = c0; c < c1; ++c) {
        const float x = cpu::to_float(row[c]);
        const float m = amax[c - c0];
        // A column with a NaN or inf absmax has no finite scale: code 0 (the stats carry it).
        out[c] = (!is_finite(m) || (outliers && std::fabs(x) >= p.threshold))
                     ? int8_t{0}
                     : static_cast<int8_t>(std::nearbyint(x * int8_scale(m)));
      }
    }
  });
}

template <typename T>
void estimate_quantiles_t(const EstimateQuantilesParams& p) {
  const T* A = static_cast<const T*>(p.A);
  std::vector<float> v(static_cast<size_t>(p.n));
  parallel_for(p.n, kGrainElements, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) v[i] = cpu::to_float(A[i]);
  });
  std::sort(v.begin(), v.end());
  // Quantile k at probability offset + k * (1 - 2 offset) / 255, linear between order statistics.
  for (int k = 0; k < kNumQuantiles; ++k) {
    const double prob = p.offset + k * (1.0 - 2.0 * p.offset) / (kNumQuantiles - 1);
    const double pos = prob * static_cast<double>(p.n - 1);
    const int64_t i = static_cast<int64_t>(std::floor(pos));
    const double frac = pos - static_cast<double>(i);
    const double hi = v[std::min<int64_t>(i + 1, p.n - 1)];
    p.out[k] = static_cast<float>(v[i] + (hi - v[i]) * frac);
  }
}
}  // namespace

void int8_colwise_quant(const Int8ColwiseQuantParams& p, int32_t, bnb_stream_t) {
  dispatch_float<cpu::CpuType>(p.a_dtype, "A", [&](auto tag) { int8_colwise_quant_t<typename decltype(tag)::type>(p); });
}

void estimate_quantiles(const EstimateQuantilesParams& p, int32_t, bnb_stream_t) {
  dispatch_float<cpu::CpuType>(p.a_dtype, "A", [&](auto tag) { estimate_quantiles_t<typename decltype(tag)::type>(p); });
}

}  // namespace bnb::backend

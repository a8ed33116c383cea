// The CPU kernel table. Each entry processes a sub-range of the problem (so the caller can
// spread ranges over threads); the ISA-specific implementations (ref/, x86/) fill one table
// each and dispatch.cpp picks the best the machine supports, once, at load time.
#pragma once

#include <cstdint>

#include "core/code_search.h"
#include "core/params.h"

namespace bnb::cpu {

struct KernelTable {
  const char* isa;  // "scalar", "avx2", "avx512"
  // Blocks [block_begin, block_end) of an 8-bit blockwise quantization. Writes, for each element, its
  // position in the ascending code `search` was built from (SortedCode: the caller maps positions back
  // when the code was out of order). Blocks holding inf or NaN follow the rule of core/formats.h.
  void (*quantize_blockwise)(const QuantizeBlockwiseParams& p, const CodeSearch& search, int64_t block_begin,
                             int64_t block_end);
  // Elements [begin, end) of an 8-bit blockwise dequantization.
  void (*dequantize_blockwise)(const DequantizeBlockwiseParams& p, int64_t begin, int64_t end);
  // Blocks [block_begin, block_end) of a 4-bit quantization (blocks are whole bytes: blocksize is even;
  // blocks holding inf or NaN follow the rule of core/formats.h).
  void (*quantize_4bit)(const Quantize4bitParams& p, int64_t block_begin, int64_t block_end);
  // Packed bytes [byte_begin, byte_end) of a 4-bit dequantization (elements 2*byte_begin ..).
  void (*dequantize_4bit)(const Dequantize4bitParams& p, int64_t byte_begin, int64_t byte_end);
  // Rows [row_begin, row_end) of LLM.int8() row-wise quantization; outlier_cols must be zeroed first.
  void (*int8_vectorwise_quant)(const Int8VectorwiseQuantParams& p, int64_t row_begin, int64_t row_end);
};

// The scalar reference: always built, the oracle for every other table.
const KernelTable& reference_kernels();
// ISA tables; nullptr when the build or the machine lacks the ISA.
const KernelTable* avx2_kernels();
const KernelTable* avx512_kernels();

// The table used by the backend: BNB_CPU_ISA=scalar|avx2|avx512 forces one (if available).
const KernelTable& active_kernels();

}  // namespace bnb::cpu

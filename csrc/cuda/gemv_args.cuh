// The kernel arguments of the few-row 4-bit products (gemm_4bit.cu, gemm_4bit_streamed.cu): the op's
// pointers and shape, and the 16 values of the 4-bit type, from which each CTA builds its pair table.
#pragma once

#include <cstdint>

#include "core/formats.h"
#include "core/params.h"
#include "cuda/common.cuh"
#include "cuda/dequantize_vectors.cuh"  // log2_of

namespace bnb::backend {

struct GemvArgs {
  const void* A;
  const uint8_t* packed;
  const float* absmax;
  const uint8_t* absmax_q;
  const float* absmax_code;
  const float* absmax_offset;
  const void* bias;
  void* out;
  int64_t M, K, N;
  int log2_blocksize;
  float code[16];  // the 16 values of the 4-bit type, read once per CTA to build the pair table
};

inline GemvArgs gemv_args(const Gemm4bitParams& p) {
  GemvArgs args{p.A, p.packed, p.absmax, p.absmax_q, p.absmax_code, p.absmax_offset, p.bias, p.out,
                p.M, p.K, p.N, cuda::log2_of(p.blocksize), {}};
  const float* values = p.qtype == QuantType::NF4 ? kNF4Values : kFP4Values;
  for (int i = 0; i < 16; ++i) args.code[i] = values[i];
  return args;
}

}  // namespace bnb::backend

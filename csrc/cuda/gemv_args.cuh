// The kernel arguments of the few-row 4-bit products (gemm_4bit.cu, gemm_4bit_streamed.cu,
// gemm_4bit_staged.cu): the op's pointers and shape, and the 16 values of the 4-bit type, from which each CTA
// builds its pair table; and the shapes the two Hopper kernels that stage the weight both serve.
#pragma once

#include <climits>
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

// What the Hopper kernels that stage the weight in shared memory (gemm_4bit_streamed.cu, gemm_4bit_staged.cu)
// need of the operands: float16/bfloat16 activations, blocksize 64, 16-byte aligned operands (the copy engine's
// sources), 32-bit tensor-copy coordinates, compute capability 9.0.
inline bool hopper_staging_operands(const Gemm4bitParams& p, int32_t device) {
  const bool types = p.blocksize == 64 && (p.a_dtype == BNB_DTYPE_FLOAT16 || p.a_dtype == BNB_DTYPE_BFLOAT16);
  const bool aligned = cuda::is_aligned(p.A, 16) && cuda::is_aligned(p.packed, 16) &&
                       cuda::is_aligned(p.absmax, 16) && (p.absmax_q == nullptr || cuda::is_aligned(p.absmax_q, 16));
  const bool coordinates = p.N <= INT32_MAX && p.K <= INT32_MAX;
  return types && aligned && coordinates && cuda::compute_capability(device) == 90;
}

// 16-row tiles of W per SM: the register-fed kernel runs four 16-row CTAs per SM, so above 4 its grid takes
// several waves (on one wave that kernel keeps the weight in L2 between calls and starts faster).
inline int64_t tiles_per_sm(const Gemm4bitParams& p, int32_t device) {
  return ((p.N + 15) / 16 + cuda::sm_count(device) - 1) / cuda::sm_count(device);
}

// The operands above on a grid of several waves of the register-fed kernel.
inline bool hopper_staging_serves(const Gemm4bitParams& p, int32_t device) {
  return hopper_staging_operands(p, device) && tiles_per_sm(p, device) > 4;
}

}  // namespace bnb::backend

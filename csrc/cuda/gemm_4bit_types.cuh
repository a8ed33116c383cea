// The four instantiations of a 4-bit product kernel (activation type x double-quantized scales), chosen in one
// place for every CUDA 4-bit kernel, and the decoding of a double-quantized block scale.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "core/params.h"

namespace bnb::backend {

// Calls launch(T{}, std::bool_constant<Nested>{}) with T the activations' 16-bit type (__half or
// __nv_bfloat16) and Nested whether the block scales are double-quantized.
template <typename Launch>
void with_activation_type_and_nesting(const Gemm4bitParams& p, Launch&& launch) {
  const bool half = p.a_dtype == BNB_DTYPE_FLOAT16;
  if (p.nested()) {
    half ? launch(__half{}, std::true_type{}) : launch(__nv_bfloat16{}, std::true_type{});
  } else {
    half ? launch(__half{}, std::false_type{}) : launch(__nv_bfloat16{}, std::false_type{});
  }
}

// A double-quantized block scale from its 8-bit code's value, the second-level scale and the offset, each step
// rounded as dequantizing the statistics rounds it (no fused multiply-add).
__device__ __forceinline__ float decode_nested_scale(float code_value, float second_level, float offset) {
  return __fadd_rn(__fmul_rn(code_value, second_level), offset);
}

}  // namespace bnb::backend

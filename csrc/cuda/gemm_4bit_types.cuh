// The four instantiations of a 4-bit product kernel (activation type x double-quantized scales), chosen in one
// place for every CUDA 4-bit kernel.
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

}  // namespace bnb::backend

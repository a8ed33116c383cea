// The Hopper few-row 4-bit product with the weight streamed through shared memory (gemm_4bit_streamed.cu).
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace bnb::backend {

// Whether the kernel takes these shapes, dtypes and alignments on this device.
bool gemm_4bit_streamed_serves(const Gemm4bitParams& p, int32_t device);
void gemm_4bit_streamed(const Gemm4bitParams& p, int32_t device, cudaStream_t stream);

}  // namespace bnb::backend

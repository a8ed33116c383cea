// The Hopper 4-bit product of 9..16 activation rows with the weight and the activations staged together in
// shared memory (gemm_4bit_staged.cu).
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace bnb::backend {

// Whether the kernel takes these shapes, dtypes and alignments on this device.
bool gemm_4bit_staged_serves(const Gemm4bitParams& p, int32_t device);
void gemm_4bit_staged(const Gemm4bitParams& p, int32_t device, cudaStream_t stream);

}  // namespace bnb::backend

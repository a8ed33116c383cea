// CUDA 4-bit matrix product: not part of this build yet. The Python op serves CUDA tensors with the
// native dequantize_4bit kernel followed by cuBLAS until a weight-streaming kernel lands here.
#include "core/backend.h"
#include "core/error.h"

namespace bnb::backend {

void gemm_4bit(const Gemm4bitParams&, int32_t, bnb_stream_t) {
  fail(BNB_STATUS_NOT_IMPLEMENTED, "the CUDA 4-bit GEMM kernel is not part of this build yet");
}

}  // namespace bnb::backend

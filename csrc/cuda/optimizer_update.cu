// CUDA optimizer updates (placeholder until the kernels land): a clear status, never a wrong answer.
#include "core/backend.h"
#include "core/error.h"

namespace bnb::backend {

void optimizer_update_32bit(OptimizerKind, const OptimStep&, const Optimizer32bitParams&, int32_t, bnb_stream_t) {
  fail(BNB_STATUS_NOT_IMPLEMENTED, "the CUDA 32-bit optimizer kernels are not part of this build yet");
}

void optimizer_update_8bit_blockwise(OptimizerKind, const OptimStep&, const Optimizer8bitParams&, int32_t,
                                     bnb_stream_t) {
  fail(BNB_STATUS_NOT_IMPLEMENTED, "the CUDA 8-bit optimizer kernels are not part of this build yet");
}

void optimizer_update_multi(OptimizerKind, const OptimStep&, const OptimizerMultiParams&, int32_t, bnb_stream_t) {
  fail(BNB_STATUS_NOT_IMPLEMENTED, "the CUDA fused optimizer kernels are not part of this build yet");
}

}  // namespace bnb::backend

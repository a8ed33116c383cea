// extern "C" entry points of the optimizer family: validate, derive the step constants, dispatch.
#include <cmath>
#include <string>

#include "bnb/optim.h"
#include "core/backend.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/optim.h"

namespace bnb {
namespace {

OptimizerKind check_optimizer(bnb_optimizer_t o) {
  BNB_CHECK_ARG(o >= BNB_OPTIM_ADAM && o <= BNB_OPTIM_ADEMAMIX, "optimizer must be a bnb_optimizer_t (1..6), got ",
                int(o));
  return static_cast<OptimizerKind>(o);
}

OptimStep check_hparams(const bnb_optimizer_hparams_t* h, OptimizerKind kind) {
  BNB_CHECK_ARG(h != nullptr, "hparams is a null pointer");
  BNB_CHECK_ARG(std::isfinite(h->lr) && h->lr >= 0.0f, "lr must be finite and >= 0, got ", h->lr);
  BNB_CHECK_ARG(std::isfinite(h->eps) && h->eps >= 0.0f, "eps must be finite and >= 0, got ", h->eps);
  BNB_CHECK_ARG(std::isfinite(h->weight_decay) && h->weight_decay >= 0.0f, "weight_decay must be >= 0, got ",
                h->weight_decay);
  BNB_CHECK_ARG(h->step >= 1, "step must be >= 1 (the step number after incrementing), got ", h->step);
  BNB_CHECK_ARG(std::isfinite(h->gnorm_scale), "gnorm_scale must be finite, got ", h->gnorm_scale);
  BNB_CHECK_ARG(h->max_unorm >= 0.0f, "max_unorm must be >= 0, got ", h->max_unorm);
  if (kind == OptimizerKind::Adam || kind == OptimizerKind::AdEMAMix) {
    BNB_CHECK_ARG(h->beta1 >= 0.0f && h->beta1 < 1.0f, "beta1 must be in [0, 1), got ", h->beta1);
    BNB_CHECK_ARG(h->beta2 >= 0.0f && h->beta2 < 1.0f, "beta2 must be in [0, 1), got ", h->beta2);
  }
  return OptimStep::from(*h);
}

void check_ptr(const void* p, const char* arg, int64_t n) {
  BNB_CHECK_ARG(n == 0 || p != nullptr, arg, " is a null pointer but ", n, " elements were requested");
}

void check_common(OptimizerKind kind, const OptimStep& s, const void* p, bnb_dtype_t p_dtype, const void* g,
                  bnb_dtype_t g_dtype, const void* state1, const void* state2, const float* unorm, int64_t n) {
  BNB_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  BNB_CHECK_ARG(is_float_dtype(p_dtype), "p must be float32, float16 or bfloat16, got ", dtype_name(p_dtype));
  BNB_CHECK_ARG(is_float_dtype(g_dtype), "g must be float32, float16 or bfloat16, got ", dtype_name(g_dtype));
  check_ptr(p, "p", n);
  check_ptr(g, "g", n);
  check_ptr(state1, "state1", n);
  if (has_second_state(kind)) check_ptr(state2, "state2", n);
  if (s.trust_ratio) BNB_CHECK_ARG(unorm != nullptr, "unorm is required when max_unorm > 0");
}

}  // namespace
}  // namespace bnb

using namespace bnb;

extern "C" {

BNB_API bnb_status_t bnb_optimizer_update_32bit(bnb_optimizer_t optimizer, const bnb_optimizer_hparams_t* hparams,
                                                void* p, bnb_dtype_t p_dtype, const void* g, bnb_dtype_t g_dtype,
                                                float* state1, float* state2, float* unorm, int64_t n, int32_t device,
                                                bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    const OptimizerKind kind = check_optimizer(optimizer);
    const OptimStep step = check_hparams(hparams, kind);
    check_common(kind, step, p, p_dtype, g, g_dtype, state1, state2, unorm, n);
    if (n == 0) return;
    backend::check_device(device);
    backend::optimizer_update_32bit(kind, step, {p, g, state1, has_second_state(kind) ? state2 : nullptr, unorm, n,
                                                 p_dtype, g_dtype},
                                    device, stream);
  });
}

BNB_API bnb_status_t bnb_optimizer_update_8bit_blockwise(bnb_optimizer_t optimizer,
                                                         const bnb_optimizer_hparams_t* hparams, void* p,
                                                         bnb_dtype_t p_dtype, const void* g, bnb_dtype_t g_dtype,
                                                         uint8_t* state1, uint8_t* state2, const float* qmap1,
                                                         const float* qmap2, float* absmax1, float* absmax2,
                                                         float* unorm, int64_t n, int32_t device,
                                                         bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    const OptimizerKind kind = check_optimizer(optimizer);
    const OptimStep step = check_hparams(hparams, kind);
    check_common(kind, step, p, p_dtype, g, g_dtype, state1, state2, unorm, n);
    BNB_CHECK_ARG(qmap1 != nullptr, "qmap1 is a null pointer");
    check_ptr(absmax1, "absmax1", n);
    if (has_second_state(kind)) {
      BNB_CHECK_ARG(qmap2 != nullptr, "qmap2 is a null pointer");
      check_ptr(absmax2, "absmax2", n);
    }
    if (n == 0) return;
    backend::check_device(device);
    const bool two = has_second_state(kind);
    backend::optimizer_update_8bit_blockwise(kind, step,
                                             {p, g, state1, two ? state2 : nullptr, qmap1, two ? qmap2 : nullptr,
                                              absmax1, two ? absmax2 : nullptr, unorm, n, p_dtype, g_dtype},
                                             device, stream);
  });
}

BNB_API bnb_status_t bnb_optimizer_update_multi(bnb_optimizer_t optimizer, const bnb_optimizer_hparams_t* hparams,
                                                int32_t state_bits, bnb_dtype_t p_dtype, bnb_dtype_t g_dtype,
                                                const float* qmap1, const float* qmap2,
                                                const bnb_optimizer_tensor_t* tensors, int64_t count, int32_t device,
                                                bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    const OptimizerKind kind = check_optimizer(optimizer);
    const OptimStep step = check_hparams(hparams, kind);
    BNB_CHECK_ARG(state_bits == 8 || state_bits == 32, "state_bits must be 8 or 32, got ", state_bits);
    BNB_CHECK_SUPPORTED(!step.trust_ratio, "the fused multi-tensor step has no trust ratio (max_unorm > 0); "
                                           "update such tensors one at a time");
    BNB_CHECK_ARG(count >= 0, "count must be >= 0, got ", count);
    BNB_CHECK_ARG(count == 0 || tensors != nullptr, "tensors is a null pointer");
    const bool two = has_second_state(kind);
    if (state_bits == 8) {
      BNB_CHECK_ARG(qmap1 != nullptr, "qmap1 is a null pointer");
      if (two) BNB_CHECK_ARG(qmap2 != nullptr, "qmap2 is a null pointer");
    }
    for (int64_t i = 0; i < count; ++i) {
      const bnb_optimizer_tensor_t& t = tensors[i];
      check_common(kind, step, t.p, p_dtype, t.g, g_dtype, t.state1, t.state2, nullptr, t.n);
      if (state_bits == 8) {
        BNB_CHECK_ARG(t.n == 0 || t.absmax1 != nullptr, "tensors[", i, "].absmax1 is a null pointer");
        if (two) BNB_CHECK_ARG(t.n == 0 || t.absmax2 != nullptr, "tensors[", i, "].absmax2 is a null pointer");
      }
    }
    if (count == 0) return;
    backend::check_device(device);
    backend::optimizer_update_multi(kind, step,
                                    {tensors, count, state_bits, qmap1, two ? qmap2 : nullptr, p_dtype, g_dtype},
                                    device, stream);
  });
}

}  // extern "C"

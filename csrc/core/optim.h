// Optimizer update rules, written once for the CPU and CUDA backends.
//
// Every rule is a per-element function on float32 values. The trust ratio (LAMB / LARS) needs the
// norm of the whole update first, so the backends run two passes when max_unorm > 0: `update_norm_term`
// accumulates the squared update, then `apply` uses the resulting scale.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "bnb/optim.h"
#include "core/host_device.h"

namespace bnb {

enum class OptimizerKind : int32_t {
  Adam = BNB_OPTIM_ADAM,
  Momentum = BNB_OPTIM_MOMENTUM,
  RMSprop = BNB_OPTIM_RMSPROP,
  Adagrad = BNB_OPTIM_ADAGRAD,
  Lion = BNB_OPTIM_LION,
  AdEMAMix = BNB_OPTIM_ADEMAMIX,
};

constexpr int kOptimBlock = BNB_OPTIM_8BIT_BLOCKSIZE;

constexpr bool has_second_state(OptimizerKind k) { return k == OptimizerKind::Adam || k == OptimizerKind::AdEMAMix; }
// AdEMAMix keeps two first-order moments in state1 ([2, n]).
constexpr int first_state_count(OptimizerKind k) { return k == OptimizerKind::AdEMAMix ? 2 : 1; }

// Step constants derived once per call on the host (in double precision, then rounded), so every
// backend and every element sees identical values.
struct OptimStep {
  float lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale;
  float bias1;       // 1 - beta1^t
  float bias2_sqrt;  // sqrt(1 - beta2^t)
  float inv_bias1;       // 1 / bias1: multiplications instead of divisions in the hot loop
  float inv_bias2_sqrt;  // 1 / bias2_sqrt
  float decay;       // 1 - lr * weight_decay (decoupled decay factor)
  float max_unorm, param_norm;
  int32_t step;
  bool skip_zeros;
  bool trust_ratio;  // max_unorm > 0

  static OptimStep from(const bnb_optimizer_hparams_t& h) {
    OptimStep s{};
    s.lr = h.lr;
    s.beta1 = h.beta1;
    s.beta2 = h.beta2;
    s.beta3 = h.beta3;
    s.alpha = h.alpha;
    s.eps = h.eps;
    s.weight_decay = h.weight_decay;
    s.gnorm_scale = h.gnorm_scale;
    s.bias1 = static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta1), h.step));
    s.bias2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(h.beta2), h.step)));
    s.inv_bias1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(h.beta1), h.step)));
    s.inv_bias2_sqrt = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(h.beta2), h.step)));
    s.decay = static_cast<float>(1.0 - static_cast<double>(h.lr) * h.weight_decay);
    s.max_unorm = h.max_unorm;
    s.param_norm = h.param_norm;
    s.step = h.step;
    s.skip_zeros = h.skip_zeros != 0;
    s.trust_ratio = h.max_unorm > 0.0f;
    return s;
  }
};

// The values one element carries through an update. m2 is AdEMAMix's slow moment.
struct OptimElement {
  float p, g, m, v, m2;
};

// The quotient of an update rule. On the GPU the fast reciprocal-based division (within 2 ulp):
// update directions need no correctly rounded quotient, and the IEEE sequence costs several times
// the instructions in kernels whose speed is set by instruction issue.
BNB_HD float optim_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  // Flushing subnormals spares the range fix-ups around the reciprocal: the divisors here are
  // sqrt(v) + eps, never subnormal.
  float q;
  asm("div.approx.ftz.f32 %0, %1, %2;" : "=f"(q) : "f"(a), "f"(b));
  return q;
#else
  return a / b;
#endif
}

// The square root of a second moment (v >= 0). On the GPU the hardware approximation (one MUFU
// instruction, a few ulp): the IEEE sequence adds a range test, a branch and a called slow path
// per element to kernels whose speed is set by instruction issue. A subnormal v is flushed to 0
// (its root, < 1.1e-19, is lost beside any eps the rules use).
BNB_HD float optim_sqrt(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return std::sqrt(x);
#endif
}

// Is this element left untouched? (non-finite gradient, or an exact zero with skip_zeros)
BNB_HD bool optim_skip(const OptimStep& s, float g) {
  return !is_finite(g) || (s.skip_zeros && g == 0.0f);
}

// 8-bit updates with a second state set both states of an element with a non-finite gradient to 0
// (bitsandbytes' blockwise two-state rule; the parameter is left as it is): one bad gradient then
// cannot leave a huge moment that would drive the block's scale for the steps after it.
BNB_HD bool optim_clears_states(bool two_state_8bit, float g) { return two_state_8bit && !is_finite(g); }

// Update the states of one element (g already scaled by gnorm_scale); returns the unscaled update
// direction u such that the parameter moves by -lr * trust * u (before decoupled decay handling).
template <OptimizerKind K>
BNB_HD float optim_states(const OptimStep& s, OptimElement& e) {
  if constexpr (K == OptimizerKind::Adam) {
    e.m = s.beta1 * e.m + (1.0f - s.beta1) * e.g;
    e.v = s.beta2 * e.v + (1.0f - s.beta2) * e.g * e.g;
    // m_hat / (sqrt(v_hat) + eps), the bias corrections as precomputed reciprocals: one division.
    return optim_div(e.m * s.inv_bias1, optim_sqrt(e.v) * s.inv_bias2_sqrt + s.eps);
  } else if constexpr (K == OptimizerKind::Momentum) {
    const float g = s.weight_decay > 0.0f ? e.g + s.weight_decay * e.p : e.g;
    e.m = s.step == 1 ? g : s.beta1 * e.m + g;
    return e.m;
  } else if constexpr (K == OptimizerKind::RMSprop) {
    const float g = s.weight_decay > 0.0f ? e.g + s.weight_decay * e.p : e.g;
    e.m = s.beta1 * e.m + (1.0f - s.beta1) * g * g;
    return optim_div(g, optim_sqrt(e.m) + s.eps);
  } else if constexpr (K == OptimizerKind::Adagrad) {
    const float g = s.weight_decay > 0.0f ? e.g + s.weight_decay * e.p : e.g;
    e.m = e.m + g * g;
    return optim_div(g, optim_sqrt(e.m) + s.eps);
  } else if constexpr (K == OptimizerKind::Lion) {
    const float c = s.beta1 * e.m + (1.0f - s.beta1) * e.g;
    e.m = s.beta2 * e.m + (1.0f - s.beta2) * e.g;
    return c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : 0.0f);
  } else {  // AdEMAMix
    e.m = s.beta1 * e.m + (1.0f - s.beta1) * e.g;
    e.m2 = s.beta3 * e.m2 + (1.0f - s.beta3) * e.g;
    e.v = s.beta2 * e.v + (1.0f - s.beta2) * e.g * e.g;
    return optim_div(e.m * s.inv_bias1 + s.alpha * e.m2, optim_sqrt(e.v) * s.inv_bias2_sqrt + s.eps);
  }
}

// Decoupled weight decay (p *= 1 - lr * wd) belongs to these rules; the others add wd * p to g.
constexpr bool decoupled_decay(OptimizerKind k) {
  return k == OptimizerKind::Adam || k == OptimizerKind::Lion || k == OptimizerKind::AdEMAMix;
}

// Apply the parameter update given the direction u and the trust-ratio scale.
template <OptimizerKind K>
BNB_HD float optim_param(const OptimStep& s, float p, float u, float trust) {
  if constexpr (decoupled_decay(K)) {
    if (s.weight_decay > 0.0f) p *= s.decay;
  }
  return p - s.lr * trust * u;
}

// Trust-ratio scale from the squared update norm: shrink the update to max_unorm * ||p||.
// The 1-state rule (LARS) adds eps to the limit, as its reference does.
template <OptimizerKind K>
BNB_HD float optim_trust(const OptimStep& s, float unorm_sq) {
  if (!s.trust_ratio) return 1.0f;
  const float unorm = sqrtf(unorm_sq);
  const float limit = s.max_unorm * s.param_norm + (has_second_state(K) ? 0.0f : s.eps);
  return unorm > limit ? limit / unorm : 1.0f;
}

}  // namespace bnb

#include "core/code_search.h"

namespace bnb {

// Calls f(std::integral_constant<OptimizerKind, K>{}) for the runtime rule (host side).
template <typename F>
void dispatch_optimizer(OptimizerKind kind, F&& f) {
  switch (kind) {
    case OptimizerKind::Adam: return f(std::integral_constant<OptimizerKind, OptimizerKind::Adam>{});
    case OptimizerKind::Momentum: return f(std::integral_constant<OptimizerKind, OptimizerKind::Momentum>{});
    case OptimizerKind::RMSprop: return f(std::integral_constant<OptimizerKind, OptimizerKind::RMSprop>{});
    case OptimizerKind::Adagrad: return f(std::integral_constant<OptimizerKind, OptimizerKind::Adagrad>{});
    case OptimizerKind::Lion: return f(std::integral_constant<OptimizerKind, OptimizerKind::Lion>{});
    case OptimizerKind::AdEMAMix: return f(std::integral_constant<OptimizerKind, OptimizerKind::AdEMAMix>{});
  }
}

BNB_HD uint8_t quantize_signed_state(const CodeSearch& search, const float* qmap, float value, float inv_absmax) {
  return keep_sign(qmap, search.search(value * inv_absmax), value);
}

BNB_HD uint8_t quantize_unsigned_state(const CodeSearch& search, float value, float inv_absmax) {
  return static_cast<uint8_t>(search.search(value * inv_absmax));
}

}  // namespace bnb

// CPU optimizer updates: the rules of core/optim.h over the thread pool.
//
// 32-bit states: one pass (two when the trust ratio needs the update norm first).
// 8-bit states: per block of 256 elements, dequantize the states, update them in float32, take the
// new block absmax and re-quantize.
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <type_traits>

#include "core/backend.h"
#include "core/dispatch.h"
#include "core/optim.h"
#include "cpu/threading.h"
#include "cpu/types.h"

namespace bnb::backend {

using cpu::from_float;
using cpu::parallel_for;
using cpu::to_float;

namespace {

constexpr int64_t kGrain32bit = 1 << 14;  // elements per thread task
constexpr int64_t kGrainBlocks = 64;      // 8-bit blocks (of 256) per thread task

// Calls f(kind tag, param type tag, grad type tag).
template <typename F>
void dispatch_update(OptimizerKind kind, bnb_dtype_t p_dtype, bnb_dtype_t g_dtype, F&& f) {
  dispatch_optimizer(kind, [&](auto k) {
    dispatch_float<cpu::CpuType>(p_dtype, "p", [&](auto tp) {
      dispatch_float<cpu::CpuType>(g_dtype, "g", [&](auto tg) { f(k, tp, tg); });
    });
  });
}

// Sum of per-range partial results (double, so the order of ranges barely matters).
template <typename Body>
double parallel_sum(int64_t count, int64_t grain, Body&& body) {
  std::mutex mu;
  double total = 0.0;
  parallel_for(count, grain, [&](int64_t b, int64_t e) {
    const double part = body(b, e);
    std::lock_guard<std::mutex> lock(mu);
    total += part;
  });
  return total;
}

template <OptimizerKind K, typename TP, typename TG>
void update_32bit(const OptimStep& s, const Optimizer32bitParams& P) {
  auto* p = static_cast<TP*>(P.p);
  const auto* g = static_cast<const TG*>(P.g);
  float* m = P.state1;
  float* m2 = K == OptimizerKind::AdEMAMix ? P.state1 + P.n : nullptr;
  float* v = P.state2;

  auto load = [&](int64_t i, OptimElement& e) {
    e.g = to_float(g[i]) * s.gnorm_scale;
    if (optim_skip(s, e.g)) return false;
    e.p = to_float(p[i]);
    e.m = m[i];
    e.v = v ? v[i] : 0.0f;
    e.m2 = m2 ? m2[i] : 0.0f;
    return true;
  };

  float trust = 1.0f;
  if (s.trust_ratio) {
    const double unorm = parallel_sum(P.n, kGrain32bit, [&](int64_t b, int64_t e) {
      double acc = 0.0;
      for (int64_t i = b; i < e; ++i) {
        OptimElement el;
        if (!load(i, el)) continue;
        const float u = optim_states<K>(s, el);
        acc += static_cast<double>(u) * u;
      }
      return acc;
    });
    P.unorm[0] = static_cast<float>(unorm);
    trust = optim_trust<K>(s, static_cast<float>(unorm));
  }

  parallel_for(P.n, kGrain32bit, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      OptimElement el;
      if (!load(i, el)) continue;
      const float u = optim_states<K>(s, el);
      p[i] = from_float<TP>(optim_param<K>(s, el.p, u, trust));
      m[i] = el.m;
      if (v) v[i] = el.v;
      if (m2) m2[i] = el.m2;
    }
  });
}


// The code-book search tables of one call, built once (a fused call shares them across tensors).
struct StateSearch {
  CodeSearch search1, search2;
  explicit StateSearch(const float* qmap1, const float* qmap2) {
    search1.build(qmap1);
    if (qmap2) search2.build(qmap2);
  }
};

template <OptimizerKind K, typename TP, typename TG>
void update_8bit(const OptimStep& s, const Optimizer8bitParams& P, const StateSearch& tables) {
  auto* p = static_cast<TP*>(P.p);
  const auto* g = static_cast<const TG*>(P.g);
  const int64_t nb = (P.n + kOptimBlock - 1) / kOptimBlock;
  constexpr bool kTwoMoments = K == OptimizerKind::AdEMAMix;
  uint8_t* q_m = P.state1;
  uint8_t* q_m2 = kTwoMoments ? P.state1 + P.n : nullptr;
  uint8_t* q_v = P.state2;
  float* a_m = P.absmax1;
  float* a_m2 = kTwoMoments ? P.absmax1 + nb : nullptr;
  float* a_v = P.absmax2;

  const CodeSearch& search1 = tables.search1;
  const CodeSearch& search2 = tables.search2;

  // Runs the update rule over block b; `commit` decides whether results are written.
  auto run_block = [&](int64_t b, bool commit, float trust) {
    const int64_t begin = b * kOptimBlock, end = std::min(begin + kOptimBlock, P.n);
    float m[kOptimBlock], v[kOptimBlock], m2[kOptimBlock];
    float max_m = 0.0f, max_v = 0.0f, max_m2 = 0.0f;
    double unorm = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t j = i - begin;
      OptimElement e;
      e.m = P.qmap1[q_m[i]] * a_m[b];
      e.v = q_v ? P.qmap2[q_v[i]] * a_v[b] : 0.0f;
      e.m2 = q_m2 ? P.qmap1[q_m2[i]] * a_m2[b] : 0.0f;
      e.g = to_float(g[i]) * s.gnorm_scale;
      if (!optim_skip(s, e.g)) {
        e.p = to_float(p[i]);
        const float u = optim_states<K>(s, e);
        if (commit) p[i] = from_float<TP>(optim_param<K>(s, e.p, u, trust));
        else unorm += static_cast<double>(u) * u;
      } else if (optim_clears_states(q_v != nullptr, e.g)) {
        e.m = e.v = e.m2 = 0.0f;
      }
      m[j] = e.m, v[j] = e.v, m2[j] = e.m2;
      max_m = std::max(max_m, std::fabs(e.m));
      max_v = std::max(max_v, std::fabs(e.v));
      max_m2 = std::max(max_m2, std::fabs(e.m2));
    }
    if (!commit) return unorm;
    const float inv_m = inverse_absmax(max_m), inv_v = inverse_absmax(max_v), inv_m2 = inverse_absmax(max_m2);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t j = i - begin;
      q_m[i] = quantize_signed_state(search1, P.qmap1, m[j], inv_m);
      if (q_v) q_v[i] = quantize_unsigned_state(search2, v[j], inv_v);
      if (q_m2) q_m2[i] = quantize_signed_state(search1, P.qmap1, m2[j], inv_m2);
    }
    a_m[b] = max_m;
    if (a_v) a_v[b] = max_v;
    if (a_m2) a_m2[b] = max_m2;
    return 0.0;
  };

  float trust = 1.0f;
  if (s.trust_ratio) {
    const double unorm = parallel_sum(nb, kGrainBlocks, [&](int64_t b0, int64_t b1) {
      double acc = 0.0;
      for (int64_t b = b0; b < b1; ++b) acc += run_block(b, false, 1.0f);
      return acc;
    });
    P.unorm[0] = static_cast<float>(unorm);
    trust = optim_trust<K>(s, static_cast<float>(unorm));
  }
  parallel_for(nb, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) run_block(b, true, trust);
  });
}

}  // namespace

void optimizer_update_32bit(OptimizerKind kind, const OptimStep& step, const Optimizer32bitParams& p, int32_t,
                            bnb_stream_t) {
  dispatch_update(kind, p.p_dtype, p.g_dtype, [&](auto k, auto tp, auto tg) {
    update_32bit<decltype(k)::value, typename decltype(tp)::type, typename decltype(tg)::type>(step, p);
  });
}

namespace {
void update_8bit_with(OptimizerKind kind, const OptimStep& step, const Optimizer8bitParams& p,
                      const StateSearch& tables) {
  dispatch_update(kind, p.p_dtype, p.g_dtype, [&](auto k, auto tp, auto tg) {
    update_8bit<decltype(k)::value, typename decltype(tp)::type, typename decltype(tg)::type>(step, p, tables);
  });
}
}  // namespace

void optimizer_update_8bit_blockwise(OptimizerKind kind, const OptimStep& step, const Optimizer8bitParams& p, int32_t,
                                     bnb_stream_t) {
  update_8bit_with(kind, step, p, StateSearch(p.qmap1, p.qmap2));
}

// CPU: the tensors one after another, each spread over the thread pool.
void optimizer_update_multi(OptimizerKind kind, const OptimStep& step, const OptimizerMultiParams& m, int32_t device,
                            bnb_stream_t stream) {
  const bool two = has_second_state(kind);
  std::unique_ptr<StateSearch> tables;
  if (m.state_bits == 8) tables = std::make_unique<StateSearch>(m.qmap1, m.qmap2);
  for (int64_t i = 0; i < m.count; ++i) {
    const bnb_optimizer_tensor_t& t = m.tensors[i];
    if (t.n == 0) continue;
    if (m.state_bits == 32) {
      optimizer_update_32bit(kind, step,
                             {t.p, t.g, static_cast<float*>(t.state1), two ? static_cast<float*>(t.state2) : nullptr,
                              nullptr, t.n, m.p_dtype, m.g_dtype},
                             device, stream);
    } else {
      update_8bit_with(kind, step,
                       {t.p, t.g, static_cast<uint8_t*>(t.state1), two ? static_cast<uint8_t*>(t.state2) : nullptr,
                        m.qmap1, m.qmap2, t.absmax1, two ? t.absmax2 : nullptr, nullptr, t.n, m.p_dtype, m.g_dtype},
                       *tables);
    }
  }
}

}  // namespace bnb::backend

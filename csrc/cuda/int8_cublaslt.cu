// Many-row int8 products by cuBLASLt (see int8_cublaslt.cuh).
//
// cuBLASLt's heuristic ranks its int8 algorithms by a model, and for some shapes its first choice is
// far from the fastest it offers: on the H100 at M = 512, N = K = 8192 the first candidate took 80 us
// and the fifth (a stream-K tile) 63 us; at M = 4096 the fastest candidate was 10-12% ahead of the
// first. So the first product of a shape times the candidates once (a few runs each, on the caller's
// stream, which is synchronised for it) and keeps the fastest. The int32 product is exact whichever
// algorithm computes it, so the choice changes speed only, never results.
//
// The choice is shared by every M in the same power-of-two bucket (its configuration is looked up among
// the new shape's candidates), so prompts of varying length do not each pay for timing. Products
// enqueued while the stream is being captured into a CUDA graph take the heuristic's first candidate
// and leave the timing to a later ordinary call; small products (timing would cost more than it can
// save) and BNB_CUBLASLT_TUNING=0 keep the first candidate always.
#include "cuda/int8_cublaslt.cuh"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/cublaslt.cuh"
#include "cuda/scratch.cuh"

namespace bnb::cuda {
namespace {

// In cuBLASLt's column-major terms the weight B [N, K] row-major is a K x N matrix used transposed and
// A [M, K] a K x M matrix: D = B^T-op x A is N x M column-major, i.e. out [M, N] row-major. This "TN"
// form is the one int8 tensor-core GEMMs support for plain layouts.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr size_t kMaxPlans = 256;   // cached shapes per process; beyond that the cache starts over
constexpr int kMaxCandidates = 8;   // heuristic candidates timed per shape
constexpr int kTimedRuns = 3;       // after one warm-up run; the fastest run counts
// Products below this many multiply-adds keep the first candidate: at 2^31 (e.g. 256 x 2048 x 4096)
// a run takes a few microseconds, timing all candidates costs more than any choice could save.
constexpr double kMinTunedWork = 2147483648.0;

// The largest power of two (up to 256, cuBLASLt's default requirement) dividing the address: algorithms
// are chosen for the alignment the buffers actually have (a stricter assumption would fault).
uint32_t alignment_of(const void* p) {
  uint32_t a = 256;
  while (a > 1 && !is_aligned(p, a)) a /= 2;
  return a;
}

struct Candidate {
  lt::Algo algo{};
  size_t workspace = 0;
};

struct LtPlan {
  lt::MatmulDesc desc = nullptr;
  lt::Layout a = nullptr, b = nullptr, d = nullptr;
  std::vector<Candidate> candidates;  // the heuristic's order; empty: cuBLASLt declines the shape
  size_t chosen = 0;
  bool settled = false;  // chosen is final (timed, taken from the bucket, or no choice to make)
};

// Configuration attributes that identify an algorithm across problem sizes (cublasLtMatmulAlgoConfig
// ids 0..8: algorithm, tile, split-k, reduction, swizzle, custom option, stages, inner and cluster shape).
using AlgoConfig = std::array<uint32_t, 9>;

using PlanKey = std::tuple<int32_t, int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t>;

std::mutex g_mutex;
std::map<int32_t, lt::Handle> g_handles;
std::map<PlanKey, LtPlan> g_plans;
std::map<PlanKey, AlgoConfig> g_bucket_choice;  // key with M replaced by its power-of-two bucket

bool tuning_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("BNB_CUBLASLT_TUNING");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return enabled;
}

int64_t bucket_of(int64_t m) {
  int64_t b = 1;
  while (b < m) b *= 2;
  return b;
}

bool config_of(const lt::Api& api, const lt::Algo& algo, AlgoConfig& config) {
  if (!api.algo_config_get) return false;
  for (int attr = 0; attr < 9; ++attr) {
    uint32_t value = 0;
    size_t written = 0;
    const size_t size = attr >= 7 ? sizeof(uint16_t) : sizeof(uint32_t);  // inner and cluster shape: uint16
    if (api.algo_config_get(&algo, attr, &value, size, &written) != lt::kSuccess) return false;
    config[attr] = value;
  }
  return true;
}

void destroy_plans(const lt::Api& api) {
  for (auto& [key, plan] : g_plans) {
    if (plan.desc) api.matmul_desc_destroy(plan.desc);
    for (lt::Layout l : {plan.a, plan.b, plan.d})
      if (l) api.layout_destroy(l);
  }
  g_plans.clear();
}

LtPlan& plan_for(const lt::Api& api, const Int8MatmulParams& p, const PlanKey& key, lt::Handle handle) {
  if (g_plans.size() >= kMaxPlans && g_plans.find(key) == g_plans.end()) destroy_plans(api);
  LtPlan& plan = g_plans[key];
  if (plan.desc) return plan;
  const auto [device, M, N, K, align_a, align_b, align_d] = key;
  bool ok = api.matmul_desc_create(&plan.desc, lt::kComputeInt32, CUDA_R_32I) == lt::kSuccess;
  const int32_t op_t = lt::kOpT, op_n = lt::kOpN;
  ok = ok && api.matmul_desc_set_attribute(plan.desc, lt::kDescTransA, &op_t, sizeof(op_t)) == lt::kSuccess;
  ok = ok && api.matmul_desc_set_attribute(plan.desc, lt::kDescTransB, &op_n, sizeof(op_n)) == lt::kSuccess;
  ok = ok && api.layout_create(&plan.a, CUDA_R_8I, K, N, K) == lt::kSuccess;
  ok = ok && api.layout_create(&plan.b, CUDA_R_8I, K, M, K) == lt::kSuccess;
  ok = ok && api.layout_create(&plan.d, CUDA_R_32I, N, M, N) == lt::kSuccess;
  lt::Preference pref = nullptr;
  ok = ok && api.preference_create(&pref) == lt::kSuccess;
  const uint64_t max_ws = kWorkspaceBytes;
  ok = ok && api.preference_set_attribute(pref, lt::kPrefMaxWorkspace, &max_ws, sizeof(max_ws)) == lt::kSuccess;
  // In cuBLASLt's terms A is our weight B, B our activations A, and C = D our output.
  const uint32_t alignments[4] = {align_a, align_b, align_d, align_d};
  for (int i = 0; i < 4 && ok; ++i)
    ok = api.preference_set_attribute(pref, lt::kPrefMinAlignmentA + i, &alignments[i], sizeof(uint32_t)) ==
         lt::kSuccess;
  lt::HeuristicResult results[kMaxCandidates]{};
  int returned = 0;
  ok = ok && api.algo_get_heuristic(handle, plan.desc, plan.a, plan.b, plan.d, plan.d, pref, kMaxCandidates, results,
                                    &returned) == lt::kSuccess;
  if (pref) api.preference_destroy(pref);
  for (int i = 0; ok && i < returned; ++i)
    if (results[i].state == lt::kSuccess) plan.candidates.push_back({results[i].algo, results[i].workspace_size});
  return plan;
}

bool run(const lt::Api& api, lt::Handle handle, const LtPlan& plan, const Candidate& c, const Int8MatmulParams& p,
         void* workspace, cudaStream_t stream) {
  const int32_t alpha = 1, beta = 0;
  return api.matmul(handle, plan.desc, &alpha, p.B, plan.a, p.A, plan.b, &beta, p.out, plan.d, p.out, plan.d, &c.algo,
                    workspace, c.workspace, stream) == lt::kSuccess;
}

// Milliseconds of the fastest of kTimedRuns runs of each candidate (negative: it failed to run).
std::vector<float> time_candidates(const lt::Api& api, lt::Handle handle, const LtPlan& plan,
                                   const Int8MatmulParams& p, int32_t device, cudaStream_t stream) {
  size_t workspace_bytes = 0;
  for (const Candidate& c : plan.candidates) workspace_bytes = std::max(workspace_bytes, c.workspace);
  const Scratch workspace(workspace_bytes, device, stream);
  std::vector<float> best(plan.candidates.size(), -1.0f);
  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
    if (start) cudaEventDestroy(start);
    (void)cudaGetLastError();
    return best;
  }
  for (size_t i = 0; i < plan.candidates.size(); ++i) {
    const Candidate& c = plan.candidates[i];
    if (!run(api, handle, plan, c, p, workspace.get(), stream)) continue;  // warm-up
    for (int r = 0; r < kTimedRuns; ++r) {
      float ms = 0.0f;
      const bool ok = cudaEventRecord(start, stream) == cudaSuccess &&
                      run(api, handle, plan, c, p, workspace.get(), stream) &&
                      cudaEventRecord(stop, stream) == cudaSuccess && cudaEventSynchronize(stop) == cudaSuccess &&
                      cudaEventElapsedTime(&ms, start, stop) == cudaSuccess;
      if (!ok) {
        best[i] = -1.0f;
        break;
      }
      if (best[i] < 0.0f || ms < best[i]) best[i] = ms;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  (void)cudaGetLastError();
  return best;
}

// Settles plan.chosen: from the bucket's earlier choice, or by timing the candidates.
void choose(const lt::Api& api, lt::Handle handle, LtPlan& plan, const PlanKey& key, const Int8MatmulParams& p,
            cudaStream_t stream) {
  const auto [device, M, N, K, align_a, align_b, align_d] = key;
  if (plan.candidates.size() < 2 || !tuning_enabled() || double(M) * double(N) * double(K) < kMinTunedWork) {
    plan.settled = true;
    return;
  }
  if (stream_capturing(stream)) return;  // first candidate for now; a later ordinary call decides
  PlanKey bucket_key = key;
  std::get<1>(bucket_key) = bucket_of(M);
  AlgoConfig config{};
  if (auto it = g_bucket_choice.find(bucket_key); it != g_bucket_choice.end()) {
    for (size_t i = 0; i < plan.candidates.size(); ++i)
      if (config_of(api, plan.candidates[i].algo, config) && config == it->second) plan.chosen = i;
    plan.settled = true;
    return;
  }
  const std::vector<float> ms = time_candidates(api, handle, plan, p, device, stream);
  for (size_t i = 0; i < ms.size(); ++i)
    if (ms[i] >= 0.0f && (ms[plan.chosen] < 0.0f || ms[i] < ms[plan.chosen])) plan.chosen = i;
  plan.settled = true;
  if (config_of(api, plan.candidates[plan.chosen].algo, config)) g_bucket_choice[bucket_key] = config;
}

}  // namespace

bool int8_product_cublaslt(const Int8MatmulParams& p, int32_t device, cudaStream_t stream) {
  if (p.K % 4 != 0 || p.N % 4 != 0 || !is_aligned(p.A, 4) || !is_aligned(p.B, 4) || !is_aligned(p.out, 16))
    return false;
  const lt::Api* api = lt::api();
  if (!api) return false;
  // Held while the product is enqueued: a plan (its descriptors) must not be destroyed in between.
  std::lock_guard<std::mutex> lock(g_mutex);
  lt::Handle& handle = g_handles[device];
  if (!handle && api->create(&handle) != lt::kSuccess) {
    handle = nullptr;
    return false;
  }
  const PlanKey key{device, p.M, p.N, p.K, alignment_of(p.B), alignment_of(p.A), alignment_of(p.out)};
  LtPlan& plan = plan_for(*api, p, key, handle);
  if (plan.candidates.empty()) return false;
  if (!plan.settled) choose(*api, handle, plan, key, p, stream);
  const Candidate& c = plan.candidates[plan.chosen];
  // The workspace is stream-ordered memory of this call (capturable into CUDA graphs, private to the
  // call, so concurrent streams and threads never share one).
  const Scratch workspace(c.workspace, device, stream);
  return run(*api, handle, plan, c, p, workspace.get(), stream);
}

}  // namespace bnb::cuda

// Run-time loading of cuBLASLt (see cublaslt.cuh).
#include "cuda/cublaslt.cuh"

#include <dlfcn.h>

#include <mutex>

#include "core/backend.h"

namespace bnb::cuda::lt {
namespace {

std::mutex g_mutex;
std::string g_path;     // set by bnb_set_blas_library
bool g_tried = false;
Api g_api{};
const Api* g_loaded = nullptr;
std::string g_why;

template <typename Fn>
bool bind(void* lib, const char* name, Fn& fn) {
  fn = reinterpret_cast<Fn>(dlsym(lib, name));
  return fn != nullptr;
}

const Api* load() {
  // A copy already in the process (loaded by torch) first, whatever its version, so that no second,
  // mismatched one is loaded; then the explicit path (torch's own copy on disk); then the search path.
  const char* sonames[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11"};
  void* lib = nullptr;
  for (const char* name : sonames) {
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (lib) break;
  }
  std::string tried;
  const std::string candidates[] = {g_path, "libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
  for (const std::string& name : candidates) {
    if (lib) break;
    if (name.empty()) continue;
    lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) tried += (tried.empty() ? "" : ", ") + name;
  }
  if (!lib) {
    g_why = "cuBLASLt was not found (tried " + tried + "); install torch with CUDA or name the library with "
            "bnb_set_blas_library";
    return nullptr;
  }
  const bool ok = bind(lib, "cublasLtCreate", g_api.create) &&
                  bind(lib, "cublasLtMatmulDescCreate", g_api.matmul_desc_create) &&
                  bind(lib, "cublasLtMatmulDescDestroy", g_api.matmul_desc_destroy) &&
                  bind(lib, "cublasLtMatmulDescSetAttribute", g_api.matmul_desc_set_attribute) &&
                  bind(lib, "cublasLtMatrixLayoutCreate", g_api.layout_create) &&
                  bind(lib, "cublasLtMatrixLayoutDestroy", g_api.layout_destroy) &&
                  bind(lib, "cublasLtMatmulPreferenceCreate", g_api.preference_create) &&
                  bind(lib, "cublasLtMatmulPreferenceDestroy", g_api.preference_destroy) &&
                  bind(lib, "cublasLtMatmulPreferenceSetAttribute", g_api.preference_set_attribute) &&
                  bind(lib, "cublasLtMatmulAlgoGetHeuristic", g_api.algo_get_heuristic) &&
                  bind(lib, "cublasLtMatmul", g_api.matmul) && bind(lib, "cublasLtGetVersion", g_api.get_version);
  if (!ok) {
    g_why = "the cuBLASLt library found lacks entry points this build needs";
    return nullptr;
  }
  if (!bind(lib, "cublasLtMatmulAlgoConfigGetAttribute", g_api.algo_config_get)) g_api.algo_config_get = nullptr;
  return &g_api;
}

}  // namespace

const Api* api(std::string* why) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_tried) {
    g_loaded = load();
    g_tried = true;
  }
  if (!g_loaded && why) *why = g_why;
  return g_loaded;
}

void set_library_path(const char* path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_path = path ? path : "";
  if (!g_loaded) g_tried = false;  // try again with the new path
}

}  // namespace bnb::cuda::lt

namespace bnb::backend {
void set_blas_library(const char* path) { cuda::lt::set_library_path(path); }
bool use_threading_runtime(const char*) { return true; }  // the CUDA backend runs no CPU thread loops
}  // namespace bnb::backend

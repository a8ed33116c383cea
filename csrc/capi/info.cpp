// extern "C" entry points that describe the library itself.
#include <cstring>
#include <string>

#include "bnb/bnb.h"
#include "core/backend.h"
#include "core/error.h"

#ifndef BNB_VERSION_STRING
#error "BNB_VERSION_STRING must be defined by the build"
#endif

using namespace bnb;

extern "C" {

BNB_API const char* bnb_last_error(void) { return last_error(); }
BNB_API const char* bnb_version(void) { return BNB_VERSION_STRING; }
BNB_API int32_t bnb_abi_version(void) { return BNB_ABI_VERSION; }
BNB_API const char* bnb_backend_name(void) { return backend::name(); }

BNB_API bnb_status_t bnb_backend_info(char* buffer, int64_t capacity, int64_t* needed) {
  return capi_guard(__func__, [&] {
    const std::string info = backend::info_json();
    const int64_t size = static_cast<int64_t>(info.size()) + 1;
    if (needed) *needed = size;
    if (buffer && capacity > 0) {
      const int64_t copy = size < capacity ? size : capacity;
      std::memcpy(buffer, info.c_str(), static_cast<size_t>(copy - 1));
      buffer[copy - 1] = '\0';
    }
  });
}

BNB_API bnb_status_t bnb_set_cpu_threading_runtime(const char* path) {
  return capi_guard(__func__, [&] {
    BNB_CHECK_SUPPORTED(backend::use_threading_runtime(path), "no OpenMP runtime with GOMP_parallel is loaded from ",
                        path);
  });
}

}  // extern "C"

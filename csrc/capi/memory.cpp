// extern "C" entry points for paged memory.
#include "bnb/memory.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/paged.h"

using namespace bnb;

extern "C" {

BNB_API bnb_status_t bnb_paged_support(int32_t device, int32_t* concurrent, int64_t* free_bytes,
                                       int64_t* total_bytes) {
  return capi_guard(__func__, [&] {
    const backend::PagedSupport s = backend::paged_support(device);
    if (concurrent) *concurrent = s.concurrent ? 1 : 0;
    if (free_bytes) *free_bytes = s.free_bytes;
    if (total_bytes) *total_bytes = s.total_bytes;
  });
}

BNB_API bnb_status_t bnb_paged_alloc(int64_t bytes, int32_t device, void** out) {
  return capi_guard(__func__, [&] {
    BNB_CHECK_ARG(out != nullptr, "out is a null pointer");
    BNB_CHECK_ARG(bytes > 0, "bytes must be positive, got ", bytes);
    *out = nullptr;
    *out = backend::paged_alloc(bytes, device);
  });
}

BNB_API bnb_status_t bnb_paged_free(void* ptr) {
  return capi_guard(__func__, [&] {
    if (ptr) backend::paged_free(ptr);
  });
}

BNB_API bnb_status_t bnb_paged_prefetch(void* ptr, int64_t bytes, int32_t to_host, int32_t device,
                                        bnb_stream_t stream) {
  return capi_guard(__func__, [&] {
    BNB_CHECK_ARG(ptr != nullptr, "ptr is a null pointer");
    BNB_CHECK_ARG(bytes >= 0, "bytes must be >= 0, got ", bytes);
    if (bytes == 0) return;
    backend::paged_prefetch(ptr, bytes, to_host != 0, device, stream);
  });
}

}  // extern "C"

// The CPU backend has no paged memory: host memory already is the backing store.
#include "core/error.h"
#include "core/paged.h"

namespace bnb::backend {

namespace {
[[noreturn]] void unsupported() {
  fail(BNB_STATUS_UNSUPPORTED, "paged memory needs the CUDA backend (CPU tensors need no paging)");
}
}  // namespace

PagedSupport paged_support(int32_t) { unsupported(); }
void* paged_alloc(int64_t, int32_t) { unsupported(); }
void paged_free(void*) { unsupported(); }
void paged_prefetch(void*, int64_t, bool, int32_t, bnb_stream_t) { unsupported(); }

}  // namespace bnb::backend

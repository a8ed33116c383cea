// Backend hooks for paged (unified) memory; see include/bnb/memory.h.
#pragma once

#include <cstdint>

#include "bnb/bnb.h"

namespace bnb::backend {

struct PagedSupport {
  bool concurrent;
  int64_t free_bytes, total_bytes;
};

PagedSupport paged_support(int32_t device);
void* paged_alloc(int64_t bytes, int32_t device);
void paged_free(void* ptr);
void paged_prefetch(void* ptr, int64_t bytes, bool to_host, int32_t device, bnb_stream_t stream);

}  // namespace bnb::backend

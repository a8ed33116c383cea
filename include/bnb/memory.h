/* Paged (unified) memory for optimizer states that may spill to host memory under pressure.
 * Only the CUDA backend provides it; the CPU library answers BNB_STATUS_UNSUPPORTED. */
#ifndef BNB_MEMORY_H
#define BNB_MEMORY_H

#include "bnb/bnb.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether `device` can use paged memory: *concurrent is 1 when the GPU and the CPU may access
 * managed memory concurrently; *free_bytes / *total_bytes are the device's memory figures. */
BNB_API bnb_status_t bnb_paged_support(int32_t device, int32_t* concurrent, int64_t* free_bytes,
                                       int64_t* total_bytes);

/* Allocate `bytes` of managed memory preferring `device`. Fails with BNB_STATUS_OUT_OF_MEMORY
 * rather than oversubscribing: a request above the device's free memory is refused. */
BNB_API bnb_status_t bnb_paged_alloc(int64_t bytes, int32_t device, void** out);
BNB_API bnb_status_t bnb_paged_free(void* ptr);

/* Migrate [ptr, ptr + bytes) to `device` (or to the host when to_host != 0), stream-ordered. */
BNB_API bnb_status_t bnb_paged_prefetch(void* ptr, int64_t bytes, int32_t to_host, int32_t device,
                                        bnb_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* BNB_MEMORY_H */

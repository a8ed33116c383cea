// Paged (unified) memory for optimizer states: cudaMallocManaged plus stream-ordered prefetch.
#include "core/error.h"
#include "core/paged.h"
#include "cuda/common.cuh"

namespace bnb::backend {

using cuda::as_cuda;
using cuda::DeviceGuard;

PagedSupport paged_support(int32_t device) {
  DeviceGuard guard(device);
  int concurrent = 0;
  BNB_CUDA_CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device));
  size_t free_bytes = 0, total_bytes = 0;
  BNB_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return {concurrent != 0, static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
}

void* paged_alloc(int64_t bytes, int32_t device) {
  const PagedSupport s = paged_support(device);
  // Managed memory beyond what the device has free can stall the GPU instead of failing: refuse it.
  if (bytes > s.free_bytes) {
    fail(BNB_STATUS_OUT_OF_MEMORY, "paged allocation of ", bytes, " bytes exceeds the ", s.free_bytes,
         " bytes free on cuda:", device, " (oversubscription is refused)");
  }
  DeviceGuard guard(device);
  void* ptr = nullptr;
  BNB_CUDA_CHECK(cudaMallocManaged(&ptr, static_cast<size_t>(bytes), cudaMemAttachGlobal));
  return ptr;
}

void paged_free(void* ptr) { BNB_CUDA_CHECK(cudaFree(ptr)); }

void paged_prefetch(void* ptr, int64_t bytes, bool to_host, int32_t device, bnb_stream_t stream) {
  DeviceGuard guard(device);
  cudaMemLocation location{};
  location.type = to_host ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  location.id = to_host ? 0 : device;
  BNB_CUDA_CHECK(cudaMemPrefetchAsync(ptr, static_cast<size_t>(bytes), location, 0, as_cuda(stream)));
}

}  // namespace bnb::backend

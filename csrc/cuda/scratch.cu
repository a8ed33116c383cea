// The per-device scratch pools of scratch.cuh.
#include "cuda/scratch.cuh"

#include <mutex>
#include <vector>

#include "cuda/common.cuh"

namespace bnb::cuda {
namespace {

// Created on first use per device and kept for the life of the process (the driver reclaims the
// pools at exit). nullptr: the device has no memory pools (then cudaMallocAsync decides).
cudaMemPool_t pool_for(int32_t device) {
  static std::mutex mutex;
  static std::vector<cudaMemPool_t> pools;
  static std::vector<bool> tried;
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= static_cast<int32_t>(pools.size())) {
    pools.resize(device + 1, nullptr);
    tried.resize(device + 1, false);
  }
  if (tried[device]) return pools[device];
  tried[device] = true;
  int supported = 0;
  if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess || !supported) {
    (void)cudaGetLastError();
    return nullptr;
  }
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  if (cudaMemPoolCreate(&pool, &props) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  uint64_t keep = kScratchKeepBytes;
  if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess) (void)cudaGetLastError();
  pools[device] = pool;
  return pool;
}

}  // namespace

void* scratch_alloc(size_t bytes, int32_t device, cudaStream_t stream) {
  void* ptr = nullptr;
  if (cudaMemPool_t pool = pool_for(device)) {
    BNB_CUDA_CHECK(cudaMallocFromPoolAsync(&ptr, bytes, pool, stream));
  } else {
    BNB_CUDA_CHECK(cudaMallocAsync(&ptr, bytes, stream));
  }
  return ptr;
}

}  // namespace bnb::cuda

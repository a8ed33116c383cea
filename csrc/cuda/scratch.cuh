// Stream-ordered scratch memory for the work one call enqueues (CA/SCA of the int8 linear path,
// int32 accumulators, cuBLASLt workspaces, sort buffers, partial norms).
//
// It comes from one memory pool per device that keeps up to kScratchKeepBytes across host
// synchronisations. The device's default pool returns everything to the driver at each
// synchronisation, so the first call after one (every generated token: sampling reads the logits)
// paid for mapping fresh memory, tens of microseconds on the host. Larger peaks are still trimmed,
// and allocations inside a CUDA graph capture become graph-owned as with cudaMallocAsync.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace bnb::cuda {

constexpr uint64_t kScratchKeepBytes = uint64_t{32} << 20;

// Stream-ordered allocation on the current device (throws bnb::Error, BNB_STATUS_OUT_OF_MEMORY
// when the device is full). Release with cudaFreeAsync on a stream ordered after its users.
void* scratch_alloc(size_t bytes, int32_t device, cudaStream_t stream);

// One call's scratch, freed (stream-ordered) when the call's host code leaves scope, also on error.
class Scratch {
 public:
  Scratch(size_t bytes, int32_t device, cudaStream_t stream)
      : ptr_(bytes ? scratch_alloc(bytes, device, stream) : nullptr), stream_(stream) {}
  ~Scratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  char* get() const { return static_cast<char*>(ptr_); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_;
  cudaStream_t stream_;
};

}  // namespace bnb::cuda

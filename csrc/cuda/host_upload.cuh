// Small host-to-device copies that neither wait for the GPU nor depend on the caller keeping its
// host data: a stream-ordered copy from pageable memory may synchronise the stream, so the bytes
// are written straight into one of a ring of pinned staging buffers per device and copied from
// there. The host waits only when it has run a whole ring of uploads ahead of the GPU.
//
//   StagedUpload up(bytes, device);      // a staging buffer of at least `bytes`
//   ... write up.host() ...
//   up.send(dst, stream);                // enqueue the copy to device memory `dst`
//
// Not for stream capture: a captured copy would read its staging buffer at every replay, long
// after the ring has reused it. Callers check stream_capturing() first.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>

namespace bnb::cuda {

struct StagingRing;
struct StagingSlot;

class StagedUpload {
 public:
  // Takes the device's next slot (waiting until its previous copy has left it) and grows it to
  // `bytes`; the current device must be `device`. Throws bnb::Error. The ring stays locked until
  // this object is destroyed.
  StagedUpload(size_t bytes, int32_t device);
  StagedUpload(const StagedUpload&) = delete;
  StagedUpload& operator=(const StagedUpload&) = delete;
  void* host() const;
  void send(void* dst, cudaStream_t stream);  // once; the slot is reused only after this copy

 private:
  std::unique_lock<std::mutex> lock_;
  StagingSlot* slot_;
  size_t bytes_;
};

}  // namespace bnb::cuda

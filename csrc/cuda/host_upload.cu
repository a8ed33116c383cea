// The pinned staging rings of host_upload.cuh.
#include "cuda/host_upload.cuh"

#include <memory>
#include <vector>

#include "cuda/common.cuh"

namespace bnb::cuda {

// Enough slots that a host queueing several fused optimizer steps ahead never waits on one.
constexpr int kStagingSlots = 16;
constexpr size_t kMinSlotBytes = size_t{64} << 10;

struct StagingSlot {
  void* host = nullptr;
  size_t capacity = 0;
  cudaEvent_t copied = nullptr;  // recorded after the last copy out of `host`
};

struct StagingRing {
  std::mutex mutex;
  StagingSlot slots[kStagingSlots];
  int next = 0;
};

namespace {

// One ring per device (its events belong to that device); kept for the life of the process.
StagingRing& ring_for(int32_t device) {
  static std::mutex mutex;
  static std::vector<std::unique_ptr<StagingRing>> rings;
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= static_cast<int32_t>(rings.size())) rings.resize(device + 1);
  if (!rings[device]) rings[device] = std::make_unique<StagingRing>();
  return *rings[device];
}

}  // namespace

StagedUpload::StagedUpload(size_t bytes, int32_t device) : bytes_(bytes) {
  StagingRing& ring = ring_for(device);
  lock_ = std::unique_lock<std::mutex>(ring.mutex);
  slot_ = &ring.slots[ring.next];
  ring.next = (ring.next + 1) % kStagingSlots;
  if (slot_->copied) {
    BNB_CUDA_CHECK(cudaEventSynchronize(slot_->copied));  // normally long done
  } else {
    BNB_CUDA_CHECK(cudaEventCreateWithFlags(&slot_->copied, cudaEventDisableTiming));
  }
  if (slot_->capacity < bytes) {
    if (slot_->host) BNB_CUDA_CHECK(cudaFreeHost(slot_->host));
    slot_->host = nullptr;
    slot_->capacity = 0;
    const size_t capacity = bytes > kMinSlotBytes ? bytes + bytes / 2 : kMinSlotBytes;
    BNB_CUDA_CHECK(cudaHostAlloc(&slot_->host, capacity, cudaHostAllocPortable));
    slot_->capacity = capacity;
  }
}

void* StagedUpload::host() const { return slot_->host; }

void StagedUpload::send(void* dst, cudaStream_t stream) {
  if (bytes_ == 0) return;
  BNB_CUDA_CHECK(cudaMemcpyAsync(dst, slot_->host, bytes_, cudaMemcpyHostToDevice, stream));
  BNB_CUDA_CHECK(cudaEventRecord(slot_->copied, stream));
}

}  // namespace bnb::cuda

// Side streams per caller stream (side_stream.cuh).
#include "cuda/side_stream.cuh"

#include <map>
#include <mutex>
#include <tuple>

#include "cuda/common.cuh"

namespace bnb::cuda {
namespace {

struct Side {
  cudaStream_t stream = nullptr;
  cudaEvent_t forked = nullptr;  // recorded on the caller's stream
  cudaEvent_t joined = nullptr;  // recorded on the side stream
};

// Kept for the life of the process (a handful per device: one per caller stream that needed one).
Side& side_for(int32_t device, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::tuple<int32_t, cudaStream_t>, Side> sides;
  std::lock_guard<std::mutex> lock(mutex);
  Side& s = sides[{device, stream}];
  if (!s.stream) {
    BNB_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    BNB_CUDA_CHECK(cudaEventCreateWithFlags(&s.forked, cudaEventDisableTiming));
    BNB_CUDA_CHECK(cudaEventCreateWithFlags(&s.joined, cudaEventDisableTiming));
  }
  return s;
}

}  // namespace

// The events of one caller stream are reused by each of its calls: a record followed at once by the
// wait on it is all an event is used for, and calls on one stream are enqueued one at a time.
SideStream::SideStream(int32_t device, cudaStream_t stream) : stream_(stream) {
  Side& s = side_for(device, stream);
  side_ = s.stream;
  joined_ = s.joined;
  BNB_CUDA_CHECK(cudaEventRecord(s.forked, stream));
  BNB_CUDA_CHECK(cudaStreamWaitEvent(side_, s.forked, 0));
}

void SideStream::join() {
  if (!open_) return;
  open_ = false;
  BNB_CUDA_CHECK(cudaEventRecord(joined_, side_));
  BNB_CUDA_CHECK(cudaStreamWaitEvent(stream_, joined_, 0));
}

SideStream::~SideStream() {
  if (!open_) return;
  // On the error path of a call: still join, so the caller's stream (and a capture) stays consistent.
  open_ = false;
  if (cudaEventRecord(joined_, side_) != cudaSuccess || cudaStreamWaitEvent(stream_, joined_, 0) != cudaSuccess)
    (void)cudaGetLastError();
}

}  // namespace bnb::cuda

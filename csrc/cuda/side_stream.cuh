// A second stream beside the caller's, for work of one call that can run alongside its main kernel
// (e.g. packing the outlier columns of LLM.int8 while the int8 GEMM runs).
//
//   SideStream side(device, stream);   // the side stream waits for everything enqueued on `stream`
//   ... launch on side.get() ...
//   side.join();                       // `stream` waits for the side work (also done by the destructor)
//
// Each caller stream has its own side stream (non-blocking, created once per device and caller
// stream): a side stream forked from a stream being captured into a CUDA graph belongs to that capture
// until it ends, so it must never be shared with another stream's eager work. Fork and join are event
// record/wait pairs, which graph capture turns into parallel branches.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace bnb::cuda {

class SideStream {
 public:
  SideStream(int32_t device, cudaStream_t stream);  // throws bnb::Error when the CUDA calls fail
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  cudaStream_t get() const { return side_; }
  void join();  // idempotent; the caller's stream waits for the work enqueued on the side stream

 private:
  cudaStream_t stream_;
  cudaStream_t side_;
  cudaEvent_t joined_;
  bool open_ = true;
};

}  // namespace bnb::cuda

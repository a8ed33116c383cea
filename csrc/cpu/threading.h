// Parallel loops for the CPU kernels: on the host process's OpenMP runtime when one was handed over
// (bnb_set_cpu_threading_runtime: PyTorch's, whose threads then serve both), else on a small persistent
// pool of our own. parallel_for splits [0, count) into contiguous chunks, one per thread, and returns
// when all are done. Nested calls from inside a worker run serially, so kernels may call it freely.
#pragma once

#include <cstdint>
#include <functional>

namespace bnb::cpu {

// Number of threads used: BNB_NUM_THREADS if set; else the OpenMP runtime's (when one is in use);
// else OMP_NUM_THREADS, else the hardware concurrency (the cores the process may run on).
int num_threads();

// "openmp" when the loops run on the host process's OpenMP runtime (bnb_set_cpu_threading_runtime),
// "own pool" otherwise.
const char* threading_runtime();

// Runs fn(begin, end) over disjoint ranges covering [0, count). `grain` is the smallest range
// worth giving to one thread; small problems run on the calling thread alone.
void parallel_for(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace bnb::cpu

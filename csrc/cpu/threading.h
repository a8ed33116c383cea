// A small persistent thread pool for the CPU kernels. parallel_for splits [0, count) into
// contiguous chunks, one per worker (the calling thread takes the first), and returns when all
// are done. Nested calls from inside a worker run serially, so kernels may call it freely.
#pragma once

#include <cstdint>
#include <functional>

namespace bnb::cpu {

// Number of threads used: BNB_NUM_THREADS if set, else OMP_NUM_THREADS, else the
// hardware concurrency (the cores the process may run on).
int num_threads();

// Runs fn(begin, end) over disjoint ranges covering [0, count). `grain` is the smallest range
// worth giving to one thread; small problems run on the calling thread alone.
void parallel_for(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace bnb::cpu

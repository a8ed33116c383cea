// Read bandwidth of the ways a few-row 4-bit product can stream its packed weight: a [N, 4096]-byte matrix
// (K = 8192 at 4 bits) read with no arithmetic, so that a pattern's cost is the memory system's alone.
// Standalone (no library); on the GPU machine:
//
//     nvcc -O3 -std=c++17 -arch=sm_90a benchmarks/probe_weight_read_patterns.cu -o /tmp/probe && /tmp/probe
//
// Patterns (N = 8192 fits in a 50 MB L2 between repeats; N = 28672 does not):
// - tiled: the few-row kernel's layout. A CTA owns 16 rows per tile; its KS warps take batches of BB bytes
//   per row in turn; lane (g, t) reads rows g and g + 8, VEC bytes at a time, at t * VEC + i * 4 * VEC.
//   Occupancy is set with dynamic shared memory (PER_SM CTAs per SM).
// - tiled + L2 prefetch: the kernel's 8-byte, 128-byte-batch layout, with warp 0 asking L2 for each row's
//   next PF bytes AHEAD batches on (cp.async.bulk.prefetch.L2), or (AHEAD = 0) one line 8 batches on.
// - sequential: each warp reads whole 512-byte chunks, four in flight (the best a read can do).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#define CHECK(x)                                                              \
  do {                                                                        \
    cudaError_t e = (x);                                                      \
    if (e != cudaSuccess) {                                                   \
      std::printf("%s: %s\n", #x, cudaGetErrorString(e));                     \
      return 1;                                                               \
    }                                                                         \
  } while (0)

template <int VEC>
struct Vec;
template <>
struct Vec<8> {
  using T = uint2;
  __device__ static uint32_t fold(T v) { return v.x ^ v.y; }
};
template <>
struct Vec<16> {
  using T = uint4;
  __device__ static uint32_t fold(T v) { return v.x ^ v.y ^ v.z ^ v.w; }
};

// The loads are folded into a value that is stored only if it matches a constant, so none is optimised away.
template <int VEC, int BB, int KS, int TILES>
__global__ void __launch_bounds__(KS * 32) tiled(const uint8_t* w, int64_t row_bytes, uint32_t* sink) {
  using V = Vec<VEC>;
  constexpr int kLoads = BB / (4 * VEC);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const int64_t row0 = int64_t{blockIdx.x} * 16 * TILES;
  uint32_t acc = 0;
  for (int64_t b = warp; b < row_bytes / BB; b += KS) {
    typename V::T v[TILES][2][kLoads];
#pragma unroll
    for (int j = 0; j < TILES; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < kLoads; ++i)
          v[j][h][i] = __ldg(reinterpret_cast<const typename V::T*>(w + (row0 + 16 * j + 8 * h + g) * row_bytes +
                                                                     b * BB + i * 4 * VEC + t * VEC));
#pragma unroll
    for (int j = 0; j < TILES; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < kLoads; ++i) acc += V::fold(v[j][h][i]) * (i + 1);
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

template <int PF, int AHEAD>
__global__ void __launch_bounds__(128) tiled_prefetch(const uint8_t* w, int64_t row_bytes, uint32_t* sink) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const int64_t row0 = int64_t{blockIdx.x} * 16;
  const int64_t batches = row_bytes / 128;
  const uint8_t* my_row = w + (row0 + lane % 16) * row_bytes;
  uint32_t acc = 0;
  for (int64_t b = warp; b < batches; b += 4) {
    if (AHEAD == 0) {
      if (lane < 16 && b + 8 < batches) asm volatile("prefetch.global.L2 [%0];" ::"l"(my_row + (b + 8) * 128));
    } else if (warp == 0 && b % (PF / 128) == 0 && lane < 16 && (b + AHEAD) * 128 + PF <= row_bytes) {
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(my_row + (b + AHEAD) * 128), "r"(PF) : "memory");
    }
    uint2 v[2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        v[h][i] = __ldg(reinterpret_cast<const uint2*>(w + (row0 + 8 * h + g) * row_bytes + b * 128 + i * 32 + t * 8));
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc += (v[h][i].x ^ v[h][i].y) * (i + 1);
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

__global__ void __launch_bounds__(128) sequential(const uint8_t* w, int64_t bytes, uint32_t* sink) {
  constexpr int kInFlight = 4;
  const int lane = threadIdx.x % 32;
  const int64_t warp = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = int64_t{gridDim.x} * blockDim.x / 32;
  const int64_t chunks = bytes / 512;
  uint32_t acc = 0;
  for (int64_t c = warp * kInFlight; c < chunks; c += warps * kInFlight) {
    uint4 v[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u)
      v[u] = c + u < chunks ? __ldg(reinterpret_cast<const uint4*>(w + (c + u) * 512) + lane) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) acc += (v[u].x ^ v[u].y ^ v[u].z ^ v[u].w) * (u + 1);
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

// Mean time of one launch over `reps` back-to-back launches, after three untimed ones.
template <typename F>
float time_us(F launch, int reps) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i) launch();
  cudaEventRecord(start);
  for (int i = 0; i < reps; ++i) launch();
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms * 1000 / reps;
}

// Dynamic shared memory that leaves room for `per_sm` CTAs per SM (228 KB per SM, 1 KB reserved per CTA).
template <typename Kernel>
int occupancy_smem(Kernel kernel, int per_sm) {
  const int bytes = 224 * 1024 / per_sm - 2048;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  return bytes;
}

int main() {
  constexpr int64_t kRowBytes = 4096;
  constexpr int64_t kMaxRows = 28672;
  constexpr int kReps = 20;
  uint8_t* w = nullptr;
  uint32_t* sink = nullptr;
  CHECK(cudaMalloc(&w, kMaxRows * kRowBytes));
  CHECK(cudaMalloc(&sink, 4));
  CHECK(cudaMemset(w, 1, kMaxRows * kRowBytes));
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  for (const int64_t rows : {int64_t{8192}, kMaxRows}) {
    const double bytes = static_cast<double>(rows) * kRowBytes;
    auto report = [&](const char* name, float us) {
      std::printf("N = %5lld %-52s %8.2f us %7.0f GB/s\n", static_cast<long long>(rows), name, us, bytes / us / 1e3);
    };
    char name[96];
    auto run_tiled = [&](auto kernel, int vec, int bb, int ks, int tiles, int per_sm) {
      const int smem = occupancy_smem(kernel, per_sm);
      const auto grid = static_cast<unsigned>(rows / (16 * tiles));
      const float us = time_us([&] { kernel<<<grid, ks * 32, smem>>>(w, kRowBytes, sink); }, kReps);
      std::snprintf(name, sizeof name, "tiled: %2d-byte loads, %3d-byte batches, %d warps, %d tiles, %d CTAs/SM", vec,
                    bb, ks, tiles, per_sm);
      report(name, us);
    };
    run_tiled(tiled<8, 128, 4, 1>, 8, 128, 4, 1, 4);  // the few-row kernel on grids of several waves
    run_tiled(tiled<8, 256, 4, 1>, 8, 256, 4, 1, 4);
    run_tiled(tiled<8, 512, 4, 1>, 8, 512, 4, 1, 4);
    run_tiled(tiled<16, 128, 4, 1>, 16, 128, 4, 1, 4);
    run_tiled(tiled<16, 256, 4, 1>, 16, 256, 4, 1, 4);
    run_tiled(tiled<16, 512, 4, 1>, 16, 512, 4, 1, 4);
    run_tiled(tiled<16, 512, 4, 1>, 16, 512, 4, 1, 2);
    run_tiled(tiled<16, 512, 8, 1>, 16, 512, 8, 1, 2);
    run_tiled(tiled<16, 1024, 4, 1>, 16, 1024, 4, 1, 2);
    run_tiled(tiled<8, 128, 8, 1>, 8, 128, 8, 1, 2);
    run_tiled(tiled<8, 128, 4, 2>, 8, 128, 4, 2, 2);
    auto run_prefetch = [&](auto kernel, int pf, int ahead) {
      const int smem = occupancy_smem(kernel, 4);
      const float us = time_us([&] { kernel<<<static_cast<unsigned>(rows / 16), 128, smem>>>(w, kRowBytes, sink); }, kReps);
      if (ahead == 0) std::snprintf(name, sizeof name, "tiled 8/128 + one-line L2 prefetch 8 batches on");
      else std::snprintf(name, sizeof name, "tiled 8/128 + bulk L2 prefetch of %4d bytes %2d batches on", pf, ahead);
      report(name, us);
    };
    run_prefetch(tiled_prefetch<128, 0>, 128, 0);
    run_prefetch(tiled_prefetch<512, 4>, 512, 4);
    run_prefetch(tiled_prefetch<512, 8>, 512, 8);
    run_prefetch(tiled_prefetch<1024, 4>, 1024, 4);
    run_prefetch(tiled_prefetch<1024, 8>, 1024, 8);
    run_prefetch(tiled_prefetch<2048, 16>, 2048, 16);
    const float us = time_us([&] { sequential<<<sms * 8, 128>>>(w, rows * kRowBytes, sink); }, kReps);
    report("sequential: 512-byte chunks, 4 in flight per warp", us);
  }
  CHECK(cudaGetLastError());
  CHECK(cudaFree(w));
  CHECK(cudaFree(sink));
  return 0;
}

// cuBLASLt, loaded at run time. The library is not linked: the CUDA backend loads (and its
// quantization kernels work) on machines without it, and the copy used is the one torch already
// brought into the process (or the path bnb_set_blas_library names), never a second, mismatched one.
//
// Only the handful of entry points and constants the int8 products need are declared here; their
// values are part of cuBLAS's stable C ABI (unchanged since CUDA 11).
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace bnb::cuda::lt {

using Status = int;  // cublasStatus_t
constexpr Status kSuccess = 0;
constexpr int kComputeInt32 = 72;  // CUBLAS_COMPUTE_32I
constexpr int kOpN = 0;            // CUBLAS_OP_N
constexpr int kOpT = 1;            // CUBLAS_OP_T
constexpr int kDescTransA = 3;     // CUBLASLT_MATMUL_DESC_TRANSA
constexpr int kDescTransB = 4;     // CUBLASLT_MATMUL_DESC_TRANSB
constexpr int kPrefMaxWorkspace = 1;  // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int kPrefMinAlignmentA = 5;  // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES (B, C, D follow: 6, 7, 8)

using Handle = void*;
using MatmulDesc = void*;
using Layout = void*;
using Preference = void*;

struct Algo {
  uint64_t data[8];
};

struct HeuristicResult {
  Algo algo;
  size_t workspace_size;
  Status state;
  float waves_count;
  int reserved[4];
};

struct Api {
  Status (*create)(Handle*);
  Status (*matmul_desc_create)(MatmulDesc*, int compute_type, cudaDataType scale_type);
  Status (*matmul_desc_destroy)(MatmulDesc);
  Status (*matmul_desc_set_attribute)(MatmulDesc, int attr, const void* buf, size_t size);
  Status (*layout_create)(Layout*, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld);
  Status (*layout_destroy)(Layout);
  Status (*preference_create)(Preference*);
  Status (*preference_destroy)(Preference);
  Status (*preference_set_attribute)(Preference, int attr, const void* buf, size_t size);
  Status (*algo_get_heuristic)(Handle, MatmulDesc, Layout, Layout, Layout, Layout, Preference, int requested,
                               HeuristicResult* results, int* returned);
  Status (*matmul)(Handle, MatmulDesc, const void* alpha, const void* A, Layout, const void* B, Layout,
                   const void* beta, const void* C, Layout, void* D, Layout, const Algo* algo, void* workspace,
                   size_t workspace_size, cudaStream_t stream);
  size_t (*get_version)();
  // Optional (null when the library lacks it): reads one configuration attribute of an algorithm.
  Status (*algo_config_get)(const Algo*, int attr, void* buf, size_t size, size_t* written);
};

// The loaded API, or null when cuBLASLt cannot be found (`why` then says what was tried).
const Api* api(std::string* why = nullptr);

// Path tried first by api(); set before the first int8 product.
void set_library_path(const char* path);

}  // namespace bnb::cuda::lt

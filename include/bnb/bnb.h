/* bitsandbytes native core: status codes, dtypes and library information.
 *
 * Every entry point of the core returns a bnb_status_t. On failure the message
 * describing the argument at fault is kept per thread and read with
 * bnb_last_error(). No entry point throws, aborts or prints.
 *
 * The same symbols are exported by each backend library (CPU and CUDA); a
 * caller picks the library that matches the device its buffers live on.
 */
#ifndef BNB_BNB_H
#define BNB_BNB_H

#include <stdint.h>

#if defined(_WIN32)
#define BNB_API __declspec(dllexport)
#else
#define BNB_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature in include/bnb changes. */
#define BNB_ABI_VERSION 3

typedef enum bnb_status {
  BNB_STATUS_OK = 0,
  BNB_STATUS_INVALID_ARGUMENT = 1, /* bad pointer, size, dtype or value */
  BNB_STATUS_UNSUPPORTED = 2,      /* valid request outside this backend's support table */
  BNB_STATUS_NOT_IMPLEMENTED = 3,  /* recognised operation not provided by this build */
  BNB_STATUS_DEVICE_ERROR = 4,     /* the accelerator runtime reported an error */
  BNB_STATUS_OUT_OF_MEMORY = 5,
  BNB_STATUS_INTERNAL = 6,
  BNB_STATUS_DEVICE_UNSUPPORTED = 7 /* no device, or no kernels in this build for the device's architecture */
} bnb_status_t;

typedef enum bnb_dtype {
  BNB_DTYPE_FLOAT32 = 0,
  BNB_DTYPE_FLOAT16 = 1,
  BNB_DTYPE_BFLOAT16 = 2,
  BNB_DTYPE_UINT8 = 3,
  BNB_DTYPE_INT8 = 4,
  BNB_DTYPE_INT32 = 5,
  BNB_DTYPE_INT64 = 6
} bnb_dtype_t;

/* Where a call runs: the device ordinal (ignored by the CPU backend) and the
 * stream (a cudaStream_t for CUDA; NULL = the legacy default stream). */
typedef void* bnb_stream_t;

/* Message of the last failed call on this thread ("" if none). */
BNB_API const char* bnb_last_error(void);

/* Package version the library was built for, e.g. "1.0.0.dev1". */
BNB_API const char* bnb_version(void);

BNB_API int32_t bnb_abi_version(void);

/* "cpu" or "cuda". */
BNB_API const char* bnb_backend_name(void);

/* A JSON object describing the backend (CPU: ISA chosen, threads; CUDA: compiled
 * architectures, runtime and driver versions, devices). Writes at most `capacity`
 * bytes including the terminating NUL; *needed receives the full length + 1. */
BNB_API bnb_status_t bnb_backend_info(char* buffer, int64_t capacity, int64_t* needed);

/* CPU backend: run the kernels' parallel loops on the OpenMP runtime already loaded in the process from
 * `path` (the one PyTorch's CPU ops use), so that they share its threads, which keep spinning for a while
 * after each of its ops, instead of competing with them for the cores. Uses that runtime's thread count
 * (omp_get_max_threads; torch.set_num_threads sets it) unless BNB_NUM_THREADS is set. NULL or "" returns to
 * the library's own thread pool. BNB_STATUS_UNSUPPORTED if no runtime with the GNU OpenMP entry points is
 * loaded from `path` (the own pool stays). Other backends accept and ignore it. */
BNB_API bnb_status_t bnb_set_cpu_threading_runtime(const char* path);

#ifdef __cplusplus
}
#endif

#endif /* BNB_BNB_H */

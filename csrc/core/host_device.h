// Lets the format and math helpers be shared verbatim by the C++ and CUDA backends.
#pragma once

#if defined(__CUDACC__)
#define BNB_HD __host__ __device__ __forceinline__
#else
#define BNB_HD inline
#endif

// AVX2 + FMA + F16C kernels (compiled with those flags for this file only).
#include "cpu/kernels.h"

namespace bnb::cpu {

const KernelTable* avx2_kernels() { return nullptr; }

}  // namespace bnb::cpu

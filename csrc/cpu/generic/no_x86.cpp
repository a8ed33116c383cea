// Non-x86 builds: no SIMD tables yet, the scalar reference serves.
#include "cpu/kernels.h"

namespace bnb::cpu {
const KernelTable* avx2_kernels() { return nullptr; }
const KernelTable* avx512_kernels() { return nullptr; }
}  // namespace bnb::cpu

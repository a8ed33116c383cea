// AVX-512 (F, BW, VL) kernels (compiled with those flags for this file only).
#include "cpu/kernels.h"

namespace bnb::cpu {

const KernelTable* avx512_kernels() { return nullptr; }

}  // namespace bnb::cpu

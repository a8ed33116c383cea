// What the generic CPU files use to reach wider instructions without a file per ISA:
//   BNB_ISA_CLONES      compile a function for AVX-512, AVX2 and baseline x86-64; the loader picks the
//                       widest the processor has (GCC function multi-versioning). Plain C++ bodies only.
//   BNB_X86_INTRINSICS  defined where functions may carry __attribute__((target(...))) intrinsics;
//                       call them only when avx512_active() says the AVX-512 kernel table is in use.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BNB_ISA_CLONES __attribute__((target_clones("arch=skylake-avx512", "avx2", "default")))
#else
#define BNB_ISA_CLONES
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define BNB_X86_INTRINSICS 1
#include <immintrin.h>
#endif

namespace bnb::cpu {

// True when the active kernel table is the AVX-512 one (the machine has AVX-512F/BW/VL/DQ and
// BNB_CPU_ISA does not ask for a narrower table), so AVX-512 intrinsics may run.
bool avx512_active();

// avx512_active() on a processor with the AVX512-BF16 dot product (vdpbf16ps): bfloat16 products
// may then run on bfloat16 pairs instead of widened floats.
bool avx512_bf16_active();

// avx512_active() on a processor with the AVX512-VNNI byte dot product (vpdpbusd).
bool avx512_vnni_active();

}  // namespace bnb::cpu

// Picks the CPU kernel table once, at first use: the widest ISA both the build and the
// machine support, unless BNB_CPU_ISA names one.
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu/amx.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"

namespace bnb::cpu {
namespace {

const KernelTable* by_name(const char* isa) {
  if (std::strcmp(isa, "scalar") == 0) return &reference_kernels();
  if (std::strcmp(isa, "avx2") == 0) return avx2_kernels();
  if (std::strcmp(isa, "avx512") == 0) return avx512_kernels();
  return nullptr;
}

const KernelTable& choose() {
  if (const char* forced = std::getenv("BNB_CPU_ISA")) {
    if (const KernelTable* t = by_name(forced)) return *t;
  }
  if (const KernelTable* t = avx512_kernels()) return *t;
  if (const KernelTable* t = avx2_kernels()) return *t;
  return reference_kernels();
}

}  // namespace

const KernelTable& active_kernels() {
  static const KernelTable& table = choose();
  return table;
}

bool avx512_active() { return std::strcmp(active_kernels().isa, "avx512") == 0; }

// Whether the processor has an AVX-512 extension (GCC's run-time CPU check; false elsewhere).
#if defined(__x86_64__) && defined(__GNUC__)
#define BNB_CPU_HAS(feature) __builtin_cpu_supports(feature)
#else
#define BNB_CPU_HAS(feature) false
#endif

bool avx512_bf16_active() {
  static const bool has = BNB_CPU_HAS("avx512bf16");
  return has && avx512_active();
}

bool avx512_vnni_active() {
  static const bool has = BNB_CPU_HAS("avx512vnni");
  return has && avx512_active();
}

namespace {

// AMX-TILE and the tile product `bit` (CPUID leaf 7, EDX: 24 the tiles, 22 AMX-BF16, 25 AMX-INT8), and
// Linux's grant of the tile data state to this process (asked once): without it the first tile
// instruction faults. BNB_CPU_AMX=0 turns AMX off, as does a build whose compiler lacked it.
bool amx_usable(unsigned bit) {
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
  static const bool granted = [] {
    const char* wanted = std::getenv("BNB_CPU_AMX");
    if ((wanted && std::strcmp(wanted, "0") == 0) || !amx::built()) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24))) return false;
    constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  unsigned a = 0, b = 0, c = 0, d = 0;
  return granted && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << bit));
#else
  (void)bit;
  return false;
#endif
}

}  // namespace

bool amx_bf16_active() {
  static const bool usable = amx_usable(22);
  return usable && avx512_bf16_active();
}

bool amx_int8_active() {
  static const bool usable = amx_usable(25);
  return usable && avx512_active();
}

}  // namespace bnb::cpu

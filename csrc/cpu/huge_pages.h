// Large outputs written once from start to end (dequantized weights) are fresh memory more often than
// not: torch allocates big CPU tensors with mmap, so every 4 KB page faults in on its first write, and
// the faults, not the arithmetic, set the time (a 64 MB dequantization: ~20 ms against ~2.5 ms into
// memory already touched, on the development machine). Advising transparent huge pages for the
// buffer's whole 2 MB pages before writing lets each fault bring in 2 MB.
#pragma once

#include <cstddef>

namespace bnb::cpu {

// Advice only: on memory already in place, or where the kernel does not offer transparent huge pages,
// nothing changes. Pages only partly inside [p, p + bytes) are left alone.
void advise_huge_pages(void* p, size_t bytes);

}  // namespace bnb::cpu

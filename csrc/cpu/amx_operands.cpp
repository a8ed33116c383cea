// The activation as the tile products' B operand (see cpu/amx.h): column by column, 4 bytes per row.
#include <algorithm>
#include <cstring>

#include "cpu/amx.h"
#include "cpu/threading.h"

namespace bnb::cpu::amx {

void column_words(const void* A, int64_t rows, int64_t row_bytes, int64_t m_pad, int64_t words, uint32_t* xt) {
  const auto* bytes = static_cast<const uint8_t*>(A);
  cpu::parallel_for(words, 256, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t at = 4 * w, take = std::clamp<int64_t>(row_bytes - at, 0, 4);  // zero past the row
      for (int64_t m = 0; m < m_pad; ++m) {
        uint32_t word = 0;
        if (m < rows) std::memcpy(&word, bytes + m * row_bytes + at, static_cast<size_t>(take));
        xt[w * m_pad + m] = word;
      }
    }
  });
}

}  // namespace bnb::cpu::amx

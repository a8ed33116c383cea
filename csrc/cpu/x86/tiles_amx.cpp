// AMX tile products (compiled with -mamx-tile -mamx-bf16; called only when amx_bf16_active()).
// Tiles 0-1 hold weight rows (the A operand), 2-3 activation pairs (B), 4-7 the float sums of each
// (weight tile, activation tile) pair.
#include <immintrin.h>

#include <cstring>

#include "cpu/amx.h"

namespace bnb::cpu::amx {
namespace {

// The tile configuration (LDTILECFG's 64-byte operand): palette 1, tiles 0-7 of 16 rows x 64 bytes. A
// constant object: the compiler does not see that the instruction reads it, and drops stores to a local.
struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "the tile configuration is 64 bytes");
constexpr TileConfig kBf16Tiles = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

template <int NT, int MT>
void product(const uint16_t* w, int64_t w_stride, const uint32_t* xt, int64_t xt_stride, int64_t k_steps, float* c,
             int64_t c_stride, bool accumulate) {
  const int64_t cs = c_stride * static_cast<int64_t>(sizeof(float));
  if (accumulate) {
    _tile_loadd(4, c, cs);
    if constexpr (MT == 2) _tile_loadd(5, c + 16, cs);
    if constexpr (NT == 2) _tile_loadd(6, c + 16 * c_stride, cs);
    if constexpr (NT == 2 && MT == 2) _tile_loadd(7, c + 16 * c_stride + 16, cs);
  } else {
    _tile_zero(4);
    if constexpr (MT == 2) _tile_zero(5);
    if constexpr (NT == 2) _tile_zero(6);
    if constexpr (NT == 2 && MT == 2) _tile_zero(7);
  }
  const char* wb = reinterpret_cast<const char*>(w);
  const char* xb = reinterpret_cast<const char*>(xt);
  for (int64_t s = 0; s < k_steps; ++s) {
    // Step s: weight columns 32 s .. 32 s + 31 (64 bytes of each row), activation pair rows 16 s ..
    const char* ws = wb + s * 64;
    const char* xs = xb + s * 16 * xt_stride;
    _tile_loadd(0, ws, w_stride);
    _tile_loadd(2, xs, xt_stride);
    _tile_dpbf16ps(4, 0, 2);
    if constexpr (MT == 2) {
      _tile_loadd(3, xs + 64, xt_stride);
      _tile_dpbf16ps(5, 0, 3);
    }
    if constexpr (NT == 2) {
      _tile_loadd(1, ws + 16 * w_stride, w_stride);
      _tile_dpbf16ps(6, 1, 2);
      if constexpr (MT == 2) _tile_dpbf16ps(7, 1, 3);
    }
  }
  _tile_stored(4, c, cs);
  if constexpr (MT == 2) _tile_stored(5, c + 16, cs);
  if constexpr (NT == 2) _tile_stored(6, c + 16 * c_stride, cs);
  if constexpr (NT == 2 && MT == 2) _tile_stored(7, c + 16 * c_stride + 16, cs);
}

}  // namespace

void configure_bf16_tiles() { _tile_loadconfig(&kBf16Tiles); }

void release_tiles() { _tile_release(); }

void bf16_product(const uint16_t* w, int64_t w_stride, const uint32_t* xt, int64_t xt_stride, int64_t k_steps,
                  int n_tiles, int m_tiles, float* c, int64_t c_stride, bool accumulate) {
  if (n_tiles == 2) {
    if (m_tiles == 2) product<2, 2>(w, w_stride, xt, xt_stride, k_steps, c, c_stride, accumulate);
    else product<2, 1>(w, w_stride, xt, xt_stride, k_steps, c, c_stride, accumulate);
  } else {
    if (m_tiles == 2) product<1, 2>(w, w_stride, xt, xt_stride, k_steps, c, c_stride, accumulate);
    else product<1, 1>(w, w_stride, xt, xt_stride, k_steps, c, c_stride, accumulate);
  }
}

}  // namespace bnb::cpu::amx

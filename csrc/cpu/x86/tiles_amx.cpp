// AMX tile products (compiled with -mamx-tile -mamx-bf16 -mamx-int8; called only when amx_bf16_active() or
// amx_int8_active() says so).
// Tiles 0-1 hold weight rows (the A operand), 2-3 the activation's pairs or quadruples (B), 4-7 the
// sums of each (weight tile, activation tile) pair.
#include "cpu/amx.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AMX_INT8__)
#include <immintrin.h>

namespace bnb::cpu::amx {

bool built() { return true; }

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
constexpr TileConfig kTiles = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

// One tile product (tile indices are immediates): bfloat16 pairs into float sums, or int8 quadruples
// into int32 sums.
#define BNB_TILE_DP(C, A, B)           \
  do {                                 \
    if constexpr (Int8) {              \
      _tile_dpbssd(C, A, B);           \
    } else {                           \
      _tile_dpbf16ps(C, A, B);         \
    }                                  \
  } while (0)

template <bool Int8, int NT, int MT>
void product(const void* w, int64_t w_stride, const uint32_t* xt, int64_t xt_stride, int64_t k_steps, void* c_out,
             int64_t c_stride, Sums start, bool store) {
  char* c = static_cast<char*>(c_out);  // 4-byte sums either way
  const int64_t cs = c_stride * 4;
  if (start == Sums::kFromMemory) {
    _tile_loadd(4, c, cs);
    if constexpr (MT == 2) _tile_loadd(5, c + 64, cs);
    if constexpr (NT == 2) _tile_loadd(6, c + 16 * cs, cs);
    if constexpr (NT == 2 && MT == 2) _tile_loadd(7, c + 16 * cs + 64, cs);
  } else if (start == Sums::kZero) {
    _tile_zero(4);
    if constexpr (MT == 2) _tile_zero(5);
    if constexpr (NT == 2) _tile_zero(6);
    if constexpr (NT == 2 && MT == 2) _tile_zero(7);
  }
  const char* wb = static_cast<const char*>(w);
  const char* xb = reinterpret_cast<const char*>(xt);
  for (int64_t s = 0; s < k_steps; ++s) {
    // Step s: bytes 64 s .. 64 s + 63 of each weight row, rows 16 s .. 16 s + 15 of the activation's
    const char* ws = wb + s * 64;
    const char* xs = xb + s * 16 * xt_stride;
    _tile_loadd(0, ws, w_stride);
    _tile_loadd(2, xs, xt_stride);
    BNB_TILE_DP(4, 0, 2);
    if constexpr (MT == 2) {
      _tile_loadd(3, xs + 64, xt_stride);
      BNB_TILE_DP(5, 0, 3);
    }
    if constexpr (NT == 2) {
      _tile_loadd(1, ws + 16 * w_stride, w_stride);
      BNB_TILE_DP(6, 1, 2);
      if constexpr (MT == 2) BNB_TILE_DP(7, 1, 3);
    }
  }
  if (!store) return;
  _tile_stored(4, c, cs);
  if constexpr (MT == 2) _tile_stored(5, c + 64, cs);
  if constexpr (NT == 2) _tile_stored(6, c + 16 * cs, cs);
  if constexpr (NT == 2 && MT == 2) _tile_stored(7, c + 16 * cs + 64, cs);
}
#undef BNB_TILE_DP

template <bool Int8>
void dispatch(const void* w, int64_t w_stride, const uint32_t* xt, int64_t xt_stride, int64_t k_steps, int n_tiles,
              int m_tiles, void* c, int64_t c_stride, Sums start, bool store) {
  if (n_tiles == 2) {
    if (m_tiles == 2) product<Int8, 2, 2>(w, w_stride, xt, xt_stride, k_steps, c, c_stride, start, store);
    else product<Int8, 2, 1>(w, w_stride, xt, xt_stride, k_steps, c, c_stride, start, store);
  } else {
    if (m_tiles == 2) product<Int8, 1, 2>(w, w_stride, xt, xt_stride, k_steps, c, c_stride, start, store);
    else product<Int8, 1, 1>(w, w_stride, xt, xt_stride, k_steps, c, c_stride, start, store);
  }
}

}  // namespace

void configure_tiles() { _tile_loadconfig(&kTiles); }

void release_tiles() { _tile_release(); }

void bf16_product(const uint16_t* w, int64_t w_stride, const uint32_t* xt, int64_t xt_stride, int64_t k_steps,
                  int n_tiles, int m_tiles, float* c, int64_t c_stride, Sums start, bool store) {
  dispatch<false>(w, w_stride, xt, xt_stride, k_steps, n_tiles, m_tiles, c, c_stride, start, store);
}

void int8_product(const int8_t* w, int64_t w_stride, const uint32_t* xt, int64_t xt_stride, int64_t k_steps,
                  int n_tiles, int m_tiles, int32_t* c, int64_t c_stride, Sums start, bool store) {
  dispatch<true>(w, w_stride, xt, xt_stride, k_steps, n_tiles, m_tiles, c, c_stride, start, store);
}

}  // namespace bnb::cpu::amx

#else  // a compiler without the tile instructions: never called (built() is false, so AMX is never active)
#include <cstdlib>

namespace bnb::cpu::amx {

bool built() { return false; }
void configure_tiles() { std::abort(); }
void release_tiles() { std::abort(); }
void bf16_product(const uint16_t*, int64_t, const uint32_t*, int64_t, int64_t, int, int, float*, int64_t, Sums, bool) {
  std::abort();
}
void int8_product(const int8_t*, int64_t, const uint32_t*, int64_t, int64_t, int, int, int32_t*, int64_t, Sums, bool) {
  std::abort();
}

}  // namespace bnb::cpu::amx
#endif

// AMX (Advanced Matrix Extensions): bfloat16 and int8 tile products on the processors that have them
// (Intel Xeon from Sapphire Rapids on). One TDPBF16PS multiplies a 16 x 32 bfloat16 tile by a 32 x 16 one
// into 16 x 16 float sums, 8192 multiply-adds per instruction where AVX512-BF16 does 32; TDPBSSD does the
// same for 16 x 64 by 64 x 16 int8 tiles into int32 sums. The 4-bit products of many activation rows are
// then bound by decoding the weight, the int8 ones by reading it.
#pragma once

#include <cstdint>

namespace bnb::cpu {

// avx512_bf16_active(), the processor has AMX-TILE and AMX-BF16, Linux granted this process the tile
// state (arch_prctl, asked once) and BNB_CPU_AMX is not "0".
bool amx_bf16_active();

// The same for int8 products (AMX-INT8), on avx512_active().
bool amx_int8_active();

namespace amx {

// Whether this build carries the tile products (its compiler knew the AMX instructions).
bool built();

// Sets this thread's tile registers up for the products below (all eight 16 x 64-byte tiles), and gives
// them back. Call both on the thread that runs the products, around them.
void configure_tiles();
void release_tiles();

// xt[w][m] (m_pad columns) = bytes 4w .. 4w + 3 of row m of A (rows of row_bytes bytes, little-endian),
// zero past the row and for m >= rows, for w < words: the activation as the B operand, bfloat16 pairs or
// int8 quadruples.
void column_words(const void* A, int64_t rows, int64_t row_bytes, int64_t m_pad, int64_t words, uint32_t* xt);

// Where a product's sums start and end: in c (row stride c_stride elements) or left in the tile
// registers between calls of one thread with the same n_tiles and m_tiles and no other tile work between.
enum class Sums { kZero, kFromMemory, kInTiles };

// c[16 n_tiles x 16 m_tiles] (float) = W x X^T over k_steps steps of 32, starting from zero, from c's
// values or from the tiles' (`start`), stored to c where `store`:
//   w:  16 n_tiles rows of bfloat16, w_stride bytes apart, 32 k_steps values each;
//   xt: the activation as bfloat16 pairs, row kp = (X[m][2kp], X[m][2kp + 1]) for 16 m_tiles columns m,
//       xt_stride bytes apart, 16 k_steps rows.
// n_tiles and m_tiles are 1 or 2. Needs configure_tiles() on this thread.
void bf16_product(const uint16_t* w, int64_t w_stride, const uint32_t* xt, int64_t xt_stride, int64_t k_steps,
                  int n_tiles, int m_tiles, float* c, int64_t c_stride, Sums start, bool store);

// The same for int8 (exact int32 sums, modulo 2^32): steps of 64 k, w rows of int8, xt rows of the
// activation's int8 quadruples (X[m][4kq .. 4kq + 3] in row kq), 16 k_steps rows per step.
void int8_product(const int8_t* w, int64_t w_stride, const uint32_t* xt, int64_t xt_stride, int64_t k_steps,
                  int n_tiles, int m_tiles, int32_t* c, int64_t c_stride, Sums start, bool store);

}  // namespace amx
}  // namespace bnb::cpu

// The one place where a runtime dtype becomes a C++ type. A backend supplies a traits
// template mapping each bnb_dtype_t to its own storage type (CPU: bnb::half_t, CUDA: __half),
// and the callable receives a value of that type's tag.
#pragma once

#include "bnb/bnb.h"
#include "core/error.h"

namespace bnb {

template <typename T>
struct TypeTag {
  using type = T;
};

const char* dtype_name(bnb_dtype_t dtype);

// Calls f(TypeTag<Traits<D>::type>{}) for the floating dtypes fp32 / fp16 / bf16.
template <template <bnb_dtype_t> class Traits, typename F>
decltype(auto) dispatch_float(bnb_dtype_t dtype, const char* arg, F&& f) {
  switch (dtype) {
    case BNB_DTYPE_FLOAT32: return f(TypeTag<typename Traits<BNB_DTYPE_FLOAT32>::type>{});
    case BNB_DTYPE_FLOAT16: return f(TypeTag<typename Traits<BNB_DTYPE_FLOAT16>::type>{});
    case BNB_DTYPE_BFLOAT16: return f(TypeTag<typename Traits<BNB_DTYPE_BFLOAT16>::type>{});
    default:
      fail(BNB_STATUS_INVALID_ARGUMENT, arg, " must be float32, float16 or bfloat16, got ", dtype_name(dtype));
  }
}

inline bool is_float_dtype(bnb_dtype_t dtype) {
  return dtype == BNB_DTYPE_FLOAT32 || dtype == BNB_DTYPE_FLOAT16 || dtype == BNB_DTYPE_BFLOAT16;
}

// Bytes per element.
inline size_t dtype_size(bnb_dtype_t dtype) {
  switch (dtype) {
    case BNB_DTYPE_FLOAT32:
    case BNB_DTYPE_INT32: return 4;
    case BNB_DTYPE_FLOAT16:
    case BNB_DTYPE_BFLOAT16: return 2;
    case BNB_DTYPE_INT64: return 8;
    default: return 1;  // uint8, int8
  }
}

}  // namespace bnb

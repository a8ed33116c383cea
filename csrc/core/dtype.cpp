#include "core/dispatch.h"

namespace bnb {

const char* dtype_name(bnb_dtype_t dtype) {
  switch (dtype) {
    case BNB_DTYPE_FLOAT32: return "float32";
    case BNB_DTYPE_FLOAT16: return "float16";
    case BNB_DTYPE_BFLOAT16: return "bfloat16";
    case BNB_DTYPE_UINT8: return "uint8";
    case BNB_DTYPE_INT8: return "int8";
    case BNB_DTYPE_INT32: return "int32";
    case BNB_DTYPE_INT64: return "int64";
  }
  return "unknown dtype";
}

}  // namespace bnb

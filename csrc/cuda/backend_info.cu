// The CUDA backend's support table and self-description: name, accepted 8-bit blocksizes, the
// per-device check that this build carries machine code (or PTX) the GPU can run, and info_json.
#include <array>
#include <atomic>
#include <string>

#include "core/backend.h"
#include "core/formats.h"
#include "cuda/common.cuh"

#ifndef BNB_CUDA_ARCH_LIST
#define BNB_CUDA_ARCH_LIST "unknown"
#endif

namespace bnb::cuda {
namespace {

// Compiled for exactly the same architectures as every other kernel of the library, so whether the
// runtime can load it for a device answers whether any of them can.
__global__ void probe_kernel() {}

enum class DeviceState : uint8_t { Unknown = 0, Usable = 1 };
std::array<std::atomic<uint8_t>, kMaxCachedDevices> g_device_state{};

std::string json_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += concat("\\u00", "0123456789abcdef"[(c >> 4) & 0xf], "0123456789abcdef"[c & 0xf]);
        else out += c;
    }
  }
  return out;
}

std::string version_string(int v) { return concat(v / 1000, ".", (v % 1000) / 10); }

std::string versions() {
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  return concat("CUDA runtime ", version_string(runtime), ", driver supports CUDA ",
                driver > 0 ? version_string(driver) : std::string("(no driver)"));
}

int device_count_or_throw() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it so it is not reported again by a later, unrelated check
    fail(BNB_STATUS_DEVICE_ERROR, "no usable CUDA device: ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
         "); ", versions());
  }
  return count;
}

// Loads the probe kernel on `device`; returns the runtime's answer.
cudaError_t probe(int32_t device) {
  int previous = 0;
  cudaError_t err = cudaGetDevice(&previous);
  if (err == cudaSuccess && previous != device) err = cudaSetDevice(device);
  if (err != cudaSuccess) return err;
  cudaFuncAttributes attr;
  err = cudaFuncGetAttributes(&attr, probe_kernel);
  if (err != cudaSuccess) cudaGetLastError();
  if (previous != device) (void)cudaSetDevice(previous);
  return err;
}

}  // namespace
}  // namespace bnb::cuda

namespace bnb::backend {

const char* name() { return "cuda"; }

bool supports_blocksize_8bit(int64_t blocksize) {
  return is_pow2(blocksize) && blocksize >= kMinBlocksizeCuda8bit && blocksize <= kMaxBlocksize;
}

const char* blocksize_8bit_rule() { return "a power of two in [64, 4096]"; }

void check_device(int32_t device) {
  using namespace bnb::cuda;
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable && g_device_state[device].load(std::memory_order_acquire) == uint8_t(DeviceState::Usable)) return;

  const int count = device_count_or_throw();
  BNB_CHECK_ARG(device >= 0 && device < count, "CUDA device ", device, " does not exist (", count,
                " device(s) visible)");
  const cudaError_t err = probe(device);
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction ||
      err == cudaErrorUnsupportedPtxVersion) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, device);
    fail(BNB_STATUS_UNSUPPORTED, "this bitsandbytes CUDA library has no kernels for device ", device, " (", prop.name,
         ", sm_", prop.major, prop.minor, "): it was built for CUDA architectures ", BNB_CUDA_ARCH_LIST, " (",
         cudaGetErrorString(err), "; ", versions(), "). Rebuild with -DBNB_CUDA_ARCHS=", prop.major, prop.minor,
         " (or add ", prop.major, prop.minor, " to the list).");
  }
  if (err != cudaSuccess)
    fail(BNB_STATUS_DEVICE_ERROR, "cannot use CUDA device ", device, ": ", cudaGetErrorName(err), " (",
         cudaGetErrorString(err), "); ", versions());
  if (cacheable) g_device_state[device].store(uint8_t(DeviceState::Usable), std::memory_order_release);
}

std::string info_json() {
  using namespace bnb::cuda;
  int runtime = 0, driver = 0, count = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  std::string json = concat("{\"backend\": \"cuda\", \"compiled_archs\": \"", json_escape(BNB_CUDA_ARCH_LIST),
                            "\", \"cuda_runtime_version\": ", runtime, ", \"driver_version\": ", driver);
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return json + concat(", \"device_count\": 0, \"devices\": [], \"error\": \"",
                         json_escape(concat(cudaGetErrorName(err), ": ", cudaGetErrorString(err))), "\"}");
  }
  json += concat(", \"device_count\": ", count, ", \"devices\": [");
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp prop{};
    const cudaError_t perr = cudaGetDeviceProperties(&prop, d);
    const cudaError_t kerr = perr == cudaSuccess ? probe(d) : perr;
    json += concat(d ? ", " : "", "{\"index\": ", d, ", \"name\": \"", json_escape(perr == cudaSuccess ? prop.name : ""),
                   "\", \"capability\": \"", prop.major, ".", prop.minor, "\", \"kernels_available\": ",
                   kerr == cudaSuccess ? "true" : "false");
    if (kerr != cudaSuccess) json += concat(", \"error\": \"", json_escape(cudaGetErrorString(kerr)), "\"");
    json += "}";
  }
  return json + "]}";
}

}  // namespace bnb::backend

// Errors inside the core are C++ exceptions carrying a bnb_status_t; the C ABI guard
// (capi_guard) turns them into a status code and a thread-local message. Nothing
// crosses an extern "C" boundary as an exception.
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "bnb/bnb.h"

namespace bnb {

class Error : public std::runtime_error {
 public:
  Error(bnb_status_t status, const std::string& message) : std::runtime_error(message), status_(status) {}
  bnb_status_t status() const noexcept { return status_; }

 private:
  bnb_status_t status_;
};

// Message building without iostreams: ostream formatting goes through the C++ locale machinery,
// which is not reliably initialised in a shared library that carries its own (static) copy of
// libstdc++ — a common way to build portable binaries. snprintf / std::to_string need none of it.
inline void append_part(std::string& s, const char* v) { s += v ? v : "(null)"; }
inline void append_part(std::string& s, char* v) { append_part(s, static_cast<const char*>(v)); }
inline void append_part(std::string& s, const std::string& v) { s += v; }
inline void append_part(std::string& s, char v) { s += v; }
inline void append_part(std::string& s, bool v) { s += v ? "true" : "false"; }
template <typename T>
void append_part(std::string& s, T v) {
  if constexpr (std::is_enum_v<T>) {
    append_part(s, static_cast<std::underlying_type_t<T>>(v));
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(v));
    s += buf;
  } else {
    static_assert(std::is_integral_v<T>, "concat() formats strings, characters, numbers and enums");
    s += std::to_string(v);
  }
}

template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::string s;
  (append_part(s, std::forward<Parts>(parts)), ...);
  return s;
}

template <typename... Parts>
[[noreturn]] void fail(bnb_status_t status, Parts&&... parts) {
  throw Error(status, concat(std::forward<Parts>(parts)...));
}

// Store a message for bnb_last_error() on this thread.
void set_last_error(const std::string& message);
const char* last_error();

// Run `body` and convert anything it throws into a status. Every C entry point is one call of this.
template <typename Body>
bnb_status_t capi_guard(const char* function, Body&& body) noexcept {
  try {
    body();
    set_last_error("");
    return BNB_STATUS_OK;
  } catch (const Error& e) {
    set_last_error(concat(function, ": ", e.what()));
    return e.status();
  } catch (const std::bad_alloc&) {
    set_last_error(concat(function, ": out of host memory"));
    return BNB_STATUS_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_last_error(concat(function, ": internal error: ", e.what()));
    return BNB_STATUS_INTERNAL;
  } catch (...) {
    set_last_error(concat(function, ": unknown internal error"));
    return BNB_STATUS_INTERNAL;
  }
}

}  // namespace bnb

#define BNB_CHECK_ARG(cond, ...)                                   \
  do {                                                             \
    if (!(cond)) ::bnb::fail(BNB_STATUS_INVALID_ARGUMENT, __VA_ARGS__); \
  } while (0)

#define BNB_CHECK_SUPPORTED(cond, ...)                         \
  do {                                                         \
    if (!(cond)) ::bnb::fail(BNB_STATUS_UNSUPPORTED, __VA_ARGS__); \
  } while (0)

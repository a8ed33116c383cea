// Errors inside the core are C++ exceptions carrying a bnb_status_t; the C ABI guard
// (capi_guard) turns them into a status code and a thread-local message. Nothing
// crosses an extern "C" boundary as an exception.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
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

template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  return os.str();
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

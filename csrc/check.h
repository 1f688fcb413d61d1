// Host-side checks for the launchers in csrc/*.cu. Bad arguments raise ValueError in Python (std::invalid_argument),
// CUDA failures raise RuntimeError (std::runtime_error); pybind11 does the translation.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include <cuda_runtime.h>

namespace nemotron {

namespace detail {

inline void append(std::string& out, const char* s) { out += (s != nullptr ? s : "(null)"); }
inline void append(std::string& out, const std::string& s) { out += s; }
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
void append(std::string& out, T v) {
  if constexpr (std::is_same_v<T, bool>) {
    out += v ? "true" : "false";
  } else {
    out += std::to_string(v);
  }
}

}  // namespace detail

// Concatenates strings and numbers into an error message, without iostreams. Why (seen on an H100 test machine, torch
// 2.11+cu130 in the process): checks whose message streamed an integer through std::ostringstream crashed the
// process (SIGSEGV) instead of raising, a check whose message had no number raised ValueError, and a minimal module
// whose message used std::to_string raised cleanly; here (torch 2.13 CPU) both forms raise. Numbers now go through
// std::to_string (vsnprintf), which touches no C++ locale facet. The argument checks of _C.rnnt_grid_workspace_bytes
// (arithmetic only, no CUDA) exercise this path on any machine, GPU or not (tests/test_extension.py).
template <typename... Args>
std::string str(const Args&... args) {
  std::string out;
  (detail::append(out, args), ...);
  return out;
}

// Throws RuntimeError("nemotron_engine._C: no CUDA device available (cudaGetDeviceCount: ...)") unless a device is
// usable. Every kernel entry calls it first, so a machine without a GPU imports the module and fails on use.
void ensure_cuda();

}  // namespace nemotron

#define NEMOTRON_CHECK(COND, ...)                                                              \
  do {                                                                                         \
    if (!(COND)) throw std::invalid_argument(nemotron::str("nemotron_engine._C: ", __VA_ARGS__)); \
  } while (0)

#define NEMOTRON_CUDA_CHECK(EXPR, WHAT)                                                         \
  do {                                                                                          \
    const cudaError_t err_ = (EXPR);                                                            \
    if (err_ != cudaSuccess) {                                                                  \
      throw std::runtime_error(nemotron::str("nemotron_engine._C: ", WHAT, " failed: ",         \
                                             cudaGetErrorName(err_), ": ", cudaGetErrorString(err_))); \
    }                                                                                           \
  } while (0)

// Host-side checks for the launchers in csrc/*.cu. Bad arguments raise ValueError in Python (std::invalid_argument),
// CUDA failures raise RuntimeError (std::runtime_error); pybind11 does the translation.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

namespace nemotron {

template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
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

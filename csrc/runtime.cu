// CUDA runtime queries. The module links the static CUDA runtime, so it imports on a machine without a driver;
// these calls report that instead of failing the import.
#include <cuda_runtime.h>

#include "check.h"
#include "ops.h"

#ifndef NEMOTRON_CUDA_ARCHS
#define NEMOTRON_CUDA_ARCHS "unknown"
#endif

namespace nemotron {

namespace {

// cudaGetDeviceCount's status; clears the error so that later runtime calls do not see it.
cudaError_t query_device_count(int* count) {
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    *count = 0;
  }
  return err;
}

}  // namespace

int device_count() {
  int count = 0;
  query_device_count(&count);
  return count;
}

bool cuda_available() {
  return device_count() > 0;
}

std::string cuda_archs() {
  return NEMOTRON_CUDA_ARCHS;
}

void ensure_cuda() {
  int count = 0;
  const cudaError_t err = query_device_count(&count);
  if (err != cudaSuccess) {
    throw std::runtime_error(str("nemotron_engine._C: no CUDA device available (cudaGetDeviceCount: ",
                                 cudaGetErrorName(err), ": ", cudaGetErrorString(err), ")"));
  }
  if (count == 0) {
    throw std::runtime_error("nemotron_engine._C: no CUDA device available (cudaGetDeviceCount: 0 devices)");
  }
}

}  // namespace nemotron

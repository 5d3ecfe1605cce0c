#include "runtime/cuda_runtime.h"

#include "runtime/cuda_check.cuh"

namespace lumo {
namespace cuda {

int device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorNoDevice) {
    // The failed query is also the thread's last error; clear it so the next
    // cudaGetLastError() after a kernel launch does not report it.
    cudaGetLastError();
    return 0;
  }
  throw_on_error(err, "device_count", "cudaGetDeviceCount");
  return count;
}

int runtime_version() {
  int version = 0;
  throw_on_error(cudaRuntimeGetVersion(&version), "runtime_version", "cudaRuntimeGetVersion");
  return version;
}

int driver_version() {
  int version = 0;
  throw_on_error(cudaDriverGetVersion(&version), "driver_version", "cudaDriverGetVersion");
  return version;
}

}  // namespace cuda
}  // namespace lumo

// CUDA runtime helpers for the .cu files (never included by the bindings).
#pragma once

#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>
#include <string>

// Kernel launches and dynamic shared memory are spelled through these macros so
// that the SIMT emulator of the tests (tests/simt/simt.h, which defines them
// first) can compile and run these files as plain C++ on a machine without a GPU.
#ifndef LUMO_LAUNCH
#define LUMO_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif
#ifndef LUMO_DYNAMIC_SMEM
#define LUMO_DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#endif

namespace lumo {
namespace cuda {

// Turns a CUDA error into a C++ exception (pybind11: RuntimeError).
inline void throw_on_error(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) {
    std::ostringstream os;
    os << op << ": " << what << " failed: " << cudaGetErrorName(err) << ": "
       << cudaGetErrorString(err);
    throw std::runtime_error(os.str());
  }
}

// Makes `device` current for the scope and restores the previous device.
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) {
    throw_on_error(cudaGetDevice(&prev_), op, "cudaGetDevice");
    if (prev_ != device) {
      throw_on_error(cudaSetDevice(device), op, "cudaSetDevice");
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) {
      cudaSetDevice(prev_);  // best effort: destructors must not throw
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

}  // namespace cuda
}  // namespace lumo

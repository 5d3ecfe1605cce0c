// lumo_uti._C_cuda: CUDA kernels. Private; use lumo_uti.ops.
//
// Compiled by the host C++ compiler; the kernels and every CUDA runtime call
// live in csrc/ops/*/cuda*.cu behind CUDA-free headers. The module init runs every
// binder registered by csrc/ops/<op>/bind_cuda.cpp (see abi/registry.h).
#include <pybind11/pybind11.h>

#include "abi/build_info.h"
#include "abi/registry.h"
#include "runtime/cuda_runtime.h"

namespace py = pybind11;

// The tests build the same sources as `_C_simt` over a CPU emulator (tests/simt).
#ifndef LUMO_CUDA_MODULE_NAME
#define LUMO_CUDA_MODULE_NAME _C_cuda
#endif

PYBIND11_MODULE(LUMO_CUDA_MODULE_NAME, m) {
  m.doc() = "LumoOmni CUDA kernels (torch-free). Private: use lumo_uti.ops.";
  lumo::bindings::bind_all(m);
  m.def("device_count", &lumo::cuda::device_count, py::call_guard<py::gil_scoped_release>(),
        "Number of visible CUDA devices (0 if none); raises RuntimeError if the driver fails.");
  m.def("runtime_version", &lumo::cuda::runtime_version,
        "CUDA runtime version linked into this module (1000 * major + 10 * minor).");
  m.def("driver_version", &lumo::cuda::driver_version,
        "CUDA driver version (1000 * major + 10 * minor), 0 if no driver is installed.");
  m.def("build_info", [] { return lumo::bindings::build_info("lumo_uti._C_cuda"); },
        "How this module was built (compilers, flags, CUDA architectures).");
}

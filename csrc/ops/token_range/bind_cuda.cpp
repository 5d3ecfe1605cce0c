// Bindings of the token-range ops in lumo_uti._C_cuda.
//
// SAFETY: pointer arguments are device addresses (int) on `device` that the
// Python caller keeps alive until the work enqueued on `stream` has finished
// (the caching allocator of PyTorch does this for tensors used on their
// current stream). The GIL is released while the functions run.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "abi/registry.h"
#include "ops/token_range/cuda.h"

namespace py = pybind11;

namespace {

void classify_ids(uintptr_t ids_ptr, int64_t ids_itemsize, int64_t n, uintptr_t bounds_ptr,
                  int64_t num_bounds, uintptr_t out_ptr, uintptr_t stream, int device) {
  lumo::cuda::classify_ids(reinterpret_cast<const void*>(ids_ptr), ids_itemsize, n,
                           reinterpret_cast<const int64_t*>(bounds_ptr), num_bounds,
                           reinterpret_cast<int32_t*>(out_ptr), stream, device);
}

}  // namespace

LUMO_BIND(bind_token_range) {
  m.def("classify_ids", &classify_ids, py::arg("ids_ptr"), py::arg("ids_itemsize"), py::arg("n"),
        py::arg("bounds_ptr"), py::arg("num_bounds"), py::arg("out_ptr"), py::arg("stream"),
        py::arg("device"), py::call_guard<py::gil_scoped_release>(),
        "Enqueue out[i] = r with bounds[r] <= ids[i] < bounds[r+1], else -1, on `stream`.\n\n"
        "ids: [n] int32/int64 (ids_itemsize 4/8), bounds: [num_bounds] int64 strictly\n"
        "increasing, out: [n] int32; all C-contiguous memory on `device`.");
}

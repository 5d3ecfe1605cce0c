// Bindings of the token-range ops in lumo_uti._C.
//
// SAFETY: every pointer argument is an address (int) that the Python caller
// keeps alive and sized as stated for the whole call; the functions never keep
// a pointer after they return. The GIL is released while they run.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "abi/registry.h"
#include "ops/token_range/cpu.h"

namespace py = pybind11;

namespace {

void classify_ids(uintptr_t ids_ptr, int64_t ids_itemsize, int64_t n, uintptr_t bounds_ptr,
                  int64_t num_bounds, uintptr_t out_ptr, int64_t num_threads) {
  lumo::cpu::classify_ids(reinterpret_cast<const void*>(ids_ptr), ids_itemsize, n,
                          reinterpret_cast<const int64_t*>(bounds_ptr), num_bounds,
                          reinterpret_cast<int32_t*>(out_ptr), num_threads);
}

int64_t first_unsorted(uintptr_t bounds_ptr, int64_t num_bounds) {
  return lumo::cpu::first_unsorted(reinterpret_cast<const int64_t*>(bounds_ptr), num_bounds);
}

}  // namespace

LUMO_BIND(bind_token_range) {
  m.def("classify_ids", &classify_ids, py::arg("ids_ptr"), py::arg("ids_itemsize"), py::arg("n"),
        py::arg("bounds_ptr"), py::arg("num_bounds"), py::arg("out_ptr"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "out[i] = r with bounds[r] <= ids[i] < bounds[r+1], else -1.\n\n"
        "ids: [n] int32/int64 (ids_itemsize 4/8), bounds: [num_bounds] int64 strictly\n"
        "increasing, out: [n] int32; all C-contiguous host memory given by address.\n"
        "num_threads: 0 = hardware concurrency.");
  m.def("first_unsorted", &first_unsorted, py::arg("bounds_ptr"), py::arg("num_bounds"),
        py::call_guard<py::gil_scoped_release>(),
        "Index i of the first bounds[i] >= bounds[i+1] in an int64 array, or -1.");
}

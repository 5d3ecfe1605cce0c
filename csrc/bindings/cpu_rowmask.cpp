// Bindings of the row-masked embedding gradient in lumo_uti._C.
//
// SAFETY: every pointer argument is an address (int) that the Python caller
// keeps alive and sized as stated for the whole call; the function never keeps
// a pointer after it returns. The GIL is released while it runs.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/registry.h"
#include "cpu/rowmask.h"

namespace py = pybind11;

namespace {

void rowmask_embedding_backward(uintptr_t ids_ptr, int64_t ids_itemsize, int64_t n,
                                uintptr_t grad_ptr, int64_t dtype, int64_t dim,
                                int64_t grad_row_stride, int64_t row_start, int64_t num_rows,
                                uintptr_t out_ptr, int64_t num_threads) {
  lumo::cpu::rowmask_embedding_backward(
      reinterpret_cast<const void*>(ids_ptr), ids_itemsize, n,
      reinterpret_cast<const void*>(grad_ptr), dtype, dim, grad_row_stride, row_start, num_rows,
      reinterpret_cast<float*>(out_ptr), num_threads);
}

}  // namespace

LUMO_BIND(bind_rowmask) {
  m.def("rowmask_embedding_backward", &rowmask_embedding_backward, py::arg("ids_ptr"),
        py::arg("ids_itemsize"), py::arg("n"), py::arg("grad_ptr"), py::arg("dtype"),
        py::arg("dim"), py::arg("grad_row_stride"), py::arg("row_start"), py::arg("num_rows"),
        py::arg("out_ptr"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "out[r] = sum of grad[i] over i with ids[i] == row_start + r (fp32, position order).\n\n"
        "ids: [n] int32/int64 (ids_itemsize 4/8); grad: [n, dim] float32/float16/bfloat16\n"
        "(dtype 0/1/2), row stride grad_row_stride elements; out: [num_rows, dim] float32.\n"
        "All host memory given by address. num_threads: 0 = hardware concurrency.");
}

// Bindings of the row-masked embedding gradient in lumo_uti._C.
//
// SAFETY: every buffer argument is a tuple (address, extent) of host memory
// that the Python caller keeps alive for the whole call; each extent is
// checked against the sizes given (abi/buffer.h); the function never
// keeps a pointer after it returns. The GIL is released while it runs.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "abi/buffer.h"
#include "abi/registry.h"
#include "ops/rowmask/buffers.h"
#include "ops/rowmask/cpu.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::product;
using lumo::bindings::take;
namespace rm = lumo::bindings::rowmask;

void rowmask_embedding_backward(Buffer ids, int64_t ids_itemsize, int64_t n, Buffer grad,
                                int64_t dtype, int64_t dim, int64_t grad_row_stride,
                                int64_t row_start, int64_t num_rows, Buffer out,
                                int64_t num_threads) {
  constexpr const char* op = "rowmask_embedding_backward";
  const auto grad_extent = rm::grad_extent(op, n, dim, grad_row_stride);
  const auto* idsp = take<const void>(op, "ids", ids, product(op, {{"n", n}}));
  const auto* gradp = rm::take_grad(op, grad, grad_extent);
  auto* outp = rm::take_out(op, out, num_rows, dim);
  lumo::cpu::rowmask_embedding_backward(idsp, ids_itemsize, n, gradp, dtype, dim, grad_row_stride,
                                        row_start, num_rows, outp, num_threads);
}

}  // namespace

LUMO_BIND(bind_rowmask) {
  m.def("rowmask_embedding_backward", &rowmask_embedding_backward, py::arg("ids"),
        py::arg("ids_itemsize"), py::arg("n"), py::arg("grad"), py::arg("dtype"),
        py::arg("dim"), py::arg("grad_row_stride"), py::arg("row_start"), py::arg("num_rows"),
        py::arg("out"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "out[r] = sum of grad[i] over i with ids[i] == row_start + r (fp32, position order).\n\n"
        "ids: [n] int32/int64 (ids_itemsize 4/8); grad: [n, dim] float32/float16/bfloat16\n"
        "(dtype 0/1/2), row stride grad_row_stride elements; out: [num_rows, dim] float32.\n"
        "Buffers are (address, extent) tuples of host memory; grad's extent is\n"
        "(n - 1) * grad_row_stride + dim (0 when n or dim is 0). num_threads: 0 = hardware concurrency.");
}

// Bindings of the row-masked embedding gradient in lumo_uti._C_cuda.
//
// SAFETY: pointer arguments are device addresses (int) on `device` that the
// Python caller keeps alive until the work enqueued on `stream` has finished
// (the caching allocator of PyTorch does this for tensors used on their
// current stream). The GIL is released while the function runs.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/registry.h"
#include "cuda/rowmask.h"

namespace py = pybind11;

namespace {

void rowmask_segment_reduce(uintptr_t positions_ptr, int64_t num_hits, uintptr_t offsets_ptr,
                            uintptr_t grad_ptr, int64_t dtype, int64_t n, int64_t dim,
                            int64_t grad_row_stride, int64_t num_rows, uintptr_t out_ptr,
                            uintptr_t stream, int device) {
  lumo::cuda::rowmask_segment_reduce(
      reinterpret_cast<const int64_t*>(positions_ptr), num_hits,
      reinterpret_cast<const int64_t*>(offsets_ptr), reinterpret_cast<const void*>(grad_ptr),
      dtype, n, dim, grad_row_stride, num_rows, reinterpret_cast<float*>(out_ptr), stream, device);
}

}  // namespace

LUMO_BIND(bind_rowmask) {
  m.def("rowmask_segment_reduce", &rowmask_segment_reduce, py::arg("positions_ptr"),
        py::arg("num_hits"), py::arg("offsets_ptr"), py::arg("grad_ptr"), py::arg("dtype"),
        py::arg("n"), py::arg("dim"), py::arg("grad_row_stride"), py::arg("num_rows"),
        py::arg("out_ptr"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "Enqueue out[r] = sum_{j in [offsets[r], offsets[r+1])} grad[positions[j]] (fp32) on\n"
        "`stream`. positions: [num_hits] int64 sorted by (row, position); offsets:\n"
        "[num_rows + 1] int64; grad: [n, dim] float32/float16/bfloat16 (dtype 0/1/2);\n"
        "out: [num_rows, dim] float32; all memory on `device`.");
}

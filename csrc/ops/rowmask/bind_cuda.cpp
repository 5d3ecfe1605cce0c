// Bindings of the row-masked embedding gradient in lumo_uti._C_cuda.
//
// SAFETY: buffer arguments are tuples (device address, extent) on `device`
// that the Python caller keeps alive until the work enqueued on `stream` has
// finished (the caching allocator of PyTorch does this for tensors used on
// their current stream); each extent is checked against the sizes given
// (abi/buffer.h). The GIL is released while the function runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>

#include "abi/buffer.h"
#include "abi/registry.h"
#include "ops/rowmask/buffers.h"
#include "ops/rowmask/cuda.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::product;
using lumo::bindings::take;
namespace rm = lumo::bindings::rowmask;

void rowmask_segment_reduce(Buffer positions, int64_t num_hits, Buffer offsets, Buffer grad,
                            int64_t dtype, int64_t n, int64_t dim, int64_t grad_row_stride,
                            int64_t num_rows, Buffer out, uintptr_t stream, int device) {
  constexpr const char* op = "rowmask_segment_reduce (cuda)";
  const auto grad_extent = rm::grad_extent(op, n, dim, grad_row_stride);
  lumo::bindings::size_arg(op, "num_rows", num_rows);
  LUMO_CHECK_RANGE(num_rows < std::numeric_limits<int64_t>::max(), op, "num_rows < 2^63 - 1",
                   num_rows);
  const lumo::bindings::Extent offsets_extent{num_rows + 1, "num_rows + 1"};
  const auto* posp =
      take<const int64_t>(op, "positions", positions, product(op, {{"num_hits", num_hits}}));
  const auto* offp = take<const int64_t>(op, "offsets", offsets, offsets_extent);
  const auto* gradp = rm::take_grad(op, grad, grad_extent);
  auto* outp = rm::take_out(op, out, num_rows, dim);
  lumo::cuda::rowmask_segment_reduce(posp, num_hits, offp, gradp, dtype, n, dim, grad_row_stride,
                                     num_rows, outp, stream, device);
}

}  // namespace

LUMO_BIND(bind_rowmask) {
  m.def("rowmask_segment_reduce", &rowmask_segment_reduce, py::arg("positions"),
        py::arg("num_hits"), py::arg("offsets"), py::arg("grad"), py::arg("dtype"),
        py::arg("n"), py::arg("dim"), py::arg("grad_row_stride"), py::arg("num_rows"),
        py::arg("out"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "Enqueue out[r] = sum_{j in [offsets[r], offsets[r+1])} grad[positions[j]] (fp32) on\n"
        "`stream`. positions: [num_hits] int64 sorted by (row, position); offsets:\n"
        "[num_rows + 1] int64; grad: [n, dim] float32/float16/bfloat16 (dtype 0/1/2);\n"
        "out: [num_rows, dim] float32; all memory on `device`.");
}

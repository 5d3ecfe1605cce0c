// Bindings of the rows-only linear cross-entropy in lumo_uti._C_cuda.
//
// SAFETY: buffer arguments are tuples (device address, extent) on `device`
// that the Python caller keeps alive until the work enqueued on `stream` has
// finished (the caching allocator of PyTorch does this for tensors used on
// their current stream); each extent is checked against the sizes given
// (abi/buffer.h). The Python front has checked the targets and the masked
// ranges (device memory is not read here). The GIL is released while the
// functions run.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "abi/buffer.h"
#include "abi/checks.h"
#include "abi/registry.h"
#include "ops/rows_ce/buffers.h"
#include "ops/rows_ce/cuda.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::rows_ce::take_backward_buffers;
using lumo::bindings::rows_ce::take_forward_outputs;
using lumo::bindings::rows_ce::take_inputs;

void rows_ce_forward(Buffer hidden, int64_t hidden_dtype, Buffer base, int64_t base_dtype, Buffer new_rows,
                     int64_t new_dtype, Buffer base_bias, int64_t base_bias_dtype, Buffer new_bias,
                     int64_t new_bias_dtype, Buffer targets, Buffer masked, int64_t tokens, int64_t dim,
                     int64_t base_rows, int64_t new_count, int64_t ignore_index, Buffer loss, Buffer lse,
                     Buffer dhat, uintptr_t stream, int device) {
  constexpr const char* op = "rows_ce_forward (cuda)";
  const auto in = take_inputs(op, hidden, hidden_dtype, base, base_dtype, new_rows, new_dtype, base_bias,
                         base_bias_dtype, new_bias, new_bias_dtype, targets, masked, tokens, dim, base_rows,
                         new_count, ignore_index, /*need_base=*/true);
  LUMO_CHECK(device >= 0, op, "a device index >= 0", device);
  const auto o = take_forward_outputs(op, loss, lse, dhat, tokens, dim);
  lumo::rows_ce::cuda_forward(in, o.loss, o.lse, o.dhat, stream, device);
}

void rows_ce_new_rows_backward(Buffer grad_loss, Buffer hidden, int64_t hidden_dtype, Buffer new_rows,
                               int64_t new_dtype, Buffer new_bias, int64_t new_bias_dtype, Buffer targets,
                               Buffer lse, Buffer masked, int64_t tokens, int64_t dim, int64_t base_rows,
                               int64_t new_count, int64_t ignore_index, Buffer grad_new, Buffer grad_new_bias,
                               uintptr_t stream, int device) {
  constexpr const char* op = "rows_ce_new_rows_backward (cuda)";
  const auto in = take_inputs(op, hidden, hidden_dtype, Buffer{0, 0}, 0, new_rows, new_dtype, Buffer{0, 0}, 0, new_bias,
                         new_bias_dtype, targets, masked, tokens, dim, base_rows, new_count, ignore_index,
                         /*need_base=*/false);
  LUMO_CHECK(device >= 0, op, "a device index >= 0", device);
  const auto b = take_backward_buffers(op, grad_loss, lse, grad_new, grad_new_bias, tokens, dim, new_count);
  lumo::rows_ce::cuda_new_rows_backward(in, b.grad_loss, b.lse, b.grad_new, b.grad_new_bias, stream, device);
}

}  // namespace

LUMO_BIND(bind_rows_ce) {
  m.def("rows_ce_forward", &rows_ce_forward, py::arg("hidden"), py::arg("hidden_dtype"), py::arg("base"),
        py::arg("base_dtype"), py::arg("new_rows"), py::arg("new_dtype"), py::arg("base_bias"),
        py::arg("base_bias_dtype"), py::arg("new_bias"), py::arg("new_bias_dtype"), py::arg("targets"),
        py::arg("masked"), py::arg("tokens"), py::arg("dim"), py::arg("base_rows"), py::arg("new_rows_count"),
        py::arg("ignore_index"), py::arg("loss"), py::arg("lse"), py::arg("dhat"), py::arg("stream"),
        py::arg("device"), py::call_guard<py::gil_scoped_release>(),
        "Enqueue the rows-only linear cross-entropy forward on `stream` (arguments as lumo_uti._C's\n"
        "rows_ce_forward, every buffer device memory on `device`).");
  m.def("rows_ce_new_rows_backward", &rows_ce_new_rows_backward, py::arg("grad_loss"), py::arg("hidden"),
        py::arg("hidden_dtype"), py::arg("new_rows"), py::arg("new_dtype"), py::arg("new_bias"),
        py::arg("new_bias_dtype"), py::arg("targets"), py::arg("lse"), py::arg("masked"), py::arg("tokens"),
        py::arg("dim"), py::arg("base_rows"), py::arg("new_rows_count"), py::arg("ignore_index"),
        py::arg("grad_new"), py::arg("grad_new_bias"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "Enqueue the new rows' gradient on `stream` (arguments as lumo_uti._C's\n"
        "rows_ce_new_rows_backward, every buffer device memory on `device`).");
}

// Bindings of the rows-only linear cross-entropy in lumo_uti._C.
//
// SAFETY: every buffer argument is a tuple (address, extent) of host memory
// that the Python caller keeps alive for the whole call; each extent is
// checked against the sizes given (abi/buffer.h); the functions never keep a
// pointer after they return. The GIL is released while they run.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "abi/buffer.h"
#include "abi/checks.h"
#include "abi/registry.h"
#include "ops/rows_ce/buffers.h"
#include "ops/rows_ce/cpu.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::rows_ce::take_backward_buffers;
using lumo::bindings::rows_ce::take_forward_outputs;
using lumo::bindings::rows_ce::take_inputs;

// Host memory: the targets and masked ranges are checked here (the CUDA binding leaves that to the front).
lumo::rows_ce::Inputs inputs(const char* op, Buffer hidden, int64_t hidden_dtype, Buffer base, int64_t base_dtype,
                             Buffer new_rows, int64_t new_dtype, Buffer base_bias, int64_t base_bias_dtype,
                             Buffer new_bias, int64_t new_bias_dtype, Buffer targets, Buffer masked, int64_t tokens,
                             int64_t dim, int64_t base_rows, int64_t new_count, int64_t ignore_index,
                             bool need_base) {
  const auto in = take_inputs(op, hidden, hidden_dtype, base, base_dtype, new_rows, new_dtype, base_bias,
                              base_bias_dtype, new_bias, new_bias_dtype, targets, masked, tokens, dim, base_rows,
                              new_count, ignore_index, need_base);
  for (int64_t i = 0; i < 2 * in.num_masked; ++i) {
    LUMO_CHECK(in.masked[i] >= (i ? in.masked[i - 1] : 0) && in.masked[i] <= base_rows + new_count, op,
               "sorted masked column ranges within [0, base_rows + new_rows]", in.masked[i]);
  }
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t y = in.targets[t];
    LUMO_CHECK(y == ignore_index || (y >= 0 && y < base_rows + new_count), op,
               "targets in [0, base_rows + new_rows) or ignore_index", y);
  }
  return in;
}

void rows_ce_forward(Buffer hidden, int64_t hidden_dtype, Buffer base, int64_t base_dtype, Buffer new_rows,
                     int64_t new_dtype, Buffer base_bias, int64_t base_bias_dtype, Buffer new_bias,
                     int64_t new_bias_dtype, Buffer targets, Buffer masked, int64_t tokens, int64_t dim,
                     int64_t base_rows, int64_t new_count, int64_t ignore_index, Buffer loss, Buffer lse,
                     Buffer dhat, int64_t num_threads, int64_t isa) {
  constexpr const char* op = "rows_ce_forward";
  const auto in = inputs(op, hidden, hidden_dtype, base, base_dtype, new_rows, new_dtype, base_bias,
                         base_bias_dtype, new_bias, new_bias_dtype, targets, masked, tokens, dim, base_rows,
                         new_count, ignore_index, /*need_base=*/true);
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0", num_threads);
  const auto o = take_forward_outputs(op, loss, lse, dhat, tokens, dim);
  lumo::rows_ce::forward(in, o.loss, o.lse, o.dhat, num_threads, isa);
}

void rows_ce_new_rows_backward(Buffer grad_loss, Buffer hidden, int64_t hidden_dtype, Buffer new_rows,
                               int64_t new_dtype, Buffer new_bias, int64_t new_bias_dtype, Buffer targets,
                               Buffer lse, Buffer masked, int64_t tokens, int64_t dim, int64_t base_rows,
                               int64_t new_count, int64_t ignore_index, Buffer grad_new, Buffer grad_new_bias,
                               int64_t num_threads, int64_t isa) {
  constexpr const char* op = "rows_ce_new_rows_backward";
  // The backward never reads the base rows: only their count.
  const auto in = inputs(op, hidden, hidden_dtype, Buffer{0, 0}, 0, new_rows, new_dtype, Buffer{0, 0}, 0, new_bias,
                         new_bias_dtype, targets, masked, tokens, dim, base_rows, new_count, ignore_index,
                         /*need_base=*/false);
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0", num_threads);
  const auto b = take_backward_buffers(op, grad_loss, lse, grad_new, grad_new_bias, tokens, dim, new_count);
  lumo::rows_ce::new_rows_backward(in, b.grad_loss, b.lse, b.grad_new, b.grad_new_bias, num_threads, isa);
}

}  // namespace

LUMO_BIND(bind_rows_ce) {
  m.def("rows_ce_forward", &rows_ce_forward, py::arg("hidden"), py::arg("hidden_dtype"), py::arg("base"),
        py::arg("base_dtype"), py::arg("new_rows"), py::arg("new_dtype"), py::arg("base_bias"),
        py::arg("base_bias_dtype"), py::arg("new_bias"), py::arg("new_bias_dtype"), py::arg("targets"),
        py::arg("masked"), py::arg("tokens"), py::arg("dim"), py::arg("base_rows"), py::arg("new_rows_count"),
        py::arg("ignore_index"), py::arg("loss"), py::arg("lse"), py::arg("dhat"), py::arg("num_threads"),
        py::arg("isa"), py::call_guard<py::gil_scoped_release>(),
        "Per-token loss and log-sum-exp of the rows-only linear cross-entropy, and the unit\n"
        "gradient of the hidden states (dhat, optional: (0, 0) skips it).\n\n"
        "hidden: [tokens, dim]; base: [base_rows, dim]; new_rows: [new_rows_count, dim];\n"
        "biases [base_rows] / [new_rows_count] or (0, 0); dtypes 0/1/2 = float32/float16/bfloat16;\n"
        "targets: [tokens] int64; masked: [2 * M] int64 sorted [start, stop) column ranges;\n"
        "loss, lse: [tokens] float32; dhat: [tokens, dim] float32. All row-major host buffers\n"
        "as (address, extent). num_threads: 0 = hardware concurrency; isa: runtime/isa.h code.");
  m.def("rows_ce_new_rows_backward", &rows_ce_new_rows_backward, py::arg("grad_loss"), py::arg("hidden"),
        py::arg("hidden_dtype"), py::arg("new_rows"), py::arg("new_dtype"), py::arg("new_bias"),
        py::arg("new_bias_dtype"), py::arg("targets"), py::arg("lse"), py::arg("masked"), py::arg("tokens"),
        py::arg("dim"), py::arg("base_rows"), py::arg("new_rows_count"), py::arg("ignore_index"),
        py::arg("grad_new"), py::arg("grad_new_bias"), py::arg("num_threads"), py::arg("isa"),
        py::call_guard<py::gil_scoped_release>(),
        "Gradients of the new rows [new_rows_count, dim] and of their bias [new_rows_count]\n"
        "(optional) from grad_loss [tokens] float32 and the forward's lse [tokens] float32;\n"
        "tokens summed in index order. Other arguments as rows_ce_forward.");
  m.def("rows_ce_isa_mask", &lumo::rows_ce::isa_mask,
        "Bit i set when this CPU runs instruction set i (0 auto, 1 scalar, 2 AVX2, 3 AVX-512).");
}

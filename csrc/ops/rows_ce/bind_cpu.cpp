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
#include "ops/rows_ce/cpu.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::none;
using lumo::bindings::product;
using lumo::bindings::take;
using lumo::bindings::take_optional;

lumo::rows_ce::Inputs inputs(const char* op, Buffer hidden, int64_t hidden_dtype, Buffer base, int64_t base_dtype,
                             Buffer new_rows, int64_t new_dtype, Buffer base_bias, int64_t base_bias_dtype,
                             Buffer new_bias, int64_t new_bias_dtype, Buffer targets, Buffer masked, int64_t tokens,
                             int64_t dim, int64_t base_rows, int64_t new_count, int64_t ignore_index,
                             bool need_base) {
  lumo::rows_ce::Inputs in;
  in.tokens = lumo::bindings::size_arg(op, "tokens", tokens);
  in.dim = lumo::bindings::size_arg(op, "dim", dim);
  in.base_rows = lumo::bindings::size_arg(op, "base_rows", base_rows);
  in.new_count = lumo::bindings::size_arg(op, "new_rows", new_count);
  in.hidden_dtype = lumo::check_dtype(op, "hidden_dtype", hidden_dtype);
  in.base_dtype = lumo::check_dtype(op, "base_dtype", base_dtype);
  in.new_dtype = lumo::check_dtype(op, "new_dtype", new_dtype);
  in.base_bias_dtype = lumo::check_dtype(op, "base_bias_dtype", base_bias_dtype);
  in.new_bias_dtype = lumo::check_dtype(op, "new_bias_dtype", new_bias_dtype);
  in.hidden = take<const void>(op, "hidden", hidden, product(op, {{"tokens", tokens}, {"dim", dim}}));
  if (need_base) {
    in.base = take<const void>(op, "base", base, product(op, {{"base_rows", base_rows}, {"dim", dim}}));
    }
  in.new_rows = take<const void>(op, "new_rows", new_rows, product(op, {{"new_rows", new_count}, {"dim", dim}}));
  in.base_bias = take_optional<const void>(op, "base_bias", base_bias, product(op, {{"base_rows", base_rows}}));
  in.new_bias = take_optional<const void>(op, "new_bias", new_bias, product(op, {{"new_rows", new_count}}));
  in.targets = take<const int64_t>(op, "targets", targets, product(op, {{"tokens", tokens}}));
  in.num_masked = masked.second / 2;
  in.masked = take<const int64_t>(op, "masked", masked, product(op, {{"2", 2}, {"num_masked", in.num_masked}}));
  for (int64_t i = 0; i < 2 * in.num_masked; ++i) {
    LUMO_CHECK(in.masked[i] >= (i ? in.masked[i - 1] : 0) && in.masked[i] <= base_rows + new_count, op,
               "sorted masked column ranges within [0, base_rows + new_rows]", in.masked[i]);
  }
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t y = in.targets[t];
    LUMO_CHECK(y == ignore_index || (y >= 0 && y < base_rows + new_count), op,
               "targets in [0, base_rows + new_rows) or ignore_index", y);
  }
  in.ignore_index = ignore_index;
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
  auto* lossp = take<float>(op, "loss", loss, product(op, {{"tokens", tokens}}));
  auto* lsep = take<float>(op, "lse", lse, product(op, {{"tokens", tokens}}));
  auto* dhatp = take_optional<float>(op, "dhat", dhat, product(op, {{"tokens", tokens}, {"dim", dim}}));
  lumo::rows_ce::forward(in, lossp, lsep, dhatp, num_threads, isa);
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
  auto* g = take<const float>(op, "grad_loss", grad_loss, product(op, {{"tokens", tokens}}));
  auto* l = take<const float>(op, "lse", lse, product(op, {{"tokens", tokens}}));
  auto* gw = take<float>(op, "grad_new", grad_new, product(op, {{"new_rows", new_count}, {"dim", dim}}));
  auto* gb = take_optional<float>(op, "grad_new_bias", grad_new_bias, product(op, {{"new_rows", new_count}}));
  lumo::rows_ce::new_rows_backward(in, g, l, gw, gb, num_threads, isa);
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

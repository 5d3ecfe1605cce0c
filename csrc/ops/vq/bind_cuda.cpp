// Bindings of the VQ ops in lumo_uti._C_cuda.
//
// SAFETY: buffer arguments are tuples (device address, extent) on `device`
// that the Python caller keeps alive until the work enqueued on `stream` has
// finished (the caching allocator of PyTorch does this for tensors used on
// their current stream); each extent is checked against the sizes given
// (abi/buffer.h). The GIL is released while the functions run.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "abi/buffer.h"
#include "abi/registry.h"
#include "ops/vq/cuda.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::product;
using lumo::bindings::take;

void vq_search(Buffer x, int x_dtype, int64_t n, int64_t d, Buffer cb, int cb_dtype, int64_t k,
               int norms, Buffer cn, Buffer codes, Buffer best, Buffer part_val, Buffer part_idx,
               int64_t splits, uintptr_t stream, int device) {
  constexpr const char* op = "vq_search (cuda)";
  const auto* xp = take<const void>(op, "x", x, product(op, {{"n", n}, {"d", d}}));
  const auto* cbp = take<const void>(op, "cb", cb, product(op, {{"k", k}, {"d", d}}));
  auto* cnp = take<float>(op, "cn", cn, product(op, {{"k", k}}));
  auto* codesp = take<int64_t>(op, "codes", codes, product(op, {{"n", n}}));
  auto* bestp = take<float>(op, "best", best, product(op, {{"n", n}}));
  auto* valp = take<float>(op, "part_val", part_val, product(op, {{"splits", splits}, {"n", n}}));
  auto* idxp = take<int32_t>(op, "part_idx", part_idx, product(op, {{"splits", splits}, {"n", n}}));
  lumo::cuda::vq_search(xp, x_dtype, n, d, cbp, cb_dtype, k, norms, cnp, codesp, bestp, valp, idxp,
                        splits, stream, device);
}

void rvq_encode(Buffer x, int dtype, int64_t n, int64_t d, Buffer cbs, int64_t num_q, int64_t k,
                int64_t n_q, Buffer codes, Buffer residual, Buffer cn, Buffer part_val,
                Buffer part_idx, int64_t splits, uintptr_t stream, int device) {
  constexpr const char* op = "rvq_encode (cuda)";
  const auto* xp = take<const void>(op, "x", x, product(op, {{"n", n}, {"d", d}}));
  const auto* cbsp =
      take<const void>(op, "cbs", cbs, product(op, {{"num_q", num_q}, {"k", k}, {"d", d}}));
  auto* codesp = take<int64_t>(op, "codes", codes, product(op, {{"n", n}, {"n_q", n_q}}));
  auto* resp = take<float>(op, "residual", residual, product(op, {{"n", n}, {"d", d}}));
  auto* cnp = take<float>(op, "cn", cn, product(op, {{"n_q", n_q}, {"k", k}}));
  auto* valp = take<float>(op, "part_val", part_val, product(op, {{"splits", splits}, {"n", n}}));
  auto* idxp = take<int32_t>(op, "part_idx", part_idx, product(op, {{"splits", splits}, {"n", n}}));
  lumo::cuda::rvq_encode(xp, dtype, n, d, cbsp, num_q, k, n_q, codesp, resp, cnp, valp, idxp, splits,
                         stream, device);
}

void rvq_decode(Buffer codes, int64_t codes_itemsize, int64_t n, int64_t n_q, Buffer cbs, int dtype,
                int64_t num_q, int64_t k, int64_t d, Buffer out, uintptr_t stream, int device) {
  constexpr const char* op = "rvq_decode (cuda)";
  const auto* codesp = take<const void>(op, "codes", codes, product(op, {{"n", n}, {"n_q", n_q}}));
  const auto* cbsp =
      take<const void>(op, "cbs", cbs, product(op, {{"num_q", num_q}, {"k", k}, {"d", d}}));
  auto* outp = take<float>(op, "out", out, product(op, {{"n", n}, {"d", d}}));
  lumo::cuda::rvq_decode(codesp, codes_itemsize, n, n_q, cbsp, dtype, num_q, k, d, outp, stream,
                         device);
}

}  // namespace

LUMO_BIND(bind_vq) {
  m.def("vq_search_splits", &lumo::cuda::vq_search_splits, py::arg("n"), py::arg("k"),
        py::arg("device"), py::call_guard<py::gil_scoped_release>(),
        "Code-range splits of vq_search (its workspace holds splits * n pairs).");
  m.def("vq_search", &vq_search, py::arg("x"), py::arg("x_dtype"), py::arg("n"), py::arg("d"),
        py::arg("cb"), py::arg("cb_dtype"), py::arg("k"), py::arg("norms"), py::arg("cn"),
        py::arg("codes"), py::arg("best"), py::arg("part_val"), py::arg("part_idx"),
        py::arg("splits"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "Enqueue the fused nearest-code search (see lumo_uti._C.vq_search) on `stream`.");
  m.def("rvq_encode", &rvq_encode, py::arg("x"), py::arg("dtype"), py::arg("n"), py::arg("d"),
        py::arg("cbs"), py::arg("num_q"), py::arg("k"), py::arg("n_q"), py::arg("codes"),
        py::arg("residual"), py::arg("cn"), py::arg("part_val"),
        py::arg("part_idx"), py::arg("splits"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(), "Enqueue residual VQ encoding on `stream`.");
  m.def("rvq_decode", &rvq_decode, py::arg("codes"), py::arg("codes_itemsize"), py::arg("n"),
        py::arg("n_q"), py::arg("cbs"), py::arg("dtype"), py::arg("num_q"), py::arg("k"),
        py::arg("d"), py::arg("out"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "Enqueue out [n, d] fp32 = sum_q cbs[q, codes[i, q]] on `stream` (codes pre-checked).");
}

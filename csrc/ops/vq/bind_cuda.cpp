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
#include "ops/vq/buffers.h"
#include "ops/vq/cuda.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::product;
using lumo::bindings::take;
using lumo::bindings::vq::RvqDecodeBuffers;
using lumo::bindings::vq::RvqEncodeBuffers;
using lumo::bindings::vq::SearchResults;
using lumo::bindings::vq::rows_of;

void vq_search(Buffer x, int x_dtype, int64_t n, int64_t d, Buffer cb, int cb_dtype, int64_t k,
               int norms, Buffer cn, Buffer codes, Buffer best, Buffer part_val, Buffer part_idx,
               int64_t splits, uintptr_t stream, int device) {
  constexpr const char* op = "vq_search (cuda)";
  const auto* xp = take<const void>(op, "x", x, rows_of(op, "n", n, d));
  const auto* cbp = take<const void>(op, "cb", cb, rows_of(op, "k", k, d));
  auto* cnp = take<float>(op, "cn", cn, product(op, {{"k", k}}));
  const SearchResults r(op, n, codes, best);
  auto* valp = take<float>(op, "part_val", part_val, product(op, {{"splits", splits}, {"n", n}}));
  auto* idxp = take<int32_t>(op, "part_idx", part_idx, product(op, {{"splits", splits}, {"n", n}}));
  lumo::cuda::vq_search(xp, x_dtype, n, d, cbp, cb_dtype, k, norms, cnp, r.codes, r.best, valp, idxp,
                        splits, stream, device);
}

void rvq_encode(Buffer x, int dtype, int64_t n, int64_t d, Buffer cbs, int64_t num_q, int64_t k,
                int64_t n_q, Buffer codes, Buffer residual, Buffer cn, Buffer part_val,
                Buffer part_idx, int64_t splits, uintptr_t stream, int device) {
  constexpr const char* op = "rvq_encode (cuda)";
  const RvqEncodeBuffers b(op, x, n, d, cbs, num_q, k, n_q, codes);
  auto* resp = take<float>(op, "residual", residual, rows_of(op, "n", n, d));
  auto* cnp = take<float>(op, "cn", cn, product(op, {{"n_q", n_q}, {"k", k}}));
  auto* valp = take<float>(op, "part_val", part_val, product(op, {{"splits", splits}, {"n", n}}));
  auto* idxp = take<int32_t>(op, "part_idx", part_idx, product(op, {{"splits", splits}, {"n", n}}));
  lumo::cuda::rvq_encode(b.x, dtype, n, d, b.cbs, num_q, k, n_q, b.codes, resp, cnp, valp, idxp, splits,
                         stream, device);
}

void rvq_decode(Buffer codes, int64_t codes_itemsize, int64_t n, int64_t n_q, Buffer cbs, int dtype,
                int64_t num_q, int64_t k, int64_t d, Buffer out, uintptr_t stream, int device) {
  constexpr const char* op = "rvq_decode (cuda)";
  const RvqDecodeBuffers b(op, codes, n, n_q, cbs, num_q, k, d, out);
  lumo::cuda::rvq_decode(b.codes, codes_itemsize, n, n_q, b.cbs, dtype, num_q, k, d, b.out, stream,
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

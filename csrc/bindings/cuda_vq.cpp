// Bindings of the VQ ops in lumo_uti._C_cuda.
//
// SAFETY: pointer arguments are device addresses (int) on `device` that the
// Python caller keeps alive until the work enqueued on `stream` has finished
// (the caching allocator of PyTorch does this for tensors used on their
// current stream). The GIL is released while the functions run.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/registry.h"
#include "cuda/vq.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void vq_search(uintptr_t x, int x_dtype, int64_t n, int64_t d, uintptr_t cb, int cb_dtype, int64_t k,
               int norms, uintptr_t cn, uintptr_t codes, uintptr_t best, uintptr_t part_val,
               uintptr_t part_idx, int64_t splits, uintptr_t stream, int device) {
  lumo::cuda::vq_search(ptr<const void>(x), x_dtype, n, d, ptr<const void>(cb), cb_dtype, k, norms,
                        ptr<float>(cn), ptr<int64_t>(codes), ptr<float>(best), ptr<float>(part_val),
                        ptr<int32_t>(part_idx), splits, stream, device);
}

void rvq_encode(uintptr_t x, int dtype, int64_t n, int64_t d, uintptr_t cbs, int64_t num_q, int64_t k,
                int64_t n_q, uintptr_t codes, uintptr_t residual, uintptr_t cn, uintptr_t part_val,
                uintptr_t part_idx, int64_t splits, uintptr_t stream, int device) {
  lumo::cuda::rvq_encode(ptr<const void>(x), dtype, n, d, ptr<const void>(cbs), num_q, k, n_q,
                         ptr<int64_t>(codes), ptr<float>(residual), ptr<float>(cn),
                         ptr<float>(part_val), ptr<int32_t>(part_idx), splits, stream, device);
}

void rvq_decode(uintptr_t codes, int64_t codes_itemsize, int64_t n, int64_t n_q, uintptr_t cbs,
                int dtype, int64_t num_q, int64_t k, int64_t d, uintptr_t out, uintptr_t stream,
                int device) {
  lumo::cuda::rvq_decode(ptr<const void>(codes), codes_itemsize, n, n_q, ptr<const void>(cbs), dtype,
                         num_q, k, d, ptr<float>(out), stream, device);
}

}  // namespace

LUMO_BIND(bind_vq) {
  m.def("vq_search_splits", &lumo::cuda::vq_search_splits, py::arg("n"), py::arg("k"),
        py::arg("device"), py::call_guard<py::gil_scoped_release>(),
        "Code-range splits of vq_search (its workspace holds splits * n pairs).");
  m.def("vq_search", &vq_search, py::arg("x_ptr"), py::arg("x_dtype"), py::arg("n"), py::arg("d"),
        py::arg("cb_ptr"), py::arg("cb_dtype"), py::arg("k"), py::arg("norms"), py::arg("cn_ptr"),
        py::arg("codes_ptr"), py::arg("best_ptr"), py::arg("part_val_ptr"), py::arg("part_idx_ptr"),
        py::arg("splits"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "Enqueue the fused nearest-code search (see lumo_uti._C.vq_search) on `stream`.");
  m.def("rvq_encode", &rvq_encode, py::arg("x_ptr"), py::arg("dtype"), py::arg("n"), py::arg("d"),
        py::arg("cbs_ptr"), py::arg("num_q"), py::arg("k"), py::arg("n_q"), py::arg("codes_ptr"),
        py::arg("residual_ptr"), py::arg("cn_ptr"), py::arg("part_val_ptr"),
        py::arg("part_idx_ptr"), py::arg("splits"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(), "Enqueue residual VQ encoding on `stream`.");
  m.def("rvq_decode", &rvq_decode, py::arg("codes_ptr"), py::arg("codes_itemsize"), py::arg("n"),
        py::arg("n_q"), py::arg("cbs_ptr"), py::arg("dtype"), py::arg("num_q"), py::arg("k"),
        py::arg("d"), py::arg("out_ptr"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "Enqueue out [n, d] fp32 = sum_q cbs[q, codes[i, q]] on `stream` (codes pre-checked).");
}

// Bindings of the resampler cross-attention in lumo_uti._C_cuda.
//
// SAFETY: pointer arguments are device addresses (int) on `device` that the
// Python caller keeps alive until the work enqueued on `stream` has finished
// (PyTorch's caching allocator does this for tensors used on their current
// stream). A null mask pointer (0) means "all positions real". The GIL is
// released while the functions run.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/registry.h"
#include "cuda/resampler_attn.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void forward(uintptr_t q, uintptr_t k_ctx, uintptr_t v_ctx, uintptr_t k_lat, uintptr_t v_lat,
             uintptr_t ctx_mask, uintptr_t out, uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv,
             int64_t L, int64_t N, int64_t D, double scale, int64_t dtype, uintptr_t stream,
             int device) {
  lumo::cuda::resampler_attn_forward(ptr<const void>(q), ptr<const void>(k_ctx),
                                     ptr<const void>(v_ctx), ptr<const void>(k_lat),
                                     ptr<const void>(v_lat), ptr<const uint8_t>(ctx_mask),
                                     ptr<void>(out), ptr<float>(lse), B, Hq, Hkv, L, N, D, scale,
                                     dtype, stream, device);
}

void backward(uintptr_t dout, uintptr_t q, uintptr_t k_ctx, uintptr_t v_ctx, uintptr_t k_lat,
              uintptr_t v_lat, uintptr_t ctx_mask, uintptr_t out, uintptr_t lse, uintptr_t dq,
              uintptr_t dk_ctx, uintptr_t dv_ctx, uintptr_t dk_lat, uintptr_t dv_lat, int64_t B,
              int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D, double scale,
              int64_t dtype, uintptr_t delta, uintptr_t stream, int device) {
  lumo::cuda::resampler_attn_backward(
      ptr<const void>(dout), ptr<const void>(q), ptr<const void>(k_ctx), ptr<const void>(v_ctx),
      ptr<const void>(k_lat), ptr<const void>(v_lat), ptr<const uint8_t>(ctx_mask),
      ptr<const void>(out), ptr<const float>(lse), ptr<void>(dq), ptr<void>(dk_ctx),
      ptr<void>(dv_ctx), ptr<void>(dk_lat), ptr<void>(dv_lat), B, Hq, Hkv, L, N, D, scale, dtype,
      ptr<float>(delta), stream, device);
}

}  // namespace

LUMO_BIND(bind_resampler_attn) {
  m.def("resampler_attn_forward", &forward, py::arg("q"), py::arg("k_ctx"), py::arg("v_ctx"),
        py::arg("k_lat"), py::arg("v_lat"), py::arg("ctx_mask"), py::arg("out"), py::arg("lse"),
        py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("L"), py::arg("N"), py::arg("D"),
        py::arg("scale"), py::arg("dtype"), py::arg("stream"), py::arg("device"),
        py::call_guard<py::gil_scoped_release>(),
        "Enqueue the resampler attention forward (out, lse) on `stream`; D <= 256.");
  m.def("resampler_attn_backward", &backward, py::arg("dout"), py::arg("q"), py::arg("k_ctx"),
        py::arg("v_ctx"), py::arg("k_lat"), py::arg("v_lat"), py::arg("ctx_mask"), py::arg("out"),
        py::arg("lse"), py::arg("dq"), py::arg("dk_ctx"), py::arg("dv_ctx"), py::arg("dk_lat"),
        py::arg("dv_lat"), py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("L"),
        py::arg("N"), py::arg("D"), py::arg("scale"), py::arg("dtype"), py::arg("delta"),
        py::arg("stream"), py::arg("device"), py::call_guard<py::gil_scoped_release>(),
        "Enqueue the deterministic resampler attention backward on `stream`;\n"
        "delta: fp32 [B, Hq, L] workspace.");
}

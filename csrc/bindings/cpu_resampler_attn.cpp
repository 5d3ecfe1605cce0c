// Bindings of the resampler cross-attention in lumo_uti._C.
//
// SAFETY: every pointer argument is an address (int) of C-contiguous host
// memory that the Python caller keeps alive and sized as documented in
// cpu/resampler_attn.h for the whole call; nothing is kept after return. The
// GIL is released while the kernels run. A null mask pointer (0) means "all
// positions real".
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/registry.h"
#include "cpu/resampler_attn.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void forward(uintptr_t q, uintptr_t k_ctx, uintptr_t v_ctx, uintptr_t k_lat, uintptr_t v_lat,
             uintptr_t ctx_mask, uintptr_t out, uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv,
             int64_t L, int64_t N, int64_t D, double scale, int64_t dtype, int64_t num_threads,
             int64_t isa) {
  lumo::cpu::resampler_attn_forward(ptr<const void>(q), ptr<const void>(k_ctx),
                                    ptr<const void>(v_ctx), ptr<const void>(k_lat),
                                    ptr<const void>(v_lat), ptr<const uint8_t>(ctx_mask),
                                    ptr<void>(out), ptr<float>(lse), B, Hq, Hkv, L, N, D, scale,
                                    dtype, num_threads, isa);
}

void backward(uintptr_t dout, uintptr_t q, uintptr_t k_ctx, uintptr_t v_ctx, uintptr_t k_lat,
              uintptr_t v_lat, uintptr_t ctx_mask, uintptr_t out, uintptr_t lse, uintptr_t dq,
              uintptr_t dk_ctx, uintptr_t dv_ctx, uintptr_t dk_lat, uintptr_t dv_lat, int64_t B,
              int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D, double scale,
              int64_t dtype, int64_t num_threads, int64_t isa) {
  lumo::cpu::resampler_attn_backward(
      ptr<const void>(dout), ptr<const void>(q), ptr<const void>(k_ctx), ptr<const void>(v_ctx),
      ptr<const void>(k_lat), ptr<const void>(v_lat), ptr<const uint8_t>(ctx_mask),
      ptr<const void>(out), ptr<const float>(lse), ptr<void>(dq), ptr<void>(dk_ctx),
      ptr<void>(dv_ctx), ptr<void>(dk_lat), ptr<void>(dv_lat), B, Hq, Hkv, L, N, D, scale, dtype,
      num_threads, isa);
}

}  // namespace

LUMO_BIND(bind_resampler_attn) {
  m.def("resampler_attn_forward", &forward, py::arg("q"), py::arg("k_ctx"), py::arg("v_ctx"),
        py::arg("k_lat"), py::arg("v_lat"), py::arg("ctx_mask"), py::arg("out"), py::arg("lse"),
        py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("L"), py::arg("N"), py::arg("D"),
        py::arg("scale"), py::arg("dtype"), py::arg("num_threads"), py::arg("isa") = 0,
        py::call_guard<py::gil_scoped_release>(),
        "Resampler attention forward: out [B,Hq,L,D] (dtype) and lse [B,Hq,L] fp32.\n"
        "dtype: 0 fp32, 1 bf16, 2 fp16. ctx_mask: [B,N] bytes or 0 for none.\n"
        "isa: 0 auto, 1 scalar, 2 AVX2, 3 AVX-512 (same results).");
  m.def("resampler_attn_backward", &backward, py::arg("dout"), py::arg("q"), py::arg("k_ctx"),
        py::arg("v_ctx"), py::arg("k_lat"), py::arg("v_lat"), py::arg("ctx_mask"), py::arg("out"),
        py::arg("lse"), py::arg("dq"), py::arg("dk_ctx"), py::arg("dv_ctx"), py::arg("dk_lat"),
        py::arg("dv_lat"), py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("L"),
        py::arg("N"), py::arg("D"), py::arg("scale"), py::arg("dtype"), py::arg("num_threads"),
        py::arg("isa") = 0, py::call_guard<py::gil_scoped_release>(),
        "Resampler attention backward (deterministic): writes dq, dk_ctx, dv_ctx, dk_lat,\n"
        "dv_lat in the input dtype. isa as in resampler_attn_forward.");
  m.def("resampler_attn_isa_mask", &lumo::cpu::resampler_attn_isa_mask,
        "Bit mask (1 << isa) of the resampler-attention instruction sets this CPU runs:\n"
        "1 scalar, 2 AVX2, 3 AVX-512.");
}

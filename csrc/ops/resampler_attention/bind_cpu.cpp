// Bindings of the resampler cross-attention in lumo_uti._C.
//
// SAFETY: every buffer argument is a tuple (address, extent) of C-contiguous
// host memory that the Python caller keeps alive for the whole call; each
// extent is checked against the sizes given (abi/buffer.h, shapes in
// ops/resampler_attention/cpu.h); nothing is kept after return. The GIL is released
// while the kernels run. A mask (0, 0) means "all positions real".
#include <pybind11/pybind11.h>

#include <cstdint>

#include "abi/buffer.h"
#include "abi/registry.h"
#include "ops/resampler_attention/bind_buffers.h"
#include "ops/resampler_attention/cpu.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::ResamplerExtents;
using lumo::bindings::ResamplerGradients;
using lumo::bindings::ResamplerInputs;
using lumo::bindings::take;

void forward(Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat, Buffer ctx_mask,
             Buffer out, Buffer lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N,
             int64_t D, double scale, int64_t dtype, int64_t num_threads, int64_t isa) {
  constexpr const char* op = "resampler_attention (cpu)";
  const ResamplerExtents e(op, B, Hq, Hkv, L, N, D);
  const ResamplerInputs in(op, e, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask);
  auto* outp = take<void>(op, "out", out, e.qs);
  auto* lsep = take<float>(op, "lse", lse, e.rows);
  lumo::cpu::resampler_attn_forward(in.q, in.k_ctx, in.v_ctx, in.k_lat, in.v_lat, in.mask, outp,
                                    lsep, B, Hq, Hkv, L, N, D, scale, dtype, num_threads, isa);
}

void backward(Buffer dout, Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat,
              Buffer ctx_mask, Buffer out, Buffer lse, Buffer dq, Buffer dk_ctx, Buffer dv_ctx,
              Buffer dk_lat, Buffer dv_lat, int64_t B, int64_t Hq, int64_t Hkv, int64_t L,
              int64_t N, int64_t D, double scale, int64_t dtype, int64_t num_threads,
              int64_t isa) {
  constexpr const char* op = "resampler_attention_backward (cpu)";
  const ResamplerExtents e(op, B, Hq, Hkv, L, N, D);
  const auto* doutp = take<const void>(op, "dout", dout, e.qs);
  const ResamplerInputs in(op, e, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask);
  const auto* outp = take<const void>(op, "out", out, e.qs);
  const auto* lsep = take<const float>(op, "lse", lse, e.rows);
  const ResamplerGradients g(op, e, dq, dk_ctx, dv_ctx, dk_lat, dv_lat);
  lumo::cpu::resampler_attn_backward(doutp, in.q, in.k_ctx, in.v_ctx, in.k_lat, in.v_lat,
                                     in.mask, outp, lsep, g.dq, g.dk_ctx, g.dv_ctx, g.dk_lat, g.dv_lat,
                                     B, Hq, Hkv, L, N, D, scale, dtype, num_threads, isa);
}

}  // namespace

LUMO_BIND(bind_resampler_attn) {
  m.def("resampler_attn_forward", &forward, py::arg("q"), py::arg("k_ctx"), py::arg("v_ctx"),
        py::arg("k_lat"), py::arg("v_lat"), py::arg("ctx_mask"), py::arg("out"), py::arg("lse"),
        py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("L"), py::arg("N"), py::arg("D"),
        py::arg("scale"), py::arg("dtype"), py::arg("num_threads"), py::arg("isa") = 0,
        py::call_guard<py::gil_scoped_release>(),
        "Resampler attention forward: out [B,Hq,L,D] (dtype) and lse [B,Hq,L] fp32.\n"
        "dtype: 0 fp32, 1 fp16, 2 bf16. ctx_mask: [B,N] bytes or (0, 0) for none.\n"
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

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
#include "ops/resampler_attention/buffers.h"
#include "ops/resampler_attention/cpu.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::ResamplerBackward;
using lumo::bindings::ResamplerForward;

void forward(Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat, Buffer ctx_mask,
             Buffer out, Buffer lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N,
             int64_t D, double scale, int64_t dtype, int64_t num_threads, int64_t isa) {
  constexpr const char* op = "resampler_attention (cpu)";
  const ResamplerForward f(op, B, Hq, Hkv, L, N, D, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse);
  lumo::cpu::resampler_attn_forward(f.in.q, f.in.k_ctx, f.in.v_ctx, f.in.k_lat, f.in.v_lat, f.in.mask, f.out,
                                    f.lse, B, Hq, Hkv, L, N, D, scale, dtype, num_threads, isa);
}

void backward(Buffer dout, Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat,
              Buffer ctx_mask, Buffer out, Buffer lse, Buffer dq, Buffer dk_ctx, Buffer dv_ctx,
              Buffer dk_lat, Buffer dv_lat, int64_t B, int64_t Hq, int64_t Hkv, int64_t L,
              int64_t N, int64_t D, double scale, int64_t dtype, int64_t num_threads,
              int64_t isa) {
  constexpr const char* op = "resampler_attention_backward (cpu)";
  const ResamplerBackward b(op, B, Hq, Hkv, L, N, D, dout, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask,
                            out, lse, dq, dk_ctx, dv_ctx, dk_lat, dv_lat);
  lumo::cpu::resampler_attn_backward(b.dout, b.in.q, b.in.k_ctx, b.in.v_ctx, b.in.k_lat, b.in.v_lat,
                                     b.in.mask, b.out, b.lse, b.g.dq, b.g.dk_ctx, b.g.dv_ctx, b.g.dk_lat, b.g.dv_lat,
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

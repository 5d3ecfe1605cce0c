// Bindings of the resampler cross-attention in lumo_uti._C_cuda.
//
// SAFETY: buffer arguments are tuples (device address, extent) on `device`
// that the Python caller keeps alive until the work enqueued on `stream` has
// finished (PyTorch's caching allocator does this for tensors used on their
// current stream); each extent is checked against the sizes given
// (abi/buffer.h). A mask (0, 0) means "all positions real". The GIL is
// released while the functions run.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "abi/buffer.h"
#include "abi/registry.h"
#include "ops/resampler_attention/bind_buffers.h"
#include "ops/resampler_attention/cuda.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::ResamplerExtents;
using lumo::bindings::ResamplerGradients;
using lumo::bindings::ResamplerInputs;
using lumo::bindings::take;

void forward(Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat, Buffer ctx_mask,
             Buffer out, Buffer lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N,
             int64_t D, double scale, int64_t dtype, uintptr_t stream, int device) {
  constexpr const char* op = "resampler_attention (cuda)";
  const ResamplerExtents e(op, B, Hq, Hkv, L, N, D);
  const ResamplerInputs in(op, e, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask);
  auto* outp = take<void>(op, "out", out, e.qs);
  auto* lsep = take<float>(op, "lse", lse, e.rows);
  lumo::cuda::resampler_attn_forward(in.q, in.k_ctx, in.v_ctx, in.k_lat, in.v_lat, in.mask, outp,
                                     lsep, B, Hq, Hkv, L, N, D, scale, dtype, stream, device);
}

void backward(Buffer dout, Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat,
              Buffer ctx_mask, Buffer out, Buffer lse, Buffer dq, Buffer dk_ctx, Buffer dv_ctx,
              Buffer dk_lat, Buffer dv_lat, int64_t B, int64_t Hq, int64_t Hkv, int64_t L,
              int64_t N, int64_t D, double scale, int64_t dtype, Buffer delta,
              uintptr_t stream, int device) {
  constexpr const char* op = "resampler_attention_backward (cuda)";
  const ResamplerExtents e(op, B, Hq, Hkv, L, N, D);
  const auto* doutp = take<const void>(op, "dout", dout, e.qs);
  const ResamplerInputs in(op, e, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask);
  const auto* outp = take<const void>(op, "out", out, e.qs);
  const auto* lsep = take<const float>(op, "lse", lse, e.rows);
  const ResamplerGradients g(op, e, dq, dk_ctx, dv_ctx, dk_lat, dv_lat);
  auto* deltap = take<float>(op, "delta", delta, e.rows);
  lumo::cuda::resampler_attn_backward(doutp, in.q, in.k_ctx, in.v_ctx, in.k_lat, in.v_lat,
                                      in.mask, outp, lsep, g.dq, g.dk_ctx, g.dv_ctx, g.dk_lat, g.dv_lat,
                                      B, Hq, Hkv, L, N, D, scale, dtype, deltap, stream, device);
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

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
#include "ops/resampler_attention/buffers.h"
#include "ops/resampler_attention/cuda.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::ResamplerBackward;
using lumo::bindings::ResamplerForward;

void forward(Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat, Buffer ctx_mask,
             Buffer out, Buffer lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N,
             int64_t D, double scale, int64_t dtype, uintptr_t stream, int device) {
  constexpr const char* op = "resampler_attention (cuda)";
  const ResamplerForward f(op, B, Hq, Hkv, L, N, D, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse);
  lumo::cuda::resampler_attn_forward(f.in.q, f.in.k_ctx, f.in.v_ctx, f.in.k_lat, f.in.v_lat, f.in.mask, f.out,
                                     f.lse, B, Hq, Hkv, L, N, D, scale, dtype, stream, device);
}

void backward(Buffer dout, Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat,
              Buffer ctx_mask, Buffer out, Buffer lse, Buffer dq, Buffer dk_ctx, Buffer dv_ctx,
              Buffer dk_lat, Buffer dv_lat, int64_t B, int64_t Hq, int64_t Hkv, int64_t L,
              int64_t N, int64_t D, double scale, int64_t dtype, Buffer delta,
              uintptr_t stream, int device) {
  constexpr const char* op = "resampler_attention_backward (cuda)";
  const ResamplerBackward b(op, B, Hq, Hkv, L, N, D, dout, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask,
                            out, lse, dq, dk_ctx, dv_ctx, dk_lat, dv_lat);
  auto* deltap = lumo::bindings::take<float>(op, "delta", delta, b.e.rows);
  lumo::cuda::resampler_attn_backward(b.dout, b.in.q, b.in.k_ctx, b.in.v_ctx, b.in.k_lat, b.in.v_lat,
                                      b.in.mask, b.out, b.lse, b.g.dq, b.g.dk_ctx, b.g.dv_ctx, b.g.dk_lat, b.g.dv_lat,
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

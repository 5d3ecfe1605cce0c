// The resampler-attention buffers checked against its sizes: one definition for
// the CPU (lumo_uti._C) and CUDA (lumo_uti._C_cuda) bindings, which differ only
// in the kernel they call and its trailing arguments.
#pragma once

#include <cstdint>

#include "abi/buffer.h"

namespace lumo {
namespace bindings {

// Element counts of the resampler's buffers, from its sizes (overflow-checked).
struct ResamplerExtents {
  Extent rows, qs, ctx, lat, mask;
  ResamplerExtents(const char* op, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D)
      : rows(product(op, {{"B", B}, {"Hq", Hq}, {"L", L}})),
        qs(product(op, {{"B", B}, {"Hq", Hq}, {"L", L}, {"D", D}})),
        ctx(product(op, {{"B", B}, {"Hkv", Hkv}, {"N", N}, {"D", D}})),
        lat(product(op, {{"B", B}, {"Hkv", Hkv}, {"L", L}, {"D", D}})),
        mask(product(op, {{"B", B}, {"N", N}})) {}
};

// The forward's inputs (q [B,Hq,L,D], k/v_ctx [B,Hkv,N,D], k/v_lat [B,Hkv,L,D],
// optional mask [B,N]), each taken only if its extent matches.
struct ResamplerInputs {
  const void *q, *k_ctx, *v_ctx, *k_lat, *v_lat;
  const uint8_t* mask;
  ResamplerInputs(const char* op, const ResamplerExtents& e, Buffer q_, Buffer k_ctx_, Buffer v_ctx_,
                  Buffer k_lat_, Buffer v_lat_, Buffer mask_)
      : q(take<const void>(op, "q", q_, e.qs)),
        k_ctx(take<const void>(op, "k_ctx", k_ctx_, e.ctx)),
        v_ctx(take<const void>(op, "v_ctx", v_ctx_, e.ctx)),
        k_lat(take<const void>(op, "k_lat", k_lat_, e.lat)),
        v_lat(take<const void>(op, "v_lat", v_lat_, e.lat)),
        mask(take_optional<const uint8_t>(op, "ctx_mask", mask_, e.mask)) {}
};

// The backward's gradients: dq like q, dk/dv_ctx like k_ctx, dk/dv_lat like k_lat.
struct ResamplerGradients {
  void *dq, *dk_ctx, *dv_ctx, *dk_lat, *dv_lat;
  ResamplerGradients(const char* op, const ResamplerExtents& e, Buffer dq_, Buffer dk_ctx_, Buffer dv_ctx_,
                     Buffer dk_lat_, Buffer dv_lat_)
      : dq(take<void>(op, "dq", dq_, e.qs)),
        dk_ctx(take<void>(op, "dk_ctx", dk_ctx_, e.ctx)),
        dv_ctx(take<void>(op, "dv_ctx", dv_ctx_, e.ctx)),
        dk_lat(take<void>(op, "dk_lat", dk_lat_, e.lat)),
        dv_lat(take<void>(op, "dv_lat", dv_lat_, e.lat)) {}
};

// The forward's buffers: the inputs, out like q and lse [B,Hq,L] fp32.
struct ResamplerForward {
  ResamplerExtents e;
  ResamplerInputs in;
  void* out;
  float* lse;
  ResamplerForward(const char* op, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D,
                   Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat, Buffer mask,
                   Buffer out_, Buffer lse_)
      : e(op, B, Hq, Hkv, L, N, D),
        in(op, e, q, k_ctx, v_ctx, k_lat, v_lat, mask),
        out(take<void>(op, "out", out_, e.qs)),
        lse(take<float>(op, "lse", lse_, e.rows)) {}
};

// The backward's buffers: dout like q, the forward's inputs and results, the gradients.
struct ResamplerBackward {
  ResamplerExtents e;
  const void* dout;
  ResamplerInputs in;
  const void* out;
  const float* lse;
  ResamplerGradients g;
  ResamplerBackward(const char* op, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D,
                    Buffer dout_, Buffer q, Buffer k_ctx, Buffer v_ctx, Buffer k_lat, Buffer v_lat,
                    Buffer mask, Buffer out_, Buffer lse_, Buffer dq, Buffer dk_ctx, Buffer dv_ctx,
                    Buffer dk_lat, Buffer dv_lat)
      : e(op, B, Hq, Hkv, L, N, D),
        dout(take<const void>(op, "dout", dout_, e.qs)),
        in(op, e, q, k_ctx, v_ctx, k_lat, v_lat, mask),
        out(take<const void>(op, "out", out_, e.qs)),
        lse(take<const float>(op, "lse", lse_, e.rows)),
        g(op, e, dq, dk_ctx, dv_ctx, dk_lat, dv_lat) {}
};

}  // namespace bindings
}  // namespace lumo

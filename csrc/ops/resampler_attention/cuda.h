// CUDA resampler cross-attention, callable without CUDA headers.
//
// Same contract as ops/resampler_attention/cpu.h (shapes, dtype codes, mask, lse),
// with device pointers on `device`, enqueued on `stream` (a cudaStream_t as an
// integer). Head dim D <= 256. Asynchronous: returns once launched.
#pragma once

#include <cstdint>

namespace lumo {
namespace cuda {

void resampler_attn_forward(const void* q, const void* k_ctx, const void* v_ctx,
                            const void* k_lat, const void* v_lat, const uint8_t* ctx_mask,
                            void* out, float* lse, int64_t B, int64_t Hq, int64_t Hkv,
                            int64_t L, int64_t N, int64_t D, double scale, int64_t dtype,
                            uintptr_t stream, int device);

// Deterministic backward: dq first (and each row's delta = dout . out into the
// fp32 workspace `delta` [B, Hq, L]), then dk/dv, visiting the group's query
// heads and rows in a fixed order. No atomics. D <= 128 runs the tiled kernels
// (cuda_tiled.cuh), larger D one warp per query row / key row.
void resampler_attn_backward(const void* dout, const void* q, const void* k_ctx,
                             const void* v_ctx, const void* k_lat, const void* v_lat,
                             const uint8_t* ctx_mask, const void* out, const float* lse,
                             void* dq, void* dk_ctx, void* dv_ctx, void* dk_lat, void* dv_lat,
                             int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D,
                             double scale, int64_t dtype, float* delta, uintptr_t stream,
                             int device);

}  // namespace cuda
}  // namespace lumo

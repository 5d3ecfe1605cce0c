// CPU resampler cross-attention (torch-free: raw pointers only).
//
// Latent queries attend over two key/value blocks, the context (masked) and
// the latents, as if the keys were concatenated, without building the
// concatenation: each block gets its own softmax partial, merged by
// log-sum-exp. GQA: query head h reads key/value head h / (Hq / Hkv).
#pragma once

#include <cstdint>

namespace lumo {
namespace cpu {

// Forward.
//
// q: [B, Hq, L, D]; k_ctx, v_ctx: [B, Hkv, N, D]; k_lat, v_lat: [B, Hkv, L, D],
// all C-contiguous, storage dtype `dtype` (abi/dtype.h: 0 fp32, 1 fp16, 2 bf16).
// ctx_mask: [B, N] bytes (nonzero = real position) or null (all real).
// out: [B, Hq, L, D] in `dtype`; lse: [B, Hq, L] fp32 log-sum-exp of the
// scaled scores (saved for the backward pass).
// num_threads: 0 = hardware concurrency. Work items are (batch, kv head,
// 64-row block of query rows), run on the OpenMP team (runtime/thread_pool.h);
// rows are independent, so the result does not depend on the split.
// isa: 0 auto, 1 scalar, 2 AVX2, 3 AVX-512 (every one gives the same bits;
// see cpu_body.h).
void resampler_attn_forward(const void* q, const void* k_ctx, const void* v_ctx,
                            const void* k_lat, const void* v_lat, const uint8_t* ctx_mask,
                            void* out, float* lse, int64_t B, int64_t Hq, int64_t Hkv,
                            int64_t L, int64_t N, int64_t D, double scale, int64_t dtype,
                            int64_t num_threads, int64_t isa = 0);

// Backward: gradients of sum(out * dout) with respect to q, k_ctx, v_ctx,
// k_lat and v_lat (shapes and dtypes as their inputs). Deterministic: every
// gradient row is owned by one work item and summed in a fixed order
// (query heads of the group, then query rows), whatever the thread count.
// Masked context rows get zero gradient.
void resampler_attn_backward(const void* dout, const void* q, const void* k_ctx,
                             const void* v_ctx, const void* k_lat, const void* v_lat,
                             const uint8_t* ctx_mask, const void* out, const float* lse,
                             void* dq, void* dk_ctx, void* dv_ctx, void* dk_lat, void* dv_lat,
                             int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D,
                             double scale, int64_t dtype, int64_t num_threads,
                             int64_t isa = 0);

// Bit mask (1 << isa) of the instruction sets this CPU runs: 1 scalar, 2 AVX2, 3 AVX-512.
int resampler_attn_isa_mask();

}  // namespace cpu
}  // namespace lumo

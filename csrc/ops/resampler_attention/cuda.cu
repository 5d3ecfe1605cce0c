// CUDA resampler cross-attention (see cuda.h).
//
// Head dims D <= 128 run the tiled kernels of cuda_tiled.cuh (K/V or
// query tiles in shared memory, reused by a block's rows). Larger D (<= 256)
// runs the row-wise kernels below.
//
// Row-wise layout: a warp owns one query row (forward, dq) or one key row (dk/dv).
// Lane t holds dims t, t+32, ... of the row (D <= 256: at most 8 per lane).
// Reductions over lanes use a fixed shuffle tree and then broadcast lane 0's
// value, so every lane sees bit-identical sums and the results do not depend
// on scheduling.
#include "ops/resampler_attention/cuda.h"

#include <algorithm>
#include <cmath>

#include "abi/checks.h"
#include "ops/resampler_attention/math.h"
#include "runtime/cuda_check.cuh"
#include "ops/resampler_attention/cuda_common.cuh"
#include "ops/resampler_attention/cuda_tiled.cuh"

namespace lumo {
namespace cuda {
namespace {

using namespace resampler_kernels;  // NOLINT: the kernels' own helpers

constexpr int kMaxPerLane = 8;  // D <= 256

// Forward: block = kWarpsPerBlock query rows of one (b, hq); grid.x over rows.
// Online softmax over the context keys then the latent keys, tile of 32 keys
// per step (lane t scores key tile+t), so the concatenation is never built.
template <DType DT>
__global__ void forward_kernel(const void* __restrict__ q, const void* __restrict__ k_ctx,
                               const void* __restrict__ v_ctx, const void* __restrict__ k_lat,
                               const void* __restrict__ v_lat, const uint8_t* __restrict__ mask,
                               void* __restrict__ out, float* __restrict__ lse, Shape s) {
  LUMO_DYNAMIC_SMEM(float, smem);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t rows = s.B * s.Hq * s.L;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= rows) return;
  const int64_t bh = row / s.L, b = bh / s.Hq, h = bh % s.Hq;
  const int64_t bg = b * s.Hkv + h / (s.Hq / s.Hkv);
  float* qs = smem + warp * s.D;
  for (int64_t d = lane; d < s.D; d += kWarp) qs[d] = ra::load<DT>(q, row * s.D + d);
  __syncwarp();
  float acc[kMaxPerLane];
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) acc[k] = 0.f;
  float m = -INFINITY, l_lane = 0.f;
  const int64_t T = s.N + s.L;
  for (int64_t tile = 0; tile < T; tile += kWarp) {
    const int64_t j = tile + lane;
    float sc = -INFINITY;
    if (j < T && !(j < s.N && mask && !mask[b * s.N + j])) {
      int64_t off;
      const void* kb = key_base(k_ctx, k_lat, bg, j, s, &off);
      float dot = 0.f;
      for (int64_t d = 0; d < s.D; ++d) dot += qs[d] * ra::load<DT>(kb, off + d);
      sc = dot * s.scale;
    }
    const float m_new = max_nan(m, warp_max(sc));
    if (m_new == -INFINITY) continue;  // every key so far masked
    const float alpha = m == -INFINITY ? 0.f : expf(m - m_new);
    const float p = sc == -INFINITY ? 0.f : expf(sc - m_new);
    l_lane = l_lane * alpha + p;
#pragma unroll
    for (int k = 0; k < kMaxPerLane; ++k) acc[k] *= alpha;
    const int n_keys = static_cast<int>(T - tile < kWarp ? T - tile : kWarp);
    for (int t = 0; t < n_keys; ++t) {
      // Masked keys too (pt = 0): a NaN value propagates, as in the reference.
      const float pt = __shfl_sync(kFull, p, t);
      int64_t off;
      const void* vb = key_base(v_ctx, v_lat, bg, tile + t, s, &off);
#pragma unroll
      for (int k = 0; k < kMaxPerLane; ++k) {
        const int64_t d = lane + k * kWarp;
        if (d < s.D) acc[k] += pt * ra::load<DT>(vb, off + d);
      }
    }
    m = m_new;
  }
  const float l = warp_sum(l_lane);
  const float inv = ra::row_inverse(ra::Partial{m, l});
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int64_t d = lane + k * kWarp;
    if (d < s.D) ra::store<DT>(out, row * s.D + d, acc[k] * inv);
  }
  if (lane == 0) lse[row] = ra::partial_lse(ra::Partial{m, l});
}

// Backward 1: one warp per query row: delta = dout . out, then
// dq = scale * sum_j p_j (dp_j - delta) k_j over 32-key tiles.
template <DType DT>
__global__ void dq_kernel(const void* __restrict__ dout, const void* __restrict__ q,
                          const void* __restrict__ k_ctx, const void* __restrict__ v_ctx,
                          const void* __restrict__ k_lat, const void* __restrict__ v_lat,
                          const uint8_t* __restrict__ mask, const void* __restrict__ out,
                          const float* __restrict__ lse, void* __restrict__ dq,
                          float* __restrict__ delta, Shape s) {
  LUMO_DYNAMIC_SMEM(float, smem);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t rows = s.B * s.Hq * s.L;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= rows) return;
  const int64_t bh = row / s.L, b = bh / s.Hq, h = bh % s.Hq;
  const int64_t bg = b * s.Hkv + h / (s.Hq / s.Hkv);
  float* qs = smem + warp * 2 * s.D;
  float* dos = qs + s.D;
  float part = 0.f;
  for (int64_t d = lane; d < s.D; d += kWarp) {
    qs[d] = ra::load<DT>(q, row * s.D + d);
    dos[d] = ra::load<DT>(dout, row * s.D + d);
    part += dos[d] * ra::load<DT>(out, row * s.D + d);
  }
  __syncwarp();
  const float dlt = warp_sum(part);
  if (lane == 0) delta[row] = dlt;
  const float lse_i = lse[row];
  float acc[kMaxPerLane];
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) acc[k] = 0.f;
  const int64_t T = s.N + s.L;
  for (int64_t tile = 0; tile < T && lse_i != -INFINITY; tile += kWarp) {
    const int64_t j = tile + lane;
    float ds = 0.f;
    if (j < T) {
      // Masked keys too (p = 0), so that NaN values propagate as in the reference.
      int64_t off;
      const void* kb = key_base(k_ctx, k_lat, bg, j, s, &off);
      const void* vb = key_base(v_ctx, v_lat, bg, j, s, &off);
      float dot = 0.f, dp = 0.f;
      for (int64_t d = 0; d < s.D; ++d) {
        dot += qs[d] * ra::load<DT>(kb, off + d);
        dp += dos[d] * ra::load<DT>(vb, off + d);
      }
      const bool masked = j < s.N && mask && !mask[b * s.N + j];
      const float p = masked ? 0.f : expf(dot * s.scale - lse_i);
      ds = p * (dp - dlt);
    }
    const int n_keys = static_cast<int>(T - tile < kWarp ? T - tile : kWarp);
    for (int t = 0; t < n_keys; ++t) {
      const float dst = __shfl_sync(kFull, ds, t);
      int64_t off;
      const void* kb = key_base(k_ctx, k_lat, bg, tile + t, s, &off);
#pragma unroll
      for (int k = 0; k < kMaxPerLane; ++k) {
        const int64_t d = lane + k * kWarp;
        if (d < s.D) acc[k] += dst * ra::load<DT>(kb, off + d);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int64_t d = lane + k * kWarp;
    if (d < s.D) ra::store<DT>(dq, row * s.D + d, acc[k] * s.scale);
  }
}

// Backward 2: one warp per key row j of (b, g): visits the group's query
// heads and rows in order, dk_j += scale * ds q_i, dv_j += p dout_i.
template <DType DT>
__global__ void dkv_kernel(const void* __restrict__ dout, const void* __restrict__ q,
                           const void* __restrict__ k_ctx, const void* __restrict__ v_ctx,
                           const void* __restrict__ k_lat, const void* __restrict__ v_lat,
                           const uint8_t* __restrict__ mask, const float* __restrict__ lse,
                           const float* __restrict__ delta, void* __restrict__ dk_ctx,
                           void* __restrict__ dv_ctx, void* __restrict__ dk_lat,
                           void* __restrict__ dv_lat, Shape s) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t T = s.N + s.L;
  const int64_t key = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (key >= s.B * s.Hkv * T) return;
  const int64_t bg = key / T, j = key % T, b = bg / s.Hkv, g = bg % s.Hkv;
  int64_t off;
  const void* kb = key_base(k_ctx, k_lat, bg, j, s, &off);
  const void* vb = key_base(v_ctx, v_lat, bg, j, s, &off);
  void* dkb = j < s.N ? dk_ctx : dk_lat;
  void* dvb = j < s.N ? dv_ctx : dv_lat;
  float kj[kMaxPerLane], vj[kMaxPerLane], dk[kMaxPerLane], dv[kMaxPerLane];
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int64_t d = lane + k * kWarp;
    kj[k] = d < s.D ? ra::load<DT>(kb, off + d) : 0.f;
    vj[k] = d < s.D ? ra::load<DT>(vb, off + d) : 0.f;
    dk[k] = 0.f;
    dv[k] = 0.f;
  }
  const bool masked = j < s.N && mask && !mask[b * s.N + j];
  const int64_t group = s.Hq / s.Hkv;
  // Masked keys too (p = 0), so that NaN values propagate as in the reference.
  for (int64_t r = 0; r < group; ++r) {
    const int64_t h = g * group + r;
    for (int64_t i = 0; i < s.L; ++i) {
      const int64_t row = (b * s.Hq + h) * s.L + i;
      const float lse_i = lse[row];
      if (lse_i == -INFINITY) continue;
      float qi[kMaxPerLane], doi[kMaxPerLane];
      float sp = 0.f, dpp = 0.f;
#pragma unroll
      for (int k = 0; k < kMaxPerLane; ++k) {
        const int64_t d = lane + k * kWarp;
        qi[k] = d < s.D ? ra::load<DT>(q, row * s.D + d) : 0.f;
        doi[k] = d < s.D ? ra::load<DT>(dout, row * s.D + d) : 0.f;
        sp += qi[k] * kj[k];
        dpp += doi[k] * vj[k];
      }
      const float score = warp_sum(sp) * s.scale;
      const float p = masked ? 0.f : expf(score - lse_i);
      const float ds = p * (warp_sum(dpp) - delta[row]) * s.scale;
#pragma unroll
      for (int k = 0; k < kMaxPerLane; ++k) {
        dk[k] += ds * qi[k];
        dv[k] += p * doi[k];
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int64_t d = lane + k * kWarp;
    if (d < s.D) {
      ra::store<DT>(dkb, off + d, dk[k]);
      ra::store<DT>(dvb, off + d, dv[k]);
    }
  }
}

Shape check(const char* op, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D,
            double scale, int64_t dtype, int device) {
  LUMO_CHECK(B >= 0 && L >= 0 && N >= 0, op, "B, L, N >= 0", B < 0 ? B : (L < 0 ? L : N));
  LUMO_CHECK(D >= 1 && D <= kMaxPerLane * kWarp, op, "head dim 1 <= D <= 256", D);
  LUMO_CHECK(Hkv >= 1 && Hq >= 1 && Hq % Hkv == 0, op, "Hq a positive multiple of Hkv >= 1", Hq);
  check_dtype(op, "dtype", dtype);
  LUMO_CHECK(std::isfinite(scale), op, "a finite scale", scale);
  LUMO_CHECK(device >= 0, op, "a device index >= 0", device);
  return Shape{B, Hq, Hkv, L, N, D, static_cast<float>(scale)};
}

int blocks_for(int64_t warps, const char* op) {
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  LUMO_CHECK_RANGE(blocks <= 2147483647LL, op, "fewer than 2^31 blocks", blocks);
  return static_cast<int>(blocks);
}

// Grid of the tiled kernels: x over (batch, KV head) pairs, y over chunks of
// `per_block` query rows (or keys) of the pair.
dim3 tiled_grid(int64_t pairs, int64_t items, int per_block, const char* op) {
  const int64_t chunks = (items + per_block - 1) / per_block;
  LUMO_CHECK_RANGE(pairs <= 2147483647LL, op, "B * Hkv < 2^31", pairs);
  LUMO_CHECK_RANGE(chunks <= 65535, op, "at most 65535 * 16 query rows or keys per KV head", items);
  return dim3(static_cast<unsigned>(pairs), static_cast<unsigned>(chunks));
}

// Lets `kernel` use `bytes` of dynamic shared memory (beyond 48 KB is opt-in).
template <typename Kernel>
void allow_smem(Kernel* kernel, size_t bytes, const char* op) {
  if (bytes > 48 * 1024) {
    throw_on_error(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)),
                   op, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
}

}  // namespace

void resampler_attn_forward(const void* q, const void* k_ctx, const void* v_ctx,
                            const void* k_lat, const void* v_lat, const uint8_t* ctx_mask,
                            void* out, float* lse, int64_t B, int64_t Hq, int64_t Hkv,
                            int64_t L, int64_t N, int64_t D, double scale, int64_t dtype,
                            uintptr_t stream, int device) {
  constexpr const char* op = "resampler_attention (cuda)";
  const Shape s = check(op, B, Hq, Hkv, L, N, D, scale, dtype, device);
  if (B == 0 || L == 0) return;
  LUMO_CHECK(q && k_lat && v_lat && out && lse, op, "non-null q/k_lat/v_lat/out/lse", "null");
  LUMO_CHECK(N == 0 || (k_ctx && v_ctx), op, "non-null k_ctx/v_ctx for N > 0", "null");
  DeviceGuard guard(device, op);
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  if (D <= kTiledMaxD) {
    const dim3 grid = tiled_grid(B * Hkv, (Hq / Hkv) * L, kRows, op);
    const size_t bytes = sizeof(float) * static_cast<size_t>(forward_smem_floats(static_cast<int>(D)));
    dispatch_dtype(dtype, [&](auto dt) {
      constexpr DType DT = decltype(dt)::value;
      allow_smem(forward_tiled_kernel<DT>, bytes, op);
      LUMO_LAUNCH(forward_tiled_kernel<DT>, grid, kWarpsPerBlock * kWarp, bytes, st)(
          q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, s);
    });
    throw_on_error(cudaGetLastError(), op, "kernel launch");
    return;
  }
  const int blocks = blocks_for(B * Hq * L, op);
  const size_t shmem = sizeof(float) * kWarpsPerBlock * D;
  dispatch_dtype(dtype, [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    LUMO_LAUNCH(forward_kernel<DT>, blocks, kWarpsPerBlock * kWarp, shmem, st)(
        q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, s);
  });
  throw_on_error(cudaGetLastError(), op, "kernel launch");
}

void resampler_attn_backward(const void* dout, const void* q, const void* k_ctx,
                             const void* v_ctx, const void* k_lat, const void* v_lat,
                             const uint8_t* ctx_mask, const void* out, const float* lse,
                             void* dq, void* dk_ctx, void* dv_ctx, void* dk_lat, void* dv_lat,
                             int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D,
                             double scale, int64_t dtype, float* delta, uintptr_t stream,
                             int device) {
  constexpr const char* op = "resampler_attention_backward (cuda)";
  const Shape s = check(op, B, Hq, Hkv, L, N, D, scale, dtype, device);
  if (B == 0 || L == 0) return;
  LUMO_CHECK(dout && q && k_lat && v_lat && out && lse && dq && dk_lat && dv_lat && delta, op,
             "non-null pointers", "null");
  LUMO_CHECK(N == 0 || (k_ctx && v_ctx && dk_ctx && dv_ctx), op,
             "non-null context pointers for N > 0", "null");
  DeviceGuard guard(device, op);
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  if (D <= kTiledMaxD) {
    const dim3 q_grid = tiled_grid(B * Hkv, (Hq / Hkv) * L, kRows, op);
    const dim3 k_grid = tiled_grid(B * Hkv, N + L, kKeys, op);
    const size_t q_bytes = sizeof(float) * static_cast<size_t>(dq_smem_floats(static_cast<int>(D)));
    const size_t k_bytes = sizeof(float) * static_cast<size_t>(dkv_smem_floats(static_cast<int>(D)));
    dispatch_dtype(dtype, [&](auto dt) {
      constexpr DType DT = decltype(dt)::value;
      allow_smem(dq_tiled_kernel<DT>, q_bytes, op);
      allow_smem(dkv_tiled_kernel<DT>, k_bytes, op);
      LUMO_LAUNCH(dq_tiled_kernel<DT>, q_grid, kWarpsPerBlock * kWarp, q_bytes, st)(
          dout, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, dq, delta, s);
      LUMO_LAUNCH(dkv_tiled_kernel<DT>, k_grid, kWarpsPerBlock * kWarp, k_bytes, st)(
          dout, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, lse, delta, dk_ctx, dv_ctx, dk_lat,
          dv_lat, s);
    });
    throw_on_error(cudaGetLastError(), op, "kernel launch");
    return;
  }
  const int q_blocks = blocks_for(B * Hq * L, op);
  const int k_blocks = blocks_for(B * Hkv * (N + L), op);
  const size_t shmem = sizeof(float) * kWarpsPerBlock * 2 * D;
  dispatch_dtype(dtype, [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    LUMO_LAUNCH(dq_kernel<DT>, q_blocks, kWarpsPerBlock * kWarp, shmem, st)(
        dout, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, dq, delta, s);
    LUMO_LAUNCH(dkv_kernel<DT>, k_blocks, kWarpsPerBlock * kWarp, 0, st)(
        dout, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, lse, delta, dk_ctx, dv_ctx, dk_lat,
        dv_lat, s);
  });
  throw_on_error(cudaGetLastError(), op, "kernel launch");
}

}  // namespace cuda
}  // namespace lumo

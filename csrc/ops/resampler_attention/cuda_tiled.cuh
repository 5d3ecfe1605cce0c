// Tiled CUDA resampler-attention kernels for head dims D <= 128.
//
// The row-wise kernels (cuda.cu) give every query row (or key row) a
// warp that reads all the keys (or queries) it needs from global memory, so
// K/V are read once per query row. Here a block stages tiles in shared memory
// and reuses them for many rows:
//   forward, dq: a block owns kRows = 16 query rows of one (batch, KV head)
//     (the rows of a KV group's query heads are contiguous) and walks the
//     group's keys in tiles of kTile = 32; lane t scores key t of the tile for
//     the warp's 4 rows, then every lane accumulates its dims (t, t+32, ...)
//     of the output over the tile's keys;
//   dk/dv: a block owns kKeys = 16 keys of one (batch, KV head) and walks the
//     group's query rows in tiles of 32; lane t scores query row t against the
//     warp's 4 keys, then every lane accumulates its dims of dk and dv.
// Sums run in a fixed order (tiles in order, keys/rows in order inside a tile,
// the warp reductions of cuda_common.cuh), so results are
// deterministic; nothing is accumulated with atomics.
//
// Shared-memory rows are padded to an odd pitch, so lane t reading row t at
// the same column hits 32 different banks. Sizes (floats) for D = 128: forward
// 10.8k (43 KB), dq 12.9k (52 KB), dk/dv 13.4k (54 KB); the launcher raises
// the dynamic shared-memory limit above 48 KB where needed.
#pragma once

#include <cmath>
#include <cstdint>

#include "ops/resampler_attention/cuda_common.cuh"

namespace lumo {
namespace cuda {
namespace resampler_kernels {

constexpr int kTiledMaxD = 128;
constexpr int kSlices = kTiledMaxD / kWarp;  // dims per lane: d = lane + 32 * k
constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarpsPerBlock * kRowsPerWarp;  // query rows per block (forward, dq)
constexpr int kKeysPerWarp = 4;
constexpr int kKeys = kWarpsPerBlock * kKeysPerWarp;  // keys per block (dk/dv)
constexpr int kTile = kWarp;                          // keys (or query rows) per tile

__host__ __device__ inline int tile_pitch(int d) { return d % 2 == 0 ? d + 1 : d; }

__host__ __device__ inline int64_t forward_smem_floats(int d) {
  return 2LL * kTile * tile_pitch(d) + int64_t{kRows} * d + int64_t{kRows} * kTile;
}
__host__ __device__ inline int64_t dq_smem_floats(int d) {
  return 2LL * kTile * tile_pitch(d) + 2LL * kRows * d + int64_t{kRows} * kTile;
}
__host__ __device__ inline int64_t dkv_smem_floats(int d) {
  return 2LL * kTile * tile_pitch(d) + 2LL * kKeys * d + 2LL * kTile + 2LL * kKeys * kTile;
}

// Stages keys [k0, k0 + kTile) of (b, g) as fp32 rows of pitch p (zeros past
// the end). A warp per row, lanes along it: coalesced reads, no divisions.
template <DType DT>
__device__ inline void stage_keys(const void* ctx, const void* lat, int64_t bg, int64_t k0,
                                  const Shape& s, int p, float* dst) {
  const int d_all = static_cast<int>(s.D);
  const int64_t total = s.N + s.L;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int t = warp; t < kTile; t += kWarpsPerBlock) {
    const int64_t j = k0 + t;
    float* row = dst + t * p;
    if (j < total) {
      int64_t off;
      const void* base = key_base(ctx, lat, bg, j, s, &off);
      for (int d = lane; d < d_all; d += kWarp) row[d] = ra::load<DT>(base, off + d);
    } else {
      for (int d = lane; d < d_all; d += kWarp) row[d] = 0.f;
    }
  }
}

// Stages `count` rows of a [rows, D] tensor from row `first` as fp32 rows of
// pitch p (zeros past row `limit`); a warp per row, as stage_keys.
template <DType DT>
__device__ inline void stage_rows(const void* src, int64_t first, int64_t limit, int count,
                                  int64_t d_all, int p, float* dst) {
  const int d = static_cast<int>(d_all);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int r = warp; r < count; r += kWarpsPerBlock) {
    float* row = dst + r * p;
    if (first + r < limit) {
      const int64_t base = (first + r) * d_all;
      for (int c = lane; c < d; c += kWarp) row[c] = ra::load<DT>(src, base + c);
    } else {
      for (int c = lane; c < d; c += kWarp) row[c] = 0.f;
    }
  }
}

// acc[i][k] += sum over t < n of w[i * kTile + t] * rows[t * p + d], d = lane + 32 k:
// the warp's NI output rows (query rows or keys) take a weighted sum of the
// staged tile rows, t in order.
template <int NI>
__device__ inline void accumulate_tile(float (&acc)[NI][kSlices], const float* w, const float* rows,
                                       int p, int n, int D, int lane) {
  for (int t = 0; t < n; ++t) {
    const float* row = rows + t * p;
#pragma unroll
    for (int i = 0; i < NI; ++i) {
      const float wt = w[i * kTile + t];
#pragma unroll
      for (int k = 0; k < kSlices; ++k) {
        const int d = lane + k * kWarp;
        if (d < D) acc[i][k] += wt * row[d];
      }
    }
  }
}

// grid (B * Hkv, ceil(group * L / kRows)); kWarpsPerBlock warps.
template <DType DT>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
forward_tiled_kernel(const void* __restrict__ q, const void* __restrict__ k_ctx,
                     const void* __restrict__ v_ctx, const void* __restrict__ k_lat,
                     const void* __restrict__ v_lat, const uint8_t* __restrict__ mask,
                     void* __restrict__ out, float* __restrict__ lse, Shape s) {
  LUMO_DYNAMIC_SMEM(float, smem);
  const int D = static_cast<int>(s.D);
  const int P = tile_pitch(D);
  float* ks = smem;              // [kTile][P]
  float* vs = ks + kTile * P;    // [kTile][P]
  float* qs = vs + kTile * P;    // [kRows][D]
  float* ps = qs + kRows * D;    // [kRows][kTile]
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t bg = blockIdx.x, b = bg / s.Hkv;
  const int64_t rows = (s.Hq / s.Hkv) * s.L;       // query rows of the KV group
  const int64_t row0 = bg * rows;                   // first row of the group in q
  const int64_t first = static_cast<int64_t>(blockIdx.y) * kRows;
  stage_rows<DT>(q, row0 + first, row0 + rows, kRows, s.D, D, qs);
  const float* qw = qs + warp * kRowsPerWarp * D;
  float* pw = ps + warp * kRowsPerWarp * kTile;

  float acc[kRowsPerWarp][kSlices], m[kRowsPerWarp], l_lane[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l_lane[r] = 0.f;
#pragma unroll
    for (int k = 0; k < kSlices; ++k) acc[r][k] = 0.f;
  }
  const int64_t T = s.N + s.L;
  for (int64_t k0 = 0; k0 < T; k0 += kTile) {
    __syncthreads();  // qs staged; the previous tile is consumed
    stage_keys<DT>(k_ctx, k_lat, bg, k0, s, P, ks);
    stage_keys<DT>(v_ctx, v_lat, bg, k0, s, P, vs);
    __syncthreads();
    const bool valid = key_valid(mask, b, k0 + lane, s);
    float sc[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) sc[r] = 0.f;
    const float* kr = ks + lane * P;
    for (int d = 0; d < D; ++d) {
      const float kd = kr[d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) sc[r] += qw[r * D + d] * kd;
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float score = valid ? sc[r] * s.scale : -INFINITY;
      const float m_new = max_nan(m[r], warp_max(score));
      float p = 0.f, alpha = 1.f;
      if (m_new != -INFINITY) {  // warp-uniform: every key so far masked otherwise
        alpha = m[r] == -INFINITY ? 0.f : expf(m[r] - m_new);
        p = score == -INFINITY ? 0.f : expf(score - m_new);
        m[r] = m_new;
      }
      l_lane[r] = l_lane[r] * alpha + p;
#pragma unroll
      for (int k = 0; k < kSlices; ++k) acc[r][k] *= alpha;
      pw[r * kTile + lane] = p;
    }
    __syncwarp();
    const int n_keys = static_cast<int>(T - k0 < kTile ? T - k0 : kTile);
    accumulate_tile(acc, pw, vs, P, n_keys, D, lane);
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const float l = warp_sum(l_lane[r]);
    const int64_t local = first + warp * kRowsPerWarp + r;
    if (local >= rows) continue;  // warp-uniform
    const int64_t row = row0 + local;
    const float inv = ra::row_inverse(ra::Partial{m[r], l});
#pragma unroll
    for (int k = 0; k < kSlices; ++k) {
      const int d = lane + k * kWarp;
      if (d < D) ra::store<DT>(out, row * s.D + d, acc[r][k] * inv);
    }
    if (lane == 0) lse[row] = ra::partial_lse(ra::Partial{m[r], l});
  }
}

// dq and delta = dout . out. grid and block as the forward kernel.
template <DType DT>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
dq_tiled_kernel(const void* __restrict__ dout, const void* __restrict__ q,
                const void* __restrict__ k_ctx, const void* __restrict__ v_ctx,
                const void* __restrict__ k_lat, const void* __restrict__ v_lat,
                const uint8_t* __restrict__ mask, const void* __restrict__ out,
                const float* __restrict__ lse, void* __restrict__ dq,
                float* __restrict__ delta, Shape s) {
  LUMO_DYNAMIC_SMEM(float, smem);
  const int D = static_cast<int>(s.D);
  const int P = tile_pitch(D);
  float* ks = smem;               // [kTile][P]
  float* vs = ks + kTile * P;     // [kTile][P]
  float* qs = vs + kTile * P;     // [kRows][D]
  float* dos = qs + kRows * D;    // [kRows][D]
  float* dss = dos + kRows * D;   // [kRows][kTile]
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t bg = blockIdx.x, b = bg / s.Hkv;
  const int64_t rows = (s.Hq / s.Hkv) * s.L;
  const int64_t row0 = bg * rows;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * kRows;
  stage_rows<DT>(q, row0 + first, row0 + rows, kRows, s.D, D, qs);
  stage_rows<DT>(dout, row0 + first, row0 + rows, kRows, s.D, D, dos);
  __syncthreads();
  const float* qw = qs + warp * kRowsPerWarp * D;
  const float* dow = dos + warp * kRowsPerWarp * D;
  float* dsw = dss + warp * kRowsPerWarp * kTile;

  float dlt[kRowsPerWarp], lse_r[kRowsPerWarp], acc[kRowsPerWarp][kSlices];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t local = first + warp * kRowsPerWarp + r;
    const int64_t row = row0 + local;
    float part = 0.f;
    for (int d = lane; d < D; d += kWarp) {
      if (local < rows) part += dow[r * D + d] * ra::load<DT>(out, row * s.D + d);
    }
    dlt[r] = warp_sum(part);
    lse_r[r] = local < rows ? lse[row] : -INFINITY;
    if (lane == 0 && local < rows) delta[row] = dlt[r];
#pragma unroll
    for (int k = 0; k < kSlices; ++k) acc[r][k] = 0.f;
  }
  const int64_t T = s.N + s.L;
  for (int64_t k0 = 0; k0 < T; k0 += kTile) {
    __syncthreads();
    stage_keys<DT>(k_ctx, k_lat, bg, k0, s, P, ks);
    stage_keys<DT>(v_ctx, v_lat, bg, k0, s, P, vs);
    __syncthreads();
    const bool valid = key_valid(mask, b, k0 + lane, s);
    float sc[kRowsPerWarp], dp[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) sc[r] = dp[r] = 0.f;
    const float* kr = ks + lane * P;
    const float* vr = vs + lane * P;
    for (int d = 0; d < D; ++d) {
      const float kd = kr[d], vd = vr[d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        sc[r] += qw[r * D + d] * kd;
        dp[r] += dow[r * D + d] * vd;
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float p = valid && lse_r[r] != -INFINITY ? expf(sc[r] * s.scale - lse_r[r]) : 0.f;
      dsw[r * kTile + lane] = p * (dp[r] - dlt[r]);
    }
    __syncwarp();
    const int n_keys = static_cast<int>(T - k0 < kTile ? T - k0 : kTile);
    accumulate_tile(acc, dsw, ks, P, n_keys, D, lane);
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t local = first + warp * kRowsPerWarp + r;
    if (local >= rows) continue;
    const int64_t row = row0 + local;
#pragma unroll
    for (int k = 0; k < kSlices; ++k) {
      const int d = lane + k * kWarp;
      if (d < D) ra::store<DT>(dq, row * s.D + d, acc[r][k] * s.scale);
    }
  }
}

// dk, dv. grid (B * Hkv, ceil((N + L) / kKeys)); needs delta from dq_tiled_kernel.
template <DType DT>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
dkv_tiled_kernel(const void* __restrict__ dout, const void* __restrict__ q,
                 const void* __restrict__ k_ctx, const void* __restrict__ v_ctx,
                 const void* __restrict__ k_lat, const void* __restrict__ v_lat,
                 const uint8_t* __restrict__ mask, const float* __restrict__ lse,
                 const float* __restrict__ delta, void* __restrict__ dk_ctx,
                 void* __restrict__ dv_ctx, void* __restrict__ dk_lat,
                 void* __restrict__ dv_lat, Shape s) {
  LUMO_DYNAMIC_SMEM(float, smem);
  const int D = static_cast<int>(s.D);
  const int P = tile_pitch(D);
  float* qs = smem;                 // [kTile][P] query rows of the tile
  float* dos = qs + kTile * P;      // [kTile][P]
  float* kb = dos + kTile * P;      // [kKeys][D] the block's keys
  float* vb = kb + kKeys * D;       // [kKeys][D]
  float* lse_t = vb + kKeys * D;    // [kTile]
  float* dl_t = lse_t + kTile;      // [kTile]
  float* pw_all = dl_t + kTile;     // [kKeys][kTile]
  float* dsw_all = pw_all + kKeys * kTile;  // [kKeys][kTile]
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t bg = blockIdx.x, b = bg / s.Hkv;
  const int64_t T = s.N + s.L;
  const int64_t key0 = static_cast<int64_t>(blockIdx.y) * kKeys;
  const int64_t rows = (s.Hq / s.Hkv) * s.L;
  const int64_t row0 = bg * rows;
  for (int kk = warp; kk < kKeys; kk += kWarpsPerBlock) {
    const int64_t j = key0 + kk;
    int64_t off = 0;
    const void* kbase = j < T ? key_base(k_ctx, k_lat, bg, j, s, &off) : nullptr;
    const void* vbase = j < T ? key_base(v_ctx, v_lat, bg, j, s, &off) : nullptr;
    for (int d = lane; d < D; d += kWarp) {
      kb[kk * D + d] = j < T ? ra::load<DT>(kbase, off + d) : 0.f;
      vb[kk * D + d] = j < T ? ra::load<DT>(vbase, off + d) : 0.f;
    }
  }
  const float* kw = kb + warp * kKeysPerWarp * D;
  const float* vw = vb + warp * kKeysPerWarp * D;
  float* pw = pw_all + warp * kKeysPerWarp * kTile;
  float* dsw = dsw_all + warp * kKeysPerWarp * kTile;
  bool valid[kKeysPerWarp];
  float dk[kKeysPerWarp][kSlices], dv[kKeysPerWarp][kSlices];
#pragma unroll
  for (int kk = 0; kk < kKeysPerWarp; ++kk) {
    valid[kk] = key_valid(mask, b, key0 + warp * kKeysPerWarp + kk, s);
#pragma unroll
    for (int k = 0; k < kSlices; ++k) dk[kk][k] = dv[kk][k] = 0.f;
  }
  for (int64_t q0 = 0; q0 < rows; q0 += kTile) {
    __syncthreads();  // kb/vb staged; the previous tile is consumed
    stage_rows<DT>(q, row0 + q0, row0 + rows, kTile, s.D, P, qs);
    stage_rows<DT>(dout, row0 + q0, row0 + rows, kTile, s.D, P, dos);
    for (int t = threadIdx.x; t < kTile; t += blockDim.x) {
      const bool in = q0 + t < rows;
      lse_t[t] = in ? lse[row0 + q0 + t] : -INFINITY;
      dl_t[t] = in ? delta[row0 + q0 + t] : 0.f;
    }
    __syncthreads();
    // Lane t: query row q0 + t against the warp's keys.
    const float* qr = qs + lane * P;
    const float* dr = dos + lane * P;
    float sc[kKeysPerWarp], dp[kKeysPerWarp];
#pragma unroll
    for (int kk = 0; kk < kKeysPerWarp; ++kk) sc[kk] = dp[kk] = 0.f;
    for (int d = 0; d < D; ++d) {
      const float qd = qr[d], dd = dr[d];
#pragma unroll
      for (int kk = 0; kk < kKeysPerWarp; ++kk) {
        sc[kk] += qd * kw[kk * D + d];
        dp[kk] += dd * vw[kk * D + d];
      }
    }
    const float lse_i = lse_t[lane];
#pragma unroll
    for (int kk = 0; kk < kKeysPerWarp; ++kk) {
      const float p = valid[kk] && lse_i != -INFINITY ? expf(sc[kk] * s.scale - lse_i) : 0.f;
      pw[kk * kTile + lane] = p;
      dsw[kk * kTile + lane] = p * (dp[kk] - dl_t[lane]) * s.scale;
    }
    __syncwarp();
    const int n_rows = static_cast<int>(rows - q0 < kTile ? rows - q0 : kTile);
    accumulate_tile(dv, pw, dos, P, n_rows, D, lane);
    accumulate_tile(dk, dsw, qs, P, n_rows, D, lane);
  }
#pragma unroll
  for (int kk = 0; kk < kKeysPerWarp; ++kk) {
    const int64_t j = key0 + warp * kKeysPerWarp + kk;
    if (j >= T) continue;
    int64_t off;
    key_base(k_ctx, k_lat, bg, j, s, &off);
    void* dkb = j < s.N ? dk_ctx : dk_lat;
    void* dvb = j < s.N ? dv_ctx : dv_lat;
#pragma unroll
    for (int k = 0; k < kSlices; ++k) {
      const int d = lane + k * kWarp;
      if (d < D) {
        ra::store<DT>(dkb, off + d, dk[kk][k]);
        ra::store<DT>(dvb, off + d, dv[kk][k]);
      }
    }
  }
}

}  // namespace resampler_kernels
}  // namespace cuda
}  // namespace lumo

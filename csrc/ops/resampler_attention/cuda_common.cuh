// Pieces shared by the row-wise (cuda.cu) and tiled
// (cuda_tiled.cuh) CUDA resampler-attention kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "ops/resampler_attention/math.h"
#include "runtime/cuda_check.cuh"

namespace lumo {
namespace cuda {
namespace resampler_kernels {

namespace ra = ::lumo::resampler;

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

// Sum over the warp by a fixed shuffle tree, then lane 0's value to every lane,
// so all lanes hold bit-identical sums whatever the scheduling.
__device__ inline float warp_sum(float v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(kFull, v, off);
  return __shfl_sync(kFull, v, 0);
}

// Max that propagates NaN (fmaxf drops it): a NaN score makes its query row
// NaN, as in the reference. Any NaN gives the one canonical NaN.
__device__ inline float max_nan(float a, float b) { return a != a || b != b ? NAN : fmaxf(a, b); }

// Max over the warp (a butterfly: every lane ends with the same value).
__device__ inline float warp_max(float v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v = max_nan(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

struct Shape {
  int64_t B, Hq, Hkv, L, N, D;
  float scale;
};

// Key row j of (b, g): context rows [0, N), then latent rows [0, L).
__device__ inline const void* key_base(const void* ctx, const void* lat, int64_t bg, int64_t j,
                                       const Shape& s, int64_t* off) {
  if (j < s.N) {
    *off = (bg * s.N + j) * s.D;
    return ctx;
  }
  *off = (bg * s.L + (j - s.N)) * s.D;
  return lat;
}

// Key j of batch b is a real key: in range and, for context keys, not masked.
__device__ inline bool key_valid(const uint8_t* mask, int64_t b, int64_t j, const Shape& s) {
  return j < s.N + s.L && !(j < s.N && mask != nullptr && !mask[b * s.N + j]);
}

}  // namespace resampler_kernels
}  // namespace cuda
}  // namespace lumo

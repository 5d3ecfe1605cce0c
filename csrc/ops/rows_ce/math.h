// Arithmetic of the rows-only linear cross-entropy shared by the CPU and CUDA
// kernels (LUMO_HD), so the CPU tests exercise what the CUDA kernel runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "abi/hd.h"

namespace lumo {
namespace rows_ce {

// Vocabulary rows per packed panel (the unit of the score micro-kernel).
constexpr int64_t kPanel = 64;
// Vocabulary rows per online log-sum-exp step of the forward pass. The
// running max is updated once per super-tile, so this constant is part of the
// result's bits: it must not depend on the machine or the thread count.
constexpr int64_t kSuperTile = 256;

// One rounding per operation on every compiler: nvcc would otherwise fuse a
// multiply and an add that the CPU build rounds twice.
#if defined(__CUDA_ARCH__)
LUMO_HD inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
LUMO_HD inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
LUMO_HD inline float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
#else
LUMO_HD inline float mul_rn(float a, float b) { return a * b; }
LUMO_HD inline float add_rn(float a, float b) { return a + b; }
LUMO_HD inline float fma_rn(float a, float b, float c) { return std::fma(a, b, c); }
#endif

// exp(x) in fp32 from fused multiply-adds only (relative error below 2e-7),
// so a vectorising compiler and the GPU compute the same bits as the scalar
// loop. exp(x) is 0 below -87.3 (fp32 normals end there: the softmax terms
// that small do not change a sum of terms >= 1), +inf above 88.7, NaN for NaN.
LUMO_HD inline float exp_fma(float x) {
  const float lo = -87.33654f, hi = 88.72283f;
  const bool nan = !(x == x);
  const bool under = x < lo, over = x > hi;
  x = under ? 0.0f : (over ? 0.0f : (nan ? 0.0f : x));
  // n = round(x / ln 2): adding 1.5 * 2^23 rounds to an integer (nearest even).
  const float magic = 12582912.0f;
  const float n = add_rn(add_rn(mul_rn(x, 1.44269504088896341f), magic), -magic);
  float r = fma_rn(-n, 0.693359375f, x);  // ln 2 in two parts: exact n * hi
  r = fma_rn(-n, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fma_rn(p, r, 1.3981999507e-3f);
  p = fma_rn(p, r, 8.3334519073e-3f);
  p = fma_rn(p, r, 4.1665795894e-2f);
  p = fma_rn(p, r, 1.6666665459e-1f);
  p = fma_rn(p, r, 5.0000001201e-1f);
  const float y = add_rn(fma_rn(p, mul_rn(r, r), r), 1.0f);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  const float out = mul_rn(y, scale);
  return nan ? NAN : (under ? 0.0f : (over ? INFINITY : out));
}

// The additive column term of global column `col`: -inf when it is masked
// (`masked` holds `num_masked` sorted half-open [start, stop) pairs) or past
// the table (`valid` false), else its bias (0 without one).
LUMO_HD inline float column_term(int64_t col, bool valid, float bias, const int64_t* masked,
                                 int64_t num_masked) {
  if (!valid) return -INFINITY;
  for (int64_t i = 0; i < num_masked; ++i) {
    if (col >= masked[2 * i] && col < masked[2 * i + 1]) return -INFINITY;
  }
  return bias;
}

// The online log-sum-exp step of one token over one super-tile: the new
// running max, and the factor that rescales what was summed before it
// (0 while every column so far was -inf; exp(0) = 1 exactly).
LUMO_HD inline float rescale_factor(float m_old, float m_new) {
  return m_new == -INFINITY ? 1.0f : exp_fma(add_rn(m_old, -m_new));
}

}  // namespace rows_ce
}  // namespace lumo

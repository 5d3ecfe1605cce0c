// VQ arithmetic shared by the CPU and CUDA kernels (and so covered by the CPU tests).
//
// The contract (python/lumo_uti/ops/vq_reference.py, docs/ops_vq.md): inputs
// become fp32; norms and dot products are sums of fp32 products in the order
// d = 0..D-1 with every product and sum rounded (no FMA); the ranking key is
// score = cn - (dot + dot); the code is the lowest index of the smallest key.
// Because every path computes the same rounded values, codes agree exactly
// across the reference, the CPU kernel (any SIMD width, thread count or split)
// and the CUDA kernel.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace lumo {
namespace vq {

// Element types the kernels read (the Python front passes the matching code).
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

LUMO_HD inline float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// IEEE binary16 -> fp32, exact (subnormals, infinities and NaN included).
LUMO_HD inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_to_float(sign);
  // Subnormal: value = mant * 2^-24, exact in fp32.
  const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

// bfloat16 -> fp32: the upper half of the fp32 bit pattern, exact.
LUMO_HD inline float bf16_bits_to_float(uint16_t b) {
  return bits_to_float(static_cast<uint32_t>(b) << 16);
}

// Element i of a buffer of `dtype` as fp32.
LUMO_HD inline float load_as_float(const void* p, int dtype, int64_t i) {
  if (dtype == kF16) return half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  if (dtype == kBF16) return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

// Rounded fp32 product and sum that the compiler may not fuse into an FMA
// (nvcc contracts a*b+c by default; the intrinsics forbid it).
LUMO_HD inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

LUMO_HD inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

LUMO_HD inline float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// sqnorm(v) for fp32 v[0..d).
LUMO_HD inline float sqnorm_seq(const float* v, int64_t d) {
  float acc = 0.0f;
  for (int64_t j = 0; j < d; ++j) acc = add_rn(acc, mul_rn(v[j], v[j]));
  return acc;
}

// sqnorm of row `row` of a [*, d] buffer of `dtype`.
LUMO_HD inline float sqnorm_seq_typed(const void* v, int dtype, int64_t row, int64_t d) {
  float acc = 0.0f;
  for (int64_t j = 0; j < d; ++j) {
    const float e = load_as_float(v, dtype, row * d + j);
    acc = add_rn(acc, mul_rn(e, e));
  }
  return acc;
}

// score = cn - (dot + dot); dot + dot is exact, so one rounding.
LUMO_HD inline float score_from_dot(float cn, float dot) { return sub_rn(cn, add_rn(dot, dot)); }

// (a_val, a_idx) comes before (b_val, b_idx): smaller value, then lower index.
// A strict total order on the pairs, so any reduction tree picks the same one.
LUMO_HD inline bool pair_less(float a_val, int64_t a_idx, float b_val, int64_t b_idx) {
  return a_val < b_val || (a_val == b_val && a_idx < b_idx);
}

}  // namespace vq
}  // namespace lumo

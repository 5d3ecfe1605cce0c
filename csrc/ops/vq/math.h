// VQ arithmetic shared by the CPU and CUDA kernels (and so covered by the CPU tests).
//
// The contract (python/lumo_uti/ops/reference/vq.py, docs/ops_vq.md): inputs
// become fp32; norms and dot products are sums of fp32 products in the order
// d = 0..D-1 with every product and sum rounded (no FMA); the ranking key is
// score = cn - (dot + dot); the code is the lowest index of the smallest key.
// Because every path computes the same rounded values, codes agree exactly
// across the reference, the CPU kernel (any SIMD width, thread count or split)
// and the CUDA kernel.
#pragma once

#include <cstdint>
#include <cstring>

#include "abi/dtype.h"
#include "abi/hd.h"

namespace lumo {
namespace vq {

using ::lumo::dtype::bits_to_float;

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
    const float e = load_float(v, static_cast<DType>(dtype), row * d + j);
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

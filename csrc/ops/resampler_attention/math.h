// Math shared by the CPU and CUDA resampler-attention kernels (LUMO_HD).
//
// exp for softmax arguments and the log-sum-exp merge of two partial softmax
// blocks (element loads and stores are abi/dtype.h's). Compiled into the CPU
// module, so the CPU tests exercise it too.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "abi/dtype.h"
#include "abi/hd.h"

namespace lumo {
namespace resampler {

using ::lumo::load;
using ::lumo::store;
using ::lumo::dtype::bits_to_float;

// exp(x) for x <= 0 (softmax arguments: a score minus a running max or the
// log-sum-exp): Cephes' expf polynomial, within 2 ulp of expf, 0 below -87.3.
// Branch-free so that the CPU loops vectorise; the same code on every ISA and
// on the GPU gives the same bits (no FMA contraction in ISO C++ builds).
// NaN gives NaN and x > 89 gives +inf; the argument is clamped to
// [-87.3, 89] first, so the float-to-int conversion below is always defined.
LUMO_HD inline float exp_nonpos(float x) {
  const float upper = x > 89.0f ? 89.0f : x;
  const float clamped = upper >= -87.3f ? upper : -87.3f;  // NaN -> -87.3
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (exact for |v| < 2^22).
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  // n <= 128: 2^128 is +inf, the right answer above ln(FLT_MAX).
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  const float e = y * scale;
  return x < -87.3f ? 0.0f : (x == x ? e : x);
}

// Partial softmax over one key block: running max m and sum l of exp(s - m).
// An empty block has m = -inf, l = 0; a block with a NaN score has m = l = NaN.
struct Partial {
  float m;
  float l;
};

// Weights (a1, a2) that rescale two partial blocks to their merged max, so that
// merged.l = a1 * p1.l + a2 * p2.l and merged acc = a1 * acc1 + a2 * acc2.
// A NaN block makes everything NaN (the reference's softmax over a NaN score).
LUMO_HD inline Partial merge_weights(Partial p1, Partial p2, float* a1, float* a2) {
  if (p1.m != p1.m || p2.m != p2.m) {
    *a1 = NAN;
    *a2 = NAN;
    return Partial{NAN, NAN};
  }
  const float m = p1.m > p2.m ? p1.m : p2.m;
  if (m == -INFINITY) {  // both blocks empty
    *a1 = 0.0f;
    *a2 = 0.0f;
    return Partial{m, 0.0f};
  }
  *a1 = p1.m == -INFINITY ? 0.0f : expf(p1.m - m);
  *a2 = p2.m == -INFINITY ? 0.0f : expf(p2.m - m);
  return Partial{m, *a1 * p1.l + *a2 * p2.l};
}

// 1 / l of a query row's merged partial, the factor of its output. A row
// always has real keys (its latent keys are never masked), so l == 0 means
// that every score was -inf (inf inputs or an fp32 overflow), and NaN that a
// score was NaN: the reference's probabilities are NaN then, and so is the row.
LUMO_HD inline float row_inverse(Partial p) { return p.l > 0.0f ? 1.0f / p.l : NAN; }

// log-sum-exp of a query row's merged partial; NaN where row_inverse is.
LUMO_HD inline float partial_lse(Partial p) { return p.l > 0.0f ? p.m + logf(p.l) : NAN; }

}  // namespace resampler
}  // namespace lumo

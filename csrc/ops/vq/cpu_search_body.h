// The VQ micro-kernel, written once over a small vector interface and included
// by vq_search.cpp once per instruction set (scalar, AVX2, AVX-512), each time
// inside its own namespace and `#pragma GCC target` region. No include guard
// on purpose. The including file defines before it:
//
//   constexpr int W;            lanes per vector (codes per vector)
//   V, I                        float and int32 vector types
//   vzero, vload, vstore, vbcast, vadd, vmul, vsub, iload, istore, iramp, vupdate,
//   vopaque (makes the compiler forget a vector's value)
//
// Packed codebook layout (PackedCodebook in vq_search.cpp): tiles of T = 2*W
// codes, tile t holds c[t*T + l][j] at tiles[(t*d + j)*T + l], so one code
// vector per (tile, j) is a contiguous load. Lanes past K carry cn = NaN and
// never win (every comparison with NaN is false).
//
// Every (row, code) pair accumulates its dot product in its own lane in the
// order j = 0..d-1 with separate mul and add: the contract's arithmetic, the
// same in every lane, so the SIMD width and blocking never change a score.

// Rows handled together: R rows x 2 vectors = 8 independent add chains, enough
// to cover the add latency; R * 2 accumulators + R * 2 best registers fit in
// the 16 (AVX2) or 32 (AVX-512) vector registers.
constexpr int R = 4;
constexpr int T = 2 * W;

// Running minimum of rows xs[0..R) ([R][d] fp32) against tiles [t0, t1).
// bv/bi: [R][W] lane states (value, code index), read and written back. A lane
// keeps the strictly smaller score, and sees its codes in increasing order, so
// it holds the lowest index among its equal minima.
inline void search_rows(const float* xs, int64_t d, const float* tiles, const float* cn,
                        int64_t t0, int64_t t1, float* bv, int32_t* bi) {
  V best[R];
  I bidx[R];
  for (int r = 0; r < R; ++r) {
    best[r] = vload(bv + r * W);
    bidx[r] = iload(bi + r * W);
  }
  V two = vbcast(2.0f);
  // Hide the constant: the compiler would turn x * 2 back into x + x.
  vopaque(two);
  for (int64_t t = t0; t < t1; ++t) {
    const float* ct = tiles + t * d * T;
    V a0[R], a1[R];
    {  // j = 0: the first product is the sum (0 + p == p, up to the sign of a zero)
      const V c0 = vload(ct);
      const V c1 = vload(ct + W);
      for (int r = 0; r < R; ++r) {
        const V xv = vbcast(xs[r * d]);
        a0[r] = vmul(xv, c0);
        a1[r] = vmul(xv, c1);
      }
    }
    for (int64_t j = 1; j < d; ++j) {
      const V c0 = vload(ct + j * T);
      const V c1 = vload(ct + j * T + W);
      for (int r = 0; r < R; ++r) {
        const V xv = vbcast(xs[r * d + j]);
        a0[r] = vadd(a0[r], vmul(xv, c0));
        a1[r] = vadd(a1[r], vmul(xv, c1));
      }
    }
    const V cn0 = vload(cn + t * T);
    const V cn1 = vload(cn + t * T + W);
    const I i0 = iramp(static_cast<int32_t>(t * T));
    const I i1 = iramp(static_cast<int32_t>(t * T + W));
    // dot * 2 == dot + dot exactly (overflow included); a multiply keeps the
    // adder pipes, the busier ones, free.
    for (int r = 0; r < R; ++r) {
      vupdate(best[r], bidx[r], vsub(cn0, vmul(a0[r], two)), i0);
      vupdate(best[r], bidx[r], vsub(cn1, vmul(a1[r], two)), i1);
    }
  }
  for (int r = 0; r < R; ++r) {
    vstore(bv + r * W, best[r]);
    istore(bi + r * W, bidx[r]);
  }
}

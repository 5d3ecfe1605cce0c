// The screened VQ micro-kernel: FMA scores decide which codes can be skipped,
// the contract's arithmetic decides everything else. Included by cpu.cpp once
// per instruction set with FMA (AVX2+FMA, AVX-512), inside the namespace and
// target region of that set, after cpu_search_body.h (it reuses R, T and the
// vector interface). No include guard on purpose. The including file also
// defines:
//
//   vfma(a, b, c)        a * b + c, one rounding
//   vmin(a, b)           lane minimum, b where either is NaN
//   F, fle(a, b), for2(f, g), fany(f)
//                        lane flags a <= b (false on NaN), their OR, any set
//   hmin(v)              smallest lane
//
// Why it is exact. For a row x and code c let s be the contract's score (the
// sum of rounded products in order d = 0..D-1, no FMA) and a the screening
// score cn + sum_j (-2 x_j) c_j accumulated with FMAs. Both approximate the
// same real number, so |a - s| <= beta, a bound computed from |x|, the largest
// code norm and the largest |cn| of the swept tiles (screen_bounds in cpu.cpp).
// Let E be the row's best exact score so far. Codes come in increasing index
// order, so a later code only wins with s < E, and a > E + beta implies
// s >= a - beta > E. A tile whose every lane has a > E + beta is therefore
// skipped; any other tile is scored again with the contract's arithmetic and
// folded into the row's (value, index) lane state exactly as search_rows does.
// The winning code (and every code tying with it) is never skipped, so the
// result is the exact kernel's, bit for bit; only lanes that never win may
// hold other values. Cost: the exact re-scoring of the tiles that set a new
// minimum (about ln(K / tile) per row for random data) and of near-ties.

// Exact scores of tile ct (codes base..base+T, or with perm the codes
// perm[base..base+T): a codebook packed out of index order) for one row x,
// folded into the row's lane state bv/bi [W]; returns the new best value over
// the lanes. Out of order, a lane also takes an equal score with a lower index.
// Out of line and cold: inlined, the compiler keeps the hot loop's loads
// alive for it (stack spills in every tile).
__attribute__((noinline, cold)) float exact_tile(const float* x, int64_t d, const float* ct, const float* cnt,
                                                 int32_t base, const int32_t* perm, float* bv, int32_t* bi) {
  V two = vbcast(2.0f);
  vopaque(two);
  V a0 = vmul(vbcast(x[0]), vload(ct));
  V a1 = vmul(vbcast(x[0]), vload(ct + W));
  for (int64_t j = 1; j < d; ++j) {
    const V xv = vbcast(x[j]);
    a0 = vadd(a0, vmul(xv, vload(ct + j * T)));
    a1 = vadd(a1, vmul(xv, vload(ct + j * T + W)));
  }
  V best = vload(bv);
  I bidx = iload(bi);
  if (perm == nullptr) {
    vupdate(best, bidx, vsub(vload(cnt), vmul(a0, two)), iramp(base));
    vupdate(best, bidx, vsub(vload(cnt + W), vmul(a1, two)), iramp(base + W));
  } else {
    vupdate_pair(best, bidx, vsub(vload(cnt), vmul(a0, two)), iload(perm + base));
    vupdate_pair(best, bidx, vsub(vload(cnt + W), vmul(a1, two)), iload(perm + base + W));
  }
  vstore(bv, best);
  istore(bi, bidx);
  return hmin(best);
}

// search_rows for a codebook packed out of index order: every tile scored
// with the contract's arithmetic, lanes carrying the codes' own indices (the
// rows a screen cannot take, which are rare: values near overflow).
inline void exact_rows_perm(const float* xs, int64_t d, const float* tiles, const float* cn, int64_t t0,
                            int64_t t1, float* bv, int32_t* bi, const int32_t* perm) {
  for (int64_t t = t0; t < t1; ++t) {
    for (int r = 0; r < R; ++r) {
      exact_tile(xs + r * d, d, tiles + t * d * T, cn + t * T, static_cast<int32_t>(t * T), perm, bv + r * W,
                 bi + r * W);
    }
  }
}

// The re-scoring is deferred, as in cpu_iscreen_body.h. A tile with a lane at
// or below the threshold goes on its row's list, and the threshold drops to
// the tile's smallest screening score a_m plus 2 beta: the code scoring a_m
// has s_m <= a_m + beta, so a winner w (s_w <= s_m) has a_w <= a_m + 2 beta.
// At the end (or when a list is full) the listed tiles still at or below the
// threshold are scored exactly, in the order listed; lanes fold codes in
// increasing index order within a sweep, so ties still keep the lowest index.

// Threshold of a row whose best exact score is e: codes with a screening
// score above it cannot win. The sum e + beta is rounded; the |e| term covers
// that rounding (beta > 0, so e + beta rounds to at most one ulp below).
inline float screen_threshold(float e, float beta) {
  return e + (beta + std::fabs(e) * 2.4e-7f);
}

// As search_rows, for RR rows xs ([RR][d] fp32), with xn2 [RR][d] = -2 * xs
// (exact) and beta [RR] the rows' bounds (finite). DC > 0: d == DC, known at
// compile time (the loops unroll). perm: as exact_tile.
template <int DC, int RR>
inline void screen_rows_t(const float* xs, const float* xn2, int64_t d_rt, const float* tiles, const float* cn,
                          int64_t t0, int64_t t1, float* bv, int32_t* bi, const float* beta, const int32_t* perm) {
  const int64_t d = DC > 0 ? DC : d_rt;
  float thr_s[RR];
  V thr[RR];
  vqi::DeferredTiles<float, RR> deferred;
  for (int r = 0; r < RR; ++r) {
    thr_s[r] = screen_threshold(hmin(vload(bv + r * W)), beta[r]);
    thr[r] = vbcast(thr_s[r]);
  }
  auto rescore = [&](int r) {
    deferred.drain(r, thr_s[r], [&](int64_t t) {
      const float e = exact_tile(xs + r * d, d, tiles + t * d * T, cn + t * T, static_cast<int32_t>(t * T), perm,
                                 bv + r * W, bi + r * W);
      return screen_threshold(e, beta[r]);
    });
    thr[r] = vbcast(thr_s[r]);
  };
  for (int64_t t = t0; t < t1; ++t) {
    const float* ct = tiles + t * d * T;
    V a0[RR], a1[RR];
    {
      const V c0 = vload(ct), c1 = vload(ct + W);
      const V cn0 = vload(cn + t * T), cn1 = vload(cn + t * T + W);
      for (int r = 0; r < RR; ++r) {
        const V xv = vbcast(xn2[r * d]);
        a0[r] = vfma(xv, c0, cn0);
        a1[r] = vfma(xv, c1, cn1);
      }
    }
    for (int64_t j = 1; j < d; ++j) {
      const V c0 = vload(ct + j * T), c1 = vload(ct + j * T + W);
      for (int r = 0; r < RR; ++r) {
        const V xv = vbcast(xn2[r * d + j]);
        a0[r] = vfma(xv, c0, a0[r]);
        a1[r] = vfma(xv, c1, a1[r]);
      }
    }
    // vmin(a1, a0): a NaN lane of a1 (a padding code past k) yields a0's lane.
    F hit = fle(vmin(a1[0], a0[0]), thr[0]);
    for (int r = 1; r < RR; ++r) hit = for2(hit, fle(vmin(a1[r], a0[r]), thr[r]));
    if (__builtin_expect(fany(hit), 0)) {
      for (int r = 0; r < RR; ++r) {
        const V m = vmin(a1[r], a0[r]);
        if (!fany(fle(m, thr[r]))) continue;
        if (deferred.full(r)) rescore(r);
        const float a_m = hmin(m);  // NaN only when every lane is padding: never lowers the threshold
        deferred.add(r, t, a_m);
        const float w = screen_threshold(a_m, 2.0f * beta[r]);
        if (w < thr_s[r]) {
          thr_s[r] = w;
          thr[r] = vbcast(w);
        }
      }
    }
  }
  for (int r = 0; r < RR; ++r) rescore(r);
}

inline void screen_rows(const float* xs, const float* xn2, int64_t d, const float* tiles, const float* cn,
                        int64_t t0, int64_t t1, float* bv, int32_t* bi, const float* beta, const int32_t* perm) {
  switch (d) {
    case 4: return screen_rows_t<4, R>(xs, xn2, d, tiles, cn, t0, t1, bv, bi, beta, perm);
    case 8: return screen_rows_t<8, R>(xs, xn2, d, tiles, cn, t0, t1, bv, bi, beta, perm);
    case 16: return screen_rows_t<16, R>(xs, xn2, d, tiles, cn, t0, t1, bv, bi, beta, perm);
    default: return screen_rows_t<0, R>(xs, xn2, d, tiles, cn, t0, t1, bv, bi, beta, perm);
  }
}

// screen_rows for 6 rows at a time (the arrays hold 6 rows): 12 accumulators
// share each code vector, which measured faster at D >= 8 (kScreen6MinD in
// cpu_internal.h has the figures).
inline void screen_rows6(const float* xs, const float* xn2, int64_t d, const float* tiles, const float* cn,
                         int64_t t0, int64_t t1, float* bv, int32_t* bi, const float* beta, const int32_t* perm) {
  switch (d) {
    case 8: return screen_rows_t<8, 6>(xs, xn2, d, tiles, cn, t0, t1, bv, bi, beta, perm);
    case 16: return screen_rows_t<16, 6>(xs, xn2, d, tiles, cn, t0, t1, bv, bi, beta, perm);
    default: return screen_rows_t<0, 6>(xs, xn2, d, tiles, cn, t0, t1, bv, bi, beta, perm);
  }
}

// The integer-screened VQ micro-kernel (D <= kIntScreenMaxD): int16 copies of
// the codes and rows give screening scores at two to four times the rate of
// fp32 FMAs; the contract's arithmetic still decides every code that can win.
// Included by cpu.cpp once per instruction set that has it (AVX2; AVX-512 with
// BW, with or without VNNI), after cpu_screen_body.h (it reuses T, W, R,
// hmin and exact_tile), inside that set's namespace and target region. No
// include guard on purpose. The including file also defines:
//
//   IV                       int32 vector of W lanes
//   ivload(p), ivbcast(i)    load W int32, broadcast one
//   ivdot2(acc, x, c)        acc + (x.lo16 * c.lo16 + x.hi16 * c.hi16) per int32 lane
//   ivmin(a, b)              lane minimum
//   IM, ivgt(a, b), imand(f, g), iall(f)
//                            lane flags a > b, their AND, all lanes set
//
// Why it is exact. Codes are quantised once, c_j = s_c (q_j + f_j), and the
// rows of a call with one scale s_x, -2 x_j = s_x (p_j + e_j), |e_j|, |f_j| <=
// 1/2 (int_row_bounds in cpu.cpp; |p|, |q| <= kIntQ). With u = s_x s_c the
// integer score A = round(cn / u) + sum_j p_j q_j is exact (no overflow:
// |A| < 2^30) and |u A - (cn - 2 x.c)| <= u B for the row's B = 1/2 +
// (|p|_1 + max |q|_1) / 2 + d / 4 (+ margins). The contract's score s is
// within beta (screen_bounds) of cn - 2 x.c, so A > (E + beta) / u + B
// implies s > E for the row's best exact score E: such codes cannot win and
// cannot tie. Lanes whose norm term would exceed 2^29 are clamped down (only
// more re-scoring); padding lanes hold 2^30 (never below a threshold but
// INT32_MAX, and exact_tile ignores them). Every tile with a lane at or below
// the threshold is scored again exactly, as in cpu_screen_body.h, so the
// result is the exact kernel's, bit for bit.

// The integer threshold of a row whose best exact score is e (+inf at first:
// every tile is then re-scored until one sets a finite e).
inline int32_t int_threshold(float e, float beta, double b_int, double u) {
  if (!(e < std::numeric_limits<float>::infinity())) return std::numeric_limits<int32_t>::max();
  double t = (static_cast<double>(e) + static_cast<double>(beta)) / u + b_int;
  t += std::fabs(t) * 1e-9 + 1.0;  // the double rounding of the lines above
  if (t >= 2147483647.0) return std::numeric_limits<int32_t>::max();
  if (t <= -2147483648.0) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(std::floor(t));
}

// Rows xs [R][d] (fp32, for the exact re-scoring) with xq [R][P] their
// quantised pairs, against tiles [t0, t1): fp32 tiles/cn for the exact part,
// itiles [ntiles][P][T] and cnq [ntiles * T] (the norm terms in units of u)
// for the screen. bv/bi as search_rows; beta/b_int [R] the rows' bounds.
template <int P>
inline void iscreen_rows_t(const float* xs, const int32_t* xq, int64_t d, const float* tiles, const float* cn,
                           const int32_t* itiles, const int32_t* cnq, int64_t t0, int64_t t1, float* bv,
                           int32_t* bi, const float* beta, const double* b_int, double u) {
  IV thr[R];
  for (int r = 0; r < R; ++r) thr[r] = ivbcast(int_threshold(hmin(vload(bv + r * W)), beta[r], b_int[r], u));
  for (int64_t t = t0; t < t1; ++t) {
    const int32_t* ct = itiles + t * P * T;
    IV a0[R], a1[R];
    {
      const IV n0 = ivload(cnq + t * T), n1 = ivload(cnq + t * T + W);
      for (int r = 0; r < R; ++r) {
        a0[r] = n0;
        a1[r] = n1;
      }
    }
    for (int j = 0; j < P; ++j) {
      const IV c0 = ivload(ct + j * T), c1 = ivload(ct + j * T + W);
      for (int r = 0; r < R; ++r) {
        const IV xv = ivbcast(xq[r * P + j]);
        a0[r] = ivdot2(a0[r], xv, c0);
        a1[r] = ivdot2(a1[r], xv, c1);
      }
    }
    // Skip the tile when every lane of every row is above its threshold.
    IM above = ivgt(ivmin(a0[0], a1[0]), thr[0]);
    for (int r = 1; r < R; ++r) above = imand(above, ivgt(ivmin(a0[r], a1[r]), thr[r]));
    if (__builtin_expect(!iall(above), 0)) {
      for (int r = 0; r < R; ++r) {
        if (iall(ivgt(ivmin(a0[r], a1[r]), thr[r]))) continue;
        const float e = exact_tile(xs + r * d, d, tiles + t * d * T, cn + t * T, static_cast<int32_t>(t * T),
                                   bv + r * W, bi + r * W);
        thr[r] = ivbcast(int_threshold(e, beta[r], b_int[r], u));
      }
    }
  }
}

inline void iscreen_rows(const float* xs, const int32_t* xq, int64_t d, const float* tiles, const float* cn,
                         const int32_t* itiles, const int32_t* cnq, int64_t t0, int64_t t1, float* bv, int32_t* bi,
                         const float* beta, const double* b_int, double u) {
  switch ((d + 1) / 2) {
#define LUMO_VQ_ISCREEN_CASE(P) \
  case P: return iscreen_rows_t<P>(xs, xq, d, tiles, cn, itiles, cnq, t0, t1, bv, bi, beta, b_int, u);
    LUMO_VQ_ISCREEN_CASE(1)
    LUMO_VQ_ISCREEN_CASE(2)
    LUMO_VQ_ISCREEN_CASE(3)
    LUMO_VQ_ISCREEN_CASE(4)
    LUMO_VQ_ISCREEN_CASE(5)
    LUMO_VQ_ISCREEN_CASE(6)
    LUMO_VQ_ISCREEN_CASE(7)
    LUMO_VQ_ISCREEN_CASE(8)
#undef LUMO_VQ_ISCREEN_CASE
    default: return;  // the caller never passes d > kIntScreenMaxD
  }
}

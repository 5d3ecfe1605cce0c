// The integer-screened VQ micro-kernel: int16 copies of
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
//   ihmin(a)                 smallest lane
//   IM, ivgt(a, b), imand(f, g), iall(f)
//                            lane flags a > b, their AND, all lanes set
//
// Why it is exact. Codes of scale group g are quantised once, c_j = s_g (q_j +
// f_j), and the rows of a call with one scale s_x, -2 x_j = s_x (p_j + e_j),
// |e_j|, |f_j| <= 1/2 (int_row_bounds in cpu.cpp; |p|, |q| <= int_screen_q(d)).
// With u = s_x s_g the integer score A = round(cn / u) + sum_j p_j q_j is exact
// (no overflow: |A| < 2^30) and |u A - (cn - 2 x.c)| <= u B for the row's B =
// 1/2 + (|p|_1 + the group's max |q|_1) / 2 + d / 4 (+ margins; b_row the row's
// part, b_code the group's). The contract's score s is within beta
// (screen_bounds) of cn - 2 x.c, so A > (U + beta) / u + B implies s > U for
// any U at or above the row's best exact score E: such codes cannot win and
// cannot tie. Lanes whose norm term would exceed 2^29 are clamped down (only
// more re-scoring); padding lanes hold 2^30 (never below a threshold but
// INT32_MAX, and exact_tile ignores them). Every tile with a lane at or below
// the threshold is scored again exactly, as in cpu_screen_body.h, so the
// result is the exact kernel's, bit for bit.

// The integer threshold, in units of u = 1 / inv_u, of a row whose best exact
// score is at most ub (+inf at first: every tile is then re-scored until one
// sets a finite bound); b the row's bound B in those units.
inline int32_t int_threshold(double ub, float beta, double b, double inv_u) {
  if (!(ub < std::numeric_limits<double>::infinity())) return std::numeric_limits<int32_t>::max();
  double t = (ub + static_cast<double>(beta)) * inv_u + b;
  t += std::fabs(t) * 1e-9 + 1.0;  // the double rounding of the lines above
  if (t >= 2147483647.0) return std::numeric_limits<int32_t>::max();
  if (t <= -2147483648.0) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(std::floor(t));
}

// Rows xs [R][d] (fp32, for the exact re-scoring) with xq [R][P] their
// quantised pairs, against tiles [t0, t1): fp32 tiles/cn for the exact part,
// ia (itiles [ntiles][P][T], the norm terms and the groups' scales) for the
// screen. bv/bi as search_rows; beta/b_row [R] the rows' bounds. PC > 0: P = PC
// pairs, known at compile time (the loops unroll). RR rows.
//
// Each row keeps ub, an upper bound on its best exact score, in real units:
// its best exact score so far, lowered by the tiles it defers. A tile with a
// lane at or below the threshold goes on its row's list, and ub drops to
// u (A_m + B) + beta for the tile's smallest integer score A_m: the code c_m
// scoring A_m has s_m <= u (A_m + B) + beta, so the winner has s_w <= s_m.
// The threshold is converted from ub once a scale group and whenever ub
// moves. At the end (or when a list is full) the listed tiles still at or
// below their group's threshold are scored exactly, in code order. Most early
// tiles of a sweep are then never re-scored, and the exact scores still see
// every code that can win or tie. A group whose norm terms were clamped never
// lowers ub (u_window 0): such a lane's A_m is below its true score. Padding
// lanes (2^30) are never a tile's A_m: every tile holds a code, and codes score
// below 2^30.
//
// Group skipping (ia.norm_lo set: a norm-ordered codebook with computed
// norms). A code c of the group has |x - c| >= gap, the distance from |x| to
// the group's norm range, and its contract score s >= |x - c|^2 - |x|^2 -
// beta - cn_rel |c|^2 (beta bounds s against cn - 2 x.c; cn_rel the rounding
// of cn against |c|^2). It can win or tie only with s <= ub, so a group with
// gap^2 > ub + |x|^2 + beta + cn_rel hi^2 (+ margins) for every row is
// skipped whole.
template <int PC, int RR>
inline void iscreen_rows_t(const float* xs, const int32_t* xq, int64_t d, const float* tiles, const float* cn,
                           const vqi::IntScreenArgs& ia, int64_t t0, int64_t t1, float* bv, int32_t* bi,
                           const float* beta, const double* b_row, const double* x_norm2, const int32_t* perm) {
  const int64_t P = PC > 0 ? PC : (d + 1) / 2;
  double ub[RR];
  int32_t thr_s[RR];
  IV thr[RR];
  int64_t group = -1;  // the scale group the thresholds are in
  vqi::DeferredTiles<int32_t, RR> deferred;
  for (int r = 0; r < RR; ++r) ub[r] = hmin(vload(bv + r * W));
  auto convert = [&](int r, int64_t g) { return int_threshold(ub[r], beta[r], b_row[r] + ia.b_code[g], ia.inv_u[g]); };
  auto set_threshold = [&](int r) {
    thr_s[r] = convert(r, group);
    thr[r] = ivbcast(thr_s[r]);
  };
  auto rescore = [&](int r) {
    deferred.drain_each(r, [&](int32_t t, int32_t a_m) {
      if (a_m > convert(r, t >> vqi::kIntGroupShift)) return;
      const float e = exact_tile(xs + r * d, d, tiles + t * d * T, cn + t * T, static_cast<int32_t>(t * T), perm,
                                 bv + r * W, bi + r * W);
      ub[r] = std::min(ub[r], static_cast<double>(e));
    });
    set_threshold(r);
  };
  auto out_of_reach = [&](int64_t g) {
    const double hi = ia.norm_hi[g];
    for (int r = 0; r < RR; ++r) {
      const double radius = ub[r] + x_norm2[r] + static_cast<double>(beta[r]) + ia.cn_rel * hi * hi;
      if (!(radius < std::numeric_limits<double>::infinity())) return false;
      const double xr = std::sqrt(x_norm2[r]);
      const double gap = std::max(ia.norm_lo[g] - xr, xr - hi) - 1e-9 * (xr + hi);  // margin: sqrt, subtraction
      if (!(gap > 0.0) || !(gap * gap > radius + std::fabs(radius) * 1e-9)) return false;
    }
    return true;
  };
  for (int64_t t = t0; t < t1; ++t) {
    if ((t >> vqi::kIntGroupShift) != group) {
      group = t >> vqi::kIntGroupShift;
      if (ia.norm_lo != nullptr && out_of_reach(group)) {
        t = std::min(t1, (group + 1) << vqi::kIntGroupShift) - 1;  // the whole group (group stays: no thresholds)
        continue;
      }
      for (int r = 0; r < RR; ++r) set_threshold(r);
    }
    const int32_t* ct = ia.itiles + t * P * T;
    IV a0[RR], a1[RR];
    {
      const IV n0 = ivload(ia.cnq + t * T), n1 = ivload(ia.cnq + t * T + W);
      for (int r = 0; r < RR; ++r) {
        a0[r] = n0;
        a1[r] = n1;
      }
    }
    for (int64_t j = 0; j < P; ++j) {
      const IV c0 = ivload(ct + j * T), c1 = ivload(ct + j * T + W);
      for (int r = 0; r < RR; ++r) {
        const IV xv = ivbcast(xq[r * P + j]);
        a0[r] = ivdot2(a0[r], xv, c0);
        a1[r] = ivdot2(a1[r], xv, c1);
      }
    }
    // Skip the tile when every lane of every row is above its threshold.
    IM above = ivgt(ivmin(a0[0], a1[0]), thr[0]);
    for (int r = 1; r < RR; ++r) above = imand(above, ivgt(ivmin(a0[r], a1[r]), thr[r]));
    if (__builtin_expect(!iall(above), 0)) {
      const double u = ia.u_window[group];
      for (int r = 0; r < RR; ++r) {
        const IV m = ivmin(a0[r], a1[r]);
        if (iall(ivgt(m, thr[r]))) continue;
        if (deferred.full(r)) rescore(r);
        const int32_t a_m = ihmin(m);
        deferred.add(r, t, a_m);
        if (u > 0.0) {
          const double v = u * (static_cast<double>(a_m) + b_row[r] + ia.b_code[group]);
          const double bound = v + static_cast<double>(beta[r]) + (std::fabs(v) + beta[r]) * 1e-9;
          if (bound < ub[r]) {
            ub[r] = bound;
            set_threshold(r);
          }
        }
      }
    }
  }
  for (int r = 0; r < RR; ++r) rescore(r);
}

inline void iscreen_rows(const float* xs, const int32_t* xq, int64_t d, const float* tiles, const float* cn,
                         const vqi::IntScreenArgs& ia, int64_t t0, int64_t t1, float* bv, int32_t* bi,
                         const float* beta, const double* b_row, const double* x_norm2, const int32_t* perm) {
  switch ((d + 1) / 2) {
#define LUMO_VQ_ISCREEN_CASE(P) \
  case P: return iscreen_rows_t<P, R>(xs, xq, d, tiles, cn, ia, t0, t1, bv, bi, beta, b_row, x_norm2, perm);
    LUMO_VQ_ISCREEN_CASE(1)
    LUMO_VQ_ISCREEN_CASE(2)
    LUMO_VQ_ISCREEN_CASE(3)
    LUMO_VQ_ISCREEN_CASE(4)
    LUMO_VQ_ISCREEN_CASE(5)
    LUMO_VQ_ISCREEN_CASE(6)
    LUMO_VQ_ISCREEN_CASE(7)
    LUMO_VQ_ISCREEN_CASE(8)
#undef LUMO_VQ_ISCREEN_CASE
    default: return iscreen_rows_t<0, R>(xs, xq, d, tiles, cn, ia, t0, t1, bv, bi, beta, b_row, x_norm2, perm);
  }
}

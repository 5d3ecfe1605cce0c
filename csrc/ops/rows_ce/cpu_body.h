// Rows-CE micro-kernels, written once over a small vector interface and
// included by cpu.cpp once per instruction set (scalar, AVX2, AVX-512), each
// time inside its own namespace and target region. No include guard on
// purpose. The including file defines W (lanes, W divides kPanel), SV (most
// vectors per score-tile row), CV (most vectors per gemm-tile row), V and
// vzero, vload, vstore, vbcast, vadd, vsub, vmul, vfma (a * b + c, one
// rounding) and vexp (math.h's exp_fma per lane, the same bits).
//
// Every output element accumulates its products in its own lane, in order of
// the reduced index, with a fused multiply-add: the SIMD width and the
// register blocking never change a bit, so every ISA gives the same output.

constexpr int R = 4;  // rows of a register tile

// s[r * lds + c] += ... for c < NV * W: an [R x NV * W] block of dot products
// against the panel columns at kc (row stride P).
// With `more`, s holds the sums over the dimensions before these (the fma
// chain continues from them, exactly) and the block adds to it.
template <int NV>
inline void score_block(const float* q, int64_t ldq, const float* kc, int64_t D, float* s, int64_t lds, bool more) {
  constexpr int64_t P = ::lumo::rows_ce::kPanel;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = more ? vload(s + r * lds + v * W) : vzero();
  for (int64_t d = 0; d < D; ++d) {
    V kv[NV];
    for (int v = 0; v < NV; ++v) kv[v] = vload(kc + d * P + v * W);
    for (int r = 0; r < R; ++r) {
      const V a = vbcast(q[r * ldq + d]);
      for (int v = 0; v < NV; ++v) acc[r][v] = vfma(a, kv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) vstore(s + r * lds + v * W, acc[r][v]);
}

// s[r * lds + c] = sum_{d < D} q[r * ldq + d] * kp[d * P + c] for r < R,
// c < P (P = kPanel): a [R x P] block of dot products against one packed
// panel kp: [D, P] (the panel's rows transposed), SV vectors per block (R * SV
// accumulators fill the register file) and the rest of the panel in one
// narrower block.
// (D: the dimensions of this call; kp and q start at the first of them; `more` as score_block.)
inline void score_tile(const float* q, int64_t ldq, const float* kp, int64_t D, float* s, int64_t lds, bool more) {
  constexpr int64_t P = ::lumo::rows_ce::kPanel;
  constexpr int64_t TW = SV * W, kRest = (P % TW) / W;
  static_assert(P % W == 0, "a panel is a whole number of vectors");
  int64_t c0 = 0;
  for (; c0 + TW <= P; c0 += TW) score_block<SV>(q, ldq, kp + c0, D, s + c0, lds, more);
  if constexpr (kRest > 0) score_block<kRest>(q, ldq, kp + c0, D, s + c0, lds, more);
}

// c[i * ldc + x] += sum_{k < K, in order} a[i * as_i + k * as_k] * b[k * ldb + x]
// for i < R and x < NV * W.
template <int NV>
inline void gemm_tile(const float* a, int64_t as_i, int64_t as_k, const float* b, int64_t ldb, int64_t K,
                      float* c, int64_t ldc) {
  V acc[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = vload(c + i * ldc + v * W);
  for (int64_t k = 0; k < K; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = vload(b + k * ldb + v * W);
    for (int i = 0; i < R; ++i) {
      const V av = vbcast(a[i * as_i + k * as_k]);
      for (int v = 0; v < NV; ++v) acc[i][v] = vfma(av, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) vstore(c + i * ldc + v * W, acc[i][v]);
}

// gemm_tile over columns [0, cols) in chunks of CV vectors (CV <= 4); the columns past
// the last whole vector run one lane at a time (the same fma chain per element).
inline void gemm_acc(const float* a, int64_t as_i, int64_t as_k, const float* b, int64_t ldb, int64_t K,
                     float* c, int64_t ldc, int64_t cols) {
  const int64_t nvec = cols / W;
  int64_t x = 0;
  for (; x + CV * W <= nvec * W; x += CV * W) gemm_tile<CV>(a, as_i, as_k, b + x, ldb, K, c + x, ldc);
  // The whole vectors left (fewer than CV) in one narrower tile.
  switch (nvec - x / W) {
    case 3: gemm_tile<3 <= CV ? 3 : 1>(a, as_i, as_k, b + x, ldb, K, c + x, ldc); x += 3 * W; break;
    case 2: gemm_tile<2 <= CV ? 2 : 1>(a, as_i, as_k, b + x, ldb, K, c + x, ldc); x += 2 * W; break;
    case 1: gemm_tile<1>(a, as_i, as_k, b + x, ldb, K, c + x, ldc); x += W; break;
    default: break;
  }
  for (; x < cols; ++x) {
    for (int i = 0; i < R; ++i) {
      float acc = c[i * ldc + x];
      for (int64_t k = 0; k < K; ++k) acc = std::fma(a[i * as_i + k * as_k], b[k * ldb + x], acc);
      c[i * ldc + x] = acc;
    }
  }
}

// The element-wise steps of a row, here so each ISA compiles (and vectorises)
// them in its own target region: a forced ISA then runs its own code. Sums and
// maxima over columns run in kLanes fixed lanes (lane l: the columns j = l mod
// kLanes, in order), then over the lanes in order: the same bits on every ISA.
constexpr int64_t kLanes = 16;

// z[j] += term[j]; returns max_j z[j] (-inf for none).
inline float add_terms_max(float* z, const float* term, int64_t n) {
  float lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = -INFINITY;
  int64_t j0 = 0;
  for (; j0 + kLanes <= n; j0 += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) {
      const float v = z[j0 + l] + term[j0 + l];
      z[j0 + l] = v;
      lanes[l] = lanes[l] > v ? lanes[l] : v;
    }
  for (int64_t j = j0; j < n; ++j) {
    const float v = z[j] + term[j];
    z[j] = v;
    lanes[j - j0] = lanes[j - j0] > v ? lanes[j - j0] : v;
  }
  float mx = -INFINITY;
  for (int64_t l = 0; l < kLanes; ++l) mx = mx > lanes[l] ? mx : lanes[l];
  return mx;
}

// z[j] = exp(z[j] - m); returns the sum of the new z in fixed lanes.
inline float exp_shift_sum(float* z, float m, int64_t n) {
  static_assert(kLanes % W == 0, "a lane group is a whole number of vectors");
  constexpr int kVecs = static_cast<int>(kLanes / W);
  V acc[kVecs];
  for (int v = 0; v < kVecs; ++v) acc[v] = vzero();
  const V vm = vbcast(m);
  int64_t j0 = 0;
  for (; j0 + kLanes <= n; j0 += kLanes)
    for (int v = 0; v < kVecs; ++v) {
      const V p = vexp(vsub(vload(z + j0 + v * W), vm));
      vstore(z + j0 + v * W, p);
      acc[v] = vadd(acc[v], p);
    }
  float lanes[kLanes];
  for (int v = 0; v < kVecs; ++v) vstore(lanes + v * W, acc[v]);
  for (int64_t j = j0; j < n; ++j) {
    const float p = ::lumo::rows_ce::exp_fma(z[j] - m);
    z[j] = p;
    lanes[j - j0] += p;
  }
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

inline void scale_row(float* x, float f, int64_t n) {
  for (int64_t j = 0; j < n; ++j) x[j] *= f;
}

// z[j] = g * (exp(z[j] + term[j] - lse) - [j == target]) (target -1: none).
inline void softmax_grad_row(float* z, const float* term, float lse, float g, int64_t target, int64_t n) {
  const bool hit = target >= 0 && target < n;
  const float zt = hit ? z[target] : 0.0f;
  const V vl = vbcast(lse), vg = vbcast(g);
  int64_t j = 0;
  // p - 0 is p exactly, so only the target's column needs the indicator (below).
  for (; j + W <= n; j += W)
    vstore(z + j, vmul(vg, vexp(vsub(vadd(vload(z + j), vload(term + j)), vl))));
  for (; j < n; ++j) z[j] = g * ::lumo::rows_ce::exp_fma((z[j] + term[j]) - lse);
  if (hit) z[target] = g * (::lumo::rows_ce::exp_fma((zt + term[target]) - lse) - 1.0f);
}

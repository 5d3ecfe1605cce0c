// Resampler-attention micro-kernels, written once over a small vector
// interface and included by cpu.cpp once per instruction set
// (scalar, AVX2, AVX-512), each time inside its own namespace and
// `#pragma GCC target` region. No include guard on purpose. The including
// file defines before it:
//
//   constexpr int W;   lanes per vector
//   constexpr int SV;  vectors per score-tile row (JT = 64 a multiple of SV * W)
//   constexpr int CV;  most vectors per gemm-tile row (R * CV accumulators fit the registers)
//   V                  float vector type
//   vzero, vload, vstore, vbcast, vmul, vfma (a * b + c, one rounding)
//
// Every output element accumulates its products in its own lane, in order of
// the reduced index, with a fused multiply-add (IEEE fma: one rounding, the
// same on every ISA; the scalar path calls std::fma): the SIMD width and the
// register blocking never change a bit of the result, so every ISA gives the
// same output.

constexpr int R = 4;        // rows of a register tile
constexpr int TW = SV * W;  // columns of a score tile

// s[r * lds + c] = scale * sum_{d < D} q[r * ldq + d] * kp[d * JT + c] for
// r < R, c < JT (JT a multiple of TW): a [R x JT] score block against one
// packed key panel kp: [D, JT] (keys transposed).
inline void score_tile(const float* q, int64_t ldq, const float* kp, int64_t JT, int64_t D,
                       float scale, float* s, int64_t lds) {
  for (int64_t c0 = 0; c0 < JT; c0 += TW) {
    V acc[R][SV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < SV; ++v) acc[r][v] = vzero();
    const float* kc = kp + c0;
    for (int64_t d = 0; d < D; ++d) {
      V kv[SV];
      for (int v = 0; v < SV; ++v) kv[v] = vload(kc + d * JT + v * W);
      for (int r = 0; r < R; ++r) {
        const V a = vbcast(q[r * ldq + d]);
        for (int v = 0; v < SV; ++v) acc[r][v] = vfma(a, kv[v], acc[r][v]);
      }
    }
    const V sc = vbcast(scale);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < SV; ++v) vstore(s + r * lds + c0 + v * W, vmul(acc[r][v], sc));
  }
}

// c[i * ldc + x] += sum_{k0 <= k < k1, in order} a[i * as_i + k * as_k] * b[k * ldb + x]
// for i < R and x < NV * W.
template <int NV>
inline void gemm_tile(const float* a, int64_t as_i, int64_t as_k, const float* b, int64_t ldb,
                      int64_t k0, int64_t k1, float* c, int64_t ldc) {
  V acc[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = vload(c + i * ldc + v * W);
  for (int64_t k = k0; k < k1; ++k) {
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

// gemm_tile over columns [0, cols), cols a multiple of W, in column chunks of
// at most CV vectors, as even as possible (96 columns at W = 16: 3 + 3 vectors).
inline void gemm_acc(const float* a, int64_t as_i, int64_t as_k, const float* b, int64_t ldb,
                     int64_t k0, int64_t k1, float* c, int64_t ldc, int64_t cols) {
  const int64_t nvec = cols / W, chunks = (nvec + CV - 1) / CV;
  int64_t x = 0;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t nv = nvec / chunks + (ch < nvec % chunks ? 1 : 0);
    switch (nv) {
      case 4: gemm_tile<4 <= CV ? 4 : 1>(a, as_i, as_k, b + x, ldb, k0, k1, c + x, ldc); break;
      case 3: gemm_tile<3>(a, as_i, as_k, b + x, ldb, k0, k1, c + x, ldc); break;
      case 2: gemm_tile<2>(a, as_i, as_k, b + x, ldb, k0, k1, c + x, ldc); break;
      default: gemm_tile<1>(a, as_i, as_k, b + x, ldb, k0, k1, c + x, ldc); break;
    }
    x += nv * W;
  }
}

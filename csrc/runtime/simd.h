// The vector primitives the CPU kernels are written in, one set per
// instruction set (scalar, avx2, avx512): an op writes its micro-kernel once
// over V, vload, vfma, ... and compiles it in each of its own namespaces
// scalar / avx2 / avx512 after `using namespace simd::<isa>;`.
//
// Every primitive is one instruction (or a fixed sequence) with the same
// per-lane IEEE result on every ISA, so a kernel that sums in the same order
// gives the same bits on every ISA. Include this after LUMO_FP_CONTRACT_OFF
// (runtime/isa_target.h) so that these functions are compiled under the same
// contraction setting as the kernels that inline them. The avx2 FMA-based
// primitives need target "avx2,fma" in the calling region; AVX2 code that
// must never fuse compiles under plain "avx2", where calling them fails to
// compile.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/isa_target.h"

#ifdef LUMO_X86
#include <immintrin.h>
#endif

namespace lumo {
namespace simd {

namespace scalar {
constexpr int W = 1;
using V = float;
using I = int32_t;
inline V vzero() { return 0.0f; }
inline V vload(const float* p) { return *p; }
inline void vstore(float* p, V v) { *p = v; }
inline V vbcast(float f) { return f; }
inline V vadd(V a, V b) { return a + b; }
inline V vmul(V a, V b) { return a * b; }
inline V vsub(V a, V b) { return a - b; }
inline V vfma(V a, V b, V c) { return std::fma(a, b, c); }
inline I iload(const int32_t* p) { return *p; }
inline void istore(int32_t* p, I v) { *p = v; }
inline I iramp(int32_t base) { return base; }
// Keeps (bv, bi) at the smaller score; a tie keeps the earlier index.
inline void vupdate(V& bv, I& bi, V s, I idx) {
  if (s < bv) {
    bv = s;
    bi = idx;
  }
}
// A barrier that stops the compiler from reassociating across it.
inline void vopaque(V&) {}
}  // namespace scalar

#ifdef LUMO_X86

LUMO_TARGET_PUSH("avx2")
namespace avx2 {
constexpr int W = 8;
using V = __m256;
using I = __m256i;
using F = __m256;  // lane flags
inline V vzero() { return _mm256_setzero_ps(); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V vbcast(float f) { return _mm256_set1_ps(f); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }
inline I iload(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void istore(int32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
inline I iramp(int32_t base) {
  return _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline void vupdate(V& bv, I& bi, V s, I idx) {
  const V m = _mm256_cmp_ps(s, bv, _CMP_LT_OQ);
  bv = _mm256_blendv_ps(bv, s, m);
  bi = _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(idx), m));
}
// vupdate for codes seen out of index order: a lane also takes an equal
// score with a lower index.
inline void vupdate_pair(V& bv, I& bi, V s, I idx) {
  const V lt = _mm256_cmp_ps(s, bv, _CMP_LT_OQ);
  const V eq = _mm256_and_ps(_mm256_cmp_ps(s, bv, _CMP_EQ_OQ), _mm256_castsi256_ps(_mm256_cmpgt_epi32(bi, idx)));
  const V m = _mm256_or_ps(lt, eq);
  bv = _mm256_blendv_ps(bv, s, m);
  bi = _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(idx), m));
}
inline void vopaque(V& v) { asm("" : "+x"(v)); }
inline F fle(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
inline F for2(F f, F g) { return _mm256_or_ps(f, g); }
inline bool fany(F f) { return _mm256_movemask_ps(f) != 0; }
inline float hmin(V v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
}  // namespace avx2
LUMO_TARGET_POP

LUMO_TARGET_PUSH("avx2,fma")
namespace avx2 {
inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
}  // namespace avx2
LUMO_TARGET_POP

LUMO_TARGET_PUSH("avx512f")
namespace avx512 {
constexpr int W = 16;
using V = __m512;
using I = __m512i;
using F = __mmask16;  // lane flags
inline V vzero() { return _mm512_setzero_ps(); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V vbcast(float f) { return _mm512_set1_ps(f); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline I iload(const int32_t* p) { return _mm512_loadu_si512(p); }
inline void istore(int32_t* p, I v) { _mm512_storeu_si512(p, v); }
inline I iramp(int32_t base) {
  return _mm512_add_epi32(_mm512_set1_epi32(base),
                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
inline void vupdate(V& bv, I& bi, V s, I idx) {
  const __mmask16 m = _mm512_cmp_ps_mask(s, bv, _CMP_LT_OQ);
  bv = _mm512_mask_mov_ps(bv, m, s);
  bi = _mm512_mask_mov_epi32(bi, m, idx);
}
// vupdate for codes seen out of index order: a lane also takes an equal
// score with a lower index.
inline void vupdate_pair(V& bv, I& bi, V s, I idx) {
  const __mmask16 m = _mm512_cmp_ps_mask(s, bv, _CMP_LT_OQ) |
                      (_mm512_cmp_ps_mask(s, bv, _CMP_EQ_OQ) & _mm512_cmpgt_epi32_mask(bi, idx));
  bv = _mm512_mask_mov_ps(bv, m, s);
  bi = _mm512_mask_mov_epi32(bi, m, idx);
}
inline void vopaque(V& v) { asm("" : "+v"(v)); }
inline F fle(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
inline F for2(F f, F g) { return static_cast<F>(f | g); }
inline bool fany(F f) { return f != 0; }
inline float hmin(V v) {
  const __m256 h = _mm256_min_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
}  // namespace avx512
LUMO_TARGET_POP

#endif  // LUMO_X86

}  // namespace simd
}  // namespace lumo

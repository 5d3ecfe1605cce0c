// CPU VQ kernels: packing and the fused nearest-code search (no N x K matrix).
//
// Plan: the codebook is converted to fp32 and packed into tiles of 2*W codes
// laid out [tile][d][2W] (W = SIMD lanes), so the micro-kernel
// (cpu_search_body.h) loads one code vector per dimension and broadcasts the
// row value. Rows are processed in blocks of 64 (converted to fp32 in a
// thread-local tile), codes in blocks of about 128 KiB of packed data that stay
// in L2 while the row blocks sweep them: tiny D keeps the whole working set in
// registers and L1, large D reuses each code block across 64 rows. Extra
// memory: the packed codebook (K*D fp32, kept per calling thread between calls
// up to kKeepBytes, so repeated calls do not fault fresh pages in) plus
// O(rows) per thread. A codebook packed ahead (vq_pack) may hold its codes in
// norm order for the integer screen (order_by_norm); every kernel then reads
// the lanes' own code indices. Threads take row blocks (smaller ones for few
// rows of a packed codebook, or, for fewer, chunks of code tiles, each
// packing the tiles it searches) from an atomic counter;
// every score is computed the same way whatever the split, and the (value,
// index) minimum is a strict total order, so results never depend on the
// thread count or the schedule.
// RVQ lives in cpu_rvq.cpp; shared internals in cpu_internal.h.
#include "ops/vq/cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "abi/checks.h"
#include "ops/vq/math.h"
#include "ops/vq/cpu_internal.h"
#include "runtime/isa_target.h"

// The contract forbids fusing a*b+c into an FMA. GCC contracts by default in
// C++ (AVX-512F has FMA, so the avx512 region would), Clang within one
// expression: switch contraction off for this file.
LUMO_FP_CONTRACT_OFF
#include "runtime/simd.h"

namespace lumo {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------
// Micro-kernels, one per instruction set.
// ---------------------------------------------------------------------------

namespace scalar {
using namespace simd::scalar;
#include "ops/vq/cpu_search_body.h"
}  // namespace scalar

#ifdef LUMO_X86
#define LUMO_VQ_X86 1

// No "fma" in this target: the compiler then cannot fuse mul and add.
LUMO_TARGET_PUSH("avx2")
namespace avx2 {
using namespace simd::avx2;
#include "ops/vq/cpu_search_body.h"
// Packs a full tile of T = 16 fp32 codes: each half (8 codes) in blocks of 8
// dimensions, read row-wise (prefetch-friendly) and transposed in registers.
inline void transpose8(V r[8]) {
  V t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // u[4i + m], 128-bit lane L: rows 4i..4i+3 at column 4L + m
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {  // r[c]: column c of rows 0..7
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}

inline uint32_t pack_tile_f32(const float* src, const float* next, int64_t d, float* tile, float* norms) {
  uint32_t bad = 0;
  for (int h = 0; h < 2; ++h) {
    const float* rows = src + h * W * d;
    V acc = vzero(), poison = vzero();
    for (int64_t j0 = 0; j0 < d; j0 += W) {
      const int64_t cols = std::min<int64_t>(W, d - j0);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(cols)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      V r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_maskload_ps(rows + i * d + j0, mask);
      if (next != nullptr) {  // the same lines of the next tile: DRAM latency hides behind this one
        for (int i = 0; i < 8; ++i) _mm_prefetch(reinterpret_cast<const char*>(next + (h * W + i) * d + j0), _MM_HINT_T0);
      }
      transpose8(r);
      for (int64_t c = 0; c < cols; ++c) {
        vstore(tile + (j0 + c) * 2 * W + h * W, r[c]);
        acc = vadd(acc, vmul(r[c], r[c]));
        poison = vadd(poison, vmul(r[c], vzero()));  // NaN once any value is inf/NaN
      }
    }
    vstore(norms + h * W, acc);
    bad |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(poison, poison, _CMP_UNORD_Q))) << (h * W);
  }
  return bad;
}
}  // namespace avx2
LUMO_TARGET_POP

LUMO_TARGET_PUSH("avx2,fma")
// The screened kernels need FMA (checked at run time apart from AVX2). Only
// the explicit vfma fuses: contraction stays off in this file.
namespace avx2 {
#include "ops/vq/cpu_screen_body.h"
using IV = __m256i;
using IM = __m256i;
inline IV ivload(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline IV ivbcast(int32_t i) { return _mm256_set1_epi32(i); }
inline IV ivdot2(IV acc, IV x, IV c) { return _mm256_add_epi32(acc, _mm256_madd_epi16(x, c)); }
inline IV ivmin(IV a, IV b) { return _mm256_min_epi32(a, b); }
inline IM ivgt(IV a, IV b) { return _mm256_cmpgt_epi32(a, b); }
inline IM imand(IM f, IM g) { return _mm256_and_si256(f, g); }
inline bool iall(IM f) { return _mm256_movemask_epi8(f) == -1; }
inline int32_t ihmin(IV v) {
  __m128i m = _mm_min_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_min_epi32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_min_epi32(m, _mm_shuffle_epi32(m, 0xB1));
  return _mm_cvtsi128_si32(m);
}
#include "ops/vq/cpu_iscreen_body.h"
}  // namespace avx2
LUMO_TARGET_POP

LUMO_TARGET_PUSH("avx512f")
namespace avx512 {
using namespace simd::avx512;
#include "ops/vq/cpu_search_body.h"
#include "ops/vq/cpu_screen_body.h"
// Packs a full tile of T = 32 fp32 codes: each half (16 codes) in blocks of
// 16 dimensions, read row-wise (prefetch-friendly) and transposed in registers.
inline void transpose16(V r[16]) {
  V t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + m], 128-bit lane L: rows 4i..4i+3 at column 4L + m
    u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {  // a 4 x 4 transpose of 128-bit lanes: r[c] = column c of rows 0..15
    const V v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44);
    const V v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE);
    const V v2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const V v3 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    r[m] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[8 + m] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + m] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

inline uint32_t pack_tile_f32(const float* src, const float* next, int64_t d, float* tile, float* norms) {
  uint32_t bad = 0;
  for (int h = 0; h < 2; ++h) {
    const float* rows = src + h * W * d;
    V acc = vzero(), poison = vzero();
    for (int64_t j0 = 0; j0 < d; j0 += W) {
      const int64_t cols = std::min<int64_t>(W, d - j0);
      const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1u);
      V r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_maskz_loadu_ps(mask, rows + i * d + j0);
      if (next != nullptr) {  // the same lines of the next tile: DRAM latency hides behind this one
        for (int i = 0; i < 16; ++i) _mm_prefetch(reinterpret_cast<const char*>(next + (h * W + i) * d + j0), _MM_HINT_T0);
      }
      transpose16(r);
      for (int64_t c = 0; c < cols; ++c) {
        vstore(tile + (j0 + c) * 2 * W + h * W, r[c]);
        acc = vadd(acc, vmul(r[c], r[c]));
        poison = vadd(poison, vmul(r[c], vzero()));  // NaN once any value is inf/NaN
      }
    }
    vstore(norms + h * W, acc);
    bad |= static_cast<uint32_t>(_mm512_cmp_ps_mask(poison, poison, _CMP_UNORD_Q)) << (h * W);
  }
  return bad;
}
}  // namespace avx512
LUMO_TARGET_POP

// The integer screen at 512 bits needs AVX512BW (vpmaddwd on zmm); with
// AVX512-VNNI the multiply and the add are one instruction (vpdpwssd).
// Checked at run time.
#define LUMO_VQ_AVX512_INT_ADAPTERS                                                   \
  using IV = __m512i;                                                                 \
  using IM = __mmask16;                                                               \
  inline IV ivload(const int32_t* p) { return _mm512_loadu_si512(p); }                \
  inline IV ivbcast(int32_t i) { return _mm512_set1_epi32(i); }                       \
  inline IV ivmin(IV a, IV b) { return _mm512_min_epi32(a, b); }                      \
  inline IM ivgt(IV a, IV b) { return _mm512_cmpgt_epi32_mask(a, b); }                \
  inline IM imand(IM f, IM g) { return static_cast<IM>(f & g); }                      \
  inline bool iall(IM f) { return f == 0xFFFF; }                                     \
  inline int32_t ihmin(IV v) { return _mm512_reduce_min_epi32(v); }
LUMO_TARGET_PUSH("avx512f,avx512bw")
namespace avx512 {
namespace bw {
LUMO_VQ_AVX512_INT_ADAPTERS
inline IV ivdot2(IV acc, IV x, IV c) { return _mm512_add_epi32(acc, _mm512_madd_epi16(x, c)); }
#include "ops/vq/cpu_iscreen_body.h"
}  // namespace bw
}  // namespace avx512
LUMO_TARGET_POP
LUMO_TARGET_PUSH("avx512f,avx512bw,avx512vnni")
namespace avx512 {
namespace vnni {
LUMO_VQ_AVX512_INT_ADAPTERS
inline IV ivdot2(IV acc, IV x, IV c) { return _mm512_dpwssd_epi32(acc, x, c); }
#include "ops/vq/cpu_iscreen_body.h"
}  // namespace vnni
}  // namespace avx512
LUMO_TARGET_POP
#undef LUMO_VQ_AVX512_INT_ADAPTERS
#endif  // LUMO_X86

}  // namespace

namespace vqi {

int isa_mask() {
#ifdef LUMO_VQ_X86
  return isa_support_mask(/*avx2_needs_fma=*/false);
#else
  return 1 << kIsaScalar;  // no vector kernels compiled
#endif
}

// LUMO_VQ_SCREEN picks the screen (the results are the same on every path;
// the switch is for measurements and tests): 0 none (the plain exact
// kernel), fp the fp32 FMA screen, int the integer screen wherever a kernel
// has one (int-bw: AVX-512 without VNNI instructions). Unset: the integer
// screen where it measured faster (AVX-512 with BW; AVX2 from D =
// kIntScreenMinDAvx2), else the fp32 one. Below that D the AVX2 integer screen
// (vpmaddwd + vpaddd) was no faster than FMAs on the Zen 4 we measured (one
// thread, N = 4096: D = 4 14.1 vs 12.6 ms, D = 8 12.6 vs 12.0 ms, D = 16 40
// vs 30 ms).
enum class ScreenMode { kNone, kFp, kBest, kInt, kIntBw };
static ScreenMode screen_mode() {
  const char* v = std::getenv("LUMO_VQ_SCREEN");
  if (v == nullptr) return ScreenMode::kBest;
  if (std::strcmp(v, "0") == 0) return ScreenMode::kNone;
  if (std::strcmp(v, "fp") == 0) return ScreenMode::kFp;
  if (std::strcmp(v, "int") == 0) return ScreenMode::kInt;
  if (std::strcmp(v, "int-bw") == 0) return ScreenMode::kIntBw;
  return ScreenMode::kBest;
}

bool int_screen_runs(const Kernel& ker, int64_t d) { return d >= ker.int_min_d && d <= ker.int_max_d; }

Kernel pick_kernel(int isa, const char* op) {
  const int mask = isa_mask();
  isa = static_cast<int>(resolve_isa(isa, mask));
  LUMO_CHECK(isa >= kIsaScalar && isa <= kIsaAvx512 && (mask >> isa & 1), op,
             "an instruction set this CPU runs (isa bit in vq_isa_mask())", isa);
#ifdef LUMO_VQ_X86
  const ScreenMode mode = screen_mode();
  const bool screen = mode != ScreenMode::kNone;
  const bool int_any = mode == ScreenMode::kBest || mode == ScreenMode::kInt || mode == ScreenMode::kIntBw;
  if (isa == kIsaAvx512) {
    IntScreenFn is = nullptr;
    if (int_any && __builtin_cpu_supports("avx512bw")) {
      is = mode != ScreenMode::kIntBw && __builtin_cpu_supports("avx512vnni") ? &avx512::vnni::iscreen_rows
                                                                             : &avx512::bw::iscreen_rows;
    }
    return {avx512::W, &avx512::search_rows, isa, &avx512::pack_tile_f32, screen ? &avx512::screen_rows : nullptr,
            is, mode == ScreenMode::kBest ? kIntScreenMaxDAvx512 : kIntScreenMaxDOptIn,
            screen ? &avx512::screen_rows6 : nullptr, kScreenMinTilesAvx512, &avx512::exact_rows_perm};
  }
  if (isa == kIsaAvx2) {
    const bool fma = __builtin_cpu_supports("fma");
    // The integer screen from kIntScreenMinDAvx2 up, or at every D with
    // LUMO_VQ_SCREEN=int (see screen_mode).
    Kernel k{avx2::W,
             &avx2::search_rows,
             isa,
             &avx2::pack_tile_f32,
             screen && fma ? &avx2::screen_rows : nullptr,
             (mode == ScreenMode::kBest || mode == ScreenMode::kInt) && fma ? &avx2::iscreen_rows : nullptr,
             kIntScreenMaxDOptIn,
             screen && fma ? &avx2::screen_rows6 : nullptr,
             kScreenMinTilesAvx2,
             fma ? &avx2::exact_rows_perm : nullptr};
    k.int_min_d = mode == ScreenMode::kInt ? 0 : kIntScreenMinDAvx2;
    return k;
  }
#endif
  return {scalar::W, &scalar::search_rows, kIsaScalar, nullptr, nullptr, nullptr, 0, nullptr, kScreenMinTilesAvx2};
}

void check_common(const char* op, int64_t n, int64_t d, int64_t k, int dtype, int64_t num_threads) {
  LUMO_CHECK(n >= 0, op, "n >= 0", n);
  LUMO_CHECK(d >= 1, op, "d >= 1", d);
  LUMO_CHECK(k >= 1, op, "k >= 1 (a non-empty codebook)", k);
  LUMO_CHECK_RANGE(k < std::numeric_limits<int32_t>::max() - 64, op, "k < 2^31 - 64", k);
  check_dtype(op, "dtype", dtype);
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0", num_threads);
}

// ---------------------------------------------------------------------------
// Packed codebook.
// ---------------------------------------------------------------------------

void pack_layout(int64_t k, int64_t d, int W, VqPacked& p) {
  p.k = k;
  p.d = d;
  p.tile = 2 * W;
  p.ntiles = (k + p.tile - 1) / p.tile;
  // resize() keeps the storage of an earlier, larger layout: no fresh pages.
  p.tiles.resize(static_cast<size_t>(p.ntiles * d * p.tile));
  p.cn.resize(static_cast<size_t>(p.ntiles * p.tile));
  p.bound.resize(static_cast<size_t>(p.ntiles * 2));
  p.itiles.clear();  // written by pack_int_tiles, where it applies
  p.c_scale.clear();
  p.b_code.clear();
  p.perm.clear();  // index order unless vq_pack orders it
  p.norm_lo.clear();
  p.norm_hi.clear();
}

// max(m, v) that keeps NaN once seen (a bound that cannot be trusted).
static inline float max_or_nan(float m, float v) { return m != m ? m : v <= m ? m : v; }

int64_t pack_tiles(const Kernel& ker, const PackSource& src, VqPacked& p, int64_t t0, int64_t t1) {
  const int64_t k = p.k, d = p.d, T = p.tile;
  float acc[64];
  uint8_t ok[64];
  int64_t bad = -1;
  const bool fast = src.dtype == static_cast<int>(DType::F32) && ker.pack_f32 != nullptr;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c0 = t * T, lanes = std::min(T, k - c0);
    float* tile = p.tiles.data() + t * d * T;
    float* cn = p.cn.data() + c0;
    if (fast && lanes == T) {
      const float* rows = static_cast<const float*>(src.cb) + c0 * d;
      const float* next = t + 1 < t1 && (t + 2) * T <= k ? rows + T * d : nullptr;
      const uint32_t bad_lanes = ker.pack_f32(rows, next, d, tile, acc);
      if (bad_lanes != 0 && bad < 0) bad = c0 + __builtin_ctz(bad_lanes);
    } else {
      // Tile by tile: the norms of the tile's codes as independent lanes
      // (each lane still sums in the order j = 0..d-1), padding lanes zero.
      std::fill(acc, acc + T, 0.0f);
      std::fill(ok, ok + T, uint8_t{1});
      for (int64_t j = 0; j < d; ++j) {
        float* dst = tile + j * T;
        if (src.dtype == static_cast<int>(DType::F32)) {
          const float* s = static_cast<const float*>(src.cb) + c0 * d + j;
          for (int64_t l = 0; l < lanes; ++l) dst[l] = s[l * d];
        } else {
          for (int64_t l = 0; l < lanes; ++l) dst[l] = load_float(src.cb, static_cast<DType>(src.dtype), (c0 + l) * d + j);
        }
        for (int64_t l = lanes; l < T; ++l) dst[l] = 0.0f;
        for (int64_t l = 0; l < T; ++l) {
          const float v = dst[l];
          acc[l] = vq::add_rn(acc[l], vq::mul_rn(v, v));
          ok[l] &= static_cast<uint8_t>(std::fabs(v) <= std::numeric_limits<float>::max());
        }
      }
      for (int64_t l = 0; l < lanes; ++l) {
        if (!ok[l] && bad < 0) bad = c0 + l;
      }
    }
    for (int64_t l = 0; l < lanes; ++l) {
      cn[l] = src.norms == kNormsCompute ? acc[l] : src.norms == kNormsGiven ? src.cn_given[c0 + l] : 0.0f;
    }
    // Lanes past k never win: every comparison with NaN is false.
    for (int64_t l = lanes; l < T; ++l) cn[l] = std::numeric_limits<float>::quiet_NaN();
    float max_sq = 0.0f, max_cn = 0.0f;
    for (int64_t l = 0; l < lanes; ++l) {
      max_sq = max_or_nan(max_sq, acc[l]);
      max_cn = max_or_nan(max_cn, std::fabs(cn[l]));
    }
    p.bound[2 * t] = max_sq;
    p.bound[2 * t + 1] = max_cn;
  }
  return bad;
}

// ---------------------------------------------------------------------------
// Row blocks.
// ---------------------------------------------------------------------------

// Code tiles swept per row block: kCodeBlockBytes of the data the kernel
// streams (the int16 pairs for the integer screen, else the fp32 tiles).
static int64_t tiles_per_block(const VqPacked& p, bool int_screen) {
  const int64_t tile_bytes = int_screen ? (p.d + 1) / 2 * p.tile * static_cast<int64_t>(sizeof(int32_t))
                                        : p.d * p.tile * static_cast<int64_t>(sizeof(float));
  static const int64_t blk = std::getenv("LUMO_TB_KB") ? std::atoi(std::getenv("LUMO_TB_KB")) * 1024 : kCodeBlockBytes;
  return std::max<int64_t>(1, blk / tile_bytes);
}

// Fills s.xn2 and s.beta for the screened kernel: beta[r] bounds |a - s| for
// row r and every code of tiles [t0, t1), where s is the contract's score and
// a the FMA screening score (cpu_screen_body.h). With u = 2^-24 and
// g = (d + 2) u / (1 - (d + 2) u), S = |x| |c| >= sum_j |x_j c_j|:
//   exact dot: error <= g S (sequential sum of rounded products), doubled;
//   s = cn - 2 dot rounded: <= u (|cn| + 2 S (1 + g));
//   a, d FMAs from cn: <= g (|cn| + 2 S);
//   underflow: <= 3 d 2^-150 absolute.
// beta = (4 g + 4 u) S + (g + 2 u) max|cn| + d 2^-146, with margins; +inf
// (no screening) where values could overflow or a bound is inf/NaN.
// Returns whether any row can be screened.
CodeBounds code_bounds(const VqPacked& p, int64_t t0, int64_t t1) {
  CodeBounds cb;
  for (int64_t t = t0; t < t1; ++t) {
    const float a = p.bound[2 * t], b = p.bound[2 * t + 1];
    cb.finite = cb.finite && a <= 1e36f && b <= 1e36f;
    cb.max_sq = std::max<double>(cb.max_sq, a);
    cb.max_cn = std::max<double>(cb.max_cn, b);
  }
  return cb;
}

bool screen_bounds(const VqPacked& p, Scratch& s, int64_t padded, int64_t t0, int64_t t1) {
  return screen_bounds(p, code_bounds(p, t0, t1), s, padded);
}

bool screen_bounds(const VqPacked& p, const CodeBounds& codes, Scratch& s, int64_t padded) {
  const int64_t d = p.d;
  const double max_sq = codes.max_sq, max_cn = codes.max_cn;
  const bool finite = codes.finite;
  const double u = std::ldexp(1.0, -24);
  const double g = static_cast<double>(d + 2) * u / (1.0 - static_cast<double>(d + 2) * u);
  const double c_norm = std::sqrt(max_sq) * (1.0 + 4.0 * g);
  bool any = false;
  for (int64_t r = 0; r < padded; ++r) {
    const float* x = s.x.data() + r * d;
    float* xn2 = s.xn2.data() + r * d;
    for (int64_t j = 0; j < d; ++j) xn2[j] = -2.0f * x[j];
    double acc[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: a bound, so any order does
    int64_t j = 0;
    for (; j + 4 <= d; j += 4) {
      for (int h = 0; h < 4; ++h) acc[h] += static_cast<double>(x[j + h]) * x[j + h];
    }
    for (; j < d; ++j) acc[0] += static_cast<double>(x[j]) * x[j];
    const double sq = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    const double big_s = std::sqrt(sq) * c_norm * (1.0 + 1e-9);
    const double beta = ((4.0 * g + 4.0 * u) * big_s + (g + 2.0 * u) * max_cn + d * std::ldexp(1.0, -146)) * 1.01;
    float bf = std::numeric_limits<float>::infinity();
    if (finite && big_s < 1e36 && beta < 1e30) {
      bf = static_cast<float>(beta);
      if (static_cast<double>(bf) < beta) bf = std::nextafter(bf, std::numeric_limits<float>::infinity());
      any = true;
    }
    s.beta[r] = bf;
  }
  return any;
}

// q = round(v) for |v| < 2^22 in the default rounding mode (ties to even):
// adding and removing 1.5 * 2^23 leaves no fraction bits. Unlike nearbyintf it
// vectorises without SSE4.1.
static inline float round_small(float v) {
  constexpr float m = 12582912.0f;  // IEEE semantics (no -ffast-math) keep (v + m) - m
  return (v + m) - m;
}

// round_small for doubles, |v| < 2^51.
static inline double round_small_d(double v) {
  constexpr double m = 6755399441055744.0;  // 1.5 * 2^52
  return (v + m) - m;
}

static inline int32_t pack_pair(int32_t lo, int32_t hi) {
  return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(lo)) |
                              (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16));
}

// The largest |v| of count values, as fp32, or NaN when one is inf/NaN.
// fp32 input is scanned as integers: |v|'s bits order like |v| itself, and
// inf/NaN have the largest (at least 0x7F800000); that loop vectorises.
float max_abs_or_nan(const void* x, int dtype, int64_t count) {
  if (dtype == static_cast<int>(DType::F32)) {
    const uint32_t* bits = static_cast<const uint32_t*>(x);
    uint32_t m = 0;
    for (int64_t i = 0; i < count; ++i) m = std::max(m, bits[i] & 0x7FFFFFFFu);
    if (m >= 0x7F800000u) return std::numeric_limits<float>::quiet_NaN();
    float f;
    std::memcpy(&f, &m, sizeof f);
    return f;
  }
  float m = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    const float v = std::fabs(load_float(x, static_cast<DType>(dtype), i));
    if (!(v <= std::numeric_limits<float>::max())) return std::numeric_limits<float>::quiet_NaN();
    m = std::max(m, v);
  }
  return m;
}

// Fills s.xq and s.b_int for the integer screen (cpu_iscreen_body.h).
// Pairs: p_j = round(fl(-2 x_j * x_inv)); |-2 x_j x_inv| <= Q (1 + 2^-24)
// (prepare_int_call) rounds to at most Q = int_screen_q(d), and the float
// product's rounding adds at most Q 2^-24 < 2.5e-4 to |e_j| <= 1/2. The row
// side of the bound B = 1/2 + (|p|_1 + max |q|_1) / 2 + d / 4, with margins:
// b_int = 2 + |p|_1 / 2 + d / 4 (VqPacked::b_code holds the code side).
void int_row_bounds(const VqPacked& p, const IntScale& ic, Scratch& s, int64_t padded) {
  const int64_t d = p.d, pairs = (d + 1) / 2, full = d / 2;
  const float inv = ic.x_inv;
  for (int64_t r = 0; r < padded; ++r) {
    const float* x = s.x.data() + r * d;
    int32_t* xq = s.xq.data() + r * pairs;
    int32_t l1 = 0;
    for (int64_t j = 0; j < full; ++j) {
      const int32_t q0 = static_cast<int32_t>(round_small(-2.0f * x[2 * j] * inv));
      const int32_t q1 = static_cast<int32_t>(round_small(-2.0f * x[2 * j + 1] * inv));
      l1 += std::abs(q0) + std::abs(q1);
      xq[j] = pack_pair(q0, q1);
    }
    if (full < pairs) {
      const int32_t q0 = static_cast<int32_t>(round_small(-2.0f * x[d - 1] * inv));
      l1 += std::abs(q0);
      xq[full] = pack_pair(q0, 0);
    }
    s.b_int[r] = 2.0 + 0.5003 * static_cast<double>(l1) + 0.2503 * static_cast<double>(d);
  }
}

void search_block(const Kernel& ker, const VqPacked& p, Scratch& s, int64_t rows, int64_t t0, int64_t t1,
                  float* val, int32_t* idx, const IntScale* ic) {
  const int W = ker.W;
  const int64_t padded = padded_rows(rows);
  // Against a codebook whose scale groups carry norm bounds, the rows go in
  // order of their norms: a group of kRows rows then skips more groups of
  // codes together (cpu_iscreen_body.h). s.x is put back at the end (the
  // few-rows path keeps one block loaded across calls).
  // The squared norms (in double: products of floats are exact there, the sum
  // is off by d 2^-53 at most) also feed the group skipping.
  int32_t row_at[kRowBlock];  // sorted position -> the block's row
  bool sorted = false;
  const bool norm_order = ic != nullptr && ker.iscreen != nullptr && !p.norm_lo.empty();
  if (norm_order) {
    double norm2[kRowBlock];
    for (int64_t r = 0; r < padded; ++r) {
      double q = 0.0;
      for (int64_t j = 0; j < p.d; ++j) q += static_cast<double>(s.x[r * p.d + j]) * s.x[r * p.d + j];
      norm2[r] = q;
      row_at[r] = static_cast<int32_t>(r);
    }
    if (rows > kRows) {
      std::stable_sort(row_at, row_at + rows, [&](int32_t a, int32_t b) { return norm2[a] < norm2[b]; });
    }
    for (int64_t r = 0; r < rows && !sorted; ++r) sorted = row_at[r] != r;
    if (sorted) {
      s.x_spare.assign(s.x.begin(), s.x.begin() + rows * p.d);
      for (int64_t r = 0; r < rows; ++r) {
        std::copy_n(s.x_spare.begin() + row_at[r] * p.d, p.d, s.x.begin() + r * p.d);
      }
    }
    for (int64_t r = 0; r < padded; ++r) s.x_norm2[r] = norm2[row_at[r]];
  }
  std::fill(s.bv.begin(), s.bv.begin() + padded * W, std::numeric_limits<float>::infinity());
  std::fill(s.bi.begin(), s.bi.begin() + padded * W, std::numeric_limits<int32_t>::max());
  // A codebook out of index order is always screened where the rows allow:
  // its exact fallback scores one row a tile at a time (exact_rows_perm),
  // several times slower than search_rows' four.
  const bool screen = ker.screen != nullptr &&
                      (!p.perm.empty() || p.d <= kScreenMaxD || t1 - t0 >= ker.screen_min_tiles) &&
                      screen_bounds(p, s, padded, t0, t1);
  const bool int_screen = screen && ic != nullptr && ker.iscreen != nullptr && !p.itiles.empty() &&
                          int_screen_runs(ker, p.d);
  if (int_screen) {
    const float xmax = max_abs_or_nan(s.x.data(), static_cast<int>(DType::F32), padded * p.d);
    if (xmax > 0.0f && xmax < 0.5f * ic->xmax && set_int_scale(p, xmax, t0, t1, s.block_scale)) ic = &s.block_scale;
    int_row_bounds(p, *ic, s, padded);
  }
  const int64_t tb = tiles_per_block(p, int_screen);
  // Groups of 6 rows first where the kernel has them (an even count of them,
  // so the rest stays a multiple of kRows), then groups of kRows: each row's
  // result is its own, so the grouping never changes a bit.
  // (Only when every row of the block can be screened, the usual case.)
  // (The integer screen measured the same with 6 rows as with 4, so it has no 6-row kernel.)
  const bool six = screen && !int_screen && ker.screen6 != nullptr && p.d >= kScreen6MinD &&
                   std::all_of(s.beta.begin(), s.beta.begin() + padded, [](float b) { return b < 1e30f; });
  const int64_t rows6 = six ? padded / 12 * 12 : 0;
  const int32_t* perm = p.perm_or_null();
  const IntScreenArgs ia = int_screen ? ic->args(p) : IntScreenArgs{};
  for (int64_t kb = t0; kb < t1; kb += tb) {
    const int64_t ke = std::min(t1, kb + tb);
    for (int64_t rb = 0; rb < rows6; rb += 6) {
      ker.screen6(s.x.data() + rb * p.d, s.xn2.data() + rb * p.d, p.d, p.tiles.data(), p.cn.data(), kb, ke,
                  s.bv.data() + rb * W, s.bi.data() + rb * W, s.beta.data() + rb, perm);
    }
    for (int64_t rb = rows6; rb < padded; rb += kRows) {
      const float* beta = s.beta.data() + rb;
      if (screen && std::all_of(beta, beta + kRows, [](float b) { return b < 1e30f; })) {
        if (int_screen) {
          ker.iscreen(s.x.data() + rb * p.d, s.xq.data() + rb * ((p.d + 1) / 2), p.d, p.tiles.data(), p.cn.data(),
                      ia, kb, ke, s.bv.data() + rb * W, s.bi.data() + rb * W, beta, s.b_int.data() + rb,
                      s.x_norm2.data() + rb, perm);
          continue;
        }
        ker.screen(s.x.data() + rb * p.d, s.xn2.data() + rb * p.d, p.d, p.tiles.data(), p.cn.data(), kb, ke,
                   s.bv.data() + rb * W, s.bi.data() + rb * W, beta, perm);
      } else if (perm != nullptr) {  // vq_pack orders a codebook only for kernels that have exact_perm
        ker.exact_perm(s.x.data() + rb * p.d, p.d, p.tiles.data(), p.cn.data(), kb, ke, s.bv.data() + rb * W,
                       s.bi.data() + rb * W, perm);
      } else {
        ker.fn(s.x.data() + rb * p.d, p.d, p.tiles.data(), p.cn.data(), kb, ke, s.bv.data() + rb * W,
               s.bi.data() + rb * W);
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float bv = s.bv[r * W];
    int32_t bi = s.bi[r * W];
    for (int l = 1; l < W; ++l) {
      if (vq::pair_less(s.bv[r * W + l], s.bi[r * W + l], bv, bi)) {
        bv = s.bv[r * W + l];
        bi = s.bi[r * W + l];
      }
    }
    const int64_t out = sorted ? row_at[r] : r;
    val[out] = bv;
    idx[out] = bi;
  }
  if (sorted) std::copy(s.x_spare.begin(), s.x_spare.end(), s.x.begin());
}

void search_tile_chunks(const Kernel& ker, const VqPacked& p, std::vector<Scratch>& scratch, int64_t threads,
                        int64_t chunks, int64_t n,
                        const std::function<void(int64_t, int64_t, int64_t, int64_t)>& pack,
                        const std::function<void(int64_t, int64_t, int64_t, Scratch&)>& load, float* pv,
                        int32_t* pi, const IntScale* ic) {
  WorkCounter work(chunks);
  run_parallel(threads - 1, [&](int64_t c) {
    Scratch& s = scratch[c];
    bool loaded = false;  // one row block stays in s.x across chunks
    for (int64_t u; (u = work.next()) >= 0;) {
      const int64_t t0 = split_begin(p.ntiles, chunks, u), t1 = split_begin(p.ntiles, chunks, u + 1);
      pack(c, u, t0, t1);
      for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, n - r0);
        if (!loaded) load(c, r0, rows, s);
        loaded = n <= kRowBlock;
        search_block(ker, p, s, rows, t0, t1, pv + u * n + r0, pi + u * n + r0, ic);
      }
    }
  });
}

int64_t load_rows(const void* x, int dtype, int64_t d, int64_t r0, int64_t rows, Scratch& s) {
  int64_t bad = -1;
  if (dtype == static_cast<int>(DType::F32)) {  // a copy, and a finiteness scan that vectorises
    const float* src = static_cast<const float*>(x) + r0 * d;
    std::memcpy(s.x.data(), src, static_cast<size_t>(rows * d) * sizeof(float));
    const uint32_t* bits = reinterpret_cast<const uint32_t*>(src);
    for (int64_t r = 0; r < rows && bad < 0; ++r) {
      uint32_t m = 0;
      for (int64_t j = 0; j < d; ++j) m = std::max(m, bits[r * d + j] & 0x7FFFFFFFu);
      if (m >= 0x7F800000u) bad = r0 + r;
    }
    std::fill(s.x.begin() + rows * d, s.x.begin() + padded_rows(rows) * d, 0.0f);
    return bad;
  }
  for (int64_t r = 0; r < rows; ++r) {
    bool finite = true;
    for (int64_t j = 0; j < d; ++j) {
      const float v = load_float(x, static_cast<DType>(dtype), (r0 + r) * d + j);
      s.x[r * d + j] = v;
      finite = finite && std::isfinite(v);
    }
    if (!finite && bad < 0) bad = r0 + r;
  }
  std::fill(s.x.begin() + rows * d, s.x.begin() + padded_rows(rows) * d, 0.0f);
  return bad;
}

void pack_int_tiles(const Kernel& ker, VqPacked& p, int64_t threads) {
  p.itiles.clear();
  p.c_scale.clear();
  p.b_code.clear();
  if (ker.iscreen == nullptr || !int_screen_runs(ker, p.d) || p.bad_row >= 0) return;
  float cmax = 0.0f;  // padding lanes are 0; a finite codebook packs finite values
  for (float v : p.tiles) cmax = std::max(cmax, std::fabs(v));
  if (!(cmax > 0.0f) || !std::isfinite(cmax)) return;
  const float q_max = static_cast<float>(int_screen_q(p.d));
  // A group's steps are at most 2^20 times finer than the whole codebook's
  // (an all-zero group included), so every scale stays finite.
  const float floor = cmax * 0x1p-20f;
  if (!std::isfinite(q_max / floor)) return;
  const int64_t d = p.d, T = p.tile, pairs = (d + 1) / 2, groups = int_groups(p.ntiles);
  p.itiles.resize(static_cast<size_t>(p.ntiles * pairs * T));
  p.c_scale.resize(static_cast<size_t>(groups));
  p.b_code.resize(static_cast<size_t>(groups));
  const int64_t chunks = std::min(groups, threads == 1 ? 1 : 4 * threads);
  WorkCounter work(chunks);
  run_parallel(threads - 1, [&](int64_t) {
    std::vector<int32_t> l1(static_cast<size_t>(T));
    for (int64_t u; (u = work.next()) >= 0;) {
      for (int64_t g = split_begin(groups, chunks, u); g < split_begin(groups, chunks, u + 1); ++g) {
        const int64_t t0 = g * kIntGroupTiles, t1 = std::min(p.ntiles, t0 + kIntGroupTiles);
        float gmax = floor;
        for (int64_t i = t0 * d * T; i < t1 * d * T; ++i) gmax = std::max(gmax, std::fabs(p.tiles[i]));
        // q = round(fl(c * inv)) with c_scale = 1 / inv exactly (in double): then
        // |c / c_scale - q| <= 1/2 + 4095 * 2^-24 (the float product's rounding), which
        // the row bounds allow for; |c * inv| <= Q (1 + 2^-23) rounds to at most Q.
        const float inv = q_max / gmax;
        p.c_scale[g] = 1.0 / static_cast<double>(inv);
        int64_t l1max = 0;
        for (int64_t t = t0; t < t1; ++t) {
          const float* tile = p.tiles.data() + t * d * T;
          int32_t* itile = p.itiles.data() + t * pairs * T;
          std::fill(l1.begin(), l1.end(), 0);
          for (int64_t j = 0; j < pairs; ++j) {
            const float* lo = tile + 2 * j * T;
            const float* hi = 2 * j + 1 < d ? lo + T : nullptr;
            for (int64_t l = 0; l < T; ++l) {
              const int32_t q0 = static_cast<int32_t>(round_small(lo[l] * inv));
              const int32_t q1 = hi != nullptr ? static_cast<int32_t>(round_small(hi[l] * inv)) : 0;
              l1[l] += std::abs(q0) + std::abs(q1);
              itile[j * T + l] = pack_pair(q0, q1);
            }
          }
          for (int64_t l = 0; l < T; ++l) l1max = std::max<int64_t>(l1max, l1[l]);
        }
        p.b_code[g] = 0.5003 * static_cast<double>(l1max);  // with the margin int_row_bounds' terms carry
      }
    }
  });
}

bool prepare_int_call(const VqPacked& p, const void* x, int x_dtype, int64_t n, IntScale& ic) {
  if (p.itiles.empty() || n == 0) return false;
  const float xmax = max_abs_or_nan(x, x_dtype, n * p.d);  // NaN: a bad row the search reports
  return xmax > 0.0f && set_int_scale(p, xmax, 0, p.ntiles, ic);  // all rows zero: no scale
}

bool set_int_scale(const VqPacked& p, float xmax, int64_t t0, int64_t t1, IntScale& sc) {
  if (!(xmax > 0.0f) || !(xmax <= 1e37f)) return false;  // past 1e37, -2x could overflow
  // x_inv = fl(Q / (2 xmax)) <= Q / (2 xmax) (1 + 2^-24), so |fl(-2 x x_inv)|
  // <= Q (1 + 2^-24)^2 < Q + 1/2 rounds to at most Q (int_row_bounds).
  sc.xmax = xmax;
  sc.x_inv = static_cast<float>(int_screen_q(p.d)) / (2.0f * xmax);
  if (!(sc.x_inv > 0.0f) || !std::isfinite(sc.x_inv)) return false;
  sc.x_scale = 1.0 / static_cast<double>(sc.x_inv);
  const int64_t groups = int_groups(p.ntiles);
  if (sc.cnq.size() < p.cn.size()) sc.cnq.resize(p.cn.size());
  if (sc.inv_u.size() < static_cast<size_t>(groups)) {
    sc.inv_u.resize(static_cast<size_t>(groups));
    sc.u_window.resize(static_cast<size_t>(groups));
  }
  const double cap = static_cast<double>(1 << 29);
  bool fits = true;
  for (int64_t g = t0 >> kIntGroupShift; g < int_groups(t1); ++g) {
    const double u = sc.x_scale * p.c_scale[g];
    if (!(u > 0.0) || !std::isfinite(u)) return false;
    const double inv_u = 1.0 / u;
    if (!std::isfinite(inv_u)) return false;
    bool clamped = false;
    const int64_t i0 = std::max(t0, g * kIntGroupTiles) * p.tile;
    const int64_t i1 = std::min(t1, (g + 1) * kIntGroupTiles) * p.tile;
    for (int64_t i = i0; i < i1; ++i) {  // no early exit: the loop vectorises
      const float c = p.cn[i];
      const double v = static_cast<double>(c) * inv_u;
      fits = fits && !(v < -cap);  // clamping up could skip a winner: no integer screen
      clamped = clamped || v > cap;  // clamping down only re-scores more
      // Padding lanes past k (NaN norms) hold 2^30.
      // (Clamped on both sides: a value below -cap is only converted, never used.)
      sc.cnq[i] = c != c ? (1 << 30) : static_cast<int32_t>(round_small_d(std::clamp(v, -cap, cap)));
    }
    sc.inv_u[g] = inv_u;
    sc.u_window[g] = clamped ? 0.0 : u;  // a clamped lane's A_m bounds nothing (cpu_iscreen_body.h)
  }
  return fits;
}

// Packs all tiles of a laid-out p on up to `threads` threads (chunks of
// tiles from a counter); returns the first code row holding inf/NaN, or -1.
int64_t pack_parallel(const Kernel& ker, const PackSource& src, VqPacked& p, int64_t threads) {
  const int64_t chunks = std::min(p.ntiles, threads == 1 ? 1 : 4 * threads);
  std::vector<int64_t> bad(static_cast<size_t>(chunks), -1);
  WorkCounter work(chunks);
  run_parallel(threads - 1, [&](int64_t) {
    for (int64_t u; (u = work.next()) >= 0;) {
      bad[u] = pack_tiles(ker, src, p, split_begin(p.ntiles, chunks, u), split_begin(p.ntiles, chunks, u + 1));
    }
  });
  for (int64_t b : bad) {
    if (b >= 0) return b;  // chunks are in code order: the first one found is the lowest
  }
  return -1;
}

}  // namespace vqi

int64_t VqPacked::nbytes() const {
  int64_t total = static_cast<int64_t>((tiles.size() + cn.size() + bound.size()) * sizeof(float) +
                                       (itiles.size() + perm.size()) * sizeof(int32_t) +
                                       (c_scale.size() + b_code.size() + norm_lo.size() + norm_hi.size()) *
                                           sizeof(double));
  if (key_ordered != nullptr) {
    total += key_ordered->packed.nbytes() +
             static_cast<int64_t>(key_ordered->perm.size() * sizeof(int32_t) +
                                  4 * key_ordered->slab_lo.size() * sizeof(float));
  }
  return total;
}

namespace {

using namespace vqi;

// Searches x ([n, d] of x_dtype) against p on up to `threads` threads. With
// to_pack (== &p, laid out, tiles not yet written) the tiles are packed here
// from src: by the thread that searches them when threads split the code
// tiles (few rows), else by all threads before they split the rows.
// Work is handed out dynamically (row blocks or tile chunks from a counter,
// run_parallel), so a thread that is late or preempted does not hold the
// others up; results do not depend on who computed what. Returns
// status(first bad x row, first bad codebook row found while packing).
int64_t search_driver(const Kernel& ker, const VqPacked& p, VqPacked* to_pack, const PackSource* src,
                      const void* x, int x_dtype, int64_t n, int64_t d, int64_t* codes, float* best,
                      int64_t threads) {
  const int64_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  std::vector<int64_t> bad_x(static_cast<size_t>(threads), -1);
  std::vector<Scratch> scratch;
  scratch.reserve(static_cast<size_t>(threads));
  for (int64_t c = 0; c < threads; ++c) scratch.emplace_back(d, ker.W);

  // Few rows of a codebook packed ahead: blocks of fewer rows, so that every
  // thread sweeps the whole codebook for at least one micro-kernel group of
  // rows. (Split into chunks of code tiles, as below, each chunk starts its
  // rows' bounds afresh: two threads took 1.4 times one thread's time for 32
  // rows against the default image codebook, K = 16384, D = 192.)
  const bool split_rows = to_pack == nullptr && threads > 1 && row_blocks < 2 * threads && n >= kRows * threads;
  const int64_t block =
      split_rows ? std::min(kRowBlock, (n + threads * kRows - 1) / (threads * kRows) * kRows) : kRowBlock;

  // Fewer rows: split the code tiles instead and merge the per-chunk minima.
  // A packed codebook's integer screen runs here too, with one scale for the
  // call as below (a codebook packed in this call has no integer copy yet).
  if (!split_rows && threads > 1 && row_blocks < 2 * threads && p.ntiles >= 4 * threads) {
    const int64_t chunks = 4 * threads;
    IntScale ic;
    const IntScale* icp = to_pack == nullptr && prepare_int_call(p, x, x_dtype, n, ic) ? &ic : nullptr;
    std::vector<float> pv(static_cast<size_t>(chunks * n));
    std::vector<int32_t> pi(static_cast<size_t>(chunks * n));
    std::vector<int64_t> bad_cb(static_cast<size_t>(chunks), -1);
    search_tile_chunks(
        ker, p, scratch, threads, chunks, n,
        [&](int64_t, int64_t u, int64_t t0, int64_t t1) {
          if (to_pack != nullptr) bad_cb[u] = pack_tiles(ker, *src, *to_pack, t0, t1);
        },
        [&](int64_t c, int64_t r0, int64_t rows, Scratch& s) {
          note_bad(bad_x, c, load_rows(x, x_dtype, d, r0, rows, s));
        },
        pv.data(), pi.data(), icp);
    for (int64_t r = 0; r < n; ++r) {
      float bv;
      int32_t bi;
      merge_chunk_minima(pv.data(), pi.data(), n, chunks, r, bv, bi);
      const bool none = bi == std::numeric_limits<int32_t>::max();
      codes[r] = none ? 0 : bi;
      best[r] = none ? std::numeric_limits<float>::infinity() : bv;
    }
    int64_t bad_pack = -1;
    for (int64_t b : bad_cb) {
      if (b >= 0) {  // chunks are in code order: the first one found is the lowest
        bad_pack = b;
        break;
      }
    }
    return status(lowest_bad(bad_x), bad_pack);
  }

  int64_t bad_pack = -1;
  if (to_pack != nullptr) {
    const int64_t pack_threads = useful_threads(threads, kPackCost * static_cast<double>(p.k) * p.d);
    bad_pack = pack_parallel(ker, *src, *to_pack, pack_threads);
    to_pack->bad_row = bad_pack;
    pack_int_tiles(ker, *to_pack, pack_threads);
  }
  IntScale ic;
  const IntScale* icp = prepare_int_call(p, x, x_dtype, n, ic) ? &ic : nullptr;
  const int64_t blocks = (n + block - 1) / block;
  WorkCounter work(blocks);
  run_parallel(std::min(threads, blocks) - 1, [&](int64_t c) {
    Scratch& s = scratch[c];
    int32_t idx[kRowBlock];
    for (int64_t b; (b = work.next()) >= 0;) {
      const int64_t r0 = b * block, rows = std::min(block, n - r0);
      note_bad(bad_x, c, load_rows(x, x_dtype, d, r0, rows, s));
      search_block(ker, p, s, rows, 0, p.ntiles, best + r0, idx, icp);
      for (int64_t r = 0; r < rows; ++r) {
        const bool none = idx[r] == std::numeric_limits<int32_t>::max();
        codes[r0 + r] = none ? 0 : idx[r];
        if (none) best[r0 + r] = std::numeric_limits<float>::infinity();
      }
    }
  });
  return status(lowest_bad(bad_x), bad_pack);
}

void check_norms_mode(const char* op, int norms, const float* cn_given) {
  LUMO_CHECK(norms == kNormsCompute || norms == kNormsGiven || norms == kNormsZero, op,
             "norms mode 0, 1 or 2", norms);
  LUMO_CHECK(norms != kNormsGiven || cn_given, op, "non-null norms for norms mode 1", "null");
}

}  // namespace

// Repacks p (packed in index order, finite, with its integer copy) in the
// order of the codes' squared norms, ties in index order, and repacks its
// integer copy: a scale group then holds codes of like size, and a group of
// small codes gets fine steps (kIntGroupTiles). Every kernel takes p.perm, so
// the results stay the exact kernel's, bit for bit.
static void order_by_norm(const Kernel& ker, VqPacked& p, int norms, const float* cn_given, int64_t threads) {
  const int64_t k = p.k, d = p.d, T = p.tile;
  std::vector<double> sq(static_cast<size_t>(p.ntiles * T), 0.0);
  for (int64_t t = 0; t < p.ntiles; ++t) {  // tile by tile: the packed values are contiguous there
    for (int64_t j = 0; j < d; ++j) {
      const float* v = p.tiles.data() + (t * d + j) * T;
      for (int64_t l = 0; l < T; ++l) sq[t * T + l] += static_cast<double>(v[l]) * v[l];
    }
  }
  std::vector<int32_t> order(static_cast<size_t>(k));
  for (int64_t c = 0; c < k; ++c) order[c] = static_cast<int32_t>(c);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return sq[a] < sq[b]; });
  // The whole groups in bit-reversed order (0, half, quarter, three quarters,
  // ...): a sweep meets every size of code early, so its rows find good bounds
  // at once. (Swept from the smallest codes up, a row whose winner is large
  // sets a new minimum tile after tile: every one of them is re-scored.)
  const int64_t group_codes = kIntGroupTiles * T, whole = k / group_codes;
  int bits = 0;
  while ((int64_t{1} << bits) < whole) ++bits;
  std::vector<int64_t> groups;
  for (int64_t i = 0; i < (int64_t{1} << bits); ++i) {
    int64_t r = 0;
    for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
    if (r < whole) groups.push_back(r);
  }
  {
    // Within a group, code i of the group's norm order goes to tile i % 16,
    // lane i / 16: every tile spans the group's sizes, so the sweep has no
    // trend inside a group either.
    std::vector<int32_t> by_group(order);
    for (size_t i = 0; i < groups.size(); ++i) {
      const int32_t* from = order.data() + groups[i] * group_codes;
      int32_t* to = by_group.data() + static_cast<int64_t>(i) * group_codes;
      for (int64_t c = 0; c < group_codes; ++c) to[(c % kIntGroupTiles) * T + c / kIntGroupTiles] = from[c];
    }
    order.swap(by_group);  // the partial group, if any, stays last (the padding lanes end the last tile)
  }
  std::vector<float> sorted(static_cast<size_t>(k * d));  // the exact fp32 values, as packed
  std::vector<float> sorted_cn(norms == kNormsGiven ? static_cast<size_t>(k) : 0);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < d; ++j) sorted[i * d + j] = p.at(order[i], j);
    if (norms == kNormsGiven) sorted_cn[i] = cn_given[order[i]];
  }
  const PackSource src{sorted.data(), static_cast<int>(DType::F32), norms,
                       norms == kNormsGiven ? sorted_cn.data() : nullptr};
  pack_parallel(ker, src, p, threads);  // finite: p packed in index order first
  p.perm.assign(static_cast<size_t>(p.ntiles * T), std::numeric_limits<int32_t>::max());
  std::copy(order.begin(), order.end(), p.perm.begin());
  pack_int_tiles(ker, p, threads);
  // The groups' norm ranges (sq: exact products, d 2^-53 off at most), where
  // the norms spread enough for a row to leave groups out of reach: the
  // largest at least twice the median. (Random normal codes, D = 128, K =
  // 1024, N = 16384: norms within 1.3x of each other, nothing skipped, and
  // the checks and the rows' sorting cost 10-20%: 16.0-16.3 -> 17.9-20.2 ms.)
  std::vector<double> sorted_sq(sq.begin(), sq.begin() + k);
  std::nth_element(sorted_sq.begin(), sorted_sq.begin() + k / 2, sorted_sq.end());
  const double median_sq = sorted_sq[k / 2];
  const double max_sq = *std::max_element(sq.begin(), sq.begin() + k);
  if (norms == kNormsCompute && max_sq >= 4.0 * median_sq) {
    const int64_t groups = int_groups(p.ntiles);
    p.norm_lo.assign(static_cast<size_t>(groups), std::numeric_limits<double>::infinity());
    p.norm_hi.assign(static_cast<size_t>(groups), 0.0);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t g = i / group_codes;
      const double norm = std::sqrt(sq[order[i]]);
      p.norm_lo[g] = std::min(p.norm_lo[g], norm * (1.0 - 1e-12));
      p.norm_hi[g] = std::max(p.norm_hi[g], norm * (1.0 + 1e-12));
    }
  }
}

int vq_isa_mask() { return isa_mask(); }

std::shared_ptr<const VqPacked> vq_pack(const void* cb, int cb_dtype, int64_t k, int64_t d, int norms,
                                        const float* cn_given, int isa, int64_t num_threads) {
  constexpr const char* op = "vq_pack";
  check_common(op, 0, d, k, cb_dtype, num_threads);
  check_norms_mode(op, norms, cn_given);
  LUMO_CHECK(cb != nullptr, op, "a non-null codebook pointer", "null");
  const Kernel ker = pick_kernel(isa, op);
  auto p = std::make_shared<VqPacked>();
  p->isa = ker.isa;
  pack_layout(k, d, ker.W, *p);
  const PackSource src{cb, cb_dtype, norms, cn_given};
  const int64_t threads = useful_threads(resolve_threads(num_threads), kPackCost * static_cast<double>(k) * d);
  p->bad_row = pack_parallel(ker, src, *p, threads);
  pack_int_tiles(ker, *p, threads);
  if (!p->itiles.empty() && ker.exact_perm != nullptr && d > kPrunedMaxD && p->ntiles > kIntGroupTiles) {
    order_by_norm(ker, *p, norms, cn_given, threads);
  }
  if (p->bad_row < 0 && pruned_search_applies(ker, -1, k, d, norms)) {
    p->key_ordered = order_codebook(ker, cb, cb_dtype, k, d, threads);
  }
  return p;
}

int64_t vq_search(const void* x, int x_dtype, int64_t n, int64_t d, const void* cb, int cb_dtype, int64_t k,
                  int norms, const float* cn_given, int64_t* codes, float* best, int64_t num_threads, int isa) {
  constexpr const char* op = "vq_search";
  check_common(op, n, d, k, x_dtype, num_threads);
  check_dtype(op, "cb_dtype", cb_dtype);
  LUMO_CHECK(norms == kNormsCompute || norms == kNormsGiven || norms == kNormsZero, op,
             "norms mode 0, 1 or 2", norms);
  const Kernel ker = pick_kernel(isa, op);
  if (n == 0) return -1;
  LUMO_CHECK(x && cb && codes && best, op, "non-null x, codebook, codes and best pointers", "null");
  check_norms_mode(op, norms, cn_given);
  const int64_t threads = useful_threads(resolve_threads(num_threads), static_cast<double>(n) * k * d);
  std::shared_ptr<const KeyOrderedCodebook> kc;
  if (pruned_search_applies(ker, n, k, d, norms)) kc = order_codebook(ker, cb, cb_dtype, k, d, threads);
  if (kc != nullptr && search_pruned(ker, *kc, x, x_dtype, n, d, codes, best, threads)) {
    for (int64_t r = 0; r < n; ++r) {
      if (!std::isfinite(best[r])) return -2 - k - r;  // the score overflowed fp32
    }
    return -1;
  }
  // The calling thread's packed buffer, reused across calls.
  thread_local VqPacked workspace;
  pack_layout(k, d, ker.W, workspace);
  workspace.isa = ker.isa;
  const double work = static_cast<double>(n) * k * d + kPackCost * static_cast<double>(k) * d;
  const PackSource src{cb, cb_dtype, norms, cn_given};
  const int64_t st = search_driver(ker, workspace, &workspace, &src, x, x_dtype, n, d, codes, best,
                                   useful_threads(resolve_threads(num_threads), work));
  if (workspace.tiles.capacity() * sizeof(float) > kKeepBytes) workspace = VqPacked();
  if (st != -1) return st;
  for (int64_t r = 0; r < n; ++r) {
    if (!std::isfinite(best[r])) return -2 - k - r;  // the score overflowed fp32
  }
  return -1;
}

int64_t vq_search_packed(const VqPacked& p, const void* x, int x_dtype, int64_t n, int64_t d, int64_t* codes,
                         float* best, int64_t num_threads) {
  constexpr const char* op = "vq_search";
  check_common(op, n, d, p.k, x_dtype, num_threads);
  LUMO_CHECK(d == p.d, op, "rows of the packed codebook's dimension", d);
  const Kernel ker = pick_kernel(p.isa, op);
  LUMO_CHECK(ker.W * 2 == p.tile, op, "a codebook packed for this instruction set", p.tile);
  if (n == 0) return -1;
  LUMO_CHECK(x && codes && best, op, "non-null x, codes and best pointers", "null");
  const double work = static_cast<double>(n) * p.k * d;
  const int64_t threads = useful_threads(resolve_threads(num_threads), work);
  if (p.key_ordered != nullptr && pruned_search_applies(ker, n, p.k, d, kNormsCompute) &&
      search_pruned(ker, *p.key_ordered, x, x_dtype, n, d, codes, best, threads)) {
    for (int64_t r = 0; r < n; ++r) {
      if (!std::isfinite(best[r])) return -2 - r;  // the score overflowed fp32
    }
    return -1;
  }
  const int64_t st = search_driver(ker, p, nullptr, nullptr, x, x_dtype, n, d, codes, best, threads);
  if (st != -1) return st;
  for (int64_t r = 0; r < n; ++r) {
    if (!std::isfinite(best[r])) return -2 - r;  // the score overflowed fp32
  }
  return -1;
}

}  // namespace cpu
}  // namespace lumo

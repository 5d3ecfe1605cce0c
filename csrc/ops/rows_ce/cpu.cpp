#include "ops/rows_ce/cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "abi/checks.h"
#include "ops/rows_ce/math.h"
#include "runtime/isa.h"
#include "runtime/isa_target.h"
#include "runtime/thread_pool.h"

// Only explicit fused multiply-adds: element-wise loops then give the same
// bits on every ISA, vectorised or not (the simd primitives included).
LUMO_FP_CONTRACT_OFF
#include "runtime/simd.h"

namespace lumo {
namespace rows_ce {
namespace {

using cpu::kIsaAvx2;
using cpu::kIsaAvx512;
using cpu::kIsaScalar;

namespace scalar {
using namespace simd::scalar;
constexpr int SV = 4, CV = 4;
inline V vexp(V x) { return exp_fma(x); }
#include "ops/rows_ce/cpu_body.h"
}  // namespace scalar

#ifdef LUMO_X86
LUMO_TARGET_PUSH("avx2,fma")
namespace avx2 {
using namespace simd::avx2;
// 4 rows x 3 vectors: 12 of the 16 ymm registers accumulate (the AVX-512
// tiles' 4 x 4 would spill here).
constexpr int SV = 3, CV = 3;
// exp_fma (math.h) on 8 lanes: the same operations in the same order, so the same bits.
inline V vexp(V x) {
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
  const __m256 over = _mm256_cmp_ps(x, _mm256_set1_ps(88.72283f), _CMP_GT_OQ);
  x = _mm256_andnot_ps(_mm256_or_ps(_mm256_or_ps(under, over), nan), x);
  const V magic = _mm256_set1_ps(12582912.0f);
  const V n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), magic), magic);
  V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  V p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const V y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  V out = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
  out = _mm256_blendv_ps(out, _mm256_set1_ps(INFINITY), over);
  out = _mm256_blendv_ps(out, _mm256_setzero_ps(), under);
  return _mm256_blendv_ps(out, _mm256_set1_ps(NAN), nan);
}
#include "ops/rows_ce/cpu_body.h"

// One fp32 panel: rows src[c * D + d] for c < real (<= kPanel) into
// panel[d * kPanel + c], columns past real 0; 8 x 8 blocks transposed in
// registers (8 rows read in order; the scalar transpose stored one float at a
// time, 256 bytes apart). Data movement only: the same panel as pack_panels_as.
void pack_panel_f32(const float* src, int64_t real, int64_t D, float* panel) {
  constexpr int64_t P = ::lumo::rows_ce::kPanel;
  const int64_t full = real / 8 * 8, dfull = D / 8 * 8;
  for (int64_t c0 = 0; c0 < full; c0 += 8) {
    const float* r = src + c0 * D;
    for (int64_t d0 = 0; d0 < dfull; d0 += 8) {
      const __m256 r0 = _mm256_loadu_ps(r + d0), r1 = _mm256_loadu_ps(r + D + d0);
      const __m256 r2 = _mm256_loadu_ps(r + 2 * D + d0), r3 = _mm256_loadu_ps(r + 3 * D + d0);
      const __m256 r4 = _mm256_loadu_ps(r + 4 * D + d0), r5 = _mm256_loadu_ps(r + 5 * D + d0);
      const __m256 r6 = _mm256_loadu_ps(r + 6 * D + d0), r7 = _mm256_loadu_ps(r + 7 * D + d0);
      const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
      const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* o = panel + d0 * P + c0;
      _mm256_storeu_ps(o, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(o + P, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(o + 2 * P, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(o + 3 * P, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(o + 4 * P, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(o + 5 * P, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(o + 6 * P, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(o + 7 * P, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (int64_t c = c0; c < c0 + 8; ++c)
      for (int64_t d = dfull; d < D; ++d) panel[d * P + c] = src[c * D + d];
  }
  for (int64_t c = full; c < P; ++c)
    for (int64_t d = 0; d < D; ++d) panel[d * P + c] = c < real ? src[c * D + d] : 0.0f;
}
}  // namespace avx2
LUMO_TARGET_POP
LUMO_TARGET_PUSH("avx512f")
namespace avx512 {
using namespace simd::avx512;
constexpr int SV = 4, CV = 4;
// exp_fma (math.h) on 16 lanes: the same operations in the same order, so the same bits.
inline V vexp(V x) {
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_LT_OQ);
  const __mmask16 over = _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.72283f), _CMP_GT_OQ);
  x = _mm512_mask_mov_ps(x, static_cast<__mmask16>(under | over | nan), _mm512_setzero_ps());
  const V magic = _mm512_set1_ps(12582912.0f);
  const V n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), magic), magic);
  V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  V p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const V y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  V out = _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
  out = _mm512_mask_mov_ps(out, over, _mm512_set1_ps(INFINITY));
  out = _mm512_mask_mov_ps(out, under, _mm512_setzero_ps());
  return _mm512_mask_mov_ps(out, nan, _mm512_set1_ps(NAN));
}
#include "ops/rows_ce/cpu_body.h"
}  // namespace avx512
LUMO_TARGET_POP
#endif  // LUMO_X86

using ScoreFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
using GemmFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t, int64_t);
using MaxFn = float (*)(float*, const float*, int64_t);
using ExpSumFn = float (*)(float*, float, int64_t);
using ScaleFn = void (*)(float*, float, int64_t);
using GradRowFn = void (*)(float*, const float*, float, float, int64_t, int64_t);
using PanelFn = void (*)(const float*, int64_t, int64_t, float*);

struct Kernels {
  ScoreFn score;
  GemmFn gemm;
  MaxFn add_terms_max;
  ExpSumFn exp_shift_sum;
  ScaleFn scale_row;
  GradRowFn softmax_grad_row;
  PanelFn pack_panel_f32;  // null: the generic transpose
  // Columns of a strip of the gradient product's packed rows: a whole number
  // of gemm tiles (CV * W) such that a [kDepth x strip] block (24 KiB) fits L1.
  int64_t strip;
  // Dimensions per block of the score product, 0: all of them. AVX2: 64 (a
  // 16 KiB slice of the panel stays in L1 while every token group of a step
  // uses it; measured ~5-10% faster forward); AVX-512's 4 x 4 tiles read the
  // whole panel row per step and gain nothing from it (measured ~5% slower).
  int64_t score_depth;
};

Kernels pick_kernels(int64_t isa, const char* op) {
  const int mask = isa_mask();
  isa = cpu::resolve_isa(isa, mask);
  LUMO_CHECK(isa >= kIsaScalar && isa <= kIsaAvx512 && (mask >> isa & 1), op,
             "an instruction set this CPU runs (isa bit in rows_ce_isa_mask())", isa);
#define LUMO_RC_KERNELS(ns, panel, strip, depth)                                                    \
  Kernels { &ns::score_tile, &ns::gemm_acc, &ns::add_terms_max, &ns::exp_shift_sum, &ns::scale_row,        \
            &ns::softmax_grad_row, panel, strip, depth }
#ifdef LUMO_X86
  // (AVX-512 packs with the AVX2 transpose: data movement, no arithmetic.)
  if (isa == kIsaAvx512) return LUMO_RC_KERNELS(avx512, &avx2::pack_panel_f32, 4 * 16, 0);
  if (isa == kIsaAvx2) return LUMO_RC_KERNELS(avx2, &avx2::pack_panel_f32, 4 * 3 * 8, 64);
#endif
  return LUMO_RC_KERNELS(scalar, nullptr, 96, 64);
#undef LUMO_RC_KERNELS
}

constexpr int64_t kRows = 4;         // token rows of a register tile (R of cpu_body.h)
constexpr int64_t kItemTokens = 512;  // most tokens per work item of the forward pass
constexpr int64_t kSubTokens = 128;   // tokens per step of an item over a super-tile
constexpr int64_t kDepth = 64;        // vocabulary rows per block of the gradient product

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The non-ignored tokens, in index order.
std::vector<int64_t> valid_tokens(const Inputs& in) {
  std::vector<int64_t> idx;
  idx.reserve(static_cast<size_t>(in.tokens));
  for (int64_t t = 0; t < in.tokens; ++t)
    if (in.targets[t] != in.ignore_index) idx.push_back(t);
  return idx;
}

// The hidden rows of `idx` as fp32 [round_up(size, kRows), dim] (padding rows
// 0): read in place when they are that already (fp32, every token kept, a
// whole number of register tiles), else a converted copy.
struct HiddenRows {
  std::vector<float> copy;
  const float* rows = nullptr;
};

HiddenRows gather_hidden(const Inputs& in, const std::vector<int64_t>& idx, int64_t threads) {
  const int64_t n = static_cast<int64_t>(idx.size()), D = in.dim;
  HiddenRows h;
  if (in.hidden_dtype == DType::F32 && n == in.tokens && n % kRows == 0) {
    h.rows = static_cast<const float*>(in.hidden);
    return h;
  }
  h.copy.assign(static_cast<size_t>(round_up(n, kRows) * D), 0.0f);
  const int64_t block = 64;
  cpu::parallel_for_items((n + block - 1) / block, threads, [&](int64_t b) {
    for (int64_t r = b * block; r < std::min(n, (b + 1) * block); ++r)
      for (int64_t d = 0; d < D; ++d) h.copy[r * D + d] = load_float(in.hidden, in.hidden_dtype, idx[r] * D + d);
  });
  h.rows = h.copy.data();
  return h;
}

// Rows [lo, lo + count) of a table packed as kPanel-wide panels [D, kPanel]
// (rows transposed) into kp; columns past count are 0. The transpose runs in
// strips of kPackStrip dimensions so the panel rows it writes stay in L1.
template <DType DT>
void pack_panels_as(const void* table, int64_t lo, int64_t count, int64_t D, float* kp, int64_t threads) {
  constexpr int64_t kPackStrip = 16;
  const int64_t panels = (count + kPanel - 1) / kPanel;
  cpu::parallel_for_items(panels, threads, [&](int64_t p) {
    float* panel = kp + p * D * kPanel;
    const int64_t real = std::min(kPanel, count - p * kPanel);
    for (int64_t d0 = 0; d0 < D; d0 += kPackStrip) {
      const int64_t d1 = std::min(D, d0 + kPackStrip);
      for (int64_t c = 0; c < kPanel; ++c) {
        if (c < real) {
          const int64_t src = (lo + p * kPanel + c) * D;
          for (int64_t d = d0; d < d1; ++d) panel[d * kPanel + c] = load<DT>(table, src + d);
        } else {
          for (int64_t d = d0; d < d1; ++d) panel[d * kPanel + c] = 0.0f;
        }
      }
    }
  });
}

// pack_panels_as; fp32 tables through `f32` when given (the same panels, vectorised).
void pack_panels(const void* table, DType dt, int64_t lo, int64_t count, int64_t D, float* kp, int64_t threads,
                 PanelFn f32 = nullptr) {
  if (dt == DType::F32 && f32 != nullptr) {
    const float* w = static_cast<const float*>(table) + lo * D;
    cpu::parallel_for_items((count + kPanel - 1) / kPanel, threads, [&](int64_t p) {
      f32(w + p * kPanel * D, std::min(kPanel, count - p * kPanel), D, kp + p * D * kPanel);
    });
    return;
  }
  if (dt == DType::F16) return pack_panels_as<DType::F16>(table, lo, count, D, kp, threads);
  if (dt == DType::BF16) return pack_panels_as<DType::BF16>(table, lo, count, D, kp, threads);
  pack_panels_as<DType::F32>(table, lo, count, D, kp, threads);
}

// Rows [lo, lo + count) of a table as fp32 column strips: strip q (columns
// [q * strip, q * strip + cols), cols = min(strip, D - q * strip)) is a
// contiguous [count, cols] block at wr + q * strip * count. A [depth x strip]
// block of it is then contiguous, so the gradient product keeps it in L1:
// read in place, rows 4 KiB apart (D = 1024 fp32) alias in a few L1 sets.
template <DType DT>
void pack_strips_as(const void* table, int64_t lo, int64_t count, int64_t D, int64_t strip, float* wr) {
  for (int64_t j = 0; j < count; ++j) {
    const int64_t src = (lo + j) * D;
    for (int64_t x0 = 0; x0 < D; x0 += strip) {
      const int64_t cols = std::min(strip, D - x0);
      float* dst = wr + x0 * count + j * cols;
      for (int64_t x = 0; x < cols; ++x) dst[x] = load<DT>(table, src + x0 + x);
    }
  }
}

void pack_strips(const void* table, DType dt, int64_t lo, int64_t count, int64_t D, int64_t strip, float* wr) {
  if (dt == DType::F16) return pack_strips_as<DType::F16>(table, lo, count, D, strip, wr);
  if (dt == DType::BF16) return pack_strips_as<DType::BF16>(table, lo, count, D, strip, wr);
  pack_strips_as<DType::F32>(table, lo, count, D, strip, wr);
}

// The additive column terms of table rows [lo, lo + count) (global columns from col0), kSuperTile wide.
void column_terms(const void* bias, DType dt, int64_t lo, int64_t count, int64_t col0, const Inputs& in,
                  int64_t width, float* term) {
  for (int64_t j = 0; j < width; ++j) {
    const float b = (bias != nullptr && j < count) ? load_float(bias, dt, lo + j) : 0.0f;
    term[j] = column_term(col0 + j, j < count, b, in.masked, in.num_masked);
  }
}

}  // namespace

int isa_mask() {
#ifdef LUMO_X86
  return cpu::isa_support_mask(/*avx2_needs_fma=*/true);
#else
  return 1 << kIsaScalar;
#endif
}

void forward(const Inputs& in, float* loss, float* lse, float* dhat, int64_t num_threads, int64_t isa) {
  const Kernels k = pick_kernels(isa, "rows_ce_forward");
  const int64_t threads = cpu::resolve_threads(num_threads);
  const int64_t depth = k.score_depth > 0 ? k.score_depth : std::max<int64_t>(in.dim, 1);
  const int64_t T = in.tokens, D = in.dim, V = in.base_rows + in.new_count;
  const bool with_grad = dhat != nullptr;
  for (int64_t t = 0; t < T; ++t) loss[t] = lse[t] = 0.0f;
  if (with_grad) std::fill(dhat, dhat + T * D, 0.0f);
  const std::vector<int64_t> idx = valid_tokens(in);
  const int64_t tv = static_cast<int64_t>(idx.size()), tp = round_up(tv, kRows);
  if (tv == 0) return;
  const HiddenRows hidden = gather_hidden(in, idx, threads);
  const float* h = hidden.rows;
  // Bias and mask of every column, once (the super-tiles read their slice).
  std::vector<float> terms(static_cast<size_t>(V + kSuperTile));
  column_terms(in.base_bias, in.base_bias_dtype, 0, in.base_rows, 0, in, in.base_rows, terms.data());
  column_terms(in.new_bias, in.new_bias_dtype, 0, in.new_count, in.base_rows, in, in.new_count,
               terms.data() + in.base_rows);
  // Each work item is a block of tokens that walks the whole vocabulary, so
  // the threads meet once per call (not once per tile: on a busy machine a
  // descheduled thread would stall every meeting). Per-token results do not
  // depend on the block size. Each super-tile is packed once per item (the
  // packing reads the rows from memory: fewer, larger items read them fewer
  // times) and the item's tokens then use it kSubTokens at a time, so a
  // step's scores and hidden gradient stay in L2 beside the packed rows.
  const int64_t block = std::clamp<int64_t>(round_up((tp + threads - 1) / threads, kRows), kRows, kItemTokens);
  cpu::parallel_for_items((tp + block - 1) / block, threads, [&](int64_t b) {
    const int64_t r0 = b * block, r1 = std::min(tp, r0 + block), nr = r1 - r0;
    const int64_t sub = std::min(nr, kSubTokens);
    std::vector<float> kp(static_cast<size_t>(kSuperTile * D)), wr, sc(static_cast<size_t>(sub * kSuperTile));
    std::vector<float> acc(with_grad ? static_cast<size_t>(nr * D) : 0, 0.0f), term(kSuperTile);
    std::vector<float> m(nr, -INFINITY), s(nr, 0.0f), zt(nr, 0.0f);
    if (with_grad) wr.resize(static_cast<size_t>(kSuperTile * D));
    for (int table = 0; table < 2; ++table) {
      const void* w = table == 0 ? in.base : in.new_rows;
      const DType wdt = table == 0 ? in.base_dtype : in.new_dtype;
      const int64_t rows = table == 0 ? in.base_rows : in.new_count;
      const int64_t offset = table == 0 ? 0 : in.base_rows;
      for (int64_t lo = 0; lo < rows; lo += kSuperTile) {
        const int64_t count = std::min(kSuperTile, rows - lo), col0 = offset + lo;
        const int64_t width = round_up(count, kPanel);
        pack_panels(w, wdt, lo, count, D, kp.data(), 1, k.pack_panel_f32);
        if (with_grad) pack_strips(w, wdt, lo, count, D, k.strip, wr.data());
        for (int64_t j = 0; j < width; ++j) term[j] = j < count ? terms[col0 + j] : -INFINITY;
        for (int64_t s0 = r0; s0 < r1; s0 += sub) {
          const int64_t s1 = std::min(r1, s0 + sub), ns = s1 - s0;
          for (int64_t p = 0; p < width / kPanel; ++p)
            for (int64_t d0 = 0; d0 == 0 || d0 < D; d0 += depth)  // (D = 0: one call, zeros)
              for (int64_t g = s0; g < s1; g += kRows)
                k.score(h + g * D + d0, D, kp.data() + (p * D + d0) * kPanel, std::min(depth, D - d0),
                        sc.data() + (g - s0) * width + p * kPanel, width, d0 > 0);
          for (int64_t i = 0; i < ns; ++i) {
            const int64_t it = s0 - r0 + i;  // the token's index in the item
            float* z = sc.data() + i * width;
            if (s0 + i >= tv) {
              std::fill(z, z + width, 0.0f);
              continue;
            }
            const float mx = k.add_terms_max(z, term.data(), width);
            const int64_t tgt = in.targets[idx[s0 + i]] - col0;
            if (tgt >= 0 && tgt < count) zt[it] = z[tgt];
            const float mn = std::max(m[it], mx);
            if (mn == -INFINITY) {
              std::fill(z, z + width, 0.0f);
              continue;
            }
            const float f = rescale_factor(m[it], mn);
            const float sum = k.exp_shift_sum(z, mn, width);
            s[it] = s[it] * f + sum;
            if (with_grad && f != 1.0f) k.scale_row(acc.data() + it * D, f, D);
            m[it] = mn;
          }
          if (!with_grad) continue;
          // [kDepth x strip] blocks of the packed rows stay in L1 while every
          // token group of the step uses them; each element's fma chain still
          // runs over the vocabulary in order (the accumulators round-trip
          // through memory exactly).
          float* as = acc.data() + (s0 - r0) * D;
          for (int64_t x = 0; x < D; x += k.strip) {
            const int64_t cols = std::min(k.strip, D - x);
            const float* ws = wr.data() + x * count;
            for (int64_t k0 = 0; k0 < count; k0 += kDepth)
              for (int64_t g = 0; g < ns; g += kRows)
                k.gemm(sc.data() + g * width + k0, width, 1, ws + k0 * cols, cols, std::min(kDepth, count - k0),
                       as + g * D + x, D, cols);
          }
        }
      }
    }
    for (int64_t i = 0; i < nr && r0 + i < tv; ++i) {
      const int64_t t = idx[r0 + i];
      const float l = m[i] == -INFINITY ? -INFINITY : m[i] + std::log(s[i]);
      lse[t] = l;
      loss[t] = l - zt[i];
      if (!with_grad) continue;
      const int64_t y = in.targets[t];
      const void* w = y < in.base_rows ? in.base : in.new_rows;
      const DType wdt = y < in.base_rows ? in.base_dtype : in.new_dtype;
      const int64_t row = y < in.base_rows ? y : y - in.base_rows;
      for (int64_t d = 0; d < D; ++d) dhat[t * D + d] = acc[i * D + d] / s[i] - load_float(w, wdt, row * D + d);
    }
  });
}

void new_rows_backward(const Inputs& in, const float* grad_loss, const float* lse, float* grad_new,
                       float* grad_new_bias, int64_t num_threads, int64_t isa) {
  const Kernels k = pick_kernels(isa, "rows_ce_new_rows_backward");
  const int64_t threads = cpu::resolve_threads(num_threads);
  const int64_t depth = k.score_depth > 0 ? k.score_depth : std::max<int64_t>(in.dim, 1);
  const int64_t N = in.new_count, D = in.dim;
  std::fill(grad_new, grad_new + N * D, 0.0f);
  if (grad_new_bias != nullptr) std::fill(grad_new_bias, grad_new_bias + N, 0.0f);
  const std::vector<int64_t> idx = valid_tokens(in);
  const int64_t tv = static_cast<int64_t>(idx.size()), tp = round_up(tv, kRows);
  if (tv == 0 || N == 0) return;
  const HiddenRows hidden = gather_hidden(in, idx, threads);
  const float* h = hidden.rows;
  // The gradient product reads the hidden rows in place. A copy in column
  // strips (as the forward packs the weight rows) was tried: no faster here
  // (2048 tokens x 1024: backward 1.27 vs 1.19-1.22 s on AVX-512, 1.71-1.85 vs
  // 1.69-1.79 s on AVX2) and 8 MiB more peak memory.
  constexpr int64_t kTb = 64;  // tokens per step of a tile's sweep
  cpu::parallel_for_items((N + kPanel - 1) / kPanel, threads, [&](int64_t tile) {
    const int64_t lo = tile * kPanel, count = std::min(kPanel, N - lo), col0 = in.base_rows + lo;
    std::vector<float> kp(static_cast<size_t>(kPanel * D)), term(kPanel);
    std::vector<float> gw(static_cast<size_t>(kPanel * D), 0.0f), gb(kPanel, 0.0f), z(kTb * kPanel);
    pack_panels(in.new_rows, in.new_dtype, lo, count, D, kp.data(), 1, k.pack_panel_f32);
    column_terms(in.new_bias, in.new_bias_dtype, lo, count, col0, in, kPanel, term.data());
    for (int64_t t0 = 0; t0 < tp; t0 += kTb) {
      const int64_t nb = std::min(kTb, tp - t0), real = std::min(kTb, tv - t0);
      for (int64_t d0 = 0; d0 == 0 || d0 < D; d0 += depth)  // (D = 0: one call, zeros)
        for (int64_t g = 0; g < nb; g += kRows)
          k.score(h + (t0 + g) * D + d0, D, kp.data() + d0 * kPanel, std::min(depth, D - d0),
                  z.data() + g * kPanel, kPanel, d0 > 0);
      for (int64_t r = 0; r < nb; ++r) {
        float* zr = z.data() + r * kPanel;
        if (r >= real) {
          std::fill(zr, zr + kPanel, 0.0f);
          continue;
        }
        const int64_t t = idx[t0 + r];
        k.softmax_grad_row(zr, term.data(), lse[t], grad_loss[t], in.targets[t] - col0, kPanel);
      }
      for (int64_t x = 0; x < D; x += k.strip) {
        const int64_t cols = std::min(k.strip, D - x);
        for (int64_t i = 0; i < count; i += kRows)
          k.gemm(z.data() + i, 1, kPanel, h + t0 * D + x, D, real, gw.data() + i * D + x, D, cols);
      }
      if (grad_new_bias != nullptr)
        for (int64_t j = 0; j < count; ++j)
          for (int64_t r = 0; r < real; ++r) gb[j] += z[r * kPanel + j];
    }
    std::copy(gw.begin(), gw.begin() + count * D, grad_new + lo * D);
    if (grad_new_bias != nullptr) std::copy(gb.begin(), gb.begin() + count, grad_new_bias + lo);
  });
}

}  // namespace rows_ce
}  // namespace lumo

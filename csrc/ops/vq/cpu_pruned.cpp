// Axis-pruned VQ search for small D (search_pruned in cpu_internal.h).
//
// The codes are packed in the order of one coordinate a (the one of largest
// variance over the codebook; bucketed, not fully sorted), the rows are
// grouped in the same order, and each group of kRows rows sweeps the tiles
// outward from its own keys x_a. For a row x and any code c,
//   ||x - c||^2 >= (x_a - c_a)^2,
// so a code whose key is g away from x_a has a real score cn - 2 x.c >=
// g^2 - ||x||^2 - (cn's rounding). Once g^2 exceeds the row's best exact score
// E plus ||x||^2 plus the bounds on every rounding involved, no code that far
// out can win or tie, and the sweep stops on that side: the suffix minimum
// of the tiles' smallest keys (and the prefix maximum of their largest) make
// the test hold for every tile beyond.
//
// Every tile the sweep visits goes through the screened kernels, which score
// exactly every code that can win (cpu_screen_body.h, cpu_iscreen_body.h).
// The lanes carry the codes' own indices and, seeing codes out of index
// order, take an equal score with a lower index, so the result is the exact
// kernel's, bit for bit, whatever order the tiles are visited in.
//
// Cost: bucketing and packing the codebook in key order (a second packing,
// skipped by PackedCodebook, which keeps the ordered copy) and the rows'
// order, against a sweep that at D = 4 visits about a sixth of the tiles and
// at D = 8 about two thirds (random normal data; data with structure along
// one coordinate does better). At D = 12 it visited 80% and measured slower
// than the full sweep, so it runs for D <= kPrunedMaxD only. A second level
// (slabs ordered by another coordinate) cut the visits at D = 8 to about
// 45% but measured slower: the per-tile checks and shorter runs cost more.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "abi/dtype.h"
#include "ops/vq/cpu_internal.h"

namespace lumo {
namespace cpu {
namespace vqi {

namespace {

// Tiles per slab, the step of a sweep: enough to amortise the per-step bound
// checks, few enough not to overshoot the stopping point. (Zen 4, N = 4096,
// K = 32768, D = 4, one axis: 4 tiles 3.5-4.4 ms, 16 tiles 2.5-3.2 ms.)
constexpr int64_t kSlabTiles = 16;

// Maps keys to `buckets` equal-width buckets over [lo, hi].
struct Buckets {
  double lo = 0.0, inv_width = 0.0;
  int64_t count = 1;
  int64_t of(float key) const {
    const double b = (static_cast<double>(key) - lo) * inv_width;
    if (!(b > 0.0)) return 0;  // below lo (NaN cannot occur: finite inputs)
    // Compared before the conversion: a key far above hi can give b >= 2^63.
    return b >= static_cast<double>(count - 1) ? count - 1 : static_cast<int64_t>(b);
  }
};

// A stable counting sort: the indices 0..count-1 ordered by bucket of key(i).
template <typename Key>
std::vector<int32_t> bucket_order(int64_t count, const Buckets& b, Key key) {
  std::vector<int64_t> start(static_cast<size_t>(b.count + 1), 0);
  std::vector<int32_t> bucket(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    bucket[i] = static_cast<int32_t>(b.of(key(i)));
    ++start[bucket[i] + 1];
  }
  for (int64_t i = 0; i < b.count; ++i) start[i + 1] += start[i];
  std::vector<int32_t> order(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) order[start[bucket[i]]++] = static_cast<int32_t>(i);
  return order;
}

// The key-ordered copy of cb ([k, d] fp32, finite) on `threads` threads;
// false when the codebook is constant along every coordinate.
bool order_codebook_f32(const Kernel& ker, const float* cb, int64_t k, int64_t d, int64_t threads,
                        KeyOrderedCodebook& out) {
  // The axis of largest variance over at most 4096 evenly spaced codes (only
  // a choice: any axis gives exact results).
  std::vector<double> sum(static_cast<size_t>(d), 0.0), sq(static_cast<size_t>(d), 0.0);
  const int64_t step = std::max<int64_t>(1, k / 4096);
  for (int64_t c = 0; c < k; c += step) {
    for (int64_t j = 0; j < d; ++j) {
      const double v = cb[c * d + j];
      sum[j] += v;
      sq[j] += v * v;
    }
  }
  std::vector<double> var(static_cast<size_t>(d));
  const double m = static_cast<double>((k + step - 1) / step);
  for (int64_t j = 0; j < d; ++j) var[j] = sq[j] / m - (sum[j] / m) * (sum[j] / m);
  const int axis = static_cast<int>(std::max_element(var.begin(), var.end()) - var.begin());
  float kmin = cb[axis], kmax = cb[axis];
  for (int64_t c = 1; c < k; ++c) {
    kmin = std::min(kmin, cb[c * d + axis]);
    kmax = std::max(kmax, cb[c * d + axis]);
  }
  if (!(kmax > kmin)) return false;
  const int W = ker.W;
  pack_layout(k, d, W, out.packed);
  const int64_t T = out.packed.tile, nt = out.packed.ntiles, slab = kSlabTiles * T;
  Buckets b;
  b.lo = kmin;
  b.count = nt;  // about one tile of codes per bucket
  b.inv_width = static_cast<double>(nt) / (static_cast<double>(kmax) - static_cast<double>(kmin));
  const std::vector<int32_t> order = bucket_order(k, b, [&](int64_t c) { return cb[c * d + axis]; });
  std::unique_ptr<float[]> sorted(new float[static_cast<size_t>(k * d)]);  // written in full below
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < d; ++j) sorted[i * d + j] = cb[order[i] * d + j];
  }
  const PackSource src{sorted.get(), static_cast<int>(DType::F32), kNormsCompute, nullptr};
  out.packed.bad_row = pack_parallel(ker, src, out.packed, threads);  // finite input: -1
  pack_int_tiles(ker, out.packed, threads);
  out.perm.assign(static_cast<size_t>(nt * T), std::numeric_limits<int32_t>::max());
  std::copy(order.begin(), order.end(), out.perm.begin());
  // Key ranges per slab (and their suffix minimum / prefix maximum).
  const int64_t ns = (nt + kSlabTiles - 1) / kSlabTiles;
  auto range = [&](int64_t i0, int64_t i1, int ax, float& lo, float& hi) {
    lo = std::numeric_limits<float>::infinity();
    hi = -lo;
    for (int64_t i = i0; i < std::min(k, i1); ++i) {
      lo = std::min(lo, sorted[i * d + ax]);
      hi = std::max(hi, sorted[i * d + ax]);
    }
  };
  out.slab_lo.resize(static_cast<size_t>(ns));
  out.slab_hi.resize(static_cast<size_t>(ns));
  for (int64_t q = 0; q < ns; ++q) range(q * slab, (q + 1) * slab, axis, out.slab_lo[q], out.slab_hi[q]);
  out.lo_suffix = out.slab_lo;
  out.hi_prefix = out.slab_hi;
  for (int64_t q = ns - 2; q >= 0; --q) out.lo_suffix[q] = std::min(out.lo_suffix[q], out.lo_suffix[q + 1]);
  for (int64_t q = 1; q < ns; ++q) out.hi_prefix[q] = std::max(out.hi_prefix[q], out.hi_prefix[q - 1]);
  out.axis = axis;
  for (int64_t t = 0; t < nt; ++t) out.max_sq = std::max<double>(out.max_sq, out.packed.bound[2 * t]);
  return true;
}

// One group of RR rows (row offset g in s; xn their squared norms, slack
// their rounding allowances) swept slab by slab outward from their keys; RR
// is kRows, or 6 for the fp32 screen's 6-row kernel.
template <int RR>
void sweep_group(const Kernel& ker, const KeyOrderedCodebook& kc, Scratch& s, int64_t g, const double* xn,
                 const double* slack, const IntScale* sc) {
  const VqPacked& p = kc.packed;
  const int W = ker.W;
  const int64_t d = p.d, nt = p.ntiles, ns = static_cast<int64_t>(kc.slab_lo.size());
  float* bv = s.bv.data() + g * W;
  int32_t* bi = s.bi.data() + g * W;
  auto scan_slab = [&](int64_t q) {
    const int64_t t0 = q * kSlabTiles, t1 = std::min(nt, t0 + kSlabTiles);
    if (RR == 6) {
      ker.screen6(s.x.data() + g * d, s.xn2.data() + g * d, d, p.tiles.data(), p.cn.data(), t0, t1, bv, bi,
                  s.beta.data() + g, kc.perm.data());
    } else if (sc != nullptr) {
      ker.iscreen(s.x.data() + g * d, s.xq.data() + g * ((d + 1) / 2), d, p.tiles.data(), p.cn.data(),
                  sc->args(p), t0, t1, bv, bi, s.beta.data() + g, s.b_int.data() + g, nullptr, kc.perm.data());
    } else {
      ker.screen(s.x.data() + g * d, s.xn2.data() + g * d, d, p.tiles.data(), p.cn.data(), t0, t1, bv, bi,
                 s.beta.data() + g, kc.perm.data());
    }
  };
  double key[RR], radius[RR];
  double key_mid = 0.0;
  for (int r = 0; r < RR; ++r) {
    key[r] = s.x[(g + r) * d + kc.axis];
    key_mid += key[r] / RR;
  }
  // A code whose key is more than sqrt(radius[r]) from row r's cannot win it.
  auto update_radii = [&]() {
    for (int r = 0; r < RR; ++r) {
      float e = bv[r * W];
      for (int l = 1; l < W; ++l) e = std::min(e, bv[r * W + l]);
      const double v = static_cast<double>(e) + xn[r] + slack[r];
      radius[r] = v + std::fabs(v) * 1e-9;  // +inf until the row has a finite best
    }
  };
  // Slabs from q on have keys >= lo_suffix[q]; slabs up to q, <= hi_prefix[q].
  auto right_done = [&](int64_t q) {
    for (int r = 0; r < RR; ++r) {
      const double gap = static_cast<double>(kc.lo_suffix[q]) - key[r];
      if (!(gap > 0.0 && gap * gap > radius[r])) return false;
    }
    return true;
  };
  auto left_done = [&](int64_t q) {
    for (int r = 0; r < RR; ++r) {
      const double gap = key[r] - static_cast<double>(kc.hi_prefix[q]);
      if (!(gap > 0.0 && gap * gap > radius[r])) return false;
    }
    return true;
  };
  const int64_t first = std::lower_bound(kc.lo_suffix.begin(), kc.lo_suffix.end(), key_mid) - kc.lo_suffix.begin();
  const int64_t start = std::clamp<int64_t>(first - 1, 0, ns - 1);
  scan_slab(start);
  int64_t right = start + 1, left = start;
  for (;;) {
    update_radii();
    const bool go_right = right < ns && !right_done(right);
    const bool go_left = left > 0 && !left_done(left - 1);
    if (!go_right && !go_left) break;
    if (go_right) scan_slab(right++);
    if (go_left) scan_slab(--left);
  }
}

}  // namespace

bool pruned_search_applies(const Kernel& ker, int64_t n, int64_t k, int64_t d, int norms) {
  const char* v = std::getenv("LUMO_VQ_PRUNE");  // read per call, as LUMO_VQ_SCREEN
  const bool off = v != nullptr && std::strcmp(v, "0") == 0;
  return !off && ker.screen != nullptr && norms == kNormsCompute && d <= kPrunedMaxD && k >= kPrunedMinCodes &&
         (n < 0 || n >= kPrunedMinRows);
}

std::shared_ptr<const KeyOrderedCodebook> order_codebook(const Kernel& ker, const void* cb, int cb_dtype,
                                                         int64_t k, int64_t d, int64_t threads) {
  // Non-finite codes: the regular path finds and reports them.
  if (!(max_abs_or_nan(cb, cb_dtype, k * d) <= std::numeric_limits<float>::max())) return nullptr;
  std::unique_ptr<float[]> converted;
  const float* cbf = static_cast<const float*>(cb);
  if (cb_dtype != static_cast<int>(DType::F32)) {
    converted.reset(new float[static_cast<size_t>(k * d)]);
    for (int64_t i = 0; i < k * d; ++i) converted[i] = load_float(cb, static_cast<DType>(cb_dtype), i);
    cbf = converted.get();
  }
  auto kc = std::make_shared<KeyOrderedCodebook>();
  if (!order_codebook_f32(ker, cbf, k, d, threads, *kc)) return nullptr;
  double max_cn = 0.0;
  for (int64_t t = 0; t < kc->packed.ntiles; ++t) max_cn = std::max<double>(max_cn, kc->packed.bound[2 * t + 1]);
  if (!(max_cn < 1e28)) return nullptr;
  return kc;
}

bool search_pruned(const Kernel& ker, const KeyOrderedCodebook& kc, const void* x, int x_dtype, int64_t n,
                   int64_t d, int64_t* codes, float* best, int64_t threads) {
  // Non-finite rows: the regular path finds and reports them.
  const float xmax = max_abs_or_nan(x, x_dtype, n * d);
  if (!(xmax <= std::numeric_limits<float>::max())) return false;
  const VqPacked& p = kc.packed;
  // Every row must be screenable (finite beta): |x| |c| far from overflow.
  if (!(std::sqrt(static_cast<double>(d)) * xmax * std::sqrt(kc.max_sq) < 1e34)) return false;
  // The rounding of cn against ||c||^2: at most (d + 1) 2^-24 (1 + ...) of it.
  const double cn_slack = kc.max_sq * static_cast<double>(d + 2) * std::ldexp(1.0, -23);

  // Rows in key order, by the codebook's buckets.
  std::vector<float> row_key(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) row_key[i] = load_float(x, static_cast<DType>(x_dtype), i * d + kc.axis);
  Buckets b;
  b.lo = kc.lo_suffix[0];
  b.count = p.ntiles;
  b.inv_width = static_cast<double>(p.ntiles) /
                std::max(1e-30, static_cast<double>(kc.hi_prefix.back()) - static_cast<double>(b.lo));
  const std::vector<int32_t> rows_in_order = bucket_order(n, b, [&](int64_t i) { return row_key[i]; });

  IntScale call_scale;
  const IntScale* icp =
      ker.iscreen != nullptr && prepare_int_call(p, x, x_dtype, n, call_scale) ? &call_scale : nullptr;
  const CodeBounds code_bounds_all = code_bounds(p, 0, p.ntiles);
  for_each_row_block(n, d, ker.W, threads, [&](int64_t, Scratch& s, int64_t r0, int64_t rows) {
    double xn[kRowBlock], slack[kRowBlock];
    {
      const int64_t padded = padded_rows(rows);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = rows_in_order[r0 + r];
        if (x_dtype == static_cast<int>(DType::F32)) {
          std::memcpy(&s.x[r * d], static_cast<const float*>(x) + src * d, static_cast<size_t>(d) * sizeof(float));
        } else {
          for (int64_t j = 0; j < d; ++j) s.x[r * d + j] = load_float(x, static_cast<DType>(x_dtype), src * d + j);
        }
      }
      std::fill(s.x.begin() + rows * d, s.x.begin() + padded * d, 0.0f);
      screen_bounds(p, code_bounds_all, s, padded);  // finite for every row (checked above)
      const IntScale* sc = icp;
      if (sc != nullptr) {
        const float bmax = max_abs_or_nan(s.x.data(), static_cast<int>(DType::F32), padded * d);
        if (bmax > 0.0f && bmax < 0.5f * sc->xmax && set_int_scale(p, bmax, 0, p.ntiles, s.block_scale)) {
          sc = &s.block_scale;
        }
        int_row_bounds(p, *sc, s, padded);
      }
      for (int64_t r = 0; r < padded; ++r) {
        double q = 0.0;
        for (int64_t j = 0; j < d; ++j) q += static_cast<double>(s.x[r * d + j]) * s.x[r * d + j];
        xn[r] = q * (1.0 + 1e-12);  // d <= 16 products of floats in double: nearly exact
        slack[r] = static_cast<double>(s.beta[r]) + cn_slack;
      }
      std::fill(s.bv.begin(), s.bv.begin() + padded * ker.W, std::numeric_limits<float>::infinity());
      std::fill(s.bi.begin(), s.bi.begin() + padded * ker.W, std::numeric_limits<int32_t>::max());
      // Groups of 6 rows first where the fp32 screen has them (as search_block).
      const int64_t rows6 = sc == nullptr && ker.screen6 != nullptr && d >= kScreen6MinD ? padded / 12 * 12 : 0;
      for (int64_t g = 0; g < rows6; g += 6) sweep_group<6>(ker, kc, s, g, xn + g, slack + g, sc);
      for (int64_t g = rows6; g < padded; g += kRows) sweep_group<kRows>(ker, kc, s, g, xn + g, slack + g, sc);
      for (int64_t r = 0; r < rows; ++r) {
        float v = s.bv[r * ker.W];
        int32_t i = s.bi[r * ker.W];
        for (int l = 1; l < ker.W; ++l) {
          if (vq::pair_less(s.bv[r * ker.W + l], s.bi[r * ker.W + l], v, i)) {
            v = s.bv[r * ker.W + l];
            i = s.bi[r * ker.W + l];
          }
        }
        const int64_t dst = rows_in_order[r0 + r];
        const bool none = i == std::numeric_limits<int32_t>::max();
        codes[dst] = none ? 0 : i;
        best[dst] = none ? std::numeric_limits<float>::infinity() : v;
      }
    }
  });
  return true;
}

}  // namespace vqi
}  // namespace cpu
}  // namespace lumo

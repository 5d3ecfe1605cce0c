// Internals shared by the CPU VQ kernels (cpu.cpp: packing and search;
// cpu_rvq.cpp: residual VQ). Not part of the kernel API (cpu.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

#include "ops/vq/math.h"
#include "runtime/isa.h"
#include "runtime/thread_pool.h"
#include "ops/vq/cpu.h"

namespace lumo {
namespace cpu {
namespace vqi {

constexpr int kRows = 4;                          // rows per micro-kernel call
constexpr int64_t kRowBlock = 64;                 // rows converted and searched together
constexpr int64_t kCodeBlockBytes = 128 * 1024;   // packed code data swept per row block
// When the screened kernel runs: D <= kScreenMaxD (the exact kernel's
// compare-and-blend per code is a large share of the work), or a sweep of at
// least Kernel::screen_min_tiles tiles (the exact re-scoring of new minima,
// about ln(tiles) per row, is then a small share). One thread on Zen 4, N =
// 16384, K = 1024, D = 128: AVX-512 (32 tiles) exact 58.7 ms, screened 53.8 ms
// (51.3 with 6-row groups), so 16 there; AVX2 (64 tiles) exact 49.8 ms,
// screened 50.9 ms, and RVQ at that shape 4-7% slower screened, so 128 there.
// K = 8192, D = 256 was 1.1-1.4x faster screened on both.
constexpr int64_t kScreenMaxD = 32;
constexpr int64_t kScreenMinTilesAvx512 = 16;
constexpr int64_t kScreenMinTilesAvx2 = 128;
// The integer screen (cpu_iscreen_body.h). Quantised values are at most
// int_screen_q(d) in magnitude, so that sum_j p_j q_j over the 2 ceil(d / 2)
// products stays within 2^29; with the norm terms clamped to 2^29 no int32
// lane overflows. That is 4095 (12 bits) up to D = 32, 2047 at D = 128 and
// 1447 at D = 256: coarser steps only loosen the bound (more re-scoring).
constexpr int32_t kIntQMax = 4095;
inline int32_t int_screen_q(int64_t d) {
  const double products = static_cast<double>(2 * ((d + 1) / 2));
  const double q = std::floor(std::sqrt(static_cast<double>(1 << 29) / products));
  return static_cast<int32_t>(std::min<double>(kIntQMax, q));
}
// Tiles per scale group of the integer screen (VqPacked::c_scale): a sweep
// converts its threshold once a group (and when its bound moves), so groups
// keep that cost off the per-tile loop. With the codes ordered by norm, 16
// tiles lost almost nothing against one scale per tile: for the prediction
// errors of the default image codec (K = 16384, D = 192) the tiles the screen
// lets through fell from 8.2% (one scale) to 0.25-0.26% (per tile or 16 tiles).
constexpr int64_t kIntGroupShift = 4;
constexpr int64_t kIntGroupTiles = int64_t{1} << kIntGroupShift;
inline int64_t int_groups(int64_t ntiles) { return (ntiles + kIntGroupTiles - 1) >> kIntGroupShift; }
// The largest D the integer screen runs at, where it is the default (AVX-512
// with BW) and where it is opted into (LUMO_VQ_SCREEN=int). Measured in
// docs/ops_vq.md.
constexpr int64_t kIntScreenMaxDAvx512 = 1024;
// On AVX2 the integer screen is the default from this D up (with AVX2 forced
// on Zen 4, two threads, FMA screen -> integer screen: D = 256, N = 4096,
// K = 8192 84-87 -> 64-72 ms, packed 83-89 -> 69-74 ms, on a quiet moment;
// interleaved in one process on a busier one, 84-85 -> 77-81 ms; the default
// image codec's encode, D = 192, 83 -> 52 ms; at D = 128, N = 16384, K = 1024
// vq_search 24-27 -> 25-31 ms, no gain).
constexpr int64_t kIntScreenMinDAvx2 = 160;
constexpr int64_t kIntScreenMaxDOptIn = 1024;
// Row groups of 6 for the fp32 screen, from this D up (one thread on Zen 4,
// AVX2 forced, N = 4096: D = 8 11.5 vs 12.0 ms, D = 16 21 vs 30 ms; at D = 4
// 6 rows were slower in a micro-benchmark, 13.8 vs 11.8 ms. AVX-512: N =
// 16384, K = 1024, D = 128 51.3 vs 53.8 ms; D = 256 and 32 within 2%).
constexpr int64_t kScreen6MinD = 8;
// Packing one codebook element costs about this many multiply-adds of search
// (thread decisions only).
constexpr double kPackCost = 4.0;
// Packed storage a calling thread keeps between calls (larger buffers are
// freed after the call): fresh pages cost about as much as packing them.
constexpr size_t kKeepBytes = size_t{32} << 20;

// Micro-kernel: running (value, index) minimum of kRows fp32 rows xs [kRows][d]
// against tiles [t0, t1); bv/bi [kRows][W] lane states.
using SearchFn = void (*)(const float* xs, int64_t d, const float* tiles, const float* cn, int64_t t0,
                          int64_t t1, float* bv, int32_t* bi);
// Packs one full tile of 2W fp32 codes (rows src[l * d .. l * d + d)) into
// tile [d][2W]; writes each code's sqnorm to norms [2W] and returns a bit mask
// of the codes holding inf/NaN. `next` (or null): the next tile's rows, to
// prefetch. Null where the instruction set has none.
using PackTileFn = uint32_t (*)(const float* src, const float* next, int64_t d, float* tile, float* norms);
// The screened micro-kernel (cpu_screen_body.h): SearchFn's results, bit for
// bit, with xn2 [kRows][d] = -2 * xs and beta [kRows] the rows' finite bounds
// on |FMA score - exact score| (screen_bounds). perm: null, or each packed
// lane's code index (a codebook packed out of index order: cpu_pruned.cpp).
using ScreenFn = void (*)(const float* xs, const float* xn2, int64_t d, const float* tiles, const float* cn,
                          int64_t t0, int64_t t1, float* bv, int32_t* bi, const float* beta, const int32_t* perm);

// The integer screen's per-call numbers a sweep reads (IntScale and VqPacked):
// cnq [ntiles * tile] the norm terms, in units of their group's u; per scale
// group g: inv_u [g] = 1 / u_g, u_window [g] = u_g (0 where a norm term of the
// group was clamped: its smallest score bounds nothing) and b_code [g] the
// code side of the bound, in units of u_g.
struct IntScreenArgs {
  const int32_t* itiles;
  const int32_t* cnq;
  const double* inv_u;
  const double* u_window;
  const double* b_code;
  // Per group, bounds on the codes' L2 norms (VqPacked::norm_lo/hi), or null
  // (no group skipping); cn_rel bounds |cn - |c|^2| / |c|^2 (computed norms).
  const double* norm_lo = nullptr;
  const double* norm_hi = nullptr;
  double cn_rel = 0.0;
};
// The integer-screened micro-kernel (cpu_iscreen_body.h): SearchFn's results,
// bit for bit, with xq [kRows][(d + 1) / 2] the rows' quantised pairs and
// b_row [kRows] the row side of their bounds (int_row_bounds); x_norm2 [kRows]
// the rows' squared norms in double where ia has norm bounds (else unread);
// perm as ScreenFn.
using IntScreenFn = void (*)(const float* xs, const int32_t* xq, int64_t d, const float* tiles, const float* cn,
                             const IntScreenArgs& ia, int64_t t0, int64_t t1, float* bv, int32_t* bi,
                             const float* beta, const double* b_row, const double* x_norm2,
                             const int32_t* perm);
// SearchFn for a codebook packed out of index order (perm as ScreenFn): the
// contract's arithmetic on every tile, ties to the lowest code index.
using SearchPermFn = void (*)(const float* xs, int64_t d, const float* tiles, const float* cn, int64_t t0,
                              int64_t t1, float* bv, int32_t* bi, const int32_t* perm);

struct Kernel;
bool int_screen_runs(const Kernel& ker, int64_t d);
struct Kernel {
  int W;
  SearchFn fn;
  int isa;
  PackTileFn pack_f32;
  ScreenFn screen;      // null where the instruction set has no FMA (or LUMO_VQ_SCREEN=0)
  IntScreenFn iscreen;  // null where it has no integer screen (or LUMO_VQ_SCREEN=0 or fp)
  int64_t int_max_d = 0;       // the integer screen runs for int_min_d <= D <= int_max_d
  ScreenFn screen6 = nullptr;  // screen for 6 rows a call (D >= kScreen6MinD), where faster
  int64_t screen_min_tiles = kScreenMinTilesAvx2;  // screen D > kScreenMaxD from this many tiles
  SearchPermFn exact_perm = nullptr;  // fn for a codebook out of index order (vector ISAs with FMA)
  int64_t int_min_d = 0;
};

// The integer screen's scale for a set of rows (a call, or one row block
// whose rows are much smaller than the call's largest): s_x and the codes'
// norm terms in units of u = s_x * c_scale.
struct IntScale {
  float xmax = 0.0f;   // the largest |x| of the rows
  float x_inv = 0.0f;  // rows are quantised as round(-2 x * x_inv); x_scale = 1 / x_inv
  double x_scale = 0.0;
  std::vector<int32_t> cnq;  // [ntiles * tile] the norm terms in units of their group's u
  std::vector<double> inv_u, u_window;  // [groups] as IntScreenArgs
  IntScreenArgs args(const VqPacked& p) const {
    IntScreenArgs a{p.itiles.data(), cnq.data(), inv_u.data(), u_window.data(), p.b_code.data()};
    if (!p.norm_lo.empty()) {
      a.norm_lo = p.norm_lo.data();
      a.norm_hi = p.norm_hi.data();
      a.cn_rel = static_cast<double>(p.d + 2) * 0x1p-23;  // fp32 sum of d squares, doubled
    }
    return a;
  }
};

Kernel pick_kernel(int isa, const char* op);
int isa_mask();

// Where tiles come from when they are packed during a search.
struct PackSource {
  const void* cb;        // [k, d] of dtype
  int dtype;
  int norms;             // VqNorms
  const float* cn_given;  // [k] for kNormsGiven
};

// Sizes p for a k x d codebook packed for W lanes, reusing its storage (the
// contents are unset until pack_tiles writes them).
void pack_layout(int64_t k, int64_t d, int W, VqPacked& p);
// Packs tiles [t0, t1) of a laid-out p, padding lanes included; returns the
// first code row holding inf/NaN in them, or -1. Tiles are independent, so
// any split gives the same p.
int64_t pack_tiles(const Kernel& ker, const PackSource& src, VqPacked& p, int64_t t0, int64_t t1);

// Packs all tiles of a laid-out p on up to `threads` threads; returns the
// first code row holding inf/NaN, or -1.
int64_t pack_parallel(const Kernel& ker, const PackSource& src, VqPacked& p, int64_t threads);

// The axis-pruned search (cpu_pruned.cpp) for D <= kPrunedMaxD, at least
// kPrunedMinCodes codes and kPrunedMinRows rows, computed norms (the bound it
// prunes with is the L2 distance). LUMO_VQ_PRUNE=0 turns it off. Zen 4, two
// threads, N = 4096, K = 16384: D = 8 4.3-5.7 vs 4.9-7.4 ms without it (both
// ISAs), D = 12 7.4-12 vs 5.9-10 ms (slower, so 8).
constexpr int64_t kPrunedMaxD = 8;
constexpr int64_t kPrunedMinCodes = 2048;
constexpr int64_t kPrunedMinRows = 256;
// The codebook in the order of one coordinate `axis` (bucketed: slabs of
// consecutive tiles hold ordered key ranges): a packed copy whose lane l of
// tile t is code perm[t * tile + l] (INT32_MAX past k), with each slab's key
// range slab_lo/hi and their suffix minimum lo_suffix and prefix maximum
// hi_prefix (bounds for every slab from q on / up to q).
struct KeyOrderedCodebook {
  VqPacked packed;
  std::vector<int32_t> perm;
  std::vector<float> slab_lo, slab_hi, lo_suffix, hi_prefix;
  int axis = 0;
  double max_sq = 0.0;  // the largest computed code norm
};
// Whether the pruned search applies to the shape (n = -1: any row count,
// for packing ahead of the rows) and norm mode, on this kernel.
bool pruned_search_applies(const Kernel& ker, int64_t n, int64_t k, int64_t d, int norms);
// The key-ordered copy of cb ([k, d] of cb_dtype, computed norms) on up to
// `threads` threads; null where the pruned search cannot use it (inf/NaN
// codes, a codebook constant along every coordinate, norms near overflow).
std::shared_ptr<const KeyOrderedCodebook> order_codebook(const Kernel& ker, const void* cb, int cb_dtype,
                                                         int64_t k, int64_t d, int64_t threads);
// vq_search's results (codes, best) for x [n, d] through the axis-pruned
// search of kc, bit for bit; false (nothing written) where it does not apply
// to these rows (inf/NaN, or values near overflow): the regular search then
// runs and reports what it finds.
bool search_pruned(const Kernel& ker, const KeyOrderedCodebook& kc, const void* x, int x_dtype, int64_t n,
                   int64_t d, int64_t* codes, float* best, int64_t threads);

// Per-thread buffers for one row block.
struct Scratch {
  std::vector<float> x;   // [kRowBlock][d] fp32 rows (zero past the last row)
  std::vector<float> bv;  // [kRowBlock][W] lane minima
  std::vector<int32_t> bi;
  std::vector<float> xn2;   // [kRowBlock][d] -2 * x, for the screened kernel
  std::vector<float> beta;  // [kRowBlock] screening bounds (+inf: no screening)
  std::vector<int32_t> xq;  // [kRowBlock][(d + 1) / 2] quantised pairs, for the integer screen
  std::vector<double> b_int;  // [kRowBlock] the row side of the integer-screen bounds
  std::vector<double> x_norm2;  // [kRowBlock] squared norms in double (the integer screen's group skipping)
  std::vector<float> x_spare;   // the block's rows in their own order while s.x holds them sorted by norm
  IntScale block_scale;       // this row block's own integer scale, where it has one
  Scratch(int64_t d, int W)
      : x(static_cast<size_t>(kRowBlock * d)), bv(static_cast<size_t>(kRowBlock * W)),
        bi(static_cast<size_t>(kRowBlock * W)), xn2(static_cast<size_t>(kRowBlock * d)),
        beta(static_cast<size_t>(kRowBlock)), xq(static_cast<size_t>(kRowBlock * ((d + 1) / 2))),
        b_int(static_cast<size_t>(kRowBlock)), x_norm2(static_cast<size_t>(kRowBlock)) {}
};

// Searches the `rows` fp32 rows in s.x against tiles [t0, t1) of p and writes
// each row's (value, index) minimum; index INT32_MAX when no lane ever won.
// With ic (prepared by prepare_int_call for this p) the integer screen runs
// where it applies; a row block whose largest |x| is under half the call's
// gets its own scale (one outlier row would otherwise leave the others few
// bits, and the screen would re-score nearly every tile).
void search_block(const Kernel& ker, const VqPacked& p, Scratch& s, int64_t rows, int64_t t0, int64_t t1,
                  float* val, int32_t* idx, const IntScale* ic = nullptr);

// Few rows: searches n rows against the code tiles of p split into `chunks`
// ranges, on up to `threads` threads, writing each chunk's per-row minima to
// pv/pi [chunks][n] (merge them with merge_chunk_minima). For each chunk u the
// thread c that takes it first calls pack(c, u, t0, t1) (tiles [t0, t1) of p
// must be packed when it returns), then load(c, r0, rows, s) to fill s.x with
// rows [r0, r0 + rows) (once per thread when n <= kRowBlock: the block stays).
// ic: as search_block's (p's integer copy packed before the call).
void search_tile_chunks(const Kernel& ker, const VqPacked& p, std::vector<Scratch>& scratch, int64_t threads,
                        int64_t chunks, int64_t n,
                        const std::function<void(int64_t, int64_t, int64_t, int64_t)>& pack,
                        const std::function<void(int64_t, int64_t, int64_t, Scratch&)>& load, float* pv,
                        int32_t* pi, const IntScale* ic = nullptr);

// The integer screen's copy of a packed p (p.itiles, c_scale, b_code) on up
// to `threads` threads, where ker has that screen, d <= kIntScreenMaxD and the
// codebook is finite (p.bad_row < 0); else it leaves p.itiles empty.
void pack_int_tiles(const Kernel& ker, VqPacked& p, int64_t threads);
// The per-call part of the integer screen for rows x ([n, p.d] of x_dtype):
// false (no integer screen) when p has no integer copy, every row is zero or
// not finite, or a norm term would not fit.
bool prepare_int_call(const VqPacked& p, const void* x, int x_dtype, int64_t n, IntScale& ic);
// The scale of rows whose largest |x| is xmax (finite, > 0), with the norm
// terms of tiles [t0, t1) (sc.cnq holds p.ntiles tiles; others are unset):
// false when a norm term would not fit or the scale is not finite.
bool set_int_scale(const VqPacked& p, float xmax, int64_t t0, int64_t t1, IntScale& sc);

// Fills s.xn2 and s.beta [padded] for the screens against tiles [t0, t1) of
// p: beta bounds |screening score - exact score| (+inf: the row cannot be
// screened). Returns whether any row can be screened.
bool screen_bounds(const VqPacked& p, Scratch& s, int64_t padded, int64_t t0, int64_t t1);
// The code side of those bounds over tiles [t0, t1): the largest code norm
// and |cn|, and whether both are finite (and below 1e36).
struct CodeBounds {
  double max_sq = 0.0, max_cn = 0.0;
  bool finite = true;
};
CodeBounds code_bounds(const VqPacked& p, int64_t t0, int64_t t1);
bool screen_bounds(const VqPacked& p, const CodeBounds& codes, Scratch& s, int64_t padded);
// Fills s.xq, s.b_int and s.win [padded] for the integer screen at scale ic
// (s.beta first, from screen_bounds).
void int_row_bounds(const VqPacked& p, const IntScale& ic, Scratch& s, int64_t padded);
// The largest |v| of count values of dtype, as fp32, or NaN when one is inf/NaN.
float max_abs_or_nan(const void* x, int dtype, int64_t count);

// Calls fn(c, s, r0, rows) for every block of kRowBlock rows of n, on up to
// `threads` threads (blocks handed out by a counter); c is the thread's slot,
// s its own Scratch for rows of d values and W lanes.
template <typename Fn>
void for_each_row_block(int64_t n, int64_t d, int W, int64_t threads, Fn fn);

// Converts rows [r0, r0 + rows) of x into s.x (zero-padded to a multiple of
// kRows); returns the first one holding inf/NaN, or -1.
int64_t load_rows(const void* x, int dtype, int64_t d, int64_t r0, int64_t rows, Scratch& s);

inline int64_t padded_rows(int64_t rows) { return (rows + kRows - 1) / kRows * kRows; }

// Lowest bad row over threads: each thread reports its own first one.
inline void note_bad(std::vector<int64_t>& first_bad, int64_t c, int64_t row) {
  if (row >= 0 && (first_bad[c] < 0 || row < first_bad[c])) first_bad[c] = row;
}

inline int64_t lowest_bad(const std::vector<int64_t>& first_bad) {
  int64_t bad = -1;
  for (int64_t b : first_bad) {
    if (b >= 0 && (bad < 0 || b < bad)) bad = b;
  }
  return bad;
}

// Status of the searches: -1 ok, r >= 0 x row r is not finite, -2 - c
// codebook row c is not finite (x rows are reported first).
inline int64_t status(int64_t bad_x, int64_t bad_cb) {
  if (bad_x >= 0) return bad_x;
  if (bad_cb >= 0) return -2 - bad_cb;
  return -1;
}

// Row r's (value, index) minimum over the per-chunk minima pv/pi [chunks][n]
// of a search split over code chunks. Chunks hold increasing codes and the
// order is strict, so equal values keep the lowest code, as in one sweep.
inline void merge_chunk_minima(const float* pv, const int32_t* pi, int64_t n, int64_t chunks, int64_t r,
                               float& bv, int32_t& bi) {
  bv = pv[r];
  bi = pi[r];
  for (int64_t u = 1; u < chunks; ++u) {
    if (vq::pair_less(pv[u * n + r], pi[u * n + r], bv, bi)) {
      bv = pv[u * n + r];
      bi = pi[u * n + r];
    }
  }
}

inline int64_t split_begin(int64_t n, int64_t chunks, int64_t c) {
  return n / chunks * c + std::min(c, n % chunks);
}

// A dynamic work counter: next() hands out 0, 1, ... until `total`, then -1.
class WorkCounter {
 public:
  explicit WorkCounter(int64_t total) : total_(total) {}
  int64_t next() {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    return i < total_ ? i : -1;
  }

 private:
  const int64_t total_;
  std::atomic<int64_t> next_{0};
};

template <typename Fn>
void for_each_row_block(int64_t n, int64_t d, int W, int64_t threads, Fn fn) {
  const int64_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  threads = std::max<int64_t>(1, std::min(threads, row_blocks));
  std::vector<Scratch> scratch;
  scratch.reserve(static_cast<size_t>(threads));
  for (int64_t c = 0; c < threads; ++c) scratch.emplace_back(d, W);
  WorkCounter work(row_blocks);
  run_parallel(threads - 1, [&](int64_t c) {
    for (int64_t b; (b = work.next()) >= 0;) {
      const int64_t r0 = b * kRowBlock;
      fn(c, scratch[c], r0, std::min(kRowBlock, n - r0));
    }
  });
}

// The tiles a screened sweep defers to exact scoring, per row, with the
// smallest screening score of each (the rule: cpu_screen_body.h).
template <typename Score, int Rows>
struct DeferredTiles {
  static constexpr int kMax = 16;
  int32_t tile[Rows][kMax];
  Score low[Rows][kMax];
  int count[Rows] = {};
  bool full(int r) const { return count[r] == kMax; }
  void add(int r, int64_t t, Score m) {
    tile[r][count[r]] = static_cast<int32_t>(t);
    low[r][count[r]++] = m;
  }
  // Scores row r's tiles still at or below thr, in the order added; score(t)
  // returns the threshold its exact scores allow, and thr keeps the lowest.
  // (A NaN smallest score, a tile of padding lanes only, is scored too.)
  template <typename Fn>
  void drain(int r, Score& thr, Fn score) {
    for (int i = 0; i < count[r]; ++i) {
      if (!(low[r][i] > thr)) thr = std::min(thr, score(tile[r][i]));
    }
    count[r] = 0;
  }
  // Calls fn(tile, low) for each of row r's tiles in the order added, then
  // empties the list (for thresholds that differ from tile to tile).
  template <typename Fn>
  void drain_each(int r, Fn fn) {
    for (int i = 0; i < count[r]; ++i) fn(tile[r][i], low[r][i]);
    count[r] = 0;
  }
};

// Threads worth starting for `work` multiply-adds (a start costs ~30 us).
inline int64_t useful_threads(int64_t num_threads, double work) {
  return std::max<int64_t>(1, std::min<int64_t>(num_threads, static_cast<int64_t>(work / 2.0e6)));
}

void check_common(const char* op, int64_t n, int64_t d, int64_t k, int dtype, int64_t num_threads);

}  // namespace vqi
}  // namespace cpu
}  // namespace lumo

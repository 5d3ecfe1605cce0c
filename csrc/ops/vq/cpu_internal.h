// Internals shared by the CPU VQ kernels (cpu.cpp: packing and search;
// cpu_rvq.cpp: residual VQ). Not part of the kernel API (cpu.h).
#pragma once

#include <algorithm>
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
// The integer screen (cpu_iscreen_body.h) for D <= kIntScreenMaxD: |q| <=
// kIntQ keeps sum_j p_j q_j within 2^28 and the norm terms are clamped to
// 2^29, so no int32 lane overflows. At larger D the fp32 screen is used.
constexpr int64_t kIntScreenMaxD = 16;
constexpr int32_t kIntQ = 4095;
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
// on |FMA score - exact score| (screen_bounds).
using ScreenFn = void (*)(const float* xs, const float* xn2, int64_t d, const float* tiles, const float* cn,
                          int64_t t0, int64_t t1, float* bv, int32_t* bi, const float* beta);

// The integer-screened micro-kernel (cpu_iscreen_body.h): SearchFn's results,
// bit for bit, with xq [kRows][(d + 1) / 2] the rows' quantised pairs, itiles
// and cnq the codes' (VqPacked::itiles, IntCall::cnq), b_int [kRows] the rows'
// bounds in units of u (int_row_bounds).
using IntScreenFn = void (*)(const float* xs, const int32_t* xq, int64_t d, const float* tiles, const float* cn,
                             const int32_t* itiles, const int32_t* cnq, int64_t t0, int64_t t1, float* bv,
                             int32_t* bi, const float* beta, const double* b_int, double u);

struct Kernel {
  int W;
  SearchFn fn;
  int isa;
  PackTileFn pack_f32;
  ScreenFn screen;      // null where the instruction set has no FMA (or LUMO_VQ_SCREEN=0)
  IntScreenFn iscreen;  // null where it has no integer screen (or LUMO_VQ_SCREEN=0 or fp)
  int64_t int_max_d = 0;       // the integer screen runs for D <= int_max_d
  ScreenFn screen6 = nullptr;  // screen for 6 rows a call (D >= kScreen6MinD), where faster
  int64_t screen_min_tiles = kScreenMinTilesAvx2;  // screen D > kScreenMaxD from this many tiles
};

// The per-call part of the integer screen: the rows' scale s_x (one for the
// call) and the codes' norm terms in units of u = s_x * c_scale.
struct IntCall {
  double x_scale = 0.0, u = 0.0;
  std::vector<int32_t> cnq;  // [ntiles * tile]
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

// Per-thread buffers for one row block.
struct Scratch {
  std::vector<float> x;   // [kRowBlock][d] fp32 rows (zero past the last row)
  std::vector<float> bv;  // [kRowBlock][W] lane minima
  std::vector<int32_t> bi;
  std::vector<float> xn2;   // [kRowBlock][d] -2 * x, for the screened kernel
  std::vector<float> beta;  // [kRowBlock] screening bounds (+inf: no screening)
  std::vector<int32_t> xq;  // [kRowBlock][(d + 1) / 2] quantised pairs, for the integer screen
  std::vector<double> b_int;  // [kRowBlock] integer-screen bounds
  Scratch(int64_t d, int W)
      : x(static_cast<size_t>(kRowBlock * d)), bv(static_cast<size_t>(kRowBlock * W)),
        bi(static_cast<size_t>(kRowBlock * W)), xn2(static_cast<size_t>(kRowBlock * d)),
        beta(static_cast<size_t>(kRowBlock)), xq(static_cast<size_t>(kRowBlock * ((d + 1) / 2))),
        b_int(static_cast<size_t>(kRowBlock)) {}
};

// Searches the `rows` fp32 rows in s.x against tiles [t0, t1) of p and writes
// each row's (value, index) minimum; index INT32_MAX when no lane ever won.
// With ic (prepared by prepare_int_call for this p) the integer screen runs
// where it applies.
void search_block(const Kernel& ker, const VqPacked& p, Scratch& s, int64_t rows, int64_t t0, int64_t t1,
                  float* val, int32_t* idx, const IntCall* ic = nullptr);

// Few rows: searches n rows against the code tiles of p split into `chunks`
// ranges, on up to `threads` threads, writing each chunk's per-row minima to
// pv/pi [chunks][n] (merge them with merge_chunk_minima). For each chunk u the
// thread c that takes it first calls pack(c, u, t0, t1) (tiles [t0, t1) of p
// must be packed when it returns), then load(c, r0, rows, s) to fill s.x with
// rows [r0, r0 + rows) (once per thread when n <= kRowBlock: the block stays).
void search_tile_chunks(const Kernel& ker, const VqPacked& p, std::vector<Scratch>& scratch, int64_t threads,
                        int64_t chunks, int64_t n,
                        const std::function<void(int64_t, int64_t, int64_t, int64_t)>& pack,
                        const std::function<void(int64_t, int64_t, int64_t, Scratch&)>& load, float* pv,
                        int32_t* pi);

// The integer screen's copy of a packed p (p.itiles, c_scale, c_l1max) on up
// to `threads` threads, where ker has that screen, d <= kIntScreenMaxD and the
// codebook is finite (p.bad_row < 0); else it leaves p.itiles empty.
void pack_int_tiles(const Kernel& ker, VqPacked& p, int64_t threads);
// The per-call part of the integer screen for rows x ([n, p.d] of x_dtype):
// false (no integer screen) when p has no integer copy, every row is zero or
// not finite, or a norm term would not fit.
bool prepare_int_call(const VqPacked& p, const void* x, int x_dtype, int64_t n, IntCall& ic);

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

// Threads worth starting for `work` multiply-adds (a start costs ~30 us).
inline int64_t useful_threads(int64_t num_threads, double work) {
  return std::max<int64_t>(1, std::min<int64_t>(num_threads, static_cast<int64_t>(work / 2.0e6)));
}

void check_common(const char* op, int64_t n, int64_t d, int64_t k, int dtype, int64_t num_threads);

}  // namespace vqi
}  // namespace cpu
}  // namespace lumo

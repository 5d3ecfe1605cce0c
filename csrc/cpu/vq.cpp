// CPU VQ kernels: fused nearest-code search (no N x K matrix), RVQ encode and decode.
//
// Plan: the codebook is converted to fp32 once and packed into tiles of 2*W
// codes laid out [tile][d][2W] (W = SIMD lanes), so the micro-kernel
// (vq_search_body.h) loads one code vector per dimension and broadcasts the
// row value. Rows are processed in blocks of 64 (converted to fp32 in a
// thread-local tile), codes in blocks of about 128 KiB of packed data that stay
// in L2 while the row blocks sweep them: tiny D keeps the whole working set in
// registers and L1, large D reuses each code block across 64 rows. Extra
// memory: the packed codebook (K*D fp32, O(K) for a given D) plus O(rows) per
// thread. Threads split rows (or, for few rows, code tiles) into contiguous
// ranges; every score is computed the same way whatever the split, and the
// (value, index) minimum is a strict total order, so results never depend on
// the thread count.
#include "cpu/vq.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <system_error>
#include <thread>
#include <vector>

#include "common/checks.h"
#include "common/vq.h"

// The contract forbids fusing a*b+c into an FMA. GCC contracts by default in
// C++ (AVX-512F has FMA, so the avx512 region would), Clang within one
// expression: switch contraction off for this file.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace lumo {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------
// Micro-kernels, one per instruction set.
// ---------------------------------------------------------------------------

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
inline I iload(const int32_t* p) { return *p; }
inline void istore(int32_t* p, I v) { *p = v; }
inline I iramp(int32_t base) { return base; }
inline void vupdate(V& bv, I& bi, V s, I idx) {
  if (s < bv) {
    bv = s;
    bi = idx;
  }
}
#include "cpu/vq_search_body.h"
}  // namespace scalar

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LUMO_VQ_X86 1

// No "fma" in these targets: the compiler then cannot fuse mul and add.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
namespace avx2 {
constexpr int W = 8;
using V = __m256;
using I = __m256i;
inline V vzero() { return _mm256_setzero_ps(); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V vbcast(float f) { return _mm256_set1_ps(f); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
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
#include "cpu/vq_search_body.h"
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif
namespace avx512 {
constexpr int W = 16;
using V = __m512;
using I = __m512i;
inline V vzero() { return _mm512_setzero_ps(); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V vbcast(float f) { return _mm512_set1_ps(f); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
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
#include "cpu/vq_search_body.h"
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86

enum Isa : int { kIsaAuto = 0, kIsaScalar = 1, kIsaAvx2 = 2, kIsaAvx512 = 3 };

using SearchFn = void (*)(const float*, int64_t, const float*, const float*, int64_t, int64_t,
                          float*, int32_t*);

struct Kernel {
  int W;
  SearchFn fn;
  int isa;
};

int isa_mask() {
  int mask = 1 << kIsaScalar;
#ifdef LUMO_VQ_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) mask |= 1 << kIsaAvx2;
  if (__builtin_cpu_supports("avx512f")) mask |= 1 << kIsaAvx512;
#endif
  return mask;
}

Kernel pick_kernel(int isa, const char* op) {
  const int mask = isa_mask();
  if (isa == kIsaAuto) isa = (mask >> kIsaAvx512 & 1) ? kIsaAvx512 : (mask >> kIsaAvx2 & 1) ? kIsaAvx2 : kIsaScalar;
  LUMO_CHECK(isa >= kIsaScalar && isa <= kIsaAvx512 && (mask >> isa & 1), op,
             "an instruction set this CPU runs (isa bit in vq_isa_mask())", isa);
#ifdef LUMO_VQ_X86
  if (isa == kIsaAvx512) return {avx512::W, &avx512::search_rows, isa};
  if (isa == kIsaAvx2) return {avx2::W, &avx2::search_rows, isa};
#endif
  return {scalar::W, &scalar::search_rows, kIsaScalar};
}

constexpr int kRows = 4;          // rows per micro-kernel call (R in the body)
constexpr int64_t kRowBlock = 64;  // rows converted and searched together
constexpr int64_t kCodeBlockBytes = 128 * 1024;  // packed code data swept per row block

// ---------------------------------------------------------------------------
// Packed codebook.
// ---------------------------------------------------------------------------

using Packed = VqPacked;

// Sizes p for a k x d codebook packed for W lanes (contents unset).
void pack_layout(int64_t k, int64_t d, int W, Packed& p) {
  p.k = k;
  p.d = d;
  p.tile = 2 * W;
  p.ntiles = (k + p.tile - 1) / p.tile;
  p.tiles.assign(static_cast<size_t>(p.ntiles * d * p.tile), 0.0f);
  p.cn.assign(static_cast<size_t>(p.ntiles * p.tile), std::numeric_limits<float>::quiet_NaN());
}

// Packs tiles [t0, t1) of a laid-out p; returns the first code row holding
// inf/NaN in them, or -1. Tiles are independent, so any split gives the same p.
int64_t pack_tiles(const void* cb, int dtype, int norms, const float* cn_given, Packed& p, int64_t t0,
                   int64_t t1) {
  const int64_t k = p.k, d = p.d, T = p.tile;
  std::vector<float> acc(static_cast<size_t>(T));
  std::vector<uint8_t> ok(static_cast<size_t>(T));
  int64_t bad = -1;
  // Tile by tile: contiguous writes, and the norms of the tile's codes as
  // independent lanes (each lane still sums in the order j = 0..d-1), so the
  // compiler vectorises the fp32 case.
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c0 = t * T, lanes = std::min(T, k - c0);
    float* tile = p.tiles.data() + t * d * T;
    std::fill(acc.begin(), acc.end(), 0.0f);
    std::fill(ok.begin(), ok.end(), uint8_t{1});
    for (int64_t j = 0; j < d; ++j) {
      float* dst = tile + j * T;
      if (dtype == vq::kF32) {
        const float* src = static_cast<const float*>(cb) + c0 * d + j;
        for (int64_t l = 0; l < lanes; ++l) dst[l] = src[l * d];
      } else {
        for (int64_t l = 0; l < lanes; ++l) dst[l] = vq::load_as_float(cb, dtype, (c0 + l) * d + j);
      }
      for (int64_t l = 0; l < T; ++l) {
        const float v = dst[l];
        acc[l] = vq::add_rn(acc[l], vq::mul_rn(v, v));
        ok[l] &= static_cast<uint8_t>(std::fabs(v) <= std::numeric_limits<float>::max());
      }
    }
    for (int64_t l = 0; l < lanes; ++l) {
      if (!ok[l] && bad < 0) bad = c0 + l;
      p.cn[c0 + l] = norms == kNormsCompute ? acc[l] : norms == kNormsGiven ? cn_given[c0 + l] : 0.0f;
    }
  }
  return bad;
}

// Returns the first code row holding inf/NaN, or -1.
int64_t pack(const void* cb, int dtype, int64_t k, int64_t d, int norms, const float* cn_given,
             int W, Packed& p) {
  pack_layout(k, d, W, p);
  return pack_tiles(cb, dtype, norms, cn_given, p, 0, p.ntiles);
}

// ---------------------------------------------------------------------------
// Row-block driver.
// ---------------------------------------------------------------------------

// Per-thread buffers for one row block.
struct Scratch {
  std::vector<float> x;   // [kRowBlock][d] fp32 rows (zero past the last row)
  std::vector<float> bv;  // [kRowBlock][W] lane minima
  std::vector<int32_t> bi;
  Scratch(int64_t d, int W)
      : x(static_cast<size_t>(kRowBlock * d)), bv(static_cast<size_t>(kRowBlock * W)),
        bi(static_cast<size_t>(kRowBlock * W)) {}
};

int64_t tiles_per_block(const Packed& p) {
  return std::max<int64_t>(1, kCodeBlockBytes / (p.d * p.tile * static_cast<int64_t>(sizeof(float))));
}

// Searches the `rows` fp32 rows in s.x against tiles [t0, t1) and writes each
// row's (value, index) minimum; index INT32_MAX when no lane ever won.
void search_block(const Kernel& ker, const Packed& p, Scratch& s, int64_t rows, int64_t t0,
                  int64_t t1, float* val, int32_t* idx) {
  const int W = ker.W;
  const int64_t padded = (rows + kRows - 1) / kRows * kRows;
  std::fill(s.bv.begin(), s.bv.begin() + padded * W, std::numeric_limits<float>::infinity());
  std::fill(s.bi.begin(), s.bi.begin() + padded * W, std::numeric_limits<int32_t>::max());
  const int64_t tb = tiles_per_block(p);
  for (int64_t kb = t0; kb < t1; kb += tb) {
    const int64_t ke = std::min(t1, kb + tb);
    for (int64_t rb = 0; rb < padded; rb += kRows) {
      ker.fn(s.x.data() + rb * p.d, p.d, p.tiles.data(), p.cn.data(), kb, ke, s.bv.data() + rb * W,
             s.bi.data() + rb * W);
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
    val[r] = bv;
    idx[r] = bi;
  }
}

// Converts rows [r0, r0 + rows) into s.x; returns the first one holding
// inf/NaN, or -1 (the search still runs; the caller reports the row).
int64_t load_rows(const void* x, int dtype, int64_t d, int64_t r0, int64_t rows, Scratch& s) {
  const int64_t padded = (rows + kRows - 1) / kRows * kRows;
  int64_t bad = -1;
  for (int64_t r = 0; r < rows; ++r) {
    bool finite = true;
    for (int64_t j = 0; j < d; ++j) {
      const float v = vq::load_as_float(x, dtype, (r0 + r) * d + j);
      s.x[r * d + j] = v;
      finite = finite && std::isfinite(v);
    }
    if (!finite && bad < 0) bad = r0 + r;
  }
  std::fill(s.x.begin() + rows * d, s.x.begin() + padded * d, 0.0f);
  return bad;
}

// Lowest bad row over threads: each thread reports its own first one.
void note_bad(std::vector<int64_t>& first_bad, int64_t c, int64_t row) {
  if (row >= 0 && (first_bad[c] < 0 || row < first_bad[c])) first_bad[c] = row;
}

int64_t lowest_bad(const std::vector<int64_t>& first_bad) {
  int64_t bad = -1;
  for (int64_t b : first_bad) {
    if (b >= 0 && (bad < 0 || b < bad)) bad = b;
  }
  return bad;
}

// Status of vq_search / rvq_encode: -1 ok, r >= 0 x row r is not finite,
// -2 - c codebook row c is not finite (x rows are reported first).
int64_t status(int64_t bad_x, int64_t bad_cb) {
  if (bad_x >= 0) return bad_x;
  if (bad_cb >= 0) return -2 - bad_cb;
  return -1;
}

// Runs fn(c) for c in [0, chunks) on up to `chunks` threads (the caller's
// thread takes chunk 0 and any chunk whose thread could not start).
template <typename Fn>
void parallel_chunks(int64_t chunks, const Fn& fn) {
  if (chunks <= 1) {
    if (chunks == 1) fn(0);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  int64_t next = 1;
  try {
    for (; next < chunks; ++next) workers.emplace_back(fn, next);
  } catch (const std::system_error&) {
  }
  fn(0);
  for (int64_t c = next; c < chunks; ++c) fn(c);
  for (auto& w : workers) w.join();
}

int64_t split_begin(int64_t n, int64_t chunks, int64_t c) {
  return n / chunks * c + std::min(c, n % chunks);
}

// pack() on `threads` threads (same result: tiles are independent).
int64_t pack_parallel(const void* cb, int dtype, int64_t k, int64_t d, int W, Packed& p,
                      int64_t threads) {
  pack_layout(k, d, W, p);
  std::vector<int64_t> bad(static_cast<size_t>(threads), -1);
  parallel_chunks(threads, [&](int64_t c) {
    bad[static_cast<size_t>(c)] = pack_tiles(cb, dtype, kNormsCompute, nullptr, p,
                                             split_begin(p.ntiles, threads, c),
                                             split_begin(p.ntiles, threads, c + 1));
  });
  for (int64_t b : bad) {
    if (b >= 0) return b;  // chunks are in code order: the first one found is the lowest
  }
  return -1;
}

int64_t resolve_threads(int64_t num_threads) {
  if (num_threads == 0) {
    num_threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  }
  return num_threads;
}

// Threads worth starting for `work` multiply-adds (a start costs ~30 us).
int64_t useful_threads(int64_t num_threads, double work) {
  return std::max<int64_t>(1, std::min<int64_t>(num_threads, static_cast<int64_t>(work / 2.0e6)));
}

void check_common(const char* op, int64_t n, int64_t d, int64_t k, int dtype,
                  int64_t num_threads) {
  LUMO_CHECK(n >= 0, op, "n >= 0", n);
  LUMO_CHECK(d >= 1, op, "d >= 1", d);
  LUMO_CHECK(k >= 1, op, "k >= 1 (a non-empty codebook)", k);
  LUMO_CHECK_RANGE(k < std::numeric_limits<int32_t>::max() - 64, op, "k < 2^31 - 64", k);
  LUMO_CHECK(dtype == vq::kF32 || dtype == vq::kF16 || dtype == vq::kBF16, op,
             "dtype code 0 (fp32), 1 (fp16) or 2 (bf16)", dtype);
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0", num_threads);
}

}  // namespace

int vq_isa_mask() { return isa_mask(); }

std::shared_ptr<const VqPacked> vq_pack(const void* cb, int cb_dtype, int64_t k, int64_t d,
                                        int norms, const float* cn_given, int isa) {
  constexpr const char* op = "vq_pack";
  check_common(op, 0, d, k, cb_dtype, 0);
  LUMO_CHECK(norms == kNormsCompute || norms == kNormsGiven || norms == kNormsZero, op,
             "norms mode 0, 1 or 2", norms);
  LUMO_CHECK(cb != nullptr, op, "a non-null codebook pointer", "null");
  LUMO_CHECK(norms != kNormsGiven || cn_given, op, "non-null norms for norms mode 1", "null");
  const Kernel ker = pick_kernel(isa, op);
  auto p = std::make_shared<VqPacked>();
  p->isa = ker.isa;
  p->bad_row = pack(cb, cb_dtype, k, d, norms, cn_given, ker.W, *p);
  return p;
}

int64_t vq_search(const void* x, int x_dtype, int64_t n, int64_t d, const void* cb, int cb_dtype,
                  int64_t k, int norms, const float* cn_given, int64_t* codes, float* best,
                  int64_t num_threads, int isa) {
  constexpr const char* op = "vq_search";
  check_common(op, n, d, k, x_dtype, num_threads);
  LUMO_CHECK(cb_dtype == vq::kF32 || cb_dtype == vq::kF16 || cb_dtype == vq::kBF16, op,
             "codebook dtype code 0, 1 or 2", cb_dtype);
  LUMO_CHECK(norms == kNormsCompute || norms == kNormsGiven || norms == kNormsZero, op,
             "norms mode 0, 1 or 2", norms);
  pick_kernel(isa, op);
  if (n == 0) return -1;
  LUMO_CHECK(x && cb && codes && best, op, "non-null x, codebook, codes and best pointers", "null");
  LUMO_CHECK(norms != kNormsGiven || cn_given, op, "non-null norms for norms mode 1", "null");
  const auto p = vq_pack(cb, cb_dtype, k, d, norms, cn_given, isa);
  const int64_t bad_x = vq_search_packed(*p, x, x_dtype, n, d, codes, best, num_threads);
  return status(bad_x, p->bad_row);
}

int64_t vq_search_packed(const VqPacked& p, const void* x, int x_dtype, int64_t n, int64_t d,
                         int64_t* codes, float* best, int64_t num_threads) {
  constexpr const char* op = "vq_search";
  check_common(op, n, d, p.k, x_dtype, num_threads);
  LUMO_CHECK(d == p.d, op, "rows of the packed codebook's dimension", d);
  const Kernel ker = pick_kernel(p.isa, op);
  LUMO_CHECK(ker.W * 2 == p.tile, op, "a codebook packed for this instruction set", p.tile);
  if (n == 0) return -1;
  LUMO_CHECK(x && codes && best, op, "non-null x, codes and best pointers", "null");
  const int64_t k = p.k;
  const int64_t threads =
      useful_threads(resolve_threads(num_threads), static_cast<double>(n) * k * d);
  std::vector<int64_t> first_bad(static_cast<size_t>(threads), -1);

  // Few rows: split the code tiles instead and merge the per-thread minima.
  const int64_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  if (threads > 1 && row_blocks < 2 * threads && p.ntiles >= 4 * threads) {
    std::vector<float> pv(static_cast<size_t>(threads * n));
    std::vector<int32_t> pi(static_cast<size_t>(threads * n));
    parallel_chunks(threads, [&](int64_t c) {
      Scratch s(d, ker.W);
      const int64_t t0 = split_begin(p.ntiles, threads, c), t1 = split_begin(p.ntiles, threads, c + 1);
      for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, n - r0);
        note_bad(first_bad, c, load_rows(x, x_dtype, d, r0, rows, s));
        search_block(ker, p, s, rows, t0, t1, pv.data() + c * n + r0, pi.data() + c * n + r0);
      }
    });
    for (int64_t r = 0; r < n; ++r) {
      float bv = pv[r];
      int32_t bi = pi[r];
      for (int64_t c = 1; c < threads; ++c) {
        if (vq::pair_less(pv[c * n + r], pi[c * n + r], bv, bi)) {
          bv = pv[c * n + r];
          bi = pi[c * n + r];
        }
      }
      const bool none = bi == std::numeric_limits<int32_t>::max();
      codes[r] = none ? 0 : bi;
      best[r] = none ? std::numeric_limits<float>::infinity() : bv;
    }
    return lowest_bad(first_bad);
  }

  const int64_t chunks = std::min(threads, row_blocks);
  parallel_chunks(chunks, [&](int64_t c) {
    Scratch s(d, ker.W);
    std::vector<int32_t> idx(kRowBlock);
    const int64_t b0 = split_begin(row_blocks, chunks, c), b1 = split_begin(row_blocks, chunks, c + 1);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRowBlock, rows = std::min(kRowBlock, n - r0);
      note_bad(first_bad, c, load_rows(x, x_dtype, d, r0, rows, s));
      search_block(ker, p, s, rows, 0, p.ntiles, best + r0, idx.data());
      for (int64_t r = 0; r < rows; ++r) {
        const bool none = idx[r] == std::numeric_limits<int32_t>::max();
        codes[r0 + r] = none ? 0 : idx[r];
        if (none) best[r0 + r] = std::numeric_limits<float>::infinity();
      }
    }
  });
  return lowest_bad(first_bad);
}

// Few rows (e.g. one short audio clip): stage by stage, each codebook packed
// into one reused buffer (no 4*Q*K*D bytes of fresh pages), and within a
// stage the threads split the code tiles; their minima are merged with the
// same (value, index) order, so the codes equal the single-thread ones.
// Returns status(bad row of x, bad codebook row).
static int64_t rvq_encode_few_rows(const Kernel& ker, const void* x, int dtype, int64_t n, int64_t d,
                                   const void* cbs, int64_t k, int64_t n_q, int64_t* codes,
                                   int64_t threads) {
  const int elem = dtype == vq::kF32 ? 4 : 2;
  std::vector<Scratch> scratch;
  scratch.reserve(static_cast<size_t>(threads));
  for (int64_t c = 0; c < threads; ++c) scratch.emplace_back(d, ker.W);
  std::vector<float> pv(static_cast<size_t>(threads * kRowBlock));
  std::vector<int32_t> pi(static_cast<size_t>(threads * kRowBlock));
  std::vector<int64_t> first_bad(1, -1);
  std::vector<float> residual(static_cast<size_t>(n * d));
  for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, n - r0);
    note_bad(first_bad, 0, load_rows(x, dtype, d, r0, rows, scratch[0]));
    std::copy(scratch[0].x.begin(), scratch[0].x.begin() + rows * d, residual.begin() + r0 * d);
  }
  Packed p;
  int64_t bad_cb = -1;
  for (int64_t q = 0; q < n_q; ++q) {
    const int64_t bad = pack_parallel(static_cast<const char*>(cbs) + q * k * d * elem, dtype, k, d, ker.W, p,
                                      threads);
    if (bad >= 0 && bad_cb < 0) bad_cb = q * k + bad;
    for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, n - r0);
      const int64_t padded = (rows + kRows - 1) / kRows * kRows;
      parallel_chunks(threads, [&](int64_t c) {
        std::vector<float>& sx = scratch[static_cast<size_t>(c)].x;
        std::copy(residual.begin() + r0 * d, residual.begin() + (r0 + rows) * d, sx.begin());
        std::fill(sx.begin() + rows * d, sx.begin() + padded * d, 0.0f);
        const int64_t t0 = split_begin(p.ntiles, threads, c), t1 = split_begin(p.ntiles, threads, c + 1);
        search_block(ker, p, scratch[static_cast<size_t>(c)], rows, t0, t1, pv.data() + c * kRowBlock,
                     pi.data() + c * kRowBlock);
      });
      for (int64_t r = 0; r < rows; ++r) {
        float bv = pv[r];
        int32_t bi = pi[r];
        for (int64_t c = 1; c < threads; ++c) {
          if (vq::pair_less(pv[c * kRowBlock + r], pi[c * kRowBlock + r], bv, bi)) {
            bv = pv[c * kRowBlock + r];
            bi = pi[c * kRowBlock + r];
          }
        }
        const int64_t code = bi == std::numeric_limits<int32_t>::max() ? 0 : bi;
        codes[(r0 + r) * n_q + q] = code;
        float* res = residual.data() + (r0 + r) * d;
        for (int64_t j = 0; j < d; ++j) res[j] = vq::sub_rn(res[j], p.at(code, j));
      }
    }
  }
  return status(lowest_bad(first_bad), bad_cb);
}

int64_t rvq_encode(const void* x, int dtype, int64_t n, int64_t d, const void* cbs, int64_t num_q,
                   int64_t k, int64_t n_q, int64_t* codes, int64_t num_threads, int isa) {
  constexpr const char* op = "rvq_encode";
  check_common(op, n, d, k, dtype, num_threads);
  LUMO_CHECK(num_q >= 1, op, "at least one codebook", num_q);
  LUMO_CHECK(n_q >= 1 && n_q <= num_q, op, "1 <= n_q <= number of codebooks", n_q);
  const Kernel ker = pick_kernel(isa, op);
  if (n == 0) return -1;
  LUMO_CHECK(x && cbs && codes, op, "non-null x, codebooks and codes pointers", "null");

  const int64_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  const int64_t avail =
      useful_threads(resolve_threads(num_threads), static_cast<double>(n) * k * d * n_q);
  if (row_blocks < 2 * avail && k >= 8 * ker.W * avail) {
    return rvq_encode_few_rows(ker, x, dtype, n, d, cbs, k, n_q, codes, avail);
  }
  const int elem = dtype == vq::kF32 ? 4 : 2;
  std::vector<Packed> packed(static_cast<size_t>(n_q));
  int64_t bad_cb = -1;  // flat row q * k + c of the first non-finite code
  for (int64_t q = 0; q < n_q; ++q) {
    const int64_t bad = pack(static_cast<const char*>(cbs) + q * k * d * elem, dtype, k, d,
                             kNormsCompute, nullptr, ker.W, packed[q]);
    if (bad >= 0 && bad_cb < 0) bad_cb = q * k + bad;
  }
  const int64_t threads = std::min(avail, row_blocks);
  std::vector<int64_t> first_bad(static_cast<size_t>(threads), -1);
  parallel_chunks(threads, [&](int64_t c) {
    // The residual block stays in this thread's cache across all stages.
    Scratch s(d, ker.W);
    std::vector<float> val(kRowBlock);
    std::vector<int32_t> idx(kRowBlock);
    const int64_t b0 = split_begin(row_blocks, threads, c), b1 = split_begin(row_blocks, threads, c + 1);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRowBlock, rows = std::min(kRowBlock, n - r0);
      note_bad(first_bad, c, load_rows(x, dtype, d, r0, rows, s));
      for (int64_t q = 0; q < n_q; ++q) {
        const Packed& p = packed[q];
        search_block(ker, p, s, rows, 0, p.ntiles, val.data(), idx.data());
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t code = idx[r] == std::numeric_limits<int32_t>::max() ? 0 : idx[r];
          codes[(r0 + r) * n_q + q] = code;
          float* res = s.x.data() + r * d;
          for (int64_t j = 0; j < d; ++j) res[j] = vq::sub_rn(res[j], p.at(code, j));
        }
      }
    }
  });
  return status(lowest_bad(first_bad), bad_cb);
}

int64_t rvq_decode(const void* codes, int64_t codes_itemsize, int64_t n, int64_t n_q,
                   const void* cbs, int dtype, int64_t num_q, int64_t k, int64_t d, float* out,
                   int64_t num_threads) {
  constexpr const char* op = "rvq_decode";
  check_common(op, n, d, k, dtype, num_threads);
  LUMO_CHECK(codes_itemsize == 4 || codes_itemsize == 8, op, "codes_itemsize 4 or 8", codes_itemsize);
  LUMO_CHECK(n_q >= 0 && n_q <= num_q, op, "0 <= n_q <= number of codebooks", n_q);
  if (n == 0) return -1;
  LUMO_CHECK(out != nullptr, op, "a non-null out pointer", "null");
  LUMO_CHECK(n_q == 0 || (codes && cbs), op, "non-null codes and codebooks pointers", "null");
  auto code_at = [&](int64_t i) -> int64_t {
    return codes_itemsize == 4 ? static_cast<const int32_t*>(codes)[i]
                               : static_cast<const int64_t*>(codes)[i];
  };
  // Bounds first, in one pass, so no lookup ever reads outside a codebook.
  for (int64_t i = 0; i < n * n_q; ++i) {
    const int64_t c = code_at(i);
    if (c < 0 || c >= k) return i;
  }
  const int64_t threads = useful_threads(resolve_threads(num_threads), static_cast<double>(n) * d * n_q * 20);
  parallel_chunks(threads, [&](int64_t t) {
    const int64_t r0 = split_begin(n, threads, t), r1 = split_begin(n, threads, t + 1);
    for (int64_t r = r0; r < r1; ++r) {
      float* o = out + r * d;
      std::fill(o, o + d, 0.0f);
      for (int64_t q = 0; q < n_q; ++q) {
        const int64_t base = (q * k + code_at(r * n_q + q)) * d;
        for (int64_t j = 0; j < d; ++j) o[j] = vq::add_rn(o[j], vq::load_as_float(cbs, dtype, base + j));
      }
    }
  });
  return -1;
}

}  // namespace cpu
}  // namespace lumo

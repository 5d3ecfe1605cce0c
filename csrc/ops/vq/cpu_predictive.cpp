// Predictive block coding on the CPU (lumo-vq's block prediction; cpu.h and
// python/lumo_uti/codecs/block_prediction.py state the rule): the whole
// anti-diagonal loop of an encode or a decode in one call.
//
// Why in C++: an image's 63 diagonals are 63 small dependent searches. Done
// from Python, each was a parallel job of its own (a helper wake-up, scratch
// allocations, a fresh integer scale) with PyTorch work in between: two
// threads took 0.8 times one thread's time. Here the threads stay in one
// job: items (row blocks of one diagonal) are numbered diagonal by diagonal
// and claimed from one counter, and a thread starts an item once every item
// of the earlier diagonals is done. Items only ever wait for smaller
// numbers, so the thread holding the smallest unfinished item never waits:
// no deadlock, and a thread that joins late simply takes the next item.
// The threads are the OpenMP team (run_team: a pool helper would share a core
// with torch's spinning threads, and every diagonal would wait for it).
// Default image codec, 256 x 256, two vCPUs of a Zen 4 VM: the Python loop
// 41-47 ms, this loop on the pool 31-36 ms, on the team 24.5-26.5 ms (one
// thread: 42 ms); the blocks searched in one batch without prediction, 22 ms.
//
// Results do not depend on the thread count or the batch: each block's
// prediction is a float64 sum in a fixed order, rounded to the grid, and its
// code is vq_search's (exact, ties to the lowest index) whatever rows share
// its search.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "abi/checks.h"
#include "ops/vq/cpu.h"
#include "ops/vq/cpu_internal.h"
#include "runtime/isa_target.h"

LUMO_FP_CONTRACT_OFF

namespace lumo {
namespace cpu {
namespace {

using namespace vqi;

struct Grid {
  int64_t b, h, w, p, d, f;  // images, grid rows and columns, patch, 3 p^2, 6 p + 6
  // Block (n, i, j) of the reconstruction, which has a zero row on top and a
  // zero column on the left: block (i, j) sits at (i + 1, j + 1).
  int64_t padded(int64_t n, int64_t i, int64_t j) const { return ((n * (h + 1) + i) * (w + 1) + j) * d; }
};

// One item: rows [r0, r0 + rows) of diagonal t, the diagonal's blocks taken
// image by image.
struct Item {
  int64_t t, r0, rows;
};

// Blocks on anti-diagonal t (i + j = t) of an h x w grid, and the first one's row.
int64_t diagonal_length(int64_t h, int64_t w, int64_t t) {
  return std::min(t, h - 1) - std::max<int64_t>(0, t - w + 1) + 1;
}
int64_t diagonal_first_row(int64_t w, int64_t t) { return std::max<int64_t>(0, t - w + 1); }

// pred [d] = features f [nf] @ weight [nf, d], summed in float64 in feature
// order (each output its own sum, so the loop vectorises over outputs; no
// FMA contraction in this file, so every instruction set rounds alike),
// rounded to multiples of grid (a power of two: the scaling is exact), as fp32.
#define LUMO_PREDICT_BODY                                                         \
  std::fill(acc, acc + d, 0.0);                                                   \
  for (int64_t q = 0; q < nf; ++q) {                                              \
    const double fq = f[q];                                                       \
    const double* wq = weight + q * d;                                            \
    for (int64_t k = 0; k < d; ++k) acc[k] += fq * wq[k];                         \
  }                                                                               \
  const double inv = 1.0 / grid;                                                  \
  for (int64_t k = 0; k < d; ++k) pred[k] = static_cast<float>(std::nearbyint(acc[k] * inv) * grid);

using PredictFn = void (*)(const double* f, const double* weight, int64_t nf, int64_t d, double grid, double* acc,
                           float* pred);

void predict_generic(const double* f, const double* weight, int64_t nf, int64_t d, double grid, double* acc,
                     float* pred) {
  LUMO_PREDICT_BODY
}

#if defined(LUMO_X86)
LUMO_TARGET_PUSH("avx2")
void predict_avx2(const double* f, const double* weight, int64_t nf, int64_t d, double grid, double* acc,
                  float* pred) {
  LUMO_PREDICT_BODY
}
LUMO_TARGET_POP
LUMO_TARGET_PUSH("avx512f")
void predict_avx512(const double* f, const double* weight, int64_t nf, int64_t d, double grid, double* acc,
                    float* pred) {
  LUMO_PREDICT_BODY
}
LUMO_TARGET_POP
#endif
#undef LUMO_PREDICT_BODY

// isa: as the kernels' (1 scalar, 2 AVX2, 3 AVX-512), already resolved.
PredictFn predict_fn(int isa) {
#if defined(LUMO_X86)
  if (isa == 3) return predict_avx512;
  if (isa == 2) return predict_avx2;
#endif
  return predict_generic;
}

// The prediction of block (n, i, j) from the reconstruction rec: features f
// [6p + 6] as the module docstring orders them, then f @ weight summed in
// float64 in feature order, rounded to multiples of grid, as fp32.
void predict_block(const Grid& g, int isa, const float* rec, const double* weight, double grid, int64_t n,
                   int64_t i, int64_t j, double* f, double* acc, float* pred) {
  const int64_t p = g.p, pp = p * p;
  const float* above = rec + g.padded(n, i, j + 1);
  const float* left = rec + g.padded(n, i + 1, j);
  const float* corner = rec + g.padded(n, i, j);
  int64_t m = 0;
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t x = 0; x < p; ++x) f[m++] = above[c * pp + (p - 1) * p + x];
  }
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t y = 0; y < p; ++y) f[m++] = left[c * pp + y * p + p - 1];
  }
  for (int64_t c = 0; c < 3; ++c) f[m++] = corner[c * pp + (p - 1) * p + p - 1];
  f[m++] = i > 0 ? 1.0 : 0.0;
  f[m++] = j > 0 ? 1.0 : 0.0;
  f[m++] = 1.0;
  predict_fn(isa)(f, weight, g.f, g.d, grid, acc, pred);
}

// Per-thread buffers beside the search's Scratch.
struct Buffers {
  std::vector<double> f, acc;
  std::vector<float> pred;  // [kRowBlock][d]
  IntScale scale;
  Buffers(const Grid& g)
      : f(static_cast<size_t>(g.f)), acc(static_cast<size_t>(g.d)), pred(static_cast<size_t>(kRowBlock * g.d)) {}
};

void wait_for(const std::atomic<int64_t>& done, int64_t need) {
  for (int spin = 0; done.load(std::memory_order_acquire) < need; ++spin) {
    if (spin < 4096) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } else {
      std::this_thread::yield();  // the item's owner was preempted: give it the core
    }
  }
}

}  // namespace

int64_t predictive_code(const VqPacked* packed, const float* blocks, const float* codebook, int64_t k,
                        const double* weight, int64_t b, int64_t h, int64_t w, int64_t patch, double grid,
                        int64_t* codes, float* recon, int64_t num_threads) {
  constexpr const char* op = "predictive_code";
  LUMO_CHECK(b >= 0 && h >= 0 && w >= 0, op, "non-negative b, h and w", std::min({b, h, w}));
  LUMO_CHECK(patch >= 1, op, "patch >= 1", patch);
  LUMO_CHECK(k >= 1 && k <= std::numeric_limits<int32_t>::max(), op, "1 <= k <= 2^31 - 1 codebook entries", k);
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0 (0 = hardware concurrency)", num_threads);
  LUMO_CHECK(grid > 0.0 && std::isfinite(grid) && std::exp2(std::round(std::log2(grid))) == grid, op,
             "a prediction grid that is a power of two", grid);
  const Grid g{b, h, w, patch, 3 * patch * patch, 6 * patch + 6};
  if (packed != nullptr) {
    LUMO_CHECK(packed->d == g.d, op, "a packed codebook of dimension 3 * patch^2", packed->d);
    LUMO_CHECK(packed->k == k, op, "a packed codebook of the codebook's size", packed->k);
  }
  if (b == 0 || h == 0 || w == 0) return -1;
  LUMO_CHECK(codebook && weight && codes, op, "non-null codebook, weight and codes", "null");
  LUMO_CHECK(blocks || packed == nullptr, op, "non-null blocks to encode", "null");
  const Kernel ker = packed != nullptr ? pick_kernel(packed->isa, op) : Kernel{};
  const int isa = packed != nullptr ? ker.isa : pick_kernel(0, op).isa;
  if (packed != nullptr) {
    LUMO_CHECK(ker.W * 2 == packed->tile, op, "a codebook packed for this instruction set", packed->tile);
  }

  // Items, diagonal by diagonal: about rows / threads rows each, a multiple
  // of kRows (a micro-kernel sweep costs the same for 1 to kRows rows), at
  // most kRowBlock. Smaller items balance the threads better but sweep the
  // codebook more often: half this size measured 10% slower.
  const double per_block = packed != nullptr ? static_cast<double>(k) * g.d : static_cast<double>(g.f) * g.d;
  // Never more threads than the hardware runs at once: in a wavefront, a
  // thread descheduled while it holds an item stalls all the others (two
  // vCPUs, the image codec's encode: 26 ms on 2 threads, 35-43 ms on 3-8).
  const int64_t threads = useful_threads(std::min(resolve_threads(num_threads), resolve_threads(0)),
                                         per_block * b * h * w);
  const int64_t diagonals = h + w - 1;
  std::vector<Item> items;
  std::vector<int64_t> first_item(static_cast<size_t>(diagonals + 1));
  for (int64_t t = 0; t < diagonals; ++t) {
    first_item[t] = static_cast<int64_t>(items.size());
    const int64_t rows = b * diagonal_length(h, w, t);
    const int64_t block =
        std::clamp<int64_t>((rows + threads * kRows - 1) / (threads * kRows) * kRows, kRows, kRowBlock);
    for (int64_t r0 = 0; r0 < rows; r0 += block) items.push_back(Item{t, r0, std::min(block, rows - r0)});
  }
  first_item[diagonals] = static_cast<int64_t>(items.size());

  std::vector<float> rec(static_cast<size_t>(b * (h + 1) * (w + 1) * g.d), 0.0f);
  std::vector<Scratch> scratch;
  std::vector<Buffers> buffers;
  scratch.reserve(static_cast<size_t>(threads));
  buffers.reserve(static_cast<size_t>(threads));
  for (int64_t c = 0; c < threads; ++c) {
    scratch.emplace_back(packed != nullptr ? g.d : 1, packed != nullptr ? ker.W : 1);
    buffers.emplace_back(g);
  }
  std::vector<int64_t> first_bad(static_cast<size_t>(threads), -1);  // flat block index n * h * w + i * w + j
  std::atomic<bool> failed{false};
  std::atomic<int64_t> done{0};
  WorkCounter work(static_cast<int64_t>(items.size()));

  auto body = [&](int64_t c) {
    Scratch& s = scratch[c];
    Buffers& buf = buffers[c];
    float val[kRowBlock];
    int32_t idx[kRowBlock];
    int64_t at[kRowBlock];  // per row of the item: its flat block index (n * h + i) * w + j
    int64_t to[kRowBlock];  // and its offset in rec
    for (int64_t u; (u = work.next()) >= 0;) {
      const Item& it = items[u];
      wait_for(done, first_item[it.t]);
      if (failed.load(std::memory_order_relaxed)) {  // the call fails anyway: skip the work
        done.fetch_add(1, std::memory_order_release);
        continue;
      }
      const int64_t per_image = diagonal_length(h, w, it.t), i0 = diagonal_first_row(w, it.t);
      bool ok = true;
      for (int64_t r = 0; r < it.rows; ++r) {
        const int64_t n = (it.r0 + r) / per_image, i = i0 + (it.r0 + r) % per_image, j = it.t - i;
        at[r] = (n * h + i) * w + j;
        to[r] = g.padded(n, i + 1, j + 1);
        float* pred = buf.pred.data() + r * g.d;
        predict_block(g, isa, rec.data(), weight, grid, n, i, j, buf.f.data(), buf.acc.data(), pred);
        if (packed != nullptr) {
          const float* x = blocks + at[r] * g.d;
          float* z = s.x.data() + r * g.d;
          bool finite = true;
          for (int64_t q = 0; q < g.d; ++q) {
            z[q] = x[q] - pred[q];
            finite = finite && std::isfinite(z[q]);
          }
          if (!finite) {
            note_bad(first_bad, c, at[r]);
            ok = false;
          }
        } else {
          const int64_t code = codes[at[r]];
          if (code < 0 || code >= k) {
            note_bad(first_bad, c, at[r]);
            ok = false;
          }
          idx[r] = static_cast<int32_t>(ok ? code : 0);
        }
      }
      if (ok && packed != nullptr) {
        const int64_t padded = padded_rows(it.rows);
        std::fill(s.x.begin() + it.rows * g.d, s.x.begin() + padded * g.d, 0.0f);
        // The rows' own integer scale (vq_search's per-call scale, for these rows).
        const float xmax = max_abs_or_nan(s.x.data(), static_cast<int>(DType::F32), padded * g.d);
        const IntScale* ic = !packed->itiles.empty() && xmax > 0.0f &&
                                     set_int_scale(*packed, xmax, 0, packed->ntiles, buf.scale)
                                 ? &buf.scale
                                 : nullptr;
        search_block(ker, *packed, s, it.rows, 0, packed->ntiles, val, idx, ic);
        for (int64_t r = 0; r < it.rows; ++r) {
          if (idx[r] == std::numeric_limits<int32_t>::max()) idx[r] = 0;
          if (!std::isfinite(val[r])) {  // the score overflowed fp32
            note_bad(first_bad, c, at[r]);
            ok = false;
          }
        }
      }
      if (!ok) {
        failed.store(true, std::memory_order_relaxed);
        done.fetch_add(1, std::memory_order_release);
        continue;
      }
      for (int64_t r = 0; r < it.rows; ++r) {
        const float* pred = buf.pred.data() + r * g.d;
        const float* entry = codebook + static_cast<int64_t>(idx[r]) * g.d;
        float* out = rec.data() + to[r];
        for (int64_t q = 0; q < g.d; ++q) out[q] = pred[q] + entry[q];
        if (packed != nullptr) codes[at[r]] = idx[r];
      }
      done.fetch_add(1, std::memory_order_release);  // publishes the rows' reconstruction
    }
  };
  run_team(threads, body);

  const int64_t bad = lowest_bad(first_bad);
  if (bad >= 0) return bad;
  if (recon != nullptr) {
    for (int64_t n = 0; n < b; ++n) {
      for (int64_t i = 0; i < h; ++i) {
        std::memcpy(recon + (n * h + i) * w * g.d, rec.data() + g.padded(n, i + 1, 1),
                    static_cast<size_t>(w * g.d) * sizeof(float));
      }
    }
  }
  return -1;
}

}  // namespace cpu
}  // namespace lumo

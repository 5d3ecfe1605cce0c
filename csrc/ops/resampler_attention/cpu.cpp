#include "ops/resampler_attention/cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "abi/checks.h"
#include "runtime/isa.h"
#include "runtime/isa_target.h"
#include "ops/resampler_attention/math.h"
#include "runtime/thread_pool.h"

// Only the micro-kernels fuse multiply-adds, explicitly (vfma; IEEE fma has one
// rounding on every ISA). Elsewhere no contraction, so that the element-wise
// loops give the same bits in every clone. GCC contracts by default in C++,
// Clang within one expression: switch it off here.
LUMO_FP_CONTRACT_OFF
#include "runtime/simd.h"

namespace lumo {
namespace cpu {
namespace {

using resampler::Partial;

// Element-wise loops (softmax, probabilities) are compiled three times
// (AVX-512F, AVX2, baseline x86-64) and picked at load time; each lane does
// the same scalar arithmetic, and the sums use fixed lanes, so all clones agree.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define LUMO_RA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LUMO_RA_CLONES
#endif

// ---------------------------------------------------------------------------
// Micro-kernels, one per instruction set (see cpu_body.h).
// ---------------------------------------------------------------------------

namespace scalar {
using namespace simd::scalar;
constexpr int SV = 4, CV = 4;
#include "ops/resampler_attention/cpu_body.h"
}  // namespace scalar

#ifdef LUMO_X86
#define LUMO_RA_X86 1
LUMO_TARGET_PUSH("avx2,fma")
namespace avx2 {
using namespace simd::avx2;
// 16 registers: 4 x 2 score accumulators, or 4 x 3 gemm accumulators + 3 loads + 1 broadcast.
constexpr int SV = 2, CV = 3;
#include "ops/resampler_attention/cpu_body.h"
}  // namespace avx2
LUMO_TARGET_POP

LUMO_TARGET_PUSH("avx512f")
namespace avx512 {
using namespace simd::avx512;
// 32 registers: 4 x 4 accumulators + 4 loads + 1 broadcast.
constexpr int SV = 4, CV = 4;
#include "ops/resampler_attention/cpu_body.h"
}  // namespace avx512
LUMO_TARGET_POP
#endif  // LUMO_X86

using ScoreFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float, float*,
                         int64_t);
using GemmFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                        float*, int64_t, int64_t);

struct Kernels {
  ScoreFn score;
  GemmFn gemm;
};

int isa_mask_impl() {
#ifdef LUMO_RA_X86
  return isa_support_mask(/*avx2_needs_fma=*/true);
#else
  return 1 << kIsaScalar;  // no vector kernels compiled
#endif
}

Kernels pick_kernels(int64_t isa, const char* op) {
  const int mask = isa_mask_impl();
  isa = resolve_isa(isa, mask);
  LUMO_CHECK(isa >= kIsaScalar && isa <= kIsaAvx512 && (mask >> isa & 1), op,
             "an instruction set this CPU runs (isa bit in resampler_attn_isa_mask())", isa);
#ifdef LUMO_RA_X86
  if (isa == kIsaAvx512) return {&avx512::score_tile, &avx512::gemm_acc};
  if (isa == kIsaAvx2) return {&avx2::score_tile, &avx2::gemm_acc};
#endif
  return {&scalar::score_tile, &scalar::gemm_acc};
}

// Keys per packed panel (a [D x JT] key panel stays in L1 while a row block
// sweeps it) and query rows per block (a block's scores [RB x N] stay in L2).
constexpr int64_t JT = 64;
constexpr int64_t RB = 64;
constexpr int64_t kR = 4;  // rows of a register tile (R in the body)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Softmax partial of one score row over M keys (masked keys: p = 0), turning
// s into exp(s - m) in place. Sums use 16 fixed lanes, so the order is a
// function of M only. A NaN score of a real key makes the partial NaN (the
// reference's softmax is NaN then); with a finite max it does so through l.
LUMO_RA_CLONES void partial_softmax(float* s, int64_t M, const uint8_t* mask, Partial* out) {
  constexpr int64_t kLanes = 16;
  if (mask) {
    for (int64_t j = 0; j < M; ++j) s[j] = mask[j] ? s[j] : -INFINITY;
  }
  float m = -INFINITY;
  for (int64_t j = 0; j < M; ++j) m = s[j] > m ? s[j] : m;
  if (m == -INFINITY) {  // empty or fully masked block, or every real score -inf or NaN
    bool nan = false;
    for (int64_t j = 0; j < M; ++j) nan |= s[j] != s[j];
    std::fill(s, s + M, nan ? NAN : 0.f);
    *out = nan ? Partial{NAN, NAN} : Partial{-INFINITY, 0.f};
    return;
  }
  for (int64_t j = 0; j < M; ++j) s[j] = resampler::exp_nonpos(s[j] - m);
  float lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= M; j += kLanes)
    for (int64_t u = 0; u < kLanes; ++u) lanes[u] += s[j + u];
  for (int64_t u = 0; j < M; ++j, ++u) lanes[u] += s[j];
  float l = 0.f;
  for (int64_t u = 0; u < kLanes; ++u) l += lanes[u];
  *out = Partial{m, l};
}

// One score row of the backward pass: s <- p = exp(s - lse) (0 for masked
// keys), dp <- p * (dp - delta), for M keys; columns [M, Mp) are zeroed.
LUMO_RA_CLONES void backward_probs(float* s, float* dp, int64_t M, int64_t Mp, const uint8_t* mask,
                                   float lse, float delta) {
  if (lse == -INFINITY) {
    std::fill(s, s + Mp, 0.f);
    std::fill(dp, dp + Mp, 0.f);
    return;
  }
  if (mask) {
    for (int64_t j = 0; j < M; ++j) {
      const float p = mask[j] ? resampler::exp_nonpos(s[j] - lse) : 0.f;
      s[j] = p;
      dp[j] = p * (dp[j] - delta);
    }
  } else {
    for (int64_t j = 0; j < M; ++j) {
      const float p = resampler::exp_nonpos(s[j] - lse);
      s[j] = p;
      dp[j] = p * (dp[j] - delta);
    }
  }
  std::fill(s + M, s + Mp, 0.f);
  std::fill(dp + M, dp + Mp, 0.f);
}

// [n, D] rows at src + off -> fp32 key panels [ceil(n / JT)][D][JT] (keys
// transposed, zero past n).
template <DType DT>
void pack_panels(const void* src, int64_t off, int64_t n, int64_t D, float* dst) {
  const int64_t np = round_up(n, JT);
  std::fill(dst, dst + np * D, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    float* col = dst + (j / JT) * D * JT + j % JT;
    for (int64_t d = 0; d < D; ++d) col[d * JT] = resampler::load<DT>(src, off + j * D + d);
  }
}

// [n, D] rows at src + off -> fp32 [rows_pad, Dp] (zero past column D and past row n).
template <DType DT>
void pack_rows(const void* src, int64_t off, int64_t n, int64_t D, int64_t Dp, int64_t rows_pad,
               float* dst) {
  std::fill(dst, dst + rows_pad * Dp, 0.f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) dst[j * Dp + d] = resampler::load<DT>(src, off + (j * D + d));
}

template <DType DT>
void from_float(const float* src, void* dst, int64_t offset, int64_t n) {
  for (int64_t i = 0; i < n; ++i) resampler::store<DT>(dst, offset + i, src[i]);
}

struct Dims {
  int64_t B, Hq, Hkv, L, N, D;
  float scale;
  int64_t group() const { return Hq / Hkv; }
  int64_t rows() const { return group() * L; }  // query rows of one (batch, kv head)
  int64_t row_blocks() const { return (rows() + RB - 1) / RB; }
  int64_t Dp() const { return round_up(D, 16); }
  int64_t Np() const { return round_up(N, JT); }
  int64_t Lp() const { return round_up(L, JT); }
};

// Scores of rows [0, nr4) of qb (ld ldq) against packed panels kp of n keys
// (np = round_up(n, JT) columns): s [nr4, np].
void score_block(const Kernels& ker, const float* qb, int64_t ldq, int64_t nr4, const float* kp,
                 int64_t np, int64_t D, float scale, float* s) {
  for (int64_t c0 = 0; c0 < np; c0 += JT)
    for (int64_t r = 0; r < nr4; r += kR)
      ker.score(qb + r * ldq, ldq, kp + c0 * D, JT, D, scale, s + r * np + c0, np);
}

// acc [nr4, Dp] += a [nr4, lda] (columns < n) . b [n, Dp], over keys in order,
// one L1-sized key panel at a time.
void rows_times(const Kernels& ker, const float* a, int64_t lda, int64_t nr4, const float* b,
                int64_t n, int64_t Dp, float* acc) {
  for (int64_t k0 = 0; k0 < n; k0 += JT) {
    const int64_t k1 = std::min(n, k0 + JT);
    for (int64_t r = 0; r < nr4; r += kR)
      ker.gemm(a + r * lda, lda, 1, b, Dp, k0, k1, acc + r * Dp, Dp, Dp);
  }
}

// acc [n4, Dp] += a^T . b: acc[j] += sum_{r < nr, in order} a[r * lda + j] * b[r * Dp].
void cols_times(const Kernels& ker, const float* a, int64_t lda, int64_t n, const float* b,
                int64_t nr, int64_t Dp, float* acc) {
  for (int64_t j = 0; j < n; j += kR) ker.gemm(a + j, 1, lda, b, Dp, 0, nr, acc + j * Dp, Dp, Dp);
}

// Per-thread scratch, kept across calls (no allocation or page faults per
// call). `call`/`pair` name the (batch, kv head) whose packed keys and values
// it holds, so a thread that takes several items of one pair packs it once.
struct Scratch {
  uint64_t call = 0;
  int64_t pair = -1;
  std::vector<float> buf;
  // Grows buf to n floats; true when the packed pair must be (re)built.
  bool claim(uint64_t c, int64_t bg, size_t n) {
    if (buf.size() < n) buf.resize(n);
    const bool stale = call != c || pair != bg;
    call = c;
    pair = bg;
    return stale;
  }
};
Scratch& forward_scratch() {
  thread_local Scratch t;
  return t;
}
Scratch& backward_scratch() {
  thread_local Scratch t;
  return t;
}
uint64_t next_call_id() {
  static std::atomic<uint64_t> id{0};
  return id.fetch_add(1, std::memory_order_relaxed) + 1;
}

// Query row block rb of one (batch, kv head): the block's scores against the
// context keys and against the latent keys get their own softmax partial,
// merged by log-sum-exp. Rows are independent: any split gives the same bits.
template <DType DT>
void forward_item(const Kernels& ker, uint64_t call, int64_t bg, int64_t rb, const Dims& s,
                  const void* q, const void* k_ctx, const void* v_ctx, const void* k_lat,
                  const void* v_lat, const uint8_t* ctx_mask, void* out, float* lse) {
  const int64_t b = bg / s.Hkv, N = s.N, L = s.L, D = s.D, Dp = s.Dp(), Np = s.Np(), Lp = s.Lp();
  Scratch& t = forward_scratch();
  const bool pack = t.claim(call, bg, static_cast<size_t>(Np * D + N * Dp + Lp * D + L * Dp +
                                                          RB * D + RB * (Np + Lp) + 2 * RB * Dp));
  float* kc = t.buf.data();    // [Np / JT][D][JT]
  float* vc = kc + Np * D;     // [N, Dp]
  float* kl = vc + N * Dp;     // [Lp / JT][D][JT]
  float* vl = kl + Lp * D;     // [L, Dp]
  float* qb = vl + L * Dp;     // [RB, D]
  float* sc = qb + RB * D;     // [RB, Np]
  float* sl = sc + RB * Np;    // [RB, Lp]
  float* acc1 = sl + RB * Lp;  // [RB, Dp]
  float* acc2 = acc1 + RB * Dp;
  const int64_t kv_ctx_off = bg * N * D, kv_lat_off = bg * L * D;
  if (pack) {
    pack_panels<DT>(k_ctx, kv_ctx_off, N, D, kc);
    pack_rows<DT>(v_ctx, kv_ctx_off, N, D, Dp, N, vc);
    pack_panels<DT>(k_lat, kv_lat_off, L, D, kl);
    pack_rows<DT>(v_lat, kv_lat_off, L, D, Dp, L, vl);
  }
  const uint8_t* mask = ctx_mask ? ctx_mask + b * N : nullptr;
  // The group's query rows are contiguous: heads g*group .. (g+1)*group - 1.
  const int64_t first_row = bg * s.rows();
  Partial p1[RB], p2[RB];
  {
    const int64_t r0 = rb * RB, nr = std::min(RB, s.rows() - r0), nr4 = round_up(nr, kR);
    pack_rows<DT>(q, (first_row + r0) * D, nr, D, D, nr4, qb);
    score_block(ker, qb, D, nr4, kc, Np, D, s.scale, sc);
    score_block(ker, qb, D, nr4, kl, Lp, D, s.scale, sl);
    for (int64_t r = 0; r < nr; ++r) {
      partial_softmax(sc + r * Np, N, mask, &p1[r]);
      partial_softmax(sl + r * Lp, L, nullptr, &p2[r]);
    }
    std::fill(acc1, acc1 + 2 * RB * Dp, 0.f);
    rows_times(ker, sc, Np, nr4, vc, N, Dp, acc1);
    rows_times(ker, sl, Lp, nr4, vl, L, Dp, acc2);
    for (int64_t r = 0; r < nr; ++r) {
      float a1, a2;
      const Partial m = resampler::merge_weights(p1[r], p2[r], &a1, &a2);
      const float inv = resampler::row_inverse(m);
      float* o = acc1 + r * Dp;
      const float* o2 = acc2 + r * Dp;
      for (int64_t d = 0; d < D; ++d) o[d] = (a1 * o[d] + a2 * o2[d]) * inv;
      lse[first_row + r0 + r] = resampler::partial_lse(m);
      from_float<DT>(o, out, (first_row + r0 + r) * D, D);
    }
  }
}

// dK/dV of a (batch, kv head) are summed over its query rows in two halves
// (the split depends on the shape only, never on the thread count), each
// half in row order into its own fp32 partial. The half that finishes first
// parks its partial here; the second adds it to its own. IEEE addition is
// commutative, so the sum has the same bits whichever half finishes first.
LUMO_RA_CLONES void add_into(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = dst[i] + src[i];
}

class HalfPartials {
 public:
  explicit HalfPartials(int64_t pairs) : parked_(static_cast<size_t>(pairs)) {}
  ~HalfPartials() {
    for (auto& v : parked_)
      if (!v.empty()) give(std::move(v));
  }
  // Either parks part[0, n) (returns false: the other half will finish the
  // pair) or adds the other half's partial into part (returns true).
  bool park_or_add(int64_t bg, float* part, size_t n) {
    std::vector<float> other = take_parked(bg);
    if (other.empty()) {
      std::vector<float> mine = take(n);
      std::copy(part, part + n, mine.data());
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (parked_[bg].empty()) {
          parked_[bg] = std::move(mine);
          return false;
        }
        other = std::move(parked_[bg]);
      }
      give(std::move(mine));
    }
    add_into(part, other.data(), static_cast<int64_t>(n));
    give(std::move(other));
    return true;
  }

 private:
  std::vector<float> take_parked(int64_t bg) {
    std::lock_guard<std::mutex> lk(mu_);
    return std::move(parked_[bg]);
  }
  // Buffers are recycled across calls (a fresh one page-faults on first use).
  static std::mutex& cache_mu() {
    static std::mutex mu;
    return mu;
  }
  static std::vector<std::vector<float>>& cache() {
    static auto* c = new std::vector<std::vector<float>>();
    return *c;
  }
  static std::vector<float> take(size_t n) {
    std::vector<float> v;
    {
      std::lock_guard<std::mutex> lk(cache_mu());
      if (!cache().empty()) {
        v = std::move(cache().back());
        cache().pop_back();
      }
    }
    v.resize(n);
    return v;
  }
  static void give(std::vector<float>&& v) {
    std::lock_guard<std::mutex> lk(cache_mu());
    if (cache().size() < 8) cache().push_back(std::move(v));
  }
  std::mutex mu_;
  std::vector<std::vector<float>> parked_;  // [pairs], empty = nothing parked
};

// Row halves of the backward pass: 2 when a pair has at least 2 row blocks.
inline int64_t backward_halves(const Dims& s) { return std::min<int64_t>(2, s.row_blocks()); }

// Backward work item: half h of the query rows of one (batch, kv head)
// (flash-attention-2 style: P is recomputed per row block from the saved
// log-sum-exp). It owns the dq rows of its row blocks; its dk/dv partial sums
// its rows in order (heads of the group, then rows) and is combined with the
// other half's (HalfPartials) before the pair's dk/dv rows are stored.
template <DType DT>
void backward_item(const Kernels& ker, uint64_t call, int64_t bg, int64_t h, const Dims& s,
                   const void* dout, const void* q, const void* k_ctx, const void* v_ctx,
                   const void* k_lat, const void* v_lat, const uint8_t* ctx_mask, const void* out,
                   const float* lse, void* dq, void* dk_ctx, void* dv_ctx, void* dk_lat,
                   void* dv_lat, HalfPartials& halves) {
  const int64_t b = bg / s.Hkv, N = s.N, L = s.L, D = s.D, Dp = s.Dp(), Np = s.Np(), Lp = s.Lp();
  const int64_t Tp = Np + Lp;  // context then latent keys, each padded to panels
  Scratch& t = backward_scratch();
  const bool pack = t.claim(call, bg, static_cast<size_t>(5 * Tp * Dp + 2 * Tp * D + 4 * RB * Dp +
                                                          2 * RB * Tp + RB));
  float* kt = t.buf.data();       // panels: [Np / JT][D][JT] then [Lp / JT][D][JT]
  float* vt = kt + Tp * D;        // same, values
  float* k = vt + Tp * D;         // [Tp, Dp] rows (ctx rows at 0, latent rows at Np)
  float* dk = k + Tp * Dp;        // [Tp, Dp]
  float* dv = dk + Tp * Dp;       // [Tp, Dp]
  float* qb = dv + Tp * Dp;       // [RB, Dp]
  float* dob = qb + RB * Dp;      // [RB, Dp]
  float* ob = dob + RB * Dp;      // [RB, Dp]
  float* dqb = ob + RB * Dp;      // [RB, Dp]
  float* ps = dqb + RB * Dp;      // [RB, Tp] scores, then probabilities
  float* dps = ps + RB * Tp;      // [RB, Tp] dout . v, then ds
  float* delta = dps + RB * Tp;   // [RB]
  const int64_t kv_ctx_off = bg * N * D, kv_lat_off = bg * L * D;
  if (pack) {
    pack_panels<DT>(k_ctx, kv_ctx_off, N, D, kt);
    pack_panels<DT>(k_lat, kv_lat_off, L, D, kt + Np * D);
    pack_panels<DT>(v_ctx, kv_ctx_off, N, D, vt);
    pack_panels<DT>(v_lat, kv_lat_off, L, D, vt + Np * D);
    pack_rows<DT>(k_ctx, kv_ctx_off, N, D, Dp, Np, k);
    pack_rows<DT>(k_lat, kv_lat_off, L, D, Dp, Lp, k + Np * Dp);
  }
  std::fill(dk, dk + 2 * Tp * Dp, 0.f);
  const uint8_t* mask = ctx_mask ? ctx_mask + b * N : nullptr;
  const int64_t first_row = bg * s.rows(), nrb = s.row_blocks(), H = backward_halves(s);
  for (int64_t rb = nrb * h / H; rb < nrb * (h + 1) / H; ++rb) {
    const int64_t r0 = rb * RB, nr = std::min(RB, s.rows() - r0), nr4 = round_up(nr, kR);
    const int64_t row0 = first_row + r0;
    pack_rows<DT>(q, row0 * D, nr, D, Dp, nr4, qb);
    pack_rows<DT>(dout, row0 * D, nr, D, Dp, nr4, dob);
    pack_rows<DT>(out, row0 * D, nr, D, Dp, nr4, ob);
    for (int64_t r = 0; r < nr; ++r) {
      float acc = 0.f;
      for (int64_t d = 0; d < D; ++d) acc += dob[r * Dp + d] * ob[r * Dp + d];
      delta[r] = acc;
    }
    // Scores and dout . v for both key blocks: [nr4, Tp], context columns first.
    for (int64_t c0 = 0; c0 < Tp; c0 += JT)
      for (int64_t r = 0; r < nr4; r += kR) {
        ker.score(qb + r * Dp, Dp, kt + c0 * D, JT, D, s.scale, ps + r * Tp + c0, Tp);
        ker.score(dob + r * Dp, Dp, vt + c0 * D, JT, D, 1.0f, dps + r * Tp + c0, Tp);
      }
    for (int64_t r = 0; r < nr; ++r) {
      const float l = lse[row0 + r];
      backward_probs(ps + r * Tp, dps + r * Tp, N, Np, mask, l, delta[r]);
      backward_probs(ps + r * Tp + Np, dps + r * Tp + Np, L, Lp, nullptr, l, delta[r]);
    }
    // dq = scale * ds . k over the context keys, then the latent keys.
    std::fill(dqb, dqb + nr4 * Dp, 0.f);
    rows_times(ker, dps, Tp, nr4, k, N, Dp, dqb);
    rows_times(ker, dps + Np, Tp, nr4, k + Np * Dp, L, Dp, dqb);
    for (int64_t r = 0; r < nr; ++r) {
      float* g = dqb + r * Dp;
      for (int64_t d = 0; d < D; ++d) g[d] *= s.scale;
      from_float<DT>(g, dq, (row0 + r) * D, D);
    }
    // dv += p^T . dout, dk += ds^T . q (scaled at the end), rows in order.
    cols_times(ker, ps, Tp, round_up(N, kR), dob, nr, Dp, dv);
    cols_times(ker, ps + Np, Tp, round_up(L, kR), dob, nr, Dp, dv + Np * Dp);
    cols_times(ker, dps, Tp, round_up(N, kR), qb, nr, Dp, dk);
    cols_times(ker, dps + Np, Tp, round_up(L, kR), qb, nr, Dp, dk + Np * Dp);
  }
  if (H > 1 && !halves.park_or_add(bg, dk, static_cast<size_t>(2 * Tp * Dp))) return;
  auto store_rows = [&](float* src, int64_t n, void* dst, int64_t off, float mul) {
    for (int64_t j = 0; j < n; ++j) {
      float* row = src + j * Dp;
      if (mul != 1.0f)
        for (int64_t d = 0; d < D; ++d) row[d] *= mul;
      from_float<DT>(row, dst, off + j * D, D);
    }
  };
  store_rows(dk, N, dk_ctx, kv_ctx_off, s.scale);
  store_rows(dk + Np * Dp, L, dk_lat, kv_lat_off, s.scale);
  store_rows(dv, N, dv_ctx, kv_ctx_off, 1.0f);
  store_rows(dv + Np * Dp, L, dv_lat, kv_lat_off, 1.0f);
}

Dims check_dims(const char* op, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N,
                int64_t D, double scale, int64_t dtype, int64_t num_threads) {
  LUMO_CHECK(B >= 0 && L >= 0 && N >= 0, op, "B, L, N >= 0", B < 0 ? B : (L < 0 ? L : N));
  LUMO_CHECK(D >= 1, op, "head dim D >= 1", D);
  LUMO_CHECK(Hkv >= 1 && Hq >= 1 && Hq % Hkv == 0, op, "Hq a positive multiple of Hkv >= 1", Hq);
  check_dtype(op, "dtype", dtype);
  LUMO_CHECK(std::isfinite(scale), op, "a finite scale", scale);
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0", num_threads);
  return Dims{B, Hq, Hkv, L, N, D, static_cast<float>(scale)};
}

}  // namespace

int resampler_attn_isa_mask() { return isa_mask_impl(); }

void resampler_attn_forward(const void* q, const void* k_ctx, const void* v_ctx,
                            const void* k_lat, const void* v_lat, const uint8_t* ctx_mask,
                            void* out, float* lse, int64_t B, int64_t Hq, int64_t Hkv,
                            int64_t L, int64_t N, int64_t D, double scale, int64_t dtype,
                            int64_t num_threads, int64_t isa) {
  constexpr const char* op = "resampler_attention (cpu)";
  const Dims s = check_dims(op, B, Hq, Hkv, L, N, D, scale, dtype, num_threads);
  if (B == 0 || L == 0) return;
  LUMO_CHECK(q && k_lat && v_lat && out && lse, op, "non-null q/k_lat/v_lat/out/lse", "null");
  LUMO_CHECK(N == 0 || (k_ctx && v_ctx), op, "non-null k_ctx/v_ctx for N > 0", "null");
  const Kernels ker = pick_kernels(isa, op);
  // Work items: (batch, kv head, row block), claimed one at a time by the
  // pool's threads; rows are independent, so the split never changes a result.
  const int64_t threads = resolve_threads(num_threads), nrb = s.row_blocks();
  const uint64_t call = next_call_id();
  auto run = [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    parallel_for_items(B * Hkv * nrb, threads, [&](int64_t item) {
      forward_item<DT>(ker, call, item / nrb, item % nrb, s, q, k_ctx, v_ctx, k_lat, v_lat,
                       ctx_mask, out, lse);
    });
  };
  dispatch_dtype(dtype, run);
}

void resampler_attn_backward(const void* dout, const void* q, const void* k_ctx,
                             const void* v_ctx, const void* k_lat, const void* v_lat,
                             const uint8_t* ctx_mask, const void* out, const float* lse,
                             void* dq, void* dk_ctx, void* dv_ctx, void* dk_lat, void* dv_lat,
                             int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D,
                             double scale, int64_t dtype, int64_t num_threads, int64_t isa) {
  constexpr const char* op = "resampler_attention_backward (cpu)";
  const Dims s = check_dims(op, B, Hq, Hkv, L, N, D, scale, dtype, num_threads);
  if (B == 0 || L == 0) {
    // No queries: every key gradient is zero (no key was attended to).
    return;
  }
  LUMO_CHECK(dout && q && k_lat && v_lat && out && lse && dq && dk_lat && dv_lat, op,
             "non-null pointers", "null");
  LUMO_CHECK(N == 0 || (k_ctx && v_ctx && dk_ctx && dv_ctx), op,
             "non-null context pointers for N > 0", "null");
  const Kernels ker = pick_kernels(isa, op);
  // Work items: (batch, kv head, half of the query rows); see HalfPartials.
  const int64_t H = backward_halves(s);
  const uint64_t call = next_call_id();
  HalfPartials halves(B * Hkv);
  auto run = [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    parallel_for_items(B * Hkv * H, resolve_threads(num_threads), [&](int64_t item) {
      backward_item<DT>(ker, call, item / H, item % H, s, dout, q, k_ctx, v_ctx, k_lat, v_lat,
                        ctx_mask, out, lse, dq, dk_ctx, dv_ctx, dk_lat, dv_lat, halves);
    });
  };
  dispatch_dtype(dtype, run);
}

}  // namespace cpu
}  // namespace lumo

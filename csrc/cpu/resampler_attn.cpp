#include "cpu/resampler_attn.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <system_error>
#include <thread>
#include <vector>

#include "common/checks.h"
#include "cpu/resampler_attn_math.h"

namespace lumo {
namespace cpu {
namespace {

using resampler::Partial;

// Hot loops are compiled three times (AVX-512F, AVX2, baseline x86-64) and picked at load
// time. Every loop below is element-wise over its innermost index with a fixed
// order over the reduced index (sums over fixed, explicit lanes; no FMA contraction under
// ISO C++), so all clones give bit-identical results.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define LUMO_RA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LUMO_RA_CLONES
#endif

// Rows of queries processed together: each key row loaded once serves kRows queries.
constexpr int64_t kRows = 4;

// s[r][j] = scale * sum_d q[r][d] * kt[d][j] for r < R, j < M.
// q: [R, D]; kt: [D, M] (keys transposed); s: [R, M].
LUMO_RA_CLONES void scores(const float* q, int64_t R, const float* kt, int64_t M, int64_t D, float scale,
                           float* s) {
  std::fill(s, s + R * M, 0.f);
  for (int64_t d = 0; d < D; ++d) {
    const float* k = kt + d * M;
    for (int64_t r = 0; r < R; ++r) {
      const float a = q[r * D + d];
      float* sr = s + r * M;
      for (int64_t j = 0; j < M; ++j) sr[j] += a * k[j];
    }
  }
  for (int64_t i = 0; i < R * M; ++i) s[i] *= scale;
}

// acc[r][:] += sum_j p[r][j] * v[j][:] in order of j. p: [R, M]; v: [M, D]; acc: [R, D].
LUMO_RA_CLONES void weighted_sum(const float* p, int64_t R, const float* v, int64_t M, int64_t D, float* acc) {
  for (int64_t j = 0; j < M; ++j) {
    const float* vj = v + j * D;
    for (int64_t r = 0; r < R; ++r) {
      const float a = p[r * M + j];
      if (a == 0.f) continue;  // masked key
      float* ar = acc + r * D;
      for (int64_t d = 0; d < D; ++d) ar[d] += a * vj[d];
    }
  }
}

// Softmax partial of each of R score rows over M keys (masked keys: p = 0),
// turning s into exp(s - m) in place. Sums use 16 fixed lanes, so the order
// is a function of M only.
LUMO_RA_CLONES void partial_softmax(float* s, int64_t R, int64_t M, const uint8_t* mask, Partial* out) {
  constexpr int64_t kLanes = 16;
  for (int64_t r = 0; r < R; ++r) {
    float* sr = s + r * M;
    if (mask) {
      for (int64_t j = 0; j < M; ++j) sr[j] = mask[j] ? sr[j] : -INFINITY;
    }
    float m = -INFINITY;
    for (int64_t j = 0; j < M; ++j) m = sr[j] > m ? sr[j] : m;
    if (m == -INFINITY) {  // empty or fully masked block
      std::fill(sr, sr + M, 0.f);
      out[r] = Partial{-INFINITY, 0.f};
      continue;
    }
    for (int64_t j = 0; j < M; ++j) sr[j] = resampler::exp_nonpos(sr[j] - m);
    float lanes[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= M; j += kLanes)
      for (int64_t u = 0; u < kLanes; ++u) lanes[u] += sr[j + u];
    for (int64_t u = 0; j < M; ++j, ++u) lanes[u] += sr[j];
    float l = 0.f;
    for (int64_t u = 0; u < kLanes; ++u) l += lanes[u];
    out[r] = Partial{m, l};
  }
}

// One query row's contribution to dq, dk and dv. sp: [T] scaled scores, dp:
// [T] dout . v_j (both overwritten); keys j in order, masked ones skipped.
LUMO_RA_CLONES void backward_row(float* sp, float* dp, float lse, float delta, const uint8_t* mask, int64_t N,
                                 int64_t T, int64_t D, float scale, const float* k, const float* qi,
                                 const float* doi, float* dqi, float* dk, float* dv) {
  for (int64_t j = 0; j < T; ++j) {
    const float p = resampler::exp_nonpos(sp[j] - lse);
    sp[j] = p;
    dp[j] = p * (dp[j] - delta);
  }
  for (int64_t j = 0; j < T; ++j) {
    if (j < N && mask && !mask[j]) continue;
    const float p = sp[j], ds = dp[j], dss = dp[j] * scale;
    const float* kj = k + j * D;
    float* dkj = dk + j * D;
    float* dvj = dv + j * D;
    for (int64_t d = 0; d < D; ++d) dqi[d] += ds * kj[d];
    for (int64_t d = 0; d < D; ++d) dkj[d] += dss * qi[d];
    for (int64_t d = 0; d < D; ++d) dvj[d] += p * doi[d];
  }
}

template <int DT>
void to_float(const void* src, int64_t offset, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = resampler::load<DT>(src, offset + i);
}

// [rows, D] at src + offset -> fp32 [D, rows] (transposed).
template <int DT>
void to_float_t(const void* src, int64_t offset, int64_t rows, int64_t D, float* dst) {
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t d = 0; d < D; ++d) dst[d * rows + j] = resampler::load<DT>(src, offset + j * D + d);
}

template <int DT>
void from_float(const float* src, void* dst, int64_t offset, int64_t n) {
  for (int64_t i = 0; i < n; ++i) resampler::store<DT>(dst, offset + i, src[i]);
}

struct Dims {
  int64_t B, Hq, Hkv, L, N, D;
  float scale;
  int64_t group() const { return Hq / Hkv; }
};

// One (batch, kv head) forward work item. Queries of the group's heads are
// taken kRows at a time; each block of keys (context, latents) gets its own
// softmax partial, merged by log-sum-exp.
template <int DT>
void forward_item(int64_t item, const Dims& s, const void* q, const void* k_ctx,
                  const void* v_ctx, const void* k_lat, const void* v_lat,
                  const uint8_t* ctx_mask, void* out, float* lse, std::vector<float>& scratch) {
  const int64_t b = item / s.Hkv, g = item % s.Hkv, N = s.N, L = s.L, D = s.D, R = kRows;
  scratch.resize(static_cast<size_t>(2 * N * D + 2 * L * D + R * (N + L) + 3 * R * D));
  float* kct = scratch.data();  // [D, N]
  float* vc = kct + N * D;      // [N, D]
  float* klt = vc + N * D;      // [D, L]
  float* vl = klt + L * D;      // [L, D]
  float* sc = vl + L * D;       // [R, N]
  float* sl = sc + R * N;       // [R, L]
  float* qb = sl + R * L;       // [R, D]
  float* acc1 = qb + R * D;
  float* acc2 = acc1 + R * D;
  const int64_t kv_ctx_off = (b * s.Hkv + g) * N * D, kv_lat_off = (b * s.Hkv + g) * L * D;
  to_float_t<DT>(k_ctx, kv_ctx_off, N, D, kct);
  to_float<DT>(v_ctx, kv_ctx_off, N * D, vc);
  to_float_t<DT>(k_lat, kv_lat_off, L, D, klt);
  to_float<DT>(v_lat, kv_lat_off, L * D, vl);
  const uint8_t* mask = ctx_mask ? ctx_mask + b * N : nullptr;
  // The group's query rows are contiguous: heads g*group .. (g+1)*group - 1.
  const int64_t first_row = (b * s.Hq + g * s.group()) * L, rows = s.group() * L;
  Partial p1[kRows], p2[kRows];
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    const int64_t nr = std::min(R, rows - r0);
    to_float<DT>(q, (first_row + r0) * D, nr * D, qb);
    scores(qb, nr, kct, N, D, s.scale, sc);
    partial_softmax(sc, nr, N, mask, p1);
    std::fill(acc1, acc1 + nr * D, 0.f);
    weighted_sum(sc, nr, vc, N, D, acc1);
    scores(qb, nr, klt, L, D, s.scale, sl);
    partial_softmax(sl, nr, L, nullptr, p2);
    std::fill(acc2, acc2 + nr * D, 0.f);
    weighted_sum(sl, nr, vl, L, D, acc2);
    for (int64_t r = 0; r < nr; ++r) {
      float a1, a2;
      const Partial m = resampler::merge_weights(p1[r], p2[r], &a1, &a2);
      const float inv = m.l > 0.f ? 1.0f / m.l : 0.f;
      float* o = acc1 + r * D;
      const float* o2 = acc2 + r * D;
      for (int64_t d = 0; d < D; ++d) o[d] = (a1 * o[d] + a2 * o2[d]) * inv;
      lse[first_row + r0 + r] = resampler::partial_lse(m);
    }
    from_float<DT>(acc1, out, (first_row + r0) * D, nr * D);
  }
}

// One (batch, kv head) backward work item: dq rows of the group's query heads
// and the dk/dv rows of this kv head, accumulated over query rows in order.
template <int DT>
void backward_item(int64_t item, const Dims& s, const void* dout, const void* q,
                   const void* k_ctx, const void* v_ctx, const void* k_lat, const void* v_lat,
                   const uint8_t* ctx_mask, const void* out, const float* lse, void* dq,
                   void* dk_ctx, void* dv_ctx, void* dk_lat, void* dv_lat,
                   std::vector<float>& scratch) {
  const int64_t b = item / s.Hkv, g = item % s.Hkv, N = s.N, L = s.L, D = s.D;
  const int64_t T = N + L;  // keys of both blocks, as one fp32 work copy per item
  scratch.resize(static_cast<size_t>(5 * T * D + 2 * T + 4 * D));
  float* k = scratch.data();  // [T, D]
  float* kt = k + T * D;      // [D, T]
  float* vt = kt + T * D;     // [D, T]
  float* dk = vt + T * D;     // [T, D]
  float* dv = dk + T * D;     // [T, D]
  float* sp = dv + T * D;     // [T] scores, then probabilities
  float* dp = sp + T;         // [T]
  float* qi = dp + T;
  float* doi = qi + D;
  float* oi = doi + D;
  float* dqi = oi + D;
  const int64_t kv_ctx_off = (b * s.Hkv + g) * N * D, kv_lat_off = (b * s.Hkv + g) * L * D;
  to_float<DT>(k_ctx, kv_ctx_off, N * D, k);
  to_float<DT>(k_lat, kv_lat_off, L * D, k + N * D);
  for (int64_t j = 0; j < T; ++j)
    for (int64_t d = 0; d < D; ++d) kt[d * T + j] = k[j * D + d];
  for (int64_t j = 0; j < T; ++j) {
    const void* src = j < N ? v_ctx : v_lat;
    const int64_t off = j < N ? kv_ctx_off + j * D : kv_lat_off + (j - N) * D;
    for (int64_t d = 0; d < D; ++d) vt[d * T + j] = resampler::load<DT>(src, off + d);
  }
  std::fill(dk, dk + 2 * T * D, 0.f);
  const uint8_t* mask = ctx_mask ? ctx_mask + b * N : nullptr;
  const int64_t first_row = (b * s.Hq + g * s.group()) * L, rows = s.group() * L;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = first_row + r;
    to_float<DT>(q, row * D, D, qi);
    to_float<DT>(dout, row * D, D, doi);
    to_float<DT>(out, row * D, D, oi);
    std::fill(dqi, dqi + D, 0.f);
    const float lse_i = lse[row];
    float delta = 0.f;
    for (int64_t d = 0; d < D; ++d) delta += doi[d] * oi[d];
    if (lse_i != -INFINITY) {
      scores(qi, 1, kt, T, D, s.scale, sp);
      scores(doi, 1, vt, T, D, 1.0f, dp);
      backward_row(sp, dp, lse_i, delta, mask, N, T, D, s.scale, k, qi, doi, dqi, dk, dv);
    }
    for (int64_t d = 0; d < D; ++d) dqi[d] *= s.scale;
    from_float<DT>(dqi, dq, row * D, D);
  }
  from_float<DT>(dk, dk_ctx, kv_ctx_off, N * D);
  from_float<DT>(dk + N * D, dk_lat, kv_lat_off, L * D);
  from_float<DT>(dv, dv_ctx, kv_ctx_off, N * D);
  from_float<DT>(dv + N * D, dv_lat, kv_lat_off, L * D);
}

// Runs fn(item, scratch) for item in [0, items) on up to num_threads threads,
// in contiguous chunks; each item writes only its own outputs.
template <typename Fn>
void parallel_items(int64_t items, int64_t num_threads, const Fn& fn) {
  if (num_threads == 0) {
    num_threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  }
  const int64_t chunks = std::max<int64_t>(1, std::min(num_threads, items));
  auto begin = [items, chunks](int64_t c) { return items / chunks * c + std::min(c, items % chunks); };
  auto run = [&](int64_t c) {
    std::vector<float> scratch;
    for (int64_t it = begin(c); it < begin(c + 1); ++it) fn(it, scratch);
  };
  std::vector<std::thread> workers;
  int64_t next = 1;
  try {
    for (; next < chunks; ++next) workers.emplace_back(run, next);
  } catch (const std::system_error&) {
    // Could not start another thread: the calling thread does the rest.
  }
  run(0);
  for (int64_t c = next; c < chunks; ++c) run(c);
  for (auto& w : workers) w.join();
}

Dims check_dims(const char* op, int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N,
                int64_t D, double scale, int64_t dtype, int64_t num_threads) {
  LUMO_CHECK(B >= 0 && L >= 0 && N >= 0, op, "B, L, N >= 0", B < 0 ? B : (L < 0 ? L : N));
  LUMO_CHECK(D >= 1, op, "head dim D >= 1", D);
  LUMO_CHECK(Hkv >= 1 && Hq >= 1 && Hq % Hkv == 0, op, "Hq a positive multiple of Hkv >= 1", Hq);
  LUMO_CHECK(dtype == resampler::kF32 || dtype == resampler::kBF16 || dtype == resampler::kF16,
             op, "dtype code 0 (fp32), 1 (bf16) or 2 (fp16)", dtype);
  LUMO_CHECK(std::isfinite(scale), op, "a finite scale", scale);
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0", num_threads);
  return Dims{B, Hq, Hkv, L, N, D, static_cast<float>(scale)};
}

}  // namespace

void resampler_attn_forward(const void* q, const void* k_ctx, const void* v_ctx,
                            const void* k_lat, const void* v_lat, const uint8_t* ctx_mask,
                            void* out, float* lse, int64_t B, int64_t Hq, int64_t Hkv,
                            int64_t L, int64_t N, int64_t D, double scale, int64_t dtype,
                            int64_t num_threads) {
  constexpr const char* op = "resampler_attention (cpu)";
  const Dims s = check_dims(op, B, Hq, Hkv, L, N, D, scale, dtype, num_threads);
  if (B == 0 || L == 0) return;
  LUMO_CHECK(q && k_lat && v_lat && out && lse, op, "non-null q/k_lat/v_lat/out/lse", "null");
  LUMO_CHECK(N == 0 || (k_ctx && v_ctx), op, "non-null k_ctx/v_ctx for N > 0", "null");
  auto run = [&](auto dt) {
    constexpr int DT = decltype(dt)::value;
    parallel_items(B * Hkv, num_threads, [&](int64_t item, std::vector<float>& scratch) {
      forward_item<DT>(item, s, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, scratch);
    });
  };
  if (dtype == resampler::kF32) run(std::integral_constant<int, resampler::kF32>{});
  else if (dtype == resampler::kBF16) run(std::integral_constant<int, resampler::kBF16>{});
  else run(std::integral_constant<int, resampler::kF16>{});
}

void resampler_attn_backward(const void* dout, const void* q, const void* k_ctx,
                             const void* v_ctx, const void* k_lat, const void* v_lat,
                             const uint8_t* ctx_mask, const void* out, const float* lse,
                             void* dq, void* dk_ctx, void* dv_ctx, void* dk_lat, void* dv_lat,
                             int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t N, int64_t D,
                             double scale, int64_t dtype, int64_t num_threads) {
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
  auto run = [&](auto dt) {
    constexpr int DT = decltype(dt)::value;
    parallel_items(B * Hkv, num_threads, [&](int64_t item, std::vector<float>& scratch) {
      backward_item<DT>(item, s, dout, q, k_ctx, v_ctx, k_lat, v_lat, ctx_mask, out, lse, dq,
                        dk_ctx, dv_ctx, dk_lat, dv_lat, scratch);
    });
  };
  if (dtype == resampler::kF32) run(std::integral_constant<int, resampler::kF32>{});
  else if (dtype == resampler::kBF16) run(std::integral_constant<int, resampler::kBF16>{});
  else run(std::integral_constant<int, resampler::kF16>{});
}

}  // namespace cpu
}  // namespace lumo

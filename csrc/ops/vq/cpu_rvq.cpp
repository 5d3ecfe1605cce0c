// CPU residual VQ: encode (every stage in one call) and decode.
//
// Encode runs one of two plans, both bit-identical to the stage-by-stage
// reference for any thread count:
// - many rows: every stage packed first, then threads split the rows into
//   blocks of 64 and carry each block through all stages (the residual block
//   stays in the thread's cache);
// - few rows (e.g. one short audio clip): one parallel job per stage, in
//   which threads take chunks of the stage's code tiles; the caller merges
//   the chunks' minima and updates the residual between stages. Without a
//   packed codebook, each thread packs only the chunks it takes, stage by
//   stage, into one reused buffer (no Q*K*D of fresh memory).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

#include "abi/checks.h"
#include "ops/vq/math.h"
#include "ops/vq/cpu.h"
#include "ops/vq/cpu_internal.h"
#include "runtime/isa_target.h"

LUMO_FP_CONTRACT_OFF

namespace lumo {
namespace cpu {
namespace {

using namespace vqi;

int elem_size(int dtype) { return static_cast<int>(dtype_size(static_cast<DType>(dtype))); }

// Many rows: threads take row blocks from a counter; stages[0..n_q) are
// packed. Returns the first bad x row or -1.
int64_t rvq_rows(const Kernel& ker, const VqPacked* stages, const void* x, int dtype, int64_t n, int64_t d,
                 int64_t n_q, int64_t* codes, int64_t threads) {
  std::vector<int64_t> first_bad(static_cast<size_t>(std::max<int64_t>(1, threads)), -1);
  // The residual block stays in its thread's cache across all stages.
  for_each_row_block(n, d, ker.W, threads, [&](int64_t c, Scratch& s, int64_t r0, int64_t rows) {
    float val[kRowBlock];
    int32_t idx[kRowBlock];
    note_bad(first_bad, c, load_rows(x, dtype, d, r0, rows, s));
    for (int64_t q = 0; q < n_q; ++q) {
      const VqPacked& p = stages[q];
      search_block(ker, p, s, rows, 0, p.ntiles, val, idx);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t code = idx[r] == std::numeric_limits<int32_t>::max() ? 0 : idx[r];
        codes[(r0 + r) * n_q + q] = code;
        float* res = s.x.data() + r * d;
        for (int64_t j = 0; j < d; ++j) res[j] = vq::sub_rn(res[j], p.at(code, j));
      }
    }
  });
  return lowest_bad(first_bad);
}

// Few rows: one parallel job per stage, in which threads take chunks of the
// stage's code tiles (packing each chunk they take when there is no packed
// codebook) and search the shared residual; the caller then merges the
// chunks' minima in code order, writes the codes and updates the residual.
// Stages come from `packed` or, when it is null, are packed here from cbs
// ([n_q, k, d] of cb_dtype) into one reused stage buffer. Returns
// status(first bad x row, first bad flat codebook row found packing).
int64_t rvq_few_rows(const Kernel& ker, const RvqPacked* packed, const void* cbs, int cb_dtype, int64_t k,
                     const void* x, int x_dtype, int64_t n, int64_t d, int64_t n_q, int64_t* codes,
                     int64_t threads) {
  thread_local VqPacked caller_workspace;
  VqPacked& workspace = caller_workspace;  // the caller's, also inside the helpers
  if (packed == nullptr) {
    pack_layout(k, d, ker.W, workspace);
    workspace.isa = ker.isa;
  }
  const int64_t ntiles = packed != nullptr ? packed->stages[0].ntiles : workspace.ntiles;
  const int64_t chunks = std::min(ntiles, threads == 1 ? int64_t{1} : 4 * threads);
  std::vector<float> pv(static_cast<size_t>(chunks * n));
  std::vector<int32_t> pi(static_cast<size_t>(chunks * n));
  std::vector<int64_t> bad_cb(static_cast<size_t>(threads), -1);
  std::vector<Scratch> scratch;
  scratch.reserve(static_cast<size_t>(threads));
  for (int64_t c = 0; c < threads; ++c) scratch.emplace_back(d, ker.W);
  // The residual, fp32 [n, d]; read by every thread during a stage, updated
  // by the caller between stages.
  std::vector<float> residual(static_cast<size_t>(n * d));
  int64_t bad_x = -1;
  for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, n - r0);
    const int64_t bad = load_rows(x, x_dtype, d, r0, rows, scratch[0]);
    if (bad >= 0 && bad_x < 0) bad_x = bad;
    std::copy(scratch[0].x.begin(), scratch[0].x.begin() + rows * d, residual.begin() + r0 * d);
  }
  for (int64_t q = 0; q < n_q; ++q) {
    const char* raw = static_cast<const char*>(cbs) + q * k * d * elem_size(cb_dtype);
    const VqPacked& p = packed != nullptr ? packed->stages[q] : workspace;
    search_tile_chunks(
        ker, p, scratch, threads, chunks, n,
        [&](int64_t c, int64_t, int64_t t0, int64_t t1) {
          if (packed != nullptr) return;
          const PackSource src{raw, cb_dtype, kNormsCompute, nullptr};
          const int64_t bad = pack_tiles(ker, src, workspace, t0, t1);
          if (bad >= 0) note_bad(bad_cb, c, q * k + bad);
        },
        [&](int64_t, int64_t r0, int64_t rows, Scratch& s) {
          std::copy(residual.begin() + r0 * d, residual.begin() + (r0 + rows) * d, s.x.begin());
          std::fill(s.x.begin() + rows * d, s.x.begin() + padded_rows(rows) * d, 0.0f);
        },
        pv.data(), pi.data());
    for (int64_t r = 0; r < n; ++r) {
      float bv;
      int32_t bi;
      merge_chunk_minima(pv.data(), pi.data(), n, chunks, r, bv, bi);
      const int64_t code = bi == std::numeric_limits<int32_t>::max() ? 0 : bi;
      codes[r * n_q + q] = code;
      float* res = residual.data() + r * d;
      if (packed != nullptr) {
        for (int64_t j = 0; j < d; ++j) res[j] = vq::sub_rn(res[j], p.at(code, j));
      } else {
        for (int64_t j = 0; j < d; ++j) res[j] = vq::sub_rn(res[j], load_float(raw, static_cast<DType>(cb_dtype), code * d + j));
      }
    }
  }
  if (packed == nullptr && workspace.tiles.capacity() * sizeof(float) > kKeepBytes) workspace = VqPacked();
  return status(bad_x, lowest_bad(bad_cb));
}

// Few rows and enough code tiles for every thread: split the codes.
bool few_rows(int64_t n, int64_t ntiles, int64_t threads) {
  const int64_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  return row_blocks < 2 * threads && ntiles >= 4 * threads;
}

// Packs stages [0, num_q) of cbs into p->stages on up to `threads` threads
// (thread c packs tile range c of every stage).
void pack_stages(const Kernel& ker, const void* cbs, int dtype, int64_t num_q, int64_t k, int64_t d,
                 int64_t threads, RvqPacked& p) {
  p.k = k;
  p.d = d;
  p.isa = ker.isa;
  p.stages.resize(static_cast<size_t>(num_q));
  for (VqPacked& s : p.stages) {
    pack_layout(k, d, ker.W, s);
    s.isa = ker.isa;
  }
  // Work items: (stage, chunk of tiles), from a counter.
  const int64_t ntiles = p.stages[0].ntiles;
  const int64_t chunks = std::min(ntiles, threads == 1 ? int64_t{1} : 4 * threads);
  std::vector<int64_t> bad(static_cast<size_t>(threads), -1);
  WorkCounter work(num_q * chunks);
  run_parallel(threads - 1, [&](int64_t c) {
    for (int64_t item; (item = work.next()) >= 0;) {
      const int64_t q = item / chunks, u = item % chunks;
      const PackSource src{static_cast<const char*>(cbs) + q * k * d * elem_size(dtype), dtype, kNormsCompute,
                           nullptr};
      const int64_t b = pack_tiles(ker, src, p.stages[q], split_begin(ntiles, chunks, u),
                                   split_begin(ntiles, chunks, u + 1));
      if (b >= 0) note_bad(bad, c, q * k + b);
    }
  });
  p.bad_row = lowest_bad(bad);
}

}  // namespace

std::shared_ptr<const RvqPacked> rvq_pack(const void* cbs, int dtype, int64_t num_q, int64_t k, int64_t d,
                                          int isa, int64_t num_threads) {
  constexpr const char* op = "rvq_pack";
  check_common(op, 0, d, k, dtype, num_threads);
  LUMO_CHECK(num_q >= 1, op, "at least one codebook", num_q);
  LUMO_CHECK(cbs != nullptr, op, "a non-null codebooks pointer", "null");
  const Kernel ker = pick_kernel(isa, op);
  auto p = std::make_shared<RvqPacked>();
  const double work = kPackCost * static_cast<double>(num_q) * k * d;
  pack_stages(ker, cbs, dtype, num_q, k, d, useful_threads(resolve_threads(num_threads), work), *p);
  return p;
}

int64_t rvq_encode(const void* x, int dtype, int64_t n, int64_t d, const void* cbs, int64_t num_q, int64_t k,
                   int64_t n_q, int64_t* codes, int64_t num_threads, int isa) {
  constexpr const char* op = "rvq_encode";
  check_common(op, n, d, k, dtype, num_threads);
  LUMO_CHECK(num_q >= 1, op, "at least one codebook", num_q);
  LUMO_CHECK(n_q >= 1 && n_q <= num_q, op, "1 <= n_q <= number of codebooks", n_q);
  const Kernel ker = pick_kernel(isa, op);
  if (n == 0) return -1;
  LUMO_CHECK(x && cbs && codes, op, "non-null x, codebooks and codes pointers", "null");

  const double work = (static_cast<double>(n) + kPackCost) * k * d * n_q;
  const int64_t threads = useful_threads(resolve_threads(num_threads), work);
  const int64_t ntiles = (k + 2 * ker.W - 1) / (2 * ker.W);
  if (few_rows(n, ntiles, threads)) {
    return rvq_few_rows(ker, nullptr, cbs, dtype, k, x, dtype, n, d, n_q, codes, threads);
  }
  // The calling thread's packed stages, reused across calls like vq_search's
  // buffer (fresh pages cost as much as packing them).
  thread_local RvqPacked workspace;
  pack_stages(ker, cbs, dtype, n_q, k, d, threads, workspace);
  const int64_t st = status(rvq_rows(ker, workspace.stages.data(), x, dtype, n, d, n_q, codes, threads),
                            workspace.bad_row);
  size_t bytes = 0;
  for (const VqPacked& s : workspace.stages) bytes += (s.tiles.capacity() + s.cn.capacity()) * sizeof(float);
  if (bytes > kKeepBytes) workspace = RvqPacked();
  return st;
}

int64_t rvq_encode_packed(const RvqPacked& p, const void* x, int x_dtype, int64_t n, int64_t d, int64_t n_q,
                          int64_t* codes, int64_t num_threads) {
  constexpr const char* op = "rvq_encode";
  check_common(op, n, d, p.k, x_dtype, num_threads);
  LUMO_CHECK(d == p.d, op, "rows of the packed codebooks' dimension", d);
  LUMO_CHECK(n_q >= 1 && n_q <= static_cast<int64_t>(p.stages.size()), op,
             "1 <= n_q <= number of packed codebooks", n_q);
  const Kernel ker = pick_kernel(p.isa, op);
  LUMO_CHECK(ker.W * 2 == p.stages[0].tile, op, "codebooks packed for this instruction set", p.stages[0].tile);
  if (n == 0) return -1;
  LUMO_CHECK(x && codes, op, "non-null x and codes pointers", "null");
  const double work = static_cast<double>(n) * p.k * d * n_q;
  const int64_t threads = useful_threads(resolve_threads(num_threads), work);
  if (threads > 1 && few_rows(n, p.stages[0].ntiles, threads)) {
    return rvq_few_rows(ker, &p, nullptr, 0, p.k, x, x_dtype, n, d, n_q, codes, threads);
  }
  return rvq_rows(ker, p.stages.data(), x, x_dtype, n, d, n_q, codes, threads);
}

int64_t rvq_decode(const void* codes, int64_t codes_itemsize, int64_t n, int64_t n_q, const void* cbs, int dtype,
                   int64_t num_q, int64_t k, int64_t d, float* out, int64_t num_threads) {
  constexpr const char* op = "rvq_decode";
  check_common(op, n, d, k, dtype, num_threads);
  LUMO_CHECK(codes_itemsize == 4 || codes_itemsize == 8, op, "codes_itemsize 4 or 8", codes_itemsize);
  LUMO_CHECK(n_q >= 0 && n_q <= num_q, op, "0 <= n_q <= number of codebooks", n_q);
  if (n == 0) return -1;
  LUMO_CHECK(out != nullptr, op, "a non-null out pointer", "null");
  LUMO_CHECK(n_q == 0 || (codes && cbs), op, "non-null codes and codebooks pointers", "null");
  auto code_at = [&](int64_t i) -> int64_t {
    return codes_itemsize == 4 ? static_cast<const int32_t*>(codes)[i] : static_cast<const int64_t*>(codes)[i];
  };
  // Bounds first, in one pass, so no lookup ever reads outside a codebook.
  for (int64_t i = 0; i < n * n_q; ++i) {
    const int64_t c = code_at(i);
    if (c < 0 || c >= k) return i;
  }
  const int64_t threads = useful_threads(resolve_threads(num_threads), static_cast<double>(n) * d * n_q * 20);
  const int64_t chunks = threads == 1 ? 1 : 4 * threads;
  WorkCounter work(chunks);
  run_parallel(threads - 1, [&](int64_t) {
    for (int64_t u; (u = work.next()) >= 0;) {
      for (int64_t r = split_begin(n, chunks, u), r1 = split_begin(n, chunks, u + 1); r < r1; ++r) {
        float* o = out + r * d;
        std::fill(o, o + d, 0.0f);
        for (int64_t q = 0; q < n_q; ++q) {
          const int64_t base = (q * k + code_at(r * n_q + q)) * d;
          for (int64_t j = 0; j < d; ++j) o[j] = vq::add_rn(o[j], load_float(cbs, static_cast<DType>(dtype), base + j));
        }
      }
    }
  });
  return -1;
}

}  // namespace cpu
}  // namespace lumo

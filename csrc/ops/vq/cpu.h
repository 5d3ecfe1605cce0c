// CPU kernels of the VQ ops (torch-free: raw pointers, sizes and dtype codes).
//
// Arithmetic contract: ops/vq/math.h. Element types: lumo::DType codes
// (0 fp32, 1 fp16, 2 bf16). All buffers are C-contiguous host memory that the
// caller keeps alive for the call; outputs must not overlap inputs.
// num_threads: 0 = hardware concurrency. Results never depend on it.
// isa: 0 = best available, 1 = scalar, 2 = AVX2, 3 = AVX-512 (an unavailable
// one throws std::invalid_argument).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace lumo {
namespace cpu {

// Norm modes of vq_search.
enum VqNorms : int { kNormsCompute = 0, kNormsGiven = 1, kNormsZero = 2 };

namespace vqi {
struct KeyOrderedCodebook;  // cpu_internal.h
}  // namespace vqi

// A codebook converted to fp32 and packed for the search micro-kernel of one
// instruction set: tiles of `tile` codes laid out [ntiles][d][tile], and the
// codes' ranking norms cn ([ntiles * tile], NaN past k). Immutable once built,
// so one may be shared by concurrent searches.
struct VqPacked {
  int64_t k = 0, d = 0, tile = 0, ntiles = 0;
  int isa = 0;           // resolved instruction set (1 scalar, 2 AVX2, 3 AVX-512)
  int64_t bad_row = -1;  // first codebook row holding inf/NaN, or -1
  std::vector<float> tiles;
  std::vector<float> cn;
  // Per tile: the largest sqnorm of its codes and the largest |cn| (inf/NaN
  // when a code holds one): the screening bound of the search.
  std::vector<float> bound;
  // The integer screen's copy (where the instruction set and D have it; else
  // empty), in scale groups of kIntGroupTiles tiles: element j of a code in
  // group g is c_scale[g] * q_j + f, |f| <= c_scale[g] / 2, |q_j| <=
  // int_screen_q(d) <= 4095, two dimensions per int32 lane (low half even j),
  // laid out [ntiles][(d + 1) / 2][tile]; b_code[g] is half the group's
  // largest sum_j |q_j| (with a margin), the code side of the screen's bound.
  // A group of small codes gets fine steps of its own.
  std::vector<int32_t> itiles;
  std::vector<double> c_scale, b_code;
  // Lane l of tile t holds code perm[t * tile + l] (INT32_MAX past k), or,
  // empty, code t * tile + l. vq_pack orders a codebook by norm where the
  // integer screen runs on it: its scale groups then hold codes of like size.
  std::vector<int32_t> perm;
  // With perm and computed norms: per scale group, bounds on its codes' L2
  // norms (a group no row can reach is skipped: cpu_iscreen_body.h); else empty.
  std::vector<double> norm_lo, norm_hi;
  // A second copy in the order of one coordinate, for the axis-pruned search
  // of small D (cpu_pruned.cpp); null where that search does not apply.
  std::shared_ptr<const vqi::KeyOrderedCodebook> key_ordered;

  // Element j of code c, as fp32 (the exact converted value); index order only (perm empty).
  float at(int64_t c, int64_t j) const { return tiles[((c / tile) * d + j) * tile + c % tile]; }
  const int32_t* perm_or_null() const { return perm.empty() ? nullptr : perm.data(); }
  int64_t nbytes() const;
};

// Packs cb ([k, d] of cb_dtype; norms and cn_given as in vq_search) for `isa`,
// on up to num_threads threads (0 = hardware concurrency).
std::shared_ptr<const VqPacked> vq_pack(const void* cb, int cb_dtype, int64_t k, int64_t d,
                                        int norms, const float* cn_given, int isa,
                                        int64_t num_threads = 1);

// vq_search against a packed codebook; returns -1, r >= 0 (x row r holds
// inf/NaN) or -2 - r (the best score of row r is not finite: it overflowed
// fp32). The codebook's own check is p.bad_row.
int64_t vq_search_packed(const VqPacked& p, const void* x, int x_dtype, int64_t n, int64_t d,
                         int64_t* codes, float* best, int64_t num_threads);

// codes[i] = argmin_k score(x[i], cb[k]) (lowest k on ties), best[i] = that score.
//
// x: [n, d] of x_dtype; cb: [k, d] of cb_dtype (k >= 1 when n > 0);
// norms: kNormsCompute (cn = sqnorm(cb[k])), kNormsGiven (cn = cn_given[k], [k]
// fp32), kNormsZero (cn = 0: inner product); codes: [n] int64; best: [n] fp32.
// A row whose every score is +inf or NaN gets code 0 and best +inf.
// Returns -1, or r >= 0 when x row r holds inf/NaN (the lowest such row), or
// -2 - c when codebook row c does (x rows are reported first); the outputs
// are then unspecified. Else -2 - k - r when the best score of row r is not
// finite (it overflowed fp32; the lowest such row).
int64_t vq_search(const void* x, int x_dtype, int64_t n, int64_t d, const void* cb, int cb_dtype,
                  int64_t k, int norms, const float* cn_given, int64_t* codes, float* best,
                  int64_t num_threads, int isa);

// Residual VQ: codes[i, q] for q < n_q, x: [n, d], cbs: [num_q, k, d] (same dtype).
// Returns as vq_search, with codebook rows numbered q * k + c.
int64_t rvq_encode(const void* x, int dtype, int64_t n, int64_t d, const void* cbs, int64_t num_q,
                   int64_t k, int64_t n_q, int64_t* codes, int64_t num_threads, int isa);

// The stages of an RVQ codebook stack, each packed as for vq_search with
// computed norms. Immutable once built.
struct RvqPacked {
  int64_t k = 0, d = 0;
  int isa = 0;
  int64_t bad_row = -1;  // first flat row q * k + c holding inf/NaN, or -1
  std::vector<VqPacked> stages;

  int64_t nbytes() const {
    int64_t total = 0;
    for (const VqPacked& s : stages) total += s.nbytes();
    return total;
  }
};

// Packs cbs ([num_q, k, d] of dtype) for `isa` on up to num_threads threads.
std::shared_ptr<const RvqPacked> rvq_pack(const void* cbs, int dtype, int64_t num_q, int64_t k, int64_t d,
                                          int isa, int64_t num_threads);

// rvq_encode of x ([n, d] of x_dtype) against the first n_q packed stages;
// returns -1 or r >= 0 (x row r holds inf/NaN). The codebooks' own check is
// p.bad_row.
int64_t rvq_encode_packed(const RvqPacked& p, const void* x, int x_dtype, int64_t n, int64_t d,
                          int64_t n_q, int64_t* codes, int64_t num_threads);

// out[i] = sum_q cbs[q, codes[i, q]] for q < n_q, accumulated in fp32 in stage
// order. codes: [n, n_q] int32/int64 (codes_itemsize 4/8), cbs: [num_q, k, d]
// of `dtype`, out: [n, d] fp32 (the front casts to the codebooks' dtype).
// Returns -1, or the flat index of the first code outside [0, k) (then out is
// unspecified).
int64_t rvq_decode(const void* codes, int64_t codes_itemsize, int64_t n, int64_t n_q,
                   const void* cbs, int dtype, int64_t num_q, int64_t k, int64_t d, float* out,
                   int64_t num_threads);

// Predictive block coding (lumo-vq's block prediction): a b x h x w grid of
// blocks of patch x patch pixels in 3 channels (d = 3 patch^2 values each, in
// channel, row, column order) is coded in anti-diagonal order. Block (i, j) is
// predicted from the reconstructed blocks above, to the left and above-left:
// features [6 patch + 6] (the bottom row of the block above, the right column
// of the block to the left, the bottom-right pixel of the block above-left,
// each channel by channel, missing neighbours 0; then i > 0, j > 0 and 1),
// times weight ([6 patch + 6, d] float64), summed in float64 in feature
// order, rounded to multiples of grid (a power of two), as fp32. Its
// reconstruction is prediction + codebook[code] in fp32.
//
// packed non-null (encode): codes [b, h, w] = the nearest entry (vq_search
// against packed, which must hold codebook [k, d] with computed norms) of
// blocks [b, h, w, d] fp32 minus the prediction. packed null (decode): codes
// are read, and blocks is not. recon [b, h, w, d] fp32 (or null) receives the
// reconstruction. Returns -1, or the flat index (n * h + i) * w + j of a
// block whose prediction error is not finite or whose score overflowed
// (encode), or whose code lies outside [0, k) (decode); the outputs are then
// unspecified. Results do not depend on num_threads.
int64_t predictive_code(const VqPacked* packed, const float* blocks, const float* codebook, int64_t k,
                        const double* weight, int64_t b, int64_t h, int64_t w, int64_t patch, double grid,
                        int64_t* codes, float* recon, int64_t num_threads);

// Bit mask of the instruction sets this CPU can run: 1 << isa.
int vq_isa_mask();

}  // namespace cpu
}  // namespace lumo

// CUDA VQ kernels: tiled fused nearest-code search, RVQ encode and decode.
//
// Search: a block owns 64 rows and one contiguous range of code tiles (the
// grid's y axis splits K when there are too few row blocks to fill the GPU).
// Per 64-code tile, 256 threads each accumulate a 4 x 4 micro-tile of dot
// products over d in chunks of BK staged (as fp32) in shared memory, in the
// order d = 0..D-1 with separate rounded mul and add (__fmul_rn/__fadd_rn, no
// FMA: ops/vq/math.h), then fold the scores into a running (value, index)
// minimum per row in registers. A warp-shuffle reduction over the 16 threads
// of a row and a second tiny kernel over the splits finish the minimum; both
// use the strict order pair_less, so the result is deterministic and equal to
// the CPU kernel's. No N x K matrix exists; extra memory is O(splits * N + K).
#include "ops/vq/cuda.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include <math_constants.h>

#include "abi/checks.h"
#include "ops/vq/math.h"
#include "runtime/cuda_check.cuh"

namespace lumo {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileRows = 64;   // rows per block
constexpr int kTileCodes = 64;  // codes per tile
static_assert(kTileRows == kTileCodes, "x and code tiles share the staging layout");
constexpr int kMaxSplits = 64;
constexpr int32_t kNoIndex = 2147483647;

using vq::pair_less;

__global__ void norms_kernel(const void* __restrict__ cb, int dtype, int64_t k, int64_t d,
                             float* __restrict__ cn) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < k) cn[c] = vq::sqnorm_seq_typed(cb, dtype, c, d);
}

__global__ void to_float_kernel(const void* __restrict__ x, int dtype, int64_t count,
                                float* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    out[i] = load_float(x, static_cast<DType>(dtype), i);
  }
}

// grid (row blocks, splits). part_val/part_idx: [splits][n].
template <int BK>
__global__ void __launch_bounds__(kThreads)
search_kernel(const void* __restrict__ x, int x_dtype, int64_t n, int64_t d,
              const void* __restrict__ cb, int cb_dtype, int64_t k, const float* __restrict__ cn,
              int64_t tiles_per_split, float* __restrict__ part_val, int32_t* __restrict__ part_idx) {
  // +1 column keeps the transposed stores from hitting one bank.
  __shared__ float xs[BK][kTileRows + 1];
  __shared__ float cs[BK][kTileCodes + 1];
  const int tx = threadIdx.x % 16;  // code lane: codes tx + 16 j
  const int ty = threadIdx.x / 16;  // row lane: rows ty + 16 i
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t split = blockIdx.y;
  const int64_t k_begin = split * tiles_per_split * kTileCodes;
  const int64_t k_stop = k_begin + tiles_per_split * kTileCodes;
  const int64_t k_end = k_stop < k ? k_stop : k;

  float bv[4];
  int32_t bi[4];
  for (int i = 0; i < 4; ++i) {
    bv[i] = CUDART_INF_F;
    bi[i] = kNoIndex;
  }

  // With a single d chunk (d <= BK: the tiny-D image codebooks) the x tile is
  // the same for every code tile: stage it once (the loop's first barrier
  // publishes it).
  const bool x_once = d <= BK;
  if (x_once) {
    for (int e = threadIdx.x; e < kTileRows * BK; e += kThreads) {
      const int r = e / BK, j = e % BK;
      const int64_t row = m0 + r;
      xs[j][r] = (row < n && j < d) ? load_float(x, static_cast<DType>(x_dtype), row * d + j) : 0.0f;
    }
  }
  for (int64_t c0 = k_begin; c0 < k_end; c0 += kTileCodes) {
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int64_t d0 = 0; d0 < d; d0 += BK) {
      // Stage the x and code chunks as fp32, zero outside [0, n) x [0, d):
      // a zero product adds exactly nothing to a sum.
      for (int e = threadIdx.x; e < kTileRows * BK; e += kThreads) {
        const int r = e / BK, j = e % BK;
        const int64_t row = m0 + r, col = d0 + j;
        if (!x_once) xs[j][r] = (row < n && col < d) ? load_float(x, static_cast<DType>(x_dtype), row * d + col) : 0.0f;
        const int64_t code = c0 + r;
        cs[j][r] = (code < k_end && col < d) ? load_float(cb, static_cast<DType>(cb_dtype), code * d + col) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < BK; ++j) {
        float a[4], b[4];
        for (int i = 0; i < 4; ++i) a[i] = xs[j][ty + 16 * i];
        for (int i = 0; i < 4; ++i) b[i] = cs[j][tx + 16 * i];
        for (int i = 0; i < 4; ++i)
          for (int jj = 0; jj < 4; ++jj) acc[i][jj] = __fadd_rn(acc[i][jj], __fmul_rn(a[i], b[jj]));
      }
      __syncthreads();
    }
    for (int jj = 0; jj < 4; ++jj) {
      const int64_t code = c0 + tx + 16 * jj;
      if (code >= k_end) continue;
      const float cnk = cn[code];
      for (int i = 0; i < 4; ++i) {
        const float s = vq::score_from_dot(cnk, acc[i][jj]);
        // A thread sees its codes in increasing order, so keeping the strictly
        // smaller score keeps the lowest index among equal ones (NaN never wins).
        if (s < bv[i]) {
          bv[i] = s;
          bi[i] = static_cast<int32_t>(code);
        }
      }
    }
  }

  // The 16 threads of a row group are 16 consecutive lanes of one warp.
  for (int i = 0; i < 4; ++i) {
    for (int off = 8; off >= 1; off >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv[i], off, 16);
      const int32_t oi = __shfl_xor_sync(0xffffffffu, bi[i], off, 16);
      if (pair_less(ov, oi, bv[i], bi[i])) {
        bv[i] = ov;
        bi[i] = oi;
      }
    }
    const int64_t row = m0 + ty + 16 * i;
    if (tx == 0 && row < n) {
      part_val[split * n + row] = bv[i];
      part_idx[split * n + row] = bi[i];
    }
  }
}

// Merges the splits of each row, writes codes[row * code_stride] and best,
// and for RVQ (residual != nullptr) subtracts the chosen code from the residual.
__global__ void finalize_kernel(const float* __restrict__ part_val,
                                const int32_t* __restrict__ part_idx, int64_t splits, int64_t n,
                                int64_t* __restrict__ codes, int64_t code_stride,
                                float* __restrict__ best, float* __restrict__ residual,
                                const void* __restrict__ cb, int cb_dtype, int64_t d) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  float v = part_val[row];
  int32_t idx = part_idx[row];
  for (int64_t s = 1; s < splits; ++s) {
    const float ov = part_val[s * n + row];
    const int32_t oi = part_idx[s * n + row];
    if (pair_less(ov, oi, v, idx)) {
      v = ov;
      idx = oi;
    }
  }
  const bool none = idx == kNoIndex;  // every score +inf or NaN: overflow, reported by the front
  const int64_t code = none ? 0 : idx;
  codes[row * code_stride] = code;
  if (best != nullptr) best[row] = none ? CUDART_INF_F : v;
  if (residual != nullptr) {
    float* r = residual + row * d;
    for (int64_t j = 0; j < d; ++j) r[j] = vq::sub_rn(r[j], load_float(cb, static_cast<DType>(cb_dtype), code * d + j));
  }
}

__global__ void decode_kernel(const void* __restrict__ codes, int64_t itemsize, int64_t n,
                              int64_t n_q, const void* __restrict__ cbs, int dtype, int64_t k,
                              int64_t d, float* __restrict__ out) {
  const int64_t total = n * d;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t row = e / d, j = e % d;
    float acc = 0.0f;
    for (int64_t q = 0; q < n_q; ++q) {
      const int64_t i = row * n_q + q;
      const int64_t c = itemsize == 4 ? static_cast<const int32_t*>(codes)[i]
                                      : static_cast<const int64_t*>(codes)[i];
      if (c < 0 || c >= k) continue;
      acc = vq::add_rn(acc, load_float(cbs, static_cast<DType>(dtype), (q * k + c) * d + j));
    }
    out[e] = acc;
  }
}

void check_sizes(const char* op, int64_t n, int64_t d, int64_t k, int dtype, int device) {
  LUMO_CHECK(n >= 0, op, "n >= 0", n);
  LUMO_CHECK(d >= 1, op, "d >= 1", d);
  LUMO_CHECK(k >= 1, op, "k >= 1 (a non-empty codebook)", k);
  LUMO_CHECK_RANGE(k < kNoIndex - kTileCodes, op, "k < 2^31 - 64", k);
  check_dtype(op, "dtype", dtype);
  LUMO_CHECK(device >= 0, op, "a device index >= 0", device);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Enqueues the search of n rows of x against cb, then the merge.
void launch_search(const void* x, int x_dtype, int64_t n, int64_t d, const void* cb, int cb_dtype,
                   int64_t k, const float* cn, int64_t* codes, int64_t code_stride, float* best,
                   float* residual, float* part_val, int32_t* part_idx, int64_t splits,
                   cudaStream_t s, const char* op) {
  const int64_t tiles = ceil_div(k, kTileCodes);
  splits = std::max<int64_t>(1, std::min(splits, tiles));
  const int64_t per_split = ceil_div(tiles, splits);
  splits = ceil_div(tiles, per_split);  // no empty split
  const dim3 grid(static_cast<unsigned>(ceil_div(n, kTileRows)), static_cast<unsigned>(splits));
  if (d <= 4) {
    LUMO_LAUNCH(search_kernel<4>, grid, kThreads, 0, s)(x, x_dtype, n, d, cb, cb_dtype, k, cn, per_split, part_val, part_idx);
  } else if (d <= 8) {
    LUMO_LAUNCH(search_kernel<8>, grid, kThreads, 0, s)(x, x_dtype, n, d, cb, cb_dtype, k, cn, per_split, part_val, part_idx);
  } else {
    LUMO_LAUNCH(search_kernel<16>, grid, kThreads, 0, s)(x, x_dtype, n, d, cb, cb_dtype, k, cn, per_split, part_val, part_idx);
  }
  throw_on_error(cudaGetLastError(), op, "search kernel launch");
  LUMO_LAUNCH(finalize_kernel, static_cast<unsigned>(ceil_div(n, 256)), 256, 0, s)(
      part_val, part_idx, splits, n, codes, code_stride, best, residual, cb, cb_dtype, d);
  throw_on_error(cudaGetLastError(), op, "finalize kernel launch");
}

}  // namespace

int64_t vq_search_splits(int64_t n, int64_t k, int device) {
  constexpr const char* op = "vq_search_splits";
  LUMO_CHECK(n >= 0 && k >= 1, op, "n >= 0 and k >= 1", k);
  DeviceGuard guard(device, op);
  int sms = 0;
  throw_on_error(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), op,
                 "cudaDeviceGetAttribute");
  const int64_t row_blocks = std::max<int64_t>(1, ceil_div(n, kTileRows));
  // Aim at two blocks per SM; each split must still own a few code tiles.
  const int64_t want = ceil_div(2 * static_cast<int64_t>(sms), row_blocks);
  const int64_t max_by_k = std::max<int64_t>(1, ceil_div(k, kTileCodes) / 4);
  return std::max<int64_t>(1, std::min<int64_t>({want, max_by_k, kMaxSplits}));
}

void vq_search(const void* x, int x_dtype, int64_t n, int64_t d, const void* cb, int cb_dtype,
               int64_t k, int norms, float* cn, int64_t* codes, float* best, float* part_val,
               int32_t* part_idx, int64_t splits, uintptr_t stream, int device) {
  constexpr const char* op = "vq_search (cuda)";
  check_sizes(op, n, d, k, x_dtype, device);
  check_dtype(op, "cb_dtype", cb_dtype);
  LUMO_CHECK(norms >= 0 && norms <= 2, op, "norms mode 0, 1 or 2", norms);
  LUMO_CHECK(splits >= 1 && splits <= kMaxSplits, op, "1 <= splits <= 64", splits);
  if (n == 0) return;
  LUMO_CHECK(x && cb && cn && codes && best && part_val && part_idx, op, "non-null pointers", "null");
  DeviceGuard guard(device, op);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  if (norms == 0) {
    LUMO_LAUNCH(norms_kernel, static_cast<unsigned>(ceil_div(k, 256)), 256, 0, s)(cb, cb_dtype, k, d, cn);
    throw_on_error(cudaGetLastError(), op, "norms kernel launch");
  } else if (norms == 2) {
    throw_on_error(cudaMemsetAsync(cn, 0, static_cast<size_t>(k) * sizeof(float), s), op, "cudaMemsetAsync");
  }
  launch_search(x, x_dtype, n, d, cb, cb_dtype, k, cn, codes, 1, best, nullptr, part_val, part_idx,
                splits, s, op);
}

void rvq_encode(const void* x, int dtype, int64_t n, int64_t d, const void* cbs, int64_t num_q,
                int64_t k, int64_t n_q, int64_t* codes, float* residual, float* cn,
                float* part_val, int32_t* part_idx, int64_t splits, uintptr_t stream, int device) {
  constexpr const char* op = "rvq_encode (cuda)";
  check_sizes(op, n, d, k, dtype, device);
  LUMO_CHECK(num_q >= 1, op, "at least one codebook", num_q);
  LUMO_CHECK(n_q >= 1 && n_q <= num_q, op, "1 <= n_q <= number of codebooks", n_q);
  LUMO_CHECK(splits >= 1 && splits <= kMaxSplits, op, "1 <= splits <= 64", splits);
  if (n == 0) return;
  LUMO_CHECK(x && cbs && codes && residual && cn && part_val && part_idx, op, "non-null pointers", "null");
  DeviceGuard guard(device, op);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const int elem = static_cast<int>(dtype_size(static_cast<DType>(dtype)));
  LUMO_LAUNCH(to_float_kernel, static_cast<unsigned>(std::min<int64_t>(ceil_div(n * d, 256), 4096)), 256, 0, s)(
      x, dtype, n * d, residual);
  throw_on_error(cudaGetLastError(), op, "conversion kernel launch");
  for (int64_t q = 0; q < n_q; ++q) {
    const void* cb = static_cast<const char*>(cbs) + q * k * d * elem;
    LUMO_LAUNCH(norms_kernel, static_cast<unsigned>(ceil_div(k, 256)), 256, 0, s)(cb, dtype, k, d, cn + q * k);
    throw_on_error(cudaGetLastError(), op, "norms kernel launch");
  }
  // The residual stays in device memory (L2 for typical sizes) between stages.
  for (int64_t q = 0; q < n_q; ++q) {
    const void* cb = static_cast<const char*>(cbs) + q * k * d * elem;
    launch_search(residual, static_cast<int>(DType::F32), n, d, cb, dtype, k, cn + q * k, codes + q, n_q, nullptr,
                  residual, part_val, part_idx, splits, s, op);
  }
}

void rvq_decode(const void* codes, int64_t codes_itemsize, int64_t n, int64_t n_q, const void* cbs,
                int dtype, int64_t num_q, int64_t k, int64_t d, float* out, uintptr_t stream,
                int device) {
  constexpr const char* op = "rvq_decode (cuda)";
  check_sizes(op, n, d, k, dtype, device);
  LUMO_CHECK(codes_itemsize == 4 || codes_itemsize == 8, op, "codes_itemsize 4 or 8", codes_itemsize);
  LUMO_CHECK(n_q >= 0 && n_q <= num_q, op, "0 <= n_q <= number of codebooks", n_q);
  if (n == 0) return;
  LUMO_CHECK(out && (n_q == 0 || (codes && cbs)), op, "non-null pointers", "null");
  DeviceGuard guard(device, op);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  LUMO_LAUNCH(decode_kernel, static_cast<unsigned>(std::min<int64_t>(ceil_div(n * d, 256), 8192)), 256, 0, s)(
      codes, codes_itemsize, n, n_q, cbs, dtype, k, d, out);
  throw_on_error(cudaGetLastError(), op, "decode kernel launch");
}

}  // namespace cuda
}  // namespace lumo

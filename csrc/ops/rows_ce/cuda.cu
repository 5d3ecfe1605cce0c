// Rows-only linear cross-entropy on CUDA.
//
// Forward: one block per 16 tokens walks the vocabulary in super-tiles of
// kSuperTile rows (a block whose tokens are all ignored only writes zeros). A super-tile's logits [16 x 256] are built in shared memory
// from D-chunks of the hidden states and rows; a warp per token then makes the
// online log-sum-exp step; and each thread, owning one column d of the block's
// rows of dhat (global memory, written by this block only), rescales it and
// adds p @ W. Backward: one block per 64 new rows sweeps the tokens in index
// order, 16 at a time, and each thread adds into its own column of those rows.
// No atomics: every sum has one owner and a fixed order (the CPU kernel's
// order: sequential fused multiply-adds over d, over columns, over tokens).
#include "ops/rows_ce/cuda.h"

#include <algorithm>
#include <cmath>

#include "abi/dtype.h"
#include "ops/rows_ce/math.h"
#include "runtime/cuda_check.cuh"

namespace lumo {
namespace rows_ce {
namespace {

constexpr int kThreads = 256;
constexpr int kBlockTokens = 16;  // tokens per forward block (and per backward step)
constexpr int kChunk = 16;        // hidden-state columns staged in shared memory at a time
constexpr int kS = static_cast<int>(kSuperTile);
constexpr int kTile = static_cast<int>(kPanel);  // new rows per backward block
constexpr int kLaneSums = 16;     // the CPU kernel's fixed lanes of a column sum

static_assert(kS == kThreads, "one score column per thread");

__device__ inline bool is_valid(const Inputs& in, int64_t tok) {
  return tok < in.tokens && in.targets[tok] != in.ignore_index;
}

__global__ void forward_kernel(Inputs in, float* __restrict__ loss, float* __restrict__ lse,
                               float* __restrict__ dhat) {
  __shared__ float zs[kBlockTokens][kS];
  __shared__ float hs[kBlockTokens][kChunk];
  __shared__ float ws[kChunk][kS];
  __shared__ float parts[kBlockTokens][kLaneSums];
  __shared__ float m_s[kBlockTokens], s_s[kBlockTokens], zt_s[kBlockTokens], f_s[kBlockTokens];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kBlockTokens, D = in.dim;
  const bool with_grad = dhat != nullptr;
  __shared__ bool any_valid;
  if (tid == 0) {
    any_valid = false;
    for (int t = 0; t < kBlockTokens; ++t) any_valid = any_valid || is_valid(in, t0 + t);
  }
  __syncthreads();
  if (!any_valid) {  // every token ignored (padding): zero outputs, no walk over the vocabulary
    for (int t = 0; t < kBlockTokens && t0 + t < in.tokens; ++t) {
      if (tid == 0) loss[t0 + t] = lse[t0 + t] = 0.0f;
      if (with_grad)
        for (int64_t d = tid; d < D; d += kThreads) dhat[(t0 + t) * D + d] = 0.0f;
    }
    return;
  }
  if (tid < kBlockTokens) {
    m_s[tid] = -INFINITY;
    s_s[tid] = 0.0f;
    zt_s[tid] = 0.0f;
  }
  if (with_grad) {
    for (int t = 0; t < kBlockTokens; ++t)
      if (t0 + t < in.tokens)
        for (int64_t d = tid; d < D; d += kThreads) dhat[(t0 + t) * D + d] = 0.0f;
  }
  __syncthreads();
  for (int table = 0; table < 2; ++table) {
    const void* w = table == 0 ? in.base : in.new_rows;
    const DType wdt = table == 0 ? in.base_dtype : in.new_dtype;
    const void* bias = table == 0 ? in.base_bias : in.new_bias;
    const DType bdt = table == 0 ? in.base_bias_dtype : in.new_bias_dtype;
    const int64_t rows = table == 0 ? in.base_rows : in.new_count;
    const int64_t offset = table == 0 ? 0 : in.base_rows;
    for (int64_t lo = 0; lo < rows; lo += kS) {
      const int64_t count = rows - lo < kS ? rows - lo : kS, col0 = offset + lo;
      // Logits of column tid for the block's tokens: fma over d in order.
      float acc[kBlockTokens];
      for (int t = 0; t < kBlockTokens; ++t) acc[t] = 0.0f;
      for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
        {
          const int t = tid / kChunk, dd = tid % kChunk;
          const int64_t tok = t0 + t;
          hs[t][dd] = (tok < in.tokens && d0 + dd < D) ? load_float(in.hidden, in.hidden_dtype, tok * D + d0 + dd)
                                                        : 0.0f;
        }
        for (int i = 0; i < kChunk; ++i) {
          const int idx = i * kThreads + tid, j = idx / kChunk, dd = idx % kChunk;
          ws[dd][j] = (j < count && d0 + dd < D) ? load_float(w, wdt, (lo + j) * D + d0 + dd) : 0.0f;
        }
        __syncthreads();
        const int64_t nd = D - d0 < kChunk ? D - d0 : kChunk;
        for (int dd = 0; dd < nd; ++dd) {
          const float wv = ws[dd][tid];
          for (int t = 0; t < kBlockTokens; ++t) acc[t] = fma_rn(hs[t][dd], wv, acc[t]);
        }
        __syncthreads();
      }
      const float b = (bias != nullptr && tid < count) ? load_float(bias, bdt, lo + tid) : 0.0f;
      const float term = column_term(col0 + tid, tid < count, b, in.masked, in.num_masked);
      for (int t = 0; t < kBlockTokens; ++t) zs[t][tid] = add_rn(acc[t], term);
      __syncthreads();
      // Online log-sum-exp: warp `warp` takes tokens warp and warp + 8.
      for (int t = warp; t < kBlockTokens; t += kThreads / 32) {
        const int64_t tok = t0 + t;
        if (!is_valid(in, tok)) {
          if (lane == 0) f_s[t] = 1.0f;
          continue;  // uniform over the warp
        }
        float mx = -INFINITY;
        for (int j = lane; j < kS; j += 32) mx = fmaxf(mx, zs[t][j]);
        for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const int64_t tg = in.targets[tok] - col0;
        const float m_old = m_s[t];
        const float mn = fmaxf(m_old, mx);
        __syncwarp();
        if (lane == 0 && tg >= 0 && tg < count) zt_s[t] = zs[t][tg];
        __syncwarp();  // the target's logit is read before the lanes overwrite the row
        if (mn == -INFINITY) {
          for (int j = lane; j < kS; j += 32) zs[t][j] = 0.0f;
          if (lane == 0) f_s[t] = 1.0f;
          __syncwarp();
          continue;
        }
        for (int j = lane; j < kS; j += 32) zs[t][j] = exp_fma(add_rn(zs[t][j], -mn));
        __syncwarp();
        if (lane < kLaneSums) {
          float part = 0.0f;
          for (int j = lane; j < kS; j += kLaneSums) part = add_rn(part, zs[t][j]);
          parts[t][lane] = part;
        }
        __syncwarp();
        if (lane == 0) {
          float sum = 0.0f;
          for (int l = 0; l < kLaneSums; ++l) sum = add_rn(sum, parts[t][l]);
          const float f = rescale_factor(m_old, mn);
          s_s[t] = add_rn(mul_rn(s_s[t], f), sum);
          m_s[t] = mn;
          f_s[t] = f;
        }
        __syncwarp();
      }
      __syncthreads();
      if (with_grad) {
        for (int64_t d = tid; d < D; d += kThreads) {
          float a[kBlockTokens];
          for (int t = 0; t < kBlockTokens; ++t) {
            a[t] = t0 + t < in.tokens ? dhat[(t0 + t) * D + d] : 0.0f;
            if (f_s[t] != 1.0f) a[t] = mul_rn(a[t], f_s[t]);
          }
          for (int64_t j = 0; j < count; ++j) {
            const float wv = load_float(w, wdt, (lo + j) * D + d);
            for (int t = 0; t < kBlockTokens; ++t) a[t] = fma_rn(zs[t][j], wv, a[t]);
          }
          for (int t = 0; t < kBlockTokens; ++t)
            if (t0 + t < in.tokens) dhat[(t0 + t) * D + d] = a[t];
        }
      }
      __syncthreads();
    }
  }
  for (int t = 0; t < kBlockTokens; ++t) {
    const int64_t tok = t0 + t;
    if (tok >= in.tokens) break;
    const bool valid = is_valid(in, tok);
    const float l = !valid ? 0.0f : (m_s[t] == -INFINITY ? -INFINITY : add_rn(m_s[t], logf(s_s[t])));
    if (tid == 0) {
      lse[tok] = l;
      loss[tok] = valid ? add_rn(l, -zt_s[t]) : 0.0f;
    }
    if (!with_grad) continue;
    const int64_t y = valid ? in.targets[tok] : 0;
    const void* wy = y < in.base_rows ? in.base : in.new_rows;
    const DType wdt = y < in.base_rows ? in.base_dtype : in.new_dtype;
    const int64_t row = y < in.base_rows ? y : y - in.base_rows;
    for (int64_t d = tid; d < D; d += kThreads)
      dhat[tok * D + d] = valid ? add_rn(dhat[tok * D + d] / s_s[t], -load_float(wy, wdt, row * D + d)) : 0.0f;
  }
}

__global__ void new_rows_backward_kernel(Inputs in, const float* __restrict__ grad_loss,
                                         const float* __restrict__ lse, float* __restrict__ grad_new,
                                         float* __restrict__ grad_bias) {
  __shared__ float hs[kBlockTokens][kChunk];
  __shared__ float ws[kChunk][kTile];
  __shared__ float dz[kBlockTokens][kTile];
  __shared__ float term_s[kTile];
  __shared__ int valid_s[kBlockTokens];
  const int tid = threadIdx.x;
  const int64_t lo = static_cast<int64_t>(blockIdx.x) * kTile, D = in.dim;
  const int64_t count = in.new_count - lo < kTile ? in.new_count - lo : kTile, col0 = in.base_rows + lo;
  for (int64_t r = 0; r < count; ++r)
    for (int64_t d = tid; d < D; d += kThreads) grad_new[(lo + r) * D + d] = 0.0f;
  if (tid < kTile) {
    const float b = (in.new_bias != nullptr && tid < count) ? load_float(in.new_bias, in.new_bias_dtype, lo + tid)
                                                            : 0.0f;
    term_s[tid] = column_term(col0 + tid, tid < count, b, in.masked, in.num_masked);
  }
  float gb = 0.0f;
  const int c = tid % kTile, q = tid / kTile;  // column, and which 4 tokens of the step
  for (int64_t tc = 0; tc < in.tokens; tc += kBlockTokens) {
    if (tid < kBlockTokens) valid_s[tid] = is_valid(in, tc + tid) ? 1 : 0;
    __syncthreads();
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
      {
        const int t = tid / kChunk, dd = tid % kChunk;
        const int64_t tok = tc + t;
        hs[t][dd] = (tok < in.tokens && d0 + dd < D) ? load_float(in.hidden, in.hidden_dtype, tok * D + d0 + dd)
                                                      : 0.0f;
      }
      for (int i = 0; i < kChunk * kTile / kThreads; ++i) {
        const int idx = i * kThreads + tid, j = idx / kChunk, dd = idx % kChunk;
        ws[dd][j] = (j < count && d0 + dd < D) ? load_float(in.new_rows, in.new_dtype, (lo + j) * D + d0 + dd)
                                               : 0.0f;
      }
      __syncthreads();
      const int64_t nd = D - d0 < kChunk ? D - d0 : kChunk;
      for (int dd = 0; dd < nd; ++dd) {
        const float wv = ws[dd][c];
        for (int i = 0; i < 4; ++i) acc[i] = fma_rn(hs[q * 4 + i][dd], wv, acc[i]);
      }
      __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
      const int t = q * 4 + i;
      const int64_t tok = tc + t;
      float v = 0.0f;
      if (valid_s[t]) {
        const float p = exp_fma(add_rn(add_rn(acc[i], term_s[c]), -lse[tok]));
        const float onehot = in.targets[tok] - col0 == c ? 1.0f : 0.0f;
        v = mul_rn(grad_loss[tok], add_rn(p, -onehot));
      }
      dz[t][c] = v;
    }
    __syncthreads();
    for (int64_t d = tid; d < D; d += kThreads) {
      float h[kBlockTokens];
      for (int t = 0; t < kBlockTokens; ++t)
        h[t] = valid_s[t] ? load_float(in.hidden, in.hidden_dtype, (tc + t) * D + d) : 0.0f;
      for (int64_t r = 0; r < count; ++r) {
        float g = grad_new[(lo + r) * D + d];
        for (int t = 0; t < kBlockTokens; ++t)
          if (valid_s[t]) g = fma_rn(dz[t][r], h[t], g);
        grad_new[(lo + r) * D + d] = g;
      }
    }
    if (grad_bias != nullptr && tid < count)
      for (int t = 0; t < kBlockTokens; ++t)
        if (valid_s[t]) gb = add_rn(gb, dz[t][tid]);
    __syncthreads();
  }
  if (grad_bias != nullptr && tid < count) grad_bias[lo + tid] = gb;
}

}  // namespace

void cuda_forward(const Inputs& in, float* loss, float* lse, float* dhat, uintptr_t stream, int device) {
  constexpr const char* op = "rows_ce_forward (cuda)";
  if (in.tokens == 0) return;
  cuda::DeviceGuard guard(device, op);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const int64_t blocks = (in.tokens + kBlockTokens - 1) / kBlockTokens;
  LUMO_LAUNCH(forward_kernel, dim3(static_cast<unsigned>(blocks)), kThreads, 0, s)(in, loss, lse, dhat);
  cuda::throw_on_error(cudaGetLastError(), op, "kernel launch");
}

void cuda_new_rows_backward(const Inputs& in, const float* grad_loss, const float* lse, float* grad_new,
                            float* grad_new_bias, uintptr_t stream, int device) {
  constexpr const char* op = "rows_ce_new_rows_backward (cuda)";
  if (in.new_count == 0) return;
  cuda::DeviceGuard guard(device, op);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const int64_t blocks = (in.new_count + kTile - 1) / kTile;
  LUMO_LAUNCH(new_rows_backward_kernel, dim3(static_cast<unsigned>(blocks)), kThreads, 0, s)(
      in, grad_loss, lse, grad_new, grad_new_bias);
  cuda::throw_on_error(cudaGetLastError(), op, "kernel launch");
}

}  // namespace rows_ce
}  // namespace lumo

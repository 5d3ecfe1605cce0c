// CUDA kernels of the VQ ops (torch-free; callable without CUDA headers).
//
// Same arithmetic contract as the CPU kernels (ops/vq/math.h), so the codes
// are identical. Pointers are device memory on `device`; work is enqueued on
// `stream` (a cudaStream_t as an integer) and the caller keeps every buffer
// alive until it ran. Workspaces are allocated by the caller (the Python front
// uses PyTorch's caching allocator).
#pragma once

#include <cstdint>

namespace lumo {
namespace cuda {

// Code-range splits vq_search uses for n rows and k codes on `device`: the
// partial-result workspace holds splits * n (value, index) pairs.
int64_t vq_search_splits(int64_t n, int64_t k, int device);

// codes[i] / best[i] as lumo::cpu::vq_search. norms: 0 compute into cn, 1 cn
// holds the given [k] fp32 norms, 2 zero (cn is overwritten with zeros).
// cn: [k] fp32; part_val/part_idx: [splits * n] with splits from
// vq_search_splits(n, k, device).
void vq_search(const void* x, int x_dtype, int64_t n, int64_t d, const void* cb, int cb_dtype,
               int64_t k, int norms, float* cn, int64_t* codes, float* best, float* part_val,
               int32_t* part_idx, int64_t splits, uintptr_t stream, int device);

// Residual VQ: codes [n, n_q] int64. Workspaces: residual [n, d] fp32,
// cn [n_q, k] fp32, part_val/part_idx [splits * n] (splits as above).
void rvq_encode(const void* x, int dtype, int64_t n, int64_t d, const void* cbs, int64_t num_q,
                int64_t k, int64_t n_q, int64_t* codes, float* residual, float* cn,
                float* part_val, int32_t* part_idx, int64_t splits, uintptr_t stream, int device);

// out [n, d] fp32 = sum_q cbs[q, codes[i, q]] in stage order. The caller
// checks that every code lies in [0, k) and reports the first bad one; the
// kernel re-checks each code and skips (never reads for) one outside.
void rvq_decode(const void* codes, int64_t codes_itemsize, int64_t n, int64_t n_q, const void* cbs,
                int dtype, int64_t num_q, int64_t k, int64_t d, float* out, uintptr_t stream,
                int device);

}  // namespace cuda
}  // namespace lumo

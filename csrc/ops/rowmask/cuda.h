// CUDA row-masked embedding gradient, callable without CUDA headers.
#pragma once

#include <cstdint>

namespace lumo {
namespace cuda {

// Segment reduction over positions already bucketed by row (the Python front
// sorts them with a stable device sort): for r in [0, num_rows),
//   out[r, :] = sum_{j in [offsets[r], offsets[r+1])} grad[positions[j], :]
// in fp32, j ascending. One thread owns one (row, column) and adds in a fixed
// order, so the result is deterministic (no atomics). Enqueued on `stream`
// (a cudaStream_t as an integer) of `device`; asynchronous.
//
// positions: [num_hits] int64 device pointer, each in [0, n)
// offsets: [num_rows + 1] int64 device pointer, non-decreasing, offsets[0] == 0,
//   offsets[num_rows] == num_hits (checked by the caller)
// grad: [n, dim] fp32/fp16/bf16 (rowmask::DType), row stride grad_row_stride
// out: [num_rows, dim] fp32 device pointer
// Throws std::invalid_argument / std::out_of_range on bad sizes or pointers,
// std::runtime_error when a CUDA call or the launch fails.
void rowmask_segment_reduce(const int64_t* positions, int64_t num_hits, const int64_t* offsets,
                            const void* grad, int64_t dtype, int64_t n, int64_t dim,
                            int64_t grad_row_stride, int64_t num_rows, float* out,
                            uintptr_t stream, int device);

}  // namespace cuda
}  // namespace lumo

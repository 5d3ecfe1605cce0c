// CPU kernel for the row-masked embedding gradient (torch-free: raw pointers).
#pragma once

#include <cstdint>

namespace lumo {
namespace cpu {

// out[r, :] = sum over positions i (ascending) with ids[i] == row_start + r of
// grad[i, :], accumulated in fp32, for r in [0, num_rows); rows no ID hits
// are zero. Positions whose ID lies outside [row_start, row_start + num_rows)
// are ignored.
//
// ids: [n] int32 (ids_itemsize 4) or int64 (8), contiguous
// grad: [n, dim] of dtype (a DType code, abi/dtype.h), row i at grad + i * grad_row_stride
//   elements, elements of a row contiguous
// out: [num_rows, dim] fp32, contiguous, must not overlap the inputs
// num_threads: 0 = hardware concurrency. Positions are bucketed by a stable
//   counting sort and each row is summed by one thread in position order, so
//   the result is bit-identical for any thread count.
// Memory: O(n + num_rows) scratch besides out.
// Throws std::invalid_argument / std::out_of_range on bad sizes or pointers.
void rowmask_embedding_backward(const void* ids, int64_t ids_itemsize, int64_t n, const void* grad,
                                int64_t dtype, int64_t dim, int64_t grad_row_stride,
                                int64_t row_start, int64_t num_rows, float* out,
                                int64_t num_threads);

}  // namespace cpu
}  // namespace lumo

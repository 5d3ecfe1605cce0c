// CPU kernels for token-range classification (torch-free: raw pointers only).
#pragma once

#include <cstdint>

namespace lumo {
namespace cpu {

// out[i] = classify_one(ids[i], bounds, num_bounds) for i in [0, n).
//
// ids: [n] signed integers of ids_itemsize bytes (4: int32, 8: int64)
// bounds: [num_bounds] int64, strictly increasing (checked by the caller)
// out: [n] int32, must not overlap ids or bounds
// num_threads: 0 = hardware concurrency; work is split into contiguous chunks,
//   so the result does not depend on the thread count.
// Throws std::invalid_argument / std::out_of_range on bad sizes or pointers.
void classify_ids(const void* ids, int64_t ids_itemsize, int64_t n, const int64_t* bounds,
                  int64_t num_bounds, int32_t* out, int64_t num_threads);

// Index i of the first pair with bounds[i] >= bounds[i+1], or -1 when bounds
// is strictly increasing.
int64_t first_unsorted(const int64_t* bounds, int64_t num_bounds);

}  // namespace cpu
}  // namespace lumo

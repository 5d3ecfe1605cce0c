// CUDA token-range classification, callable without CUDA headers.
#pragma once

#include <cstdint>

namespace lumo {
namespace cuda {

// out[i] = classify_one(ids[i], bounds, num_bounds) for i in [0, n), enqueued
// on `stream` (a cudaStream_t as an integer; 0 = legacy default stream) of
// `device`. Asynchronous: returns once the kernel is launched.
//
// ids: [n] device pointer, int32 (ids_itemsize 4) or int64 (8)
// bounds: [num_bounds] int64 device pointer, strictly increasing
// out: [n] int32 device pointer
// Throws std::invalid_argument / std::out_of_range on bad sizes or pointers,
// std::runtime_error when a CUDA call or the launch fails.
void classify_ids(const void* ids, int64_t ids_itemsize, int64_t n, const int64_t* bounds,
                  int64_t num_bounds, int32_t* out, uintptr_t stream, int device);

}  // namespace cuda
}  // namespace lumo

// Token-range classification shared by the CPU and CUDA kernels.
//
// A token space is a sorted list of block boundaries b[0] < b[1] < ... < b[R];
// block r holds the IDs b[r] <= id < b[r+1].
#pragma once

#include <cstdint>

#include "abi/checks.h"
#include "abi/hd.h"

namespace lumo {

// Block index r with bounds[r] <= id < bounds[r+1], or -1 when id lies outside
// [bounds[0], bounds[num_bounds-1]) or num_bounds < 2.
//
// bounds: [num_bounds], strictly increasing (checked by the caller).
// Only indices in [0, num_bounds) are read, whatever the values; the caller
// guarantees num_bounds - 1 fits in int32.
LUMO_HD inline int32_t classify_one(int64_t id, const int64_t* bounds, int64_t num_bounds) {
  if (num_bounds < 2 || id < bounds[0] || id >= bounds[num_bounds - 1]) {
    return -1;
  }
  // Branch-free binary search (a conditional move per step, no mispredicted
  // branches on random IDs, no divergence on GPUs). The answer r lies in
  // [lo, lo + len): initially [0, num_bounds - 1) since bounds[0] <= id <
  // bounds[num_bounds - 1]. Every probe lo + half < lo + len <= num_bounds - 1
  // is in range.
  int64_t lo = 0;
  int64_t len = num_bounds - 1;
  while (len > 1) {
    const int64_t half = len / 2;
    lo = (bounds[lo + half] <= id) ? lo + half : lo;
    len -= half;
  }
  return static_cast<int32_t>(lo);
}

// Largest num_bounds whose block indices fit the int32 output.
constexpr int64_t kMaxNumBounds = int64_t{2147483647} + 1;

// Argument checks shared by the CPU and CUDA entry points (host only).
// Returns false when there is nothing to do (n == 0).
inline bool check_classify_args(const char* op, const void* ids, int64_t ids_itemsize, int64_t n,
                                const int64_t* bounds, int64_t num_bounds, const int32_t* out) {
  LUMO_CHECK(n >= 0, op, "n >= 0", n);
  LUMO_CHECK(ids_itemsize == 4 || ids_itemsize == 8, op, "ids_itemsize 4 (int32) or 8 (int64)",
             ids_itemsize);
  LUMO_CHECK(num_bounds >= 0, op, "num_bounds >= 0", num_bounds);
  LUMO_CHECK_RANGE(num_bounds <= kMaxNumBounds, op, "num_bounds <= 2^31 (int32 block indices)",
                   num_bounds);
  if (n == 0) {
    return false;
  }
  LUMO_CHECK(ids != nullptr, op, "a non-null ids pointer for n > 0", "null");
  LUMO_CHECK(out != nullptr, op, "a non-null out pointer for n > 0", "null");
  LUMO_CHECK(num_bounds == 0 || bounds != nullptr, op,
             "a non-null bounds pointer for num_bounds > 0", "null");
  return true;
}

}  // namespace lumo

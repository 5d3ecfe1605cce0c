// Arithmetic of the row-masked embedding gradient shared by the CPU and CUDA
// kernels (LUMO_HD, so the CPU tests cover it).
//
// Gradient rows arrive as fp32, fp16 or bf16, `row_bytes` apart; each element
// is read as fp32 (exact) and every output row is summed in fp32 over its
// positions in ascending order, so both kernels give the same bits.
#pragma once

#include <cstdint>

#include "abi/dtype.h"
#include "abi/hd.h"

namespace lumo {
namespace rowmask {

// Bytes between gradient rows `grad_row_stride` elements apart.
LUMO_HD inline int64_t row_bytes(int64_t grad_row_stride, DType dt) {
  return grad_row_stride * dtype_size(dt);
}

// Element d of the gradient row at position `pos`, as fp32.
LUMO_HD inline float grad_at(const char* grad, int64_t pos, int64_t row_bytes, DType dt, int64_t d) {
  return load_float(grad + pos * row_bytes, dt, d);
}

}  // namespace rowmask
}  // namespace lumo

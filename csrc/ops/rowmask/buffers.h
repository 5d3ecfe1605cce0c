// The row-masked embedding gradient's buffers checked against its sizes: one
// definition for the CPU (lumo_uti._C) and CUDA (lumo_uti._C_cuda) bindings.
#pragma once

#include <cstdint>

#include "abi/buffer.h"

namespace lumo {
namespace bindings {
namespace rowmask {

// grad: n rows of dim elements, grad_row_stride apart (float32/float16/bfloat16).
inline Extent grad_extent(const char* op, int64_t n, int64_t dim, int64_t grad_row_stride) {
  return strided_rows(op, n, dim, grad_row_stride);
}

inline const void* take_grad(const char* op, Buffer grad, const Extent& e) {
  return take<const void>(op, "grad", grad, e);
}

// out: [num_rows, dim] fp32.
inline float* take_out(const char* op, Buffer out, int64_t num_rows, int64_t dim) {
  return take<float>(op, "out", out, product(op, {{"num_rows", num_rows}, {"dim", dim}}));
}

}  // namespace rowmask
}  // namespace bindings
}  // namespace lumo

// Element loads for the row-masked embedding gradient, shared by the CPU and
// CUDA kernels (LUMO_HD), so the CPU tests exercise the conversions too.
//
// Gradients arrive as fp32, fp16 or bf16 and are accumulated in fp32. The
// conversions are exact (every fp16/bf16 value is representable in fp32).
#pragma once

#include <cstdint>
#include <cstring>

#include "abi/dtype.h"
#include "abi/hd.h"

namespace lumo {
namespace rowmask {

// dtype codes passed across the binding (the Python front maps torch dtypes).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

using ::lumo::dtype::bf16_to_float;
using ::lumo::dtype::fp16_to_float;

// Element `i` of a row of gradient values of dtype `dtype`, as fp32.
LUMO_HD inline float load_as_float(const void* row, int64_t i, int dtype) {
  if (dtype == kFloat32) return static_cast<const float*>(row)[i];
  const uint16_t h = static_cast<const uint16_t*>(row)[i];
  return dtype == kFloat16 ? fp16_to_float(h) : bf16_to_float(h);
}

LUMO_HD inline int64_t dtype_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

}  // namespace rowmask
}  // namespace lumo

// Element loads for the row-masked embedding gradient, shared by the CPU and
// CUDA kernels (LUMO_HD), so the CPU tests exercise the conversions too.
//
// Gradients arrive as fp32, fp16 or bf16 and are accumulated in fp32. The
// conversions are exact (every fp16/bf16 value is representable in fp32).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace lumo {
namespace rowmask {

// dtype codes passed across the binding (the Python front maps torch dtypes).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

LUMO_HD inline float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

LUMO_HD inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

LUMO_HD inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in fp32.
    const float f = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  if (exp == 31) {
    return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Element `i` of a row of gradient values of dtype `dtype`, as fp32.
LUMO_HD inline float load_as_float(const void* row, int64_t i, int dtype) {
  if (dtype == kFloat32) return static_cast<const float*>(row)[i];
  const uint16_t h = static_cast<const uint16_t*>(row)[i];
  return dtype == kFloat16 ? fp16_to_float(h) : bf16_to_float(h);
}

LUMO_HD inline int64_t dtype_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

}  // namespace rowmask
}  // namespace lumo

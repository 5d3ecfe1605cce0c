// Exact fp16 / bf16 <-> fp32 conversions shared by every kernel (LUMO_HD), so
// the CPU tests exercise what the CUDA kernels run. Narrowing rounds to
// nearest even; widening is exact (every fp16/bf16 value is an fp32 value).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace lumo {
namespace dtype {

LUMO_HD inline float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

LUMO_HD inline uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

// bfloat16 -> fp32: the upper half of the fp32 bit pattern.
LUMO_HD inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// IEEE binary16 -> fp32 (subnormals, infinities and NaN included).
LUMO_HD inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_to_float(sign);
  const float mag = static_cast<float>(mant) * 5.9604644775390625e-08f;  // mant * 2^-24, exact
  return sign ? -mag : mag;
}

LUMO_HD inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

LUMO_HD inline uint16_t float_to_fp16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (au >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (au < 0x38800000u) {
    // Below the smallest normal (2^-14): round |f| / 2^-24 to an integer (RNE).
    const float scaled = bits_to_float(au) * 16777216.0f;  // exact: power of two
    const float r = rintf(scaled);  // current rounding mode: nearest even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
  }
  // Normal: rebias exponent, round the 13 dropped mantissa bits to nearest even.
  uint32_t v = au - (112u << 23);
  v += 0xfffu + ((v >> 13) & 1u);
  return static_cast<uint16_t>(sign | static_cast<uint16_t>(v >> 13));
}

}  // namespace dtype
}  // namespace lumo

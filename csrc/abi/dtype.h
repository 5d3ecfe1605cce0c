// The element types every op reads and writes, and their exact conversions.
//
// One code per type across the binding (python/lumo_uti/ops/_abi.py mirrors
// this enum), one conversion for every kernel (LUMO_HD, so the CPU tests
// exercise what the CUDA kernels run). Narrowing rounds to nearest even;
// widening is exact (every fp16/bf16 value is an fp32 value).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "abi/hd.h"

namespace lumo {

// The element type codes passed across the binding.
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };

// True for a code of DType (the bindings check codes before any kernel runs).
LUMO_HD inline bool is_dtype(int64_t code) { return code >= 0 && code <= 2; }

// Bytes per element.
LUMO_HD inline int64_t dtype_size(DType dt) { return dt == DType::F32 ? 4 : 2; }

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

// Element `i` of a buffer of type DT, as fp32 (exact).
template <DType DT>
LUMO_HD inline float load(const void* base, int64_t i) {
  if (DT == DType::F32) return static_cast<const float*>(base)[i];
  const uint16_t h = static_cast<const uint16_t*>(base)[i];
  return DT == DType::F16 ? dtype::fp16_to_float(h) : dtype::bf16_to_float(h);
}

// Stores fp32 `v` as element `i` of a buffer of type DT (rounded to nearest even).
template <DType DT>
LUMO_HD inline void store(void* base, int64_t i, float v) {
  if (DT == DType::F32) {
    static_cast<float*>(base)[i] = v;
  } else if (DT == DType::F16) {
    static_cast<uint16_t*>(base)[i] = dtype::float_to_fp16(v);
  } else {
    static_cast<uint16_t*>(base)[i] = dtype::float_to_bf16(v);
  }
}

// The same with the type known only at run time.
LUMO_HD inline float load_float(const void* base, DType dt, int64_t i) {
  if (dt == DType::F16) return load<DType::F16>(base, i);
  if (dt == DType::BF16) return load<DType::BF16>(base, i);
  return load<DType::F32>(base, i);
}

LUMO_HD inline void store_float(void* base, DType dt, int64_t i, float v) {
  if (dt == DType::F16) {
    store<DType::F16>(base, i, v);
  } else if (dt == DType::BF16) {
    store<DType::BF16>(base, i, v);
  } else {
    store<DType::F32>(base, i, v);
  }
}

// Calls fn(std::integral_constant<DType, DT>{}) for the type of `code`, so a
// kernel templated on its element type is instantiated once per type (host
// only; the binding has checked the code).
template <typename Fn>
inline void dispatch_dtype(int64_t code, const Fn& fn) {
  const DType dt = static_cast<DType>(code);
  if (dt == DType::F16) {
    fn(std::integral_constant<DType, DType::F16>{});
  } else if (dt == DType::BF16) {
    fn(std::integral_constant<DType, DType::BF16>{});
  } else {
    fn(std::integral_constant<DType, DType::F32>{});
  }
}

}  // namespace lumo

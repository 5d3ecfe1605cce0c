// The instruction sets the CPU kernels choose between at run time. Ops take
// one of these codes as `isa` (tests force each one); kIsaAuto picks the best
// this CPU runs. One definition for every kernel, so the codes mean the same
// everywhere.
#pragma once

#include <cstdint>

namespace lumo {
namespace cpu {

enum Isa : int { kIsaAuto = 0, kIsaScalar = 1, kIsaAvx2 = 2, kIsaAvx512 = 3 };

// Bit i is set when this CPU runs Isa i (the scalar path always runs). Kernels
// whose AVX2 path uses FMA pass avx2_needs_fma (VQ's does not: its contract
// forbids FMA).
inline int isa_support_mask(bool avx2_needs_fma) {
  int mask = 1 << kIsaScalar;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && (!avx2_needs_fma || __builtin_cpu_supports("fma"))) {
    mask |= 1 << kIsaAvx2;
  }
  if (__builtin_cpu_supports("avx512f")) mask |= 1 << kIsaAvx512;
#else
  (void)avx2_needs_fma;
#endif
  return mask;
}

// The requested isa, or for kIsaAuto the best one in `mask`. The caller checks
// that the result is in `mask` (with its own error message).
inline int64_t resolve_isa(int64_t isa, int mask) {
  if (isa != kIsaAuto) return isa;
  return (mask >> kIsaAvx512 & 1) ? kIsaAvx512 : (mask >> kIsaAvx2 & 1) ? kIsaAvx2 : kIsaScalar;
}

}  // namespace cpu
}  // namespace lumo

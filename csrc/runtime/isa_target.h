// Compiling one region of a file for an instruction set the whole build does
// not assume (the kernels check at run time that the CPU has it):
//
//   LUMO_TARGET_PUSH("avx2,fma")
//   namespace avx2 { ... }
//   LUMO_TARGET_POP
//
// GCC and Clang spell this differently; both forms live here once.
// LUMO_FP_CONTRACT_OFF (at file scope, before the kernels and runtime/simd.h)
// stops the compiler fusing a*b+c into one FMA, so that only explicit vfma
// calls fuse and every ISA rounds the same way.
#pragma once

#define LUMO_PRAGMA(x) _Pragma(#x)

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LUMO_X86 1
#endif

#if defined(__clang__)
#define LUMO_TARGET_PUSH(isa) \
  LUMO_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define LUMO_TARGET_POP LUMO_PRAGMA(clang attribute pop)
#define LUMO_FP_CONTRACT_OFF LUMO_PRAGMA(STDC FP_CONTRACT OFF)
#elif defined(__GNUC__)
#define LUMO_TARGET_PUSH(isa) LUMO_PRAGMA(GCC push_options) LUMO_PRAGMA(GCC target(isa))
#define LUMO_TARGET_POP LUMO_PRAGMA(GCC pop_options)
#define LUMO_FP_CONTRACT_OFF LUMO_PRAGMA(GCC optimize("fp-contract=off"))
#else
#define LUMO_TARGET_PUSH(isa)
#define LUMO_TARGET_POP
#define LUMO_FP_CONTRACT_OFF
#endif

// LUMO_HD marks functions shared by host and device code.
//
// Under nvcc it expands to `__host__ __device__`; under a plain C++ compiler it
// expands to nothing, so the same inline function is compiled into the CPU
// module and exercised by the CPU tests.
#pragma once

#if defined(__CUDACC__)
#define LUMO_HD __host__ __device__
#else
#define LUMO_HD
#endif

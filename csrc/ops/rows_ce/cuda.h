// CUDA kernels of the rows-only linear cross-entropy, callable without CUDA headers.
#pragma once

#include <cstdint>

#include "ops/rows_ce/cpu.h"  // Inputs

namespace lumo {
namespace rows_ce {

// The same results as forward / new_rows_backward (cpu.h), every pointer of
// `in` and every output a device pointer on `device`; enqueued on `stream`
// (a cudaStream_t as an integer), asynchronous. The caller has checked the
// targets and masked ranges. Throws std::runtime_error when a launch fails.
void cuda_forward(const Inputs& in, float* loss, float* lse, float* dhat, uintptr_t stream, int device);
void cuda_new_rows_backward(const Inputs& in, const float* grad_loss, const float* lse, float* grad_new,
                            float* grad_new_bias, uintptr_t stream, int device);

}  // namespace rows_ce
}  // namespace lumo

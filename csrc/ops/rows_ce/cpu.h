// CPU kernels of the rows-only linear cross-entropy (lumo_uti.ops.rows_ce).
#pragma once

#include <cstdint>

#include "abi/dtype.h"

namespace lumo {
namespace rows_ce {

// The inputs of both passes. hidden: [tokens, dim]; base: [base_rows, dim];
// new_rows: [new_count, dim], all row-major; biases [base_rows] / [new_count]
// or null; targets: [tokens] int64; masked: num_masked sorted, disjoint
// half-open [start, stop) column ranges of the vocabulary [0, base_rows + new_count).
struct Inputs {
  const void* hidden = nullptr;
  DType hidden_dtype = DType::F32;
  int64_t tokens = 0, dim = 0;
  const void* base = nullptr;
  DType base_dtype = DType::F32;
  int64_t base_rows = 0;
  const void* new_rows = nullptr;
  DType new_dtype = DType::F32;
  int64_t new_count = 0;
  const void* base_bias = nullptr;
  DType base_bias_dtype = DType::F32;
  const void* new_bias = nullptr;
  DType new_bias_dtype = DType::F32;
  const int64_t* targets = nullptr;
  int64_t ignore_index = -100;
  const int64_t* masked = nullptr;
  int64_t num_masked = 0;
};

// loss[t] = lse[t] - z[t, target[t]] and lse[t] (both 0 where the target is
// ignored); with dhat non-null also dhat[t] = sum_v softmax(z[t])[v] W[v] -
// W[target[t]] ([tokens, dim], 0 rows where ignored). One pass over the
// vocabulary in super-tiles with an online log-sum-exp.
void forward(const Inputs& in, float* loss, float* lse, float* dhat, int64_t num_threads, int64_t isa);

// grad_new[n] = sum_t grad_loss[t] * (softmax(z[t])[R + n] - [target[t] == R + n]) * hidden[t],
// grad_new_bias[n] the same without hidden[t] (skipped when null), summed over
// the non-ignored tokens in index order. lse from forward.
void new_rows_backward(const Inputs& in, const float* grad_loss, const float* lse, float* grad_new,
                       float* grad_new_bias, int64_t num_threads, int64_t isa);

// Bit i set when this CPU runs instruction set i (runtime/isa.h).
int isa_mask();

}  // namespace rows_ce
}  // namespace lumo

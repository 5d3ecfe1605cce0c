// The rows-only linear cross-entropy's buffers checked against its sizes: one
// definition for the CPU (lumo_uti._C) and CUDA (lumo_uti._C_cuda) bindings.
// Only extents and dtype codes are checked here; the values of targets and
// masked ranges are checked by the CPU binding (host memory) and by the
// Python front before a CUDA call (device memory is never read here).
#pragma once

#include <cstdint>

#include "abi/buffer.h"
#include "abi/checks.h"
#include "ops/rows_ce/cpu.h"  // Inputs

namespace lumo {
namespace bindings {
namespace rows_ce {

// need_base: the forward reads the base rows and their bias; the backward only their count.
inline lumo::rows_ce::Inputs take_inputs(const char* op, Buffer hidden, int64_t hidden_dtype, Buffer base,
                                         int64_t base_dtype, Buffer new_rows, int64_t new_dtype, Buffer base_bias,
                                         int64_t base_bias_dtype, Buffer new_bias, int64_t new_bias_dtype,
                                         Buffer targets, Buffer masked, int64_t tokens, int64_t dim,
                                         int64_t base_rows, int64_t new_count, int64_t ignore_index, bool need_base) {
  lumo::rows_ce::Inputs in;
  in.tokens = size_arg(op, "tokens", tokens);
  in.dim = size_arg(op, "dim", dim);
  in.base_rows = size_arg(op, "base_rows", base_rows);
  in.new_count = size_arg(op, "new_rows", new_count);
  in.hidden_dtype = lumo::check_dtype(op, "hidden_dtype", hidden_dtype);
  in.base_dtype = lumo::check_dtype(op, "base_dtype", base_dtype);
  in.new_dtype = lumo::check_dtype(op, "new_dtype", new_dtype);
  in.base_bias_dtype = lumo::check_dtype(op, "base_bias_dtype", base_bias_dtype);
  in.new_bias_dtype = lumo::check_dtype(op, "new_bias_dtype", new_bias_dtype);
  in.hidden = take<const void>(op, "hidden", hidden, product(op, {{"tokens", tokens}, {"dim", dim}}));
  if (need_base) {
    in.base = take<const void>(op, "base", base, product(op, {{"base_rows", base_rows}, {"dim", dim}}));
    in.base_bias = take_optional<const void>(op, "base_bias", base_bias, product(op, {{"base_rows", base_rows}}));
  }
  in.new_rows = take<const void>(op, "new_rows", new_rows, product(op, {{"new_rows", new_count}, {"dim", dim}}));
  in.new_bias = take_optional<const void>(op, "new_bias", new_bias, product(op, {{"new_rows", new_count}}));
  in.targets = take<const int64_t>(op, "targets", targets, product(op, {{"tokens", tokens}}));
  in.num_masked = masked.second / 2;
  in.masked = take<const int64_t>(op, "masked", masked, product(op, {{"2", 2}, {"num_masked", in.num_masked}}));
  in.ignore_index = ignore_index;
  return in;
}

// The forward's outputs: loss [tokens], lse [tokens], dhat [tokens, dim] (optional) fp32.
struct ForwardOutputs {
  float* loss;
  float* lse;
  float* dhat;
};

inline ForwardOutputs take_forward_outputs(const char* op, Buffer loss, Buffer lse, Buffer dhat, int64_t tokens,
                                           int64_t dim) {
  return {take<float>(op, "loss", loss, product(op, {{"tokens", tokens}})),
          take<float>(op, "lse", lse, product(op, {{"tokens", tokens}})),
          take_optional<float>(op, "dhat", dhat, product(op, {{"tokens", tokens}, {"dim", dim}}))};
}

// The new rows' backward: grad_loss, lse [tokens] in; grad_new [new_rows, dim], grad_new_bias [new_rows] out (fp32).
struct BackwardBuffers {
  const float* grad_loss;
  const float* lse;
  float* grad_new;
  float* grad_new_bias;
};

inline BackwardBuffers take_backward_buffers(const char* op, Buffer grad_loss, Buffer lse, Buffer grad_new,
                                             Buffer grad_new_bias, int64_t tokens, int64_t dim, int64_t new_count) {
  return {take<const float>(op, "grad_loss", grad_loss, product(op, {{"tokens", tokens}})),
          take<const float>(op, "lse", lse, product(op, {{"tokens", tokens}})),
          take<float>(op, "grad_new", grad_new, product(op, {{"new_rows", new_count}, {"dim", dim}})),
          take_optional<float>(op, "grad_new_bias", grad_new_bias, product(op, {{"new_rows", new_count}}))};
}

}  // namespace rows_ce
}  // namespace bindings
}  // namespace lumo

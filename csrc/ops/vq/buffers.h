// The VQ buffers checked against their sizes: one definition for the CPU
// (lumo_uti._C) and CUDA (lumo_uti._C_cuda) bindings, which differ only in
// their workspaces and the kernel they call.
#pragma once

#include <cstdint>

#include "abi/buffer.h"

namespace lumo {
namespace bindings {
namespace vq {

// The extent of a buffer of rows [r, d] ("n * d", "k * d").
inline Extent rows_of(const char* op, const char* rows, int64_t r, int64_t d) {
  return product(op, {{rows, r}, {"d", d}});
}

// The extent of codebooks [num_q, k, d].
inline Extent stack_of(const char* op, int64_t num_q, int64_t k, int64_t d) {
  return product(op, {{"num_q", num_q}, {"k", k}, {"d", d}});
}

// The extent of RVQ codes [n, n_q].
inline Extent codes_of(const char* op, int64_t n, int64_t n_q) {
  return product(op, {{"n", n}, {"n_q", n_q}});
}

// vq_search's results: codes [n] int64 and best [n] fp32.
struct SearchResults {
  int64_t* codes;
  float* best;
  SearchResults(const char* op, int64_t n, Buffer codes_, Buffer best_)
      : codes(take<int64_t>(op, "codes", codes_, product(op, {{"n", n}}))),
        best(take<float>(op, "best", best_, product(op, {{"n", n}}))) {}
};

// rvq_encode's common buffers: x [n, d], cbs [num_q, k, d], codes [n, n_q] int64.
struct RvqEncodeBuffers {
  const void* x;
  const void* cbs;
  int64_t* codes;
  RvqEncodeBuffers(const char* op, Buffer x_, int64_t n, int64_t d, Buffer cbs_, int64_t num_q,
                   int64_t k, int64_t n_q, Buffer codes_)
      : x(take<const void>(op, "x", x_, rows_of(op, "n", n, d))),
        cbs(take<const void>(op, "cbs", cbs_, stack_of(op, num_q, k, d))),
        codes(take<int64_t>(op, "codes", codes_, codes_of(op, n, n_q))) {}
};

// rvq_decode's buffers: codes [n, n_q], cbs [num_q, k, d], out [n, d] fp32.
struct RvqDecodeBuffers {
  const void* codes;
  const void* cbs;
  float* out;
  RvqDecodeBuffers(const char* op, Buffer codes_, int64_t n, int64_t n_q, Buffer cbs_, int64_t num_q,
                   int64_t k, int64_t d, Buffer out_)
      : codes(take<const void>(op, "codes", codes_, codes_of(op, n, n_q))),
        cbs(take<const void>(op, "cbs", cbs_, stack_of(op, num_q, k, d))),
        out(take<float>(op, "out", out_, rows_of(op, "n", n, d))) {}
};

}  // namespace vq
}  // namespace bindings
}  // namespace lumo

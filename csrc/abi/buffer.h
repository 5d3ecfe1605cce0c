// Buffers across the binding: every pointer argument arrives as a tuple
// (address, extent), the extent being the number of elements the caller's
// tensor covers from that address (its numel when contiguous).
//
// Each binding computes the extent every buffer must have from the sizes it
// was given, and checks the two before a kernel reads a byte: sizes that do
// not agree with each other or with the buffers raise "op: expected x of
// n * d = 4096 elements, got 64" (ValueError) instead of an out-of-bounds
// access. Products that overflow int64 raise std::out_of_range (IndexError).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::pair <-> tuple

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "abi/checks.h"

namespace lumo {
namespace bindings {

using Buffer = std::pair<uintptr_t, int64_t>;  // (address, extent in elements)

// The element count a buffer must have, and how it was computed ("n * d").
struct Extent {
  int64_t count = 0;
  std::string formula;
};

// The extent of an absent buffer: (0, 0) or any address with extent 0.
inline Extent none() { return Extent{0, "0 (none)"}; }

// A size argument, checked >= 0 with the kernels' message ("op: expected n >= 0, got -1").
inline int64_t size_arg(const char* op, const char* name, int64_t value) {
  if (value < 0) {
    const std::string expected = std::string(name) + " >= 0";
    ::lumo::detail::fail_check<std::invalid_argument>(op, expected.c_str(), value);
  }
  return value;
}

// The product of named sizes (each checked >= 0), or std::out_of_range on int64 overflow.
inline Extent product(const char* op, std::initializer_list<std::pair<const char*, int64_t>> sizes) {
  Extent e{1, ""};
  for (const auto& s : sizes) {
    size_arg(op, s.first, s.second);
    if (!e.formula.empty()) e.formula += " * ";
    e.formula += s.first;
    if (__builtin_mul_overflow(e.count, s.second, &e.count)) {
      const std::string expected = "sizes whose product " + e.formula + " fits int64";
      ::lumo::detail::fail_check<std::out_of_range>(op, expected.c_str(), s.second);
    }
  }
  return e;
}

// The extent of n rows of `dim` elements, `stride` elements apart:
// (n - 1) * stride + dim, or 0 when n or dim is 0. The stride must be >= dim.
inline Extent strided_rows(const char* op, int64_t n, int64_t dim, int64_t stride) {
  size_arg(op, "n", n);
  size_arg(op, "dim", dim);
  if (n == 0 || dim == 0) return Extent{0, "(n - 1) * grad_row_stride + dim"};
  LUMO_CHECK(stride >= dim, op, "grad_row_stride >= dim", stride);
  Extent e = product(op, {{"n - 1", n - 1}, {"grad_row_stride", stride}});
  if (__builtin_add_overflow(e.count, dim, &e.count)) {
    ::lumo::detail::fail_check<std::out_of_range>(op, "a grad extent that fits int64", dim);
  }
  e.formula = "(n - 1) * grad_row_stride + dim";
  return e;
}

// The address of `b` as T*, after checking that it covers exactly `e`
// elements and is non-null when that is not zero.
template <typename T>
T* take(const char* op, const char* name, const Buffer& b, const Extent& e) {
  if (b.second != e.count) {
    const std::string expected =
        std::string(name) + " of " + e.formula + " = " + std::to_string(e.count) + " elements";
    ::lumo::detail::fail_check<std::invalid_argument>(op, expected.c_str(), b.second);
  }
  if (e.count > 0 && b.first == 0) {
    const std::string expected = std::string("a non-null ") + name + " pointer";
    ::lumo::detail::fail_check<std::invalid_argument>(op, expected.c_str(), "null");
  }
  return reinterpret_cast<T*>(b.first);
}

// An optional buffer: (0, 0) means none (nullptr); anything else must cover `e`.
template <typename T>
T* take_optional(const char* op, const char* name, const Buffer& b, const Extent& e) {
  if (b.first == 0 && b.second == 0) return nullptr;
  return take<T>(op, name, b, e);
}

}  // namespace bindings
}  // namespace lumo

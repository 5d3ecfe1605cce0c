// Argument checks at the kernel boundary.
//
// Messages read "op: expected X, got Y", like the Python front. pybind11 turns
// std::invalid_argument into ValueError and std::out_of_range into IndexError;
// native code never exits or aborts on bad input.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "abi/dtype.h"

namespace lumo {
namespace detail {

template <typename Exc, typename Got>
[[noreturn]] inline void fail_check(const char* op, const char* expected, const Got& got) {
  std::ostringstream os;
  os << op << ": expected " << expected << ", got " << got;
  throw Exc(os.str());
}

}  // namespace detail
}  // namespace lumo

// LUMO_CHECK(cond, "op", "what was expected", value_we_got) -> std::invalid_argument
#define LUMO_CHECK(cond, op, expected, got)                                        \
  do {                                                                             \
    if (!(cond)) ::lumo::detail::fail_check<std::invalid_argument>(op, expected, got); \
  } while (0)

// LUMO_CHECK_RANGE(...) -> std::out_of_range, for sizes and indices out of bounds.
#define LUMO_CHECK_RANGE(cond, op, expected, got)                                  \
  do {                                                                             \
    if (!(cond)) ::lumo::detail::fail_check<std::out_of_range>(op, expected, got);  \
  } while (0)

namespace lumo {

// A dtype code from the binding as a DType, or std::invalid_argument:
// "op: expected dtype 0 (float32), 1 (float16) or 2 (bfloat16), got 5".
inline DType check_dtype(const char* op, const char* name, int64_t code) {
  if (!is_dtype(code)) {
    const std::string expected = std::string(name) + " 0 (float32), 1 (float16) or 2 (bfloat16)";
    detail::fail_check<std::invalid_argument>(op, expected.c_str(), code);
  }
  return static_cast<DType>(code);
}

}  // namespace lumo

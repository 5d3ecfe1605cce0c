// Problems a kernel finds in the values it reads (an inf in a row, an fp32
// overflow), which the bindings cannot check before it runs.
//
// A kernel returns a Status; its binding raises from it with raise_status
// (std::invalid_argument, so ValueError in Python). The message text lives
// here once: "op: expected finite values, got inf/NaN in x row 4".
#pragma once

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>

namespace lumo {

enum class StatusCode : int32_t {
  kOk = 0,
  kNonFinite = 1,  // an inf or NaN in row `row` of input `input`
  kOverflow = 2,   // a finite input whose arithmetic overflowed fp32 for row `row`
};

struct Status {
  StatusCode code = StatusCode::kOk;
  int32_t input = 0;  // index into the names the binding passes to raise_status
  int64_t row = 0;

  static Status ok() { return Status{}; }
  static Status non_finite(int32_t input, int64_t row) { return Status{StatusCode::kNonFinite, input, row}; }
  static Status overflow(int32_t input, int64_t row) { return Status{StatusCode::kOverflow, input, row}; }
  bool is_ok() const { return code == StatusCode::kOk; }
};

// The message of a failed status; `names` names the op's inputs by index.
inline std::string status_message(const char* op, const Status& st,
                                  std::initializer_list<const char*> names) {
  const char* name = "input";
  if (st.input >= 0 && static_cast<size_t>(st.input) < names.size()) name = names.begin()[st.input];
  std::ostringstream os;
  os << op << ": ";
  if (st.code == StatusCode::kNonFinite) {
    os << "expected finite values, got inf/NaN in " << name << " row " << st.row;
  } else {
    os << name << " overflow fp32 for row " << st.row << " (values too large for fp32 arithmetic)";
  }
  return os.str();
}

// Throws std::invalid_argument (ValueError) for a failed status.
inline void raise_status(const char* op, const Status& st, std::initializer_list<const char*> names) {
  if (!st.is_ok()) throw std::invalid_argument(status_message(op, st, names));
}

}  // namespace lumo

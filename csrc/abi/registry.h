// Per-op binding registration, so adding an op never edits a shared file.
//
// Each csrc/ops/<op>/bind_cpu.cpp (linked into lumo_uti._C) or bind_cuda.cpp
// (linked into lumo_uti._C_cuda) defines its functions with
//
//   LUMO_BIND(bind_my_op) { m.def("my_op", ...); }
//
// and the module's init runs every registered binder. Registration happens in
// static initialisers at dlopen time, before Python calls the module init; the
// registry is a function-local static, so initialisation order does not matter.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

namespace lumo {
namespace bindings {

using Binder = void (*)(pybind11::module_&);

// The binders of the module being built. Every symbol is hidden
// (CXX_VISIBILITY_PRESET hidden), so each extension module has its own registry.
inline std::vector<Binder>& binders() {
  static std::vector<Binder> registry;
  return registry;
}

struct Registrar {
  explicit Registrar(Binder binder) { binders().push_back(binder); }
};

inline void bind_all(pybind11::module_& m) {
  for (Binder binder : binders()) binder(m);
}

}  // namespace bindings
}  // namespace lumo

#define LUMO_BIND(name)                                                   \
  static void name(pybind11::module_& m);                                 \
  static const ::lumo::bindings::Registrar name##_registrar_{&name};      \
  static void name(pybind11::module_& m)

// lumo_uti._C: CPU kernels. Private; use lumo_uti.ops.
//
// The module init runs every binder registered by csrc/ops/<op>/bind_cpu.cpp
// (see registry.h); this file only adds build_info.
#include <pybind11/pybind11.h>

#include "abi/build_info.h"
#include "abi/registry.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "LumoOmni CPU kernels (torch-free). Private: use lumo_uti.ops.";
  lumo::bindings::bind_all(m);
  m.def("build_info", [] { return lumo::bindings::build_info("lumo_uti._C"); },
        "How this module was built (compiler, flags, CUDA status).");
}

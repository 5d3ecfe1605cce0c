// build_info() shared by both modules: how this build was configured.
#pragma once

#include <pybind11/pybind11.h>

#include "lumo_build_info.h"

namespace lumo {
namespace bindings {

inline pybind11::dict build_info(const char* module) {
  pybind11::dict info;
  info["module"] = module;
  info["version"] = LUMO_BI_VERSION;
  info["build_type"] = LUMO_BI_BUILD_TYPE;
  info["cxx_compiler"] = LUMO_BI_CXX_COMPILER;
  info["cxx_flags"] = LUMO_BI_CXX_FLAGS;
  info["cxx_standard"] = 17;
  info["cuda_mode"] = LUMO_BI_CUDA_MODE;      // LUMO_CUDA at configure time
  info["cuda_built"] = LUMO_BI_CUDA_BUILT != 0;
  info["cuda_status"] = LUMO_BI_CUDA_STATUS;  // "built: ..." or "not built: <why>"
  info["cuda_compiler"] = LUMO_BI_CUDA_COMPILER;
  info["cuda_flags"] = LUMO_BI_CUDA_FLAGS;
  info["cuda_archs"] = LUMO_BI_CUDA_ARCHS;  // CMake form: "75-real;90-virtual"
  info["cuda_archs_source"] = LUMO_BI_CUDA_ARCHS_SOURCE;  // default, TORCH_CUDA_ARCH_LIST=..., or the define
  info["cuda_toolkit"] = LUMO_BI_CUDA_TOOLKIT;
  info["links_libtorch"] = false;
#ifdef LUMO_BI_SANITIZE
  info["sanitize"] = LUMO_BI_SANITIZE;  // LUMO_SANITIZE: the -fsanitize= list of this module
#else
  info["sanitize"] = "";
#endif
  return info;
}

}  // namespace bindings
}  // namespace lumo

// Bindings of the VQ ops in lumo_uti._C.
//
// SAFETY: every pointer argument is an address (int) of C-contiguous host
// memory that the Python caller keeps alive, sized as stated, for the whole
// call; the functions keep no pointer after they return. The GIL is released
// while they run.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>

#include "bindings/registry.h"
#include "cpu/vq.h"

namespace py = pybind11;

namespace {

int64_t vq_search(uintptr_t x, int x_dtype, int64_t n, int64_t d, uintptr_t cb, int cb_dtype,
                  int64_t k, int norms, uintptr_t cn, uintptr_t codes, uintptr_t best,
                  int64_t num_threads, int isa) {
  return lumo::cpu::vq_search(reinterpret_cast<const void*>(x), x_dtype, n, d,
                       reinterpret_cast<const void*>(cb), cb_dtype, k, norms,
                       reinterpret_cast<const float*>(cn), reinterpret_cast<int64_t*>(codes),
                       reinterpret_cast<float*>(best), num_threads, isa);
}

// The holder is non-const for pybind11; Python never gets a mutator.
std::shared_ptr<lumo::cpu::VqPacked> vq_pack(uintptr_t cb, int cb_dtype, int64_t k, int64_t d,
                                             int norms, uintptr_t cn, int isa, int64_t num_threads) {
  return std::const_pointer_cast<lumo::cpu::VqPacked>(
      lumo::cpu::vq_pack(reinterpret_cast<const void*>(cb), cb_dtype, k, d, norms,
                         reinterpret_cast<const float*>(cn), isa, num_threads));
}

std::shared_ptr<lumo::cpu::RvqPacked> rvq_pack(uintptr_t cbs, int dtype, int64_t num_q, int64_t k,
                                               int64_t d, int isa, int64_t num_threads) {
  return std::const_pointer_cast<lumo::cpu::RvqPacked>(
      lumo::cpu::rvq_pack(reinterpret_cast<const void*>(cbs), dtype, num_q, k, d, isa, num_threads));
}

int64_t rvq_encode_packed(const lumo::cpu::RvqPacked& p, uintptr_t x, int x_dtype, int64_t n, int64_t d,
                          int64_t n_q, uintptr_t codes, int64_t num_threads) {
  return lumo::cpu::rvq_encode_packed(p, reinterpret_cast<const void*>(x), x_dtype, n, d, n_q,
                                      reinterpret_cast<int64_t*>(codes), num_threads);
}

int64_t vq_search_packed(const lumo::cpu::VqPacked& p, uintptr_t x, int x_dtype, int64_t n, int64_t d,
                         uintptr_t codes, uintptr_t best, int64_t num_threads) {
  return lumo::cpu::vq_search_packed(p, reinterpret_cast<const void*>(x), x_dtype, n, d,
                                     reinterpret_cast<int64_t*>(codes), reinterpret_cast<float*>(best),
                                     num_threads);
}

int64_t rvq_encode(uintptr_t x, int dtype, int64_t n, int64_t d, uintptr_t cbs, int64_t num_q,
                   int64_t k, int64_t n_q, uintptr_t codes, int64_t num_threads, int isa) {
  return lumo::cpu::rvq_encode(reinterpret_cast<const void*>(x), dtype, n, d,
                        reinterpret_cast<const void*>(cbs), num_q, k, n_q,
                        reinterpret_cast<int64_t*>(codes), num_threads, isa);
}

int64_t rvq_decode(uintptr_t codes, int64_t codes_itemsize, int64_t n, int64_t n_q, uintptr_t cbs,
                   int dtype, int64_t num_q, int64_t k, int64_t d, uintptr_t out,
                   int64_t num_threads) {
  return lumo::cpu::rvq_decode(reinterpret_cast<const void*>(codes), codes_itemsize, n, n_q,
                               reinterpret_cast<const void*>(cbs), dtype, num_q, k, d,
                               reinterpret_cast<float*>(out), num_threads);
}

}  // namespace

LUMO_BIND(bind_vq) {
  m.def("vq_search", &vq_search, py::arg("x_ptr"), py::arg("x_dtype"), py::arg("n"), py::arg("d"),
        py::arg("cb_ptr"), py::arg("cb_dtype"), py::arg("k"), py::arg("norms"), py::arg("cn_ptr"),
        py::arg("codes_ptr"), py::arg("best_ptr"), py::arg("num_threads"), py::arg("isa"),
        py::call_guard<py::gil_scoped_release>(),
        "codes[i] = lowest argmin_k (cn[k] - 2 x[i].cb[k]), best[i] = that score.\n\n"
        "x: [n, d], cb: [k, d] (dtype codes 0 fp32, 1 fp16, 2 bf16); norms: 0 compute\n"
        "sqnorm(cb), 1 given in cn ([k] fp32), 2 zero (inner product); codes: [n] int64;\n"
        "best: [n] fp32. isa: 0 auto, 1 scalar, 2 AVX2, 3 AVX-512.\n"
        "Returns -1, r >= 0 (x row r not finite), -2 - c (codebook row c not finite) or\n"
        "-2 - k - r (the best score of row r overflowed fp32).");
  py::class_<lumo::cpu::VqPacked, std::shared_ptr<lumo::cpu::VqPacked>>(
      m, "VqPacked", "A codebook packed for the CPU search kernel (immutable).")
      .def_property_readonly("k", [](const lumo::cpu::VqPacked& p) { return p.k; })
      .def_property_readonly("d", [](const lumo::cpu::VqPacked& p) { return p.d; })
      .def_property_readonly("isa", [](const lumo::cpu::VqPacked& p) { return p.isa; })
      .def_property_readonly("bad_row", [](const lumo::cpu::VqPacked& p) { return p.bad_row; })
      .def_property_readonly("nbytes", &lumo::cpu::VqPacked::nbytes);
  m.def("vq_pack", &vq_pack, py::arg("cb_ptr"), py::arg("cb_dtype"), py::arg("k"), py::arg("d"),
        py::arg("norms"), py::arg("cn_ptr"), py::arg("isa"), py::arg("num_threads") = 1,
        py::call_guard<py::gil_scoped_release>(),
        "Pack cb [k, d] for vq_search_packed (copies the data: cb may change afterwards).");
  m.def("vq_search_packed", &vq_search_packed, py::arg("packed"), py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("n"), py::arg("d"), py::arg("codes_ptr"), py::arg("best_ptr"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "vq_search of x [n, d] against a VqPacked; returns -1, the first non-finite x row r,\n"
        "or -2 - r for the first row r whose best score overflowed fp32.");
  py::class_<lumo::cpu::RvqPacked, std::shared_ptr<lumo::cpu::RvqPacked>>(
      m, "RvqPacked", "RVQ codebooks [q, k, d] packed for the CPU search kernel (immutable).")
      .def_property_readonly("q", [](const lumo::cpu::RvqPacked& p) { return p.stages.size(); })
      .def_property_readonly("k", [](const lumo::cpu::RvqPacked& p) { return p.k; })
      .def_property_readonly("d", [](const lumo::cpu::RvqPacked& p) { return p.d; })
      .def_property_readonly("isa", [](const lumo::cpu::RvqPacked& p) { return p.isa; })
      .def_property_readonly("bad_row", [](const lumo::cpu::RvqPacked& p) { return p.bad_row; })
      .def_property_readonly("nbytes", &lumo::cpu::RvqPacked::nbytes);
  m.def("rvq_pack", &rvq_pack, py::arg("cbs_ptr"), py::arg("dtype"), py::arg("num_q"), py::arg("k"),
        py::arg("d"), py::arg("isa"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "Pack cbs [num_q, k, d] for rvq_encode_packed (copies the data).");
  m.def("rvq_encode_packed", &rvq_encode_packed, py::arg("packed"), py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("n"), py::arg("d"), py::arg("n_q"), py::arg("codes_ptr"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "rvq_encode of x [n, d] against the first n_q stages of an RvqPacked; returns -1 or the\n"
        "first non-finite x row.");
  m.def("rvq_encode", &rvq_encode, py::arg("x_ptr"), py::arg("dtype"), py::arg("n"), py::arg("d"),
        py::arg("cbs_ptr"), py::arg("num_q"), py::arg("k"), py::arg("n_q"), py::arg("codes_ptr"),
        py::arg("num_threads"), py::arg("isa"), py::call_guard<py::gil_scoped_release>(),
        "Residual VQ codes [n, n_q] int64 of x [n, d] against cbs [num_q, k, d].\n"
        "Returns as vq_search, codebook rows numbered q * k + c.");
  m.def("rvq_decode", &rvq_decode, py::arg("codes_ptr"), py::arg("codes_itemsize"), py::arg("n"),
        py::arg("n_q"), py::arg("cbs_ptr"), py::arg("dtype"), py::arg("num_q"), py::arg("k"),
        py::arg("d"), py::arg("out_ptr"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "out [n, d] fp32 = sum_q cbs[q, codes[i, q]]; returns -1 or the flat index of the\n"
        "first code outside [0, k).");
  m.def("vq_isa_mask", &lumo::cpu::vq_isa_mask,
        "Bit mask (1 << isa) of the VQ instruction sets this CPU runs: 1 scalar, 2 AVX2, 3 AVX-512.");
}

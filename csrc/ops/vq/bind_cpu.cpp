// Bindings of the VQ ops in lumo_uti._C.
//
// SAFETY: every buffer argument is a tuple (address, extent) of C-contiguous
// host memory that the Python caller keeps alive for the whole call; each
// extent is checked against the sizes given (abi/buffer.h) and the
// functions keep no pointer after they return. The GIL is released while they
// run.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>

#include "abi/buffer.h"
#include "abi/registry.h"
#include "abi/status.h"
#include "ops/vq/buffers.h"
#include "ops/vq/cpu.h"

namespace py = pybind11;

namespace {

using lumo::bindings::Buffer;
using lumo::bindings::product;
using lumo::bindings::take;
using lumo::bindings::vq::RvqDecodeBuffers;
using lumo::bindings::vq::RvqEncodeBuffers;
using lumo::bindings::vq::SearchResults;
using lumo::bindings::vq::rows_of;
using lumo::bindings::vq::stack_of;

// The extent of the given norms: [k] in norms mode 1 (given), none otherwise.
lumo::bindings::Extent given_norms(const char* op, int norms, int64_t k) {
  return norms == lumo::cpu::kNormsGiven ? product(op, {{"k", k}}) : lumo::bindings::none();
}

// The kernels' int64 results (ops/vq/cpu.h) as a Status: -1 fine, r >= 0 a
// non-finite x row, -2 - c a non-finite codebook row c (c < k); for the
// search, -2 - k - r the row r whose best score overflowed fp32.
lumo::Status search_status(int64_t raw, int64_t k) {
  if (raw == -1) return lumo::Status::ok();
  if (raw >= 0) return lumo::Status::non_finite(0, raw);
  if (-2 - raw < k) return lumo::Status::non_finite(1, -2 - raw);
  return lumo::Status::overflow(2, -2 - k - raw);
}

void vq_search(Buffer x, int x_dtype, int64_t n, int64_t d, Buffer cb, int cb_dtype, int64_t k,
                  int norms, Buffer cn, Buffer codes, Buffer best, int64_t num_threads, int isa) {
  constexpr const char* op = "vq_search";
  const auto* xp = take<const void>(op, "x", x, rows_of(op, "n", n, d));
  const auto* cbp = take<const void>(op, "cb", cb, rows_of(op, "k", k, d));
  const auto* cnp = take<const float>(op, "cn", cn, given_norms(op, norms, k));
  const SearchResults r(op, n, codes, best);
  const int64_t raw = lumo::cpu::vq_search(xp, x_dtype, n, d, cbp, cb_dtype, k, norms, cnp, r.codes,
                                           r.best, num_threads, isa);
  lumo::raise_status(op, search_status(raw, k), {"x", "codebook", "distances"});
}

// The holder is non-const for pybind11; Python never gets a mutator.
std::shared_ptr<lumo::cpu::VqPacked> vq_pack(Buffer cb, int cb_dtype, int64_t k, int64_t d, int norms,
                                             Buffer cn, int isa, int64_t num_threads) {
  constexpr const char* op = "vq_pack";
  const auto* cbp = take<const void>(op, "cb", cb, rows_of(op, "k", k, d));
  const auto* cnp = take<const float>(op, "cn", cn, given_norms(op, norms, k));
  return std::const_pointer_cast<lumo::cpu::VqPacked>(
      lumo::cpu::vq_pack(cbp, cb_dtype, k, d, norms, cnp, isa, num_threads));
}

std::shared_ptr<lumo::cpu::RvqPacked> rvq_pack(Buffer cbs, int dtype, int64_t num_q, int64_t k,
                                               int64_t d, int isa, int64_t num_threads) {
  constexpr const char* op = "rvq_pack";
  const auto* cbsp = take<const void>(op, "cbs", cbs, stack_of(op, num_q, k, d));
  return std::const_pointer_cast<lumo::cpu::RvqPacked>(
      lumo::cpu::rvq_pack(cbsp, dtype, num_q, k, d, isa, num_threads));
}

void rvq_encode_packed(const lumo::cpu::RvqPacked& p, Buffer x, int x_dtype, int64_t n, int64_t d,
                          int64_t n_q, Buffer codes, int64_t num_threads) {
  constexpr const char* op = "rvq_encode";
  const auto* xp = take<const void>(op, "x", x, rows_of(op, "n", n, d));
  auto* codesp = take<int64_t>(op, "codes", codes, lumo::bindings::vq::codes_of(op, n, n_q));
  const int64_t raw = lumo::cpu::rvq_encode_packed(p, xp, x_dtype, n, d, n_q, codesp, num_threads);
  lumo::raise_status(op, search_status(raw, INT64_MAX), {"x", "codebooks"});
}

void vq_search_packed(const lumo::cpu::VqPacked& p, Buffer x, int x_dtype, int64_t n, int64_t d,
                         Buffer codes, Buffer best, int64_t num_threads) {
  constexpr const char* op = "vq_search";
  const auto* xp = take<const void>(op, "x", x, rows_of(op, "n", n, d));
  const SearchResults r(op, n, codes, best);
  // The codebook was checked when it was packed: -2 - r is an overflow in row r.
  const int64_t raw = lumo::cpu::vq_search_packed(p, xp, x_dtype, n, d, r.codes, r.best, num_threads);
  lumo::raise_status(op, search_status(raw, 0), {"x", "codebook", "distances"});
}

void rvq_encode(Buffer x, int dtype, int64_t n, int64_t d, Buffer cbs, int64_t num_q, int64_t k,
                   int64_t n_q, Buffer codes, int64_t num_threads, int isa) {
  constexpr const char* op = "rvq_encode";
  const RvqEncodeBuffers b(op, x, n, d, cbs, num_q, k, n_q, codes);
  const int64_t raw = lumo::cpu::rvq_encode(b.x, dtype, n, d, b.cbs, num_q, k, n_q, b.codes, num_threads, isa);
  lumo::raise_status(op, search_status(raw, INT64_MAX), {"x", "codebooks"});
}

int64_t rvq_decode(Buffer codes, int64_t codes_itemsize, int64_t n, int64_t n_q, Buffer cbs, int dtype,
                   int64_t num_q, int64_t k, int64_t d, Buffer out, int64_t num_threads) {
  constexpr const char* op = "rvq_decode";
  const RvqDecodeBuffers b(op, codes, n, n_q, cbs, num_q, k, d, out);
  return lumo::cpu::rvq_decode(b.codes, codes_itemsize, n, n_q, b.cbs, dtype, num_q, k, d, b.out,
                               num_threads);
}

// Encode (packed given) or decode (packed None) a grid of blocks with
// prediction; returns cpu::predictive_code's result (-1, or the flat index of
// the block that failed: the Python caller names it).
int64_t predictive_code(const lumo::cpu::VqPacked* packed, Buffer blocks, Buffer codebook, int64_t k,
                        Buffer weight, int64_t b, int64_t h, int64_t w, int64_t patch, double grid,
                        Buffer codes, Buffer recon, int64_t num_threads) {
  constexpr const char* op = "predictive_code";
  LUMO_CHECK(patch >= 1 && patch <= 64, op, "1 <= patch <= 64", patch);
  const int64_t d = 3 * patch * patch, f = 6 * patch + 6;
  const lumo::bindings::Extent grid_values = product(op, {{"b", b}, {"h", h}, {"w", w}, {"3 patch^2", d}});
  const auto* blocksp = take<const float>(op, "blocks", blocks,
                                          packed != nullptr ? grid_values : lumo::bindings::none());
  const auto* cbp = take<const float>(op, "codebook", codebook, rows_of(op, "k", k, d));
  const auto* wp = take<const double>(op, "weight", weight, product(op, {{"6 patch + 6", f}, {"3 patch^2", d}}));
  auto* codesp = take<int64_t>(op, "codes", codes, product(op, {{"b", b}, {"h", h}, {"w", w}}));
  auto* reconp = lumo::bindings::take_optional<float>(op, "recon", recon, grid_values);
  return lumo::cpu::predictive_code(packed, blocksp, cbp, k, wp, b, h, w, patch, grid, codesp, reconp,
                                    num_threads);
}

}  // namespace

LUMO_BIND(bind_vq) {
  m.def("vq_search", &vq_search, py::arg("x"), py::arg("x_dtype"), py::arg("n"), py::arg("d"),
        py::arg("cb"), py::arg("cb_dtype"), py::arg("k"), py::arg("norms"), py::arg("cn"),
        py::arg("codes"), py::arg("best"), py::arg("num_threads"), py::arg("isa"),
        py::call_guard<py::gil_scoped_release>(),
        "codes[i] = lowest argmin_k (cn[k] - 2 x[i].cb[k]), best[i] = that score.\n\n"
        "x: [n, d], cb: [k, d] (dtype codes 0 fp32, 1 fp16, 2 bf16); norms: 0 compute\n"
        "sqnorm(cb), 1 given in cn ([k] fp32), 2 zero (inner product); codes: [n] int64;\n"
        "best: [n] fp32. isa: 0 auto, 1 scalar, 2 AVX2, 3 AVX-512.\n"
        "Raises ValueError naming the first non-finite x or codebook row, or the first row\n"
        "whose best score overflowed fp32.");
  py::class_<lumo::cpu::VqPacked, std::shared_ptr<lumo::cpu::VqPacked>>(
      m, "VqPacked", "A codebook packed for the CPU search kernel (immutable).")
      .def_property_readonly("k", [](const lumo::cpu::VqPacked& p) { return p.k; })
      .def_property_readonly("d", [](const lumo::cpu::VqPacked& p) { return p.d; })
      .def_property_readonly("isa", [](const lumo::cpu::VqPacked& p) { return p.isa; })
      .def_property_readonly("bad_row", [](const lumo::cpu::VqPacked& p) { return p.bad_row; })
      .def_property_readonly("nbytes", &lumo::cpu::VqPacked::nbytes);
  m.def("vq_pack", &vq_pack, py::arg("cb"), py::arg("cb_dtype"), py::arg("k"), py::arg("d"),
        py::arg("norms"), py::arg("cn"), py::arg("isa"), py::arg("num_threads") = 1,
        py::call_guard<py::gil_scoped_release>(),
        "Pack cb [k, d] for vq_search_packed (copies the data: cb may change afterwards).");
  m.def("vq_search_packed", &vq_search_packed, py::arg("packed"), py::arg("x"), py::arg("x_dtype"),
        py::arg("n"), py::arg("d"), py::arg("codes"), py::arg("best"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "vq_search of x [n, d] against a VqPacked; raises as vq_search.");
  py::class_<lumo::cpu::RvqPacked, std::shared_ptr<lumo::cpu::RvqPacked>>(
      m, "RvqPacked", "RVQ codebooks [q, k, d] packed for the CPU search kernel (immutable).")
      .def_property_readonly("q", [](const lumo::cpu::RvqPacked& p) { return p.stages.size(); })
      .def_property_readonly("k", [](const lumo::cpu::RvqPacked& p) { return p.k; })
      .def_property_readonly("d", [](const lumo::cpu::RvqPacked& p) { return p.d; })
      .def_property_readonly("isa", [](const lumo::cpu::RvqPacked& p) { return p.isa; })
      .def_property_readonly("bad_row", [](const lumo::cpu::RvqPacked& p) { return p.bad_row; })
      .def_property_readonly("nbytes", &lumo::cpu::RvqPacked::nbytes);
  m.def("rvq_pack", &rvq_pack, py::arg("cbs"), py::arg("dtype"), py::arg("num_q"), py::arg("k"),
        py::arg("d"), py::arg("isa"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "Pack cbs [num_q, k, d] for rvq_encode_packed (copies the data).");
  m.def("rvq_encode_packed", &rvq_encode_packed, py::arg("packed"), py::arg("x"), py::arg("x_dtype"),
        py::arg("n"), py::arg("d"), py::arg("n_q"), py::arg("codes"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "rvq_encode of x [n, d] against the first n_q stages of an RvqPacked; raises\n"
        "ValueError naming the first non-finite x row.");
  m.def("rvq_encode", &rvq_encode, py::arg("x"), py::arg("dtype"), py::arg("n"), py::arg("d"),
        py::arg("cbs"), py::arg("num_q"), py::arg("k"), py::arg("n_q"), py::arg("codes"),
        py::arg("num_threads"), py::arg("isa"), py::call_guard<py::gil_scoped_release>(),
        "Residual VQ codes [n, n_q] int64 of x [n, d] against cbs [num_q, k, d].\n"
        "Raises as vq_search, codebook rows numbered q * k + c.");
  m.def("rvq_decode", &rvq_decode, py::arg("codes"), py::arg("codes_itemsize"), py::arg("n"),
        py::arg("n_q"), py::arg("cbs"), py::arg("dtype"), py::arg("num_q"), py::arg("k"),
        py::arg("d"), py::arg("out"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "out [n, d] fp32 = sum_q cbs[q, codes[i, q]]; returns -1 or the flat index of the\n"
        "first code outside [0, k).");
  m.def("predictive_code", &predictive_code, py::arg("packed").none(true), py::arg("blocks"),
        py::arg("codebook"), py::arg("k"), py::arg("weight"), py::arg("b"), py::arg("h"), py::arg("w"),
        py::arg("patch"), py::arg("grid"), py::arg("codes"), py::arg("recon"), py::arg("num_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "Predictive block coding of blocks [b, h, w, 3 patch^2] fp32 in anti-diagonal order:\n"
        "encode (packed: the VqPacked of codebook [k, d], computed norms) writes codes\n"
        "[b, h, w] int64; decode (packed None) reads them. weight: [6 patch + 6, d] float64;\n"
        "recon: [b, h, w, d] fp32 or (0, 0). Returns -1, or the flat index of a block whose\n"
        "error is not finite (encode) or whose code is out of range (decode).");
  m.def("vq_isa_mask", &lumo::cpu::vq_isa_mask,
        "Bit mask (1 << isa) of the VQ instruction sets this CPU runs: 1 scalar, 2 AVX2, 3 AVX-512.");
}

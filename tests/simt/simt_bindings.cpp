// Settings of the SIMT emulator, bound into `_C_simt` beside the CUDA API.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "abi/registry.h"
#include "simt.h"

namespace simt_selftest {
float block_sum(const float* in, bool barrier);
void divergent_barrier(int* out);
void shuffles(int* out_xor, int* out_down, int* out_bcast);
void early_exit(int* out);
void oversized_block();
void smem_overrun();
}  // namespace simt_selftest

namespace {
template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
}  // namespace

LUMO_BIND(bind_simt_selftest) {
  m.def("selftest_block_sum", [](uintptr_t in, bool barrier) {
    return simt_selftest::block_sum(ptr<const float>(in), barrier);
  });
  m.def("selftest_divergent_barrier", [](uintptr_t out) { simt_selftest::divergent_barrier(ptr<int>(out)); });
  m.def("selftest_shuffles", [](uintptr_t a, uintptr_t b, uintptr_t c) {
    simt_selftest::shuffles(ptr<int>(a), ptr<int>(b), ptr<int>(c));
  });
  m.def("selftest_early_exit", [](uintptr_t out) { simt_selftest::early_exit(ptr<int>(out)); });
  m.def("selftest_oversized_block", [] { simt_selftest::oversized_block(); });
  m.def("selftest_smem_overrun", [] { simt_selftest::smem_overrun(); });
}

LUMO_BIND(bind_simt) {
  m.attr("simt") = true;
  m.def(
      "simt_configure",
      [](int schedule, unsigned long long seed, int sm_count) {
        if (schedule < 0 || schedule > 2) throw std::invalid_argument("schedule: 0, 1 or 2");
        if (sm_count < 1) throw std::invalid_argument("sm_count >= 1");
        auto& s = ::simt::settings();
        s.schedule = static_cast<::simt::Schedule>(schedule);
        s.seed = seed;
        s.sm_count = sm_count;
      },
      pybind11::arg("schedule") = 0, pybind11::arg("seed") = 0, pybind11::arg("sm_count") = 132,
      "Thread order within a block (0 forward, 1 reverse, 2 random from seed) and the SM count "
      "the emulated device reports.");
}

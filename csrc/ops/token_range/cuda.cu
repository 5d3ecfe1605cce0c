#include "ops/token_range/cuda.h"

#include <algorithm>

#include "abi/checks.h"
#include "ops/token_range/math.h"
#include "runtime/cuda_check.cuh"

namespace lumo {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Grid-stride loop: more blocks than this only add scheduling overhead.
constexpr int64_t kMaxBlocks = 8192;

template <typename T>
__global__ void classify_kernel(const T* __restrict__ ids, int64_t n,
                                const int64_t* __restrict__ bounds, int64_t num_bounds,
                                int32_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = classify_one(static_cast<int64_t>(ids[i]), bounds, num_bounds);
  }
}

}  // namespace

void classify_ids(const void* ids, int64_t ids_itemsize, int64_t n, const int64_t* bounds,
                  int64_t num_bounds, int32_t* out, uintptr_t stream, int device) {
  constexpr const char* op = "classify_ids (cuda)";
  LUMO_CHECK(device >= 0, op, "a device index >= 0", device);
  if (!check_classify_args(op, ids, ids_itemsize, n, bounds, num_bounds, out)) {
    return;
  }

  DeviceGuard guard(device, op);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  if (ids_itemsize == 4) {
    LUMO_LAUNCH(classify_kernel<int32_t>, blocks, kThreads, 0, s)(static_cast<const int32_t*>(ids), n,
                                                         bounds, num_bounds, out);
  } else {
    LUMO_LAUNCH(classify_kernel<int64_t>, blocks, kThreads, 0, s)(static_cast<const int64_t*>(ids), n,
                                                         bounds, num_bounds, out);
  }
  throw_on_error(cudaGetLastError(), op, "kernel launch");
}

}  // namespace cuda
}  // namespace lumo

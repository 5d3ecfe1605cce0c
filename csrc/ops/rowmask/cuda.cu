#include "ops/rowmask/cuda.h"

#include <algorithm>
#include <limits>

#include "abi/checks.h"
#include "ops/rowmask/math.h"
#include "runtime/cuda_check.cuh"

namespace lumo {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// gridDim.y is limited to 65535; rows beyond a grid's reach are looped over.
constexpr int64_t kMaxRowBlocks = 65535;

// blockIdx.x: column tile; blockIdx.y (+ grid-stride): row. Each thread sums
// one column of one row over the row's positions in ascending order.
__global__ void segment_reduce_kernel(const int64_t* __restrict__ positions,
                                      const int64_t* __restrict__ offsets,
                                      const char* __restrict__ grad, DType dtype, int64_t dim,
                                      int64_t row_bytes, int64_t num_rows,
                                      float* __restrict__ out) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  for (int64_t r = blockIdx.y; r < num_rows; r += gridDim.y) {
    float acc = 0.0f;
    const int64_t end = offsets[r + 1];
    for (int64_t j = offsets[r]; j < end; ++j) {
      acc += rowmask::grad_at(grad, positions[j], row_bytes, dtype, d);
    }
    out[r * dim + d] = acc;
  }
}

}  // namespace

void rowmask_segment_reduce(const int64_t* positions, int64_t num_hits, const int64_t* offsets,
                            const void* grad, int64_t dtype, int64_t n, int64_t dim,
                            int64_t grad_row_stride, int64_t num_rows, float* out,
                            uintptr_t stream, int device) {
  constexpr const char* op = "rowmask_embedding_backward (cuda)";
  LUMO_CHECK(num_hits >= 0, op, "num_hits >= 0", num_hits);
  LUMO_CHECK(n >= 0, op, "n >= 0", n);
  LUMO_CHECK(num_hits <= n, op, "num_hits <= n", num_hits);
  const DType dt = check_dtype(op, "dtype", dtype);
  LUMO_CHECK(dim >= 0, op, "dim >= 0", dim);
  LUMO_CHECK(num_rows >= 0, op, "num_rows >= 0", num_rows);
  LUMO_CHECK(n == 0 || grad_row_stride >= dim, op, "grad_row_stride >= dim", grad_row_stride);
  LUMO_CHECK(device >= 0, op, "a device index >= 0", device);
  if (num_rows == 0 || dim == 0) {
    return;
  }
  LUMO_CHECK(out != nullptr, op, "a non-null out pointer for num_rows * dim > 0", "null");
  LUMO_CHECK(offsets != nullptr, op, "a non-null offsets pointer", "null");
  LUMO_CHECK(num_hits == 0 || (positions != nullptr && grad != nullptr), op,
             "non-null positions and grad pointers for num_hits > 0", "null");
  const int64_t col_blocks = (dim + kThreads - 1) / kThreads;
  LUMO_CHECK_RANGE(col_blocks <= std::numeric_limits<int>::max(), op, "dim < 2^31 * 256", dim);

  DeviceGuard guard(device, op);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(col_blocks),
                  static_cast<unsigned>(std::min<int64_t>(num_rows, kMaxRowBlocks)));
  LUMO_LAUNCH(segment_reduce_kernel, grid, kThreads, 0, s)(positions, offsets,
                                                  static_cast<const char*>(grad), dt, dim,
                                                  rowmask::row_bytes(grad_row_stride, dt),
                                                  num_rows, out);
  throw_on_error(cudaGetLastError(), op, "kernel launch");
}

}  // namespace cuda
}  // namespace lumo

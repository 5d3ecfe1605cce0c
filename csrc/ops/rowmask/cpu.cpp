#include "ops/rowmask/cpu.h"

#include <algorithm>
#include <limits>
#include <system_error>
#include <thread>
#include <vector>

#include "abi/checks.h"
#include "ops/rowmask/math.h"
#include "runtime/thread_pool.h"

namespace lumo {
namespace cpu {
namespace {

// Below this many gradient elements per thread, a thread start (~20-50 us)
// costs more than the additions it takes over.
constexpr int64_t kGrain = int64_t{1} << 16;

struct Segments {
  std::vector<int64_t> offsets;    // [num_rows + 1]: rows' slices of positions
  std::vector<int64_t> positions;  // [hits]: positions sorted by (row, position)
};

// Stable counting sort of the positions that hit a new row: O(n + num_rows).
template <typename T>
Segments bucket(const T* ids, int64_t n, int64_t row_start, int64_t num_rows) {
  Segments s;
  s.offsets.assign(static_cast<size_t>(num_rows) + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = static_cast<int64_t>(ids[i]) - row_start;
    if (r >= 0 && r < num_rows) ++s.offsets[static_cast<size_t>(r) + 1];
  }
  for (int64_t r = 0; r < num_rows; ++r) s.offsets[r + 1] += s.offsets[r];
  s.positions.resize(static_cast<size_t>(s.offsets[num_rows]));
  std::vector<int64_t> cursor(s.offsets.begin(), s.offsets.end() - 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = static_cast<int64_t>(ids[i]) - row_start;
    if (r >= 0 && r < num_rows) s.positions[static_cast<size_t>(cursor[r]++)] = i;
  }
  return s;
}

// Rows [begin, end): each row summed in ascending position order.
void reduce_rows(const Segments& s, int64_t begin, int64_t end, const char* grad, DType dtype,
                 int64_t dim, int64_t row_bytes, float* out) {
  for (int64_t r = begin; r < end; ++r) {
    float* acc = out + r * dim;
    std::fill(acc, acc + dim, 0.0f);
    for (int64_t j = s.offsets[r]; j < s.offsets[r + 1]; ++j) {
      const int64_t pos = s.positions[static_cast<size_t>(j)];
      if (dtype == DType::F32) {  // the common case, as a loop the compiler vectorises
        const float* gf = reinterpret_cast<const float*>(grad + pos * row_bytes);
        for (int64_t d = 0; d < dim; ++d) acc[d] += gf[d];
      } else {
        for (int64_t d = 0; d < dim; ++d) acc[d] += rowmask::grad_at(grad, pos, row_bytes, dtype, d);
      }
    }
  }
}

// First row r with work(r) = (offsets[r] + r) * dim >= target (work is increasing).
int64_t row_at_work(const Segments& s, int64_t num_rows, int64_t target_units) {
  int64_t lo = 0, hi = num_rows;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (s.offsets[mid] + mid < target_units) lo = mid + 1; else hi = mid;
  }
  return lo;
}

void reduce_parallel(const Segments& s, const char* grad, DType dtype, int64_t dim,
                     int64_t row_bytes, int64_t num_rows, float* out, int64_t num_threads) {
  // A unit is one hit or one row (its zero fill), each costing ~dim operations.
  const int64_t units = s.offsets[num_rows] + num_rows;
  const int64_t max_chunks = std::max<int64_t>(1, units * std::max<int64_t>(dim, 1) / kGrain);
  const int64_t chunks = std::max<int64_t>(1, std::min(num_threads, max_chunks));
  if (chunks == 1) {
    reduce_rows(s, 0, num_rows, grad, dtype, dim, row_bytes, out);
    return;
  }
  // Chunk boundaries fall between rows; every row is written by one thread
  // in a fixed order, so the split does not change any bit of the result.
  std::vector<int64_t> bounds(static_cast<size_t>(chunks) + 1);
  bounds[0] = 0;
  bounds[chunks] = num_rows;
  for (int64_t c = 1; c < chunks; ++c) {
    bounds[c] = std::max(bounds[c - 1], row_at_work(s, num_rows, units / chunks * c));
  }
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  int64_t next = 1;
  try {
    for (; next < chunks; ++next) {
      workers.emplace_back(reduce_rows, std::cref(s), bounds[next], bounds[next + 1], grad, dtype,
                           dim, row_bytes, out);
    }
  } catch (const std::system_error&) {
    // Could not start another thread: the calling thread does the rest.
  }
  reduce_rows(s, bounds[0], bounds[1], grad, dtype, dim, row_bytes, out);
  for (int64_t c = next; c < chunks; ++c) {
    reduce_rows(s, bounds[c], bounds[c + 1], grad, dtype, dim, row_bytes, out);
  }
  for (auto& w : workers) w.join();
}

}  // namespace

void rowmask_embedding_backward(const void* ids, int64_t ids_itemsize, int64_t n, const void* grad,
                                int64_t dtype, int64_t dim, int64_t grad_row_stride,
                                int64_t row_start, int64_t num_rows, float* out,
                                int64_t num_threads) {
  constexpr const char* op = "rowmask_embedding_backward";
  LUMO_CHECK(n >= 0, op, "n >= 0", n);
  LUMO_CHECK(ids_itemsize == 4 || ids_itemsize == 8, op, "ids_itemsize 4 (int32) or 8 (int64)",
             ids_itemsize);
  const DType dt = check_dtype(op, "dtype", dtype);
  LUMO_CHECK(dim >= 0, op, "dim >= 0", dim);
  LUMO_CHECK(row_start >= 0, op, "row_start >= 0", row_start);
  LUMO_CHECK(num_rows >= 0, op, "num_rows >= 0", num_rows);
  LUMO_CHECK_RANGE(num_rows <= std::numeric_limits<int64_t>::max() - row_start, op,
                   "row_start + num_rows within int64", num_rows);
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0", num_threads);
  LUMO_CHECK(n == 0 || grad_row_stride >= dim, op, "grad_row_stride >= dim", grad_row_stride);
  if (num_rows == 0 || dim == 0) {
    return;
  }
  LUMO_CHECK(out != nullptr, op, "a non-null out pointer for num_rows * dim > 0", "null");
  LUMO_CHECK(n == 0 || ids != nullptr, op, "a non-null ids pointer for n > 0", "null");
  LUMO_CHECK(n == 0 || grad != nullptr, op, "a non-null grad pointer for n > 0", "null");
  num_threads = resolve_threads(num_threads);
  const Segments s = ids_itemsize == 4
                         ? bucket(static_cast<const int32_t*>(ids), n, row_start, num_rows)
                         : bucket(static_cast<const int64_t*>(ids), n, row_start, num_rows);
  reduce_parallel(s, static_cast<const char*>(grad), dt, dim, rowmask::row_bytes(grad_row_stride, dt),
                  num_rows, out, num_threads);
}

}  // namespace cpu
}  // namespace lumo

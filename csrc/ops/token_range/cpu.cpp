#include "ops/token_range/cpu.h"

#include <algorithm>
#include <system_error>
#include <thread>
#include <vector>

#include "abi/checks.h"
#include "ops/token_range/math.h"
#include "runtime/thread_pool.h"

namespace lumo {
namespace cpu {
namespace {

// Below this many IDs per thread, starting a thread costs more than it saves
// (a thread start is ~20-50 us; one ID costs a few ns).
constexpr int64_t kGrain = int64_t{1} << 16;

template <typename T>
void classify_range(const T* ids, int64_t begin, int64_t end, const int64_t* bounds,
                    int64_t num_bounds, int32_t* out) {
  for (int64_t i = begin; i < end; ++i) {
    out[i] = classify_one(static_cast<int64_t>(ids[i]), bounds, num_bounds);
  }
}

template <typename T>
void classify_parallel(const T* ids, int64_t n, const int64_t* bounds, int64_t num_bounds,
                       int32_t* out, int64_t num_threads) {
  const int64_t max_chunks = (n + kGrain - 1) / kGrain;
  const int64_t chunks = std::max<int64_t>(1, std::min(num_threads, max_chunks));
  if (chunks == 1) {
    classify_range(ids, 0, n, bounds, num_bounds, out);
    return;
  }
  // Chunk c covers [c*n/chunks, (c+1)*n/chunks); each output element is written
  // by exactly one thread, and its value does not depend on the split.
  auto chunk_begin = [n, chunks](int64_t c) { return n / chunks * c + std::min(c, n % chunks); };
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  int64_t next = 1;
  try {
    for (; next < chunks; ++next) {
      workers.emplace_back(classify_range<T>, ids, chunk_begin(next), chunk_begin(next + 1),
                           bounds, num_bounds, out);
    }
  } catch (const std::system_error&) {
    // Could not start another thread: the calling thread does the rest below.
  }
  classify_range(ids, chunk_begin(0), chunk_begin(1), bounds, num_bounds, out);
  for (int64_t c = next; c < chunks; ++c) {
    classify_range(ids, chunk_begin(c), chunk_begin(c + 1), bounds, num_bounds, out);
  }
  for (auto& w : workers) {
    w.join();
  }
}

}  // namespace

void classify_ids(const void* ids, int64_t ids_itemsize, int64_t n, const int64_t* bounds,
                  int64_t num_bounds, int32_t* out, int64_t num_threads) {
  constexpr const char* op = "classify_ids";
  LUMO_CHECK(num_threads >= 0, op, "num_threads >= 0", num_threads);
  if (!check_classify_args(op, ids, ids_itemsize, n, bounds, num_bounds, out)) {
    return;
  }
  num_threads = resolve_threads(num_threads);
  if (ids_itemsize == 4) {
    classify_parallel(static_cast<const int32_t*>(ids), n, bounds, num_bounds, out, num_threads);
  } else {
    classify_parallel(static_cast<const int64_t*>(ids), n, bounds, num_bounds, out, num_threads);
  }
}

int64_t first_unsorted(const int64_t* bounds, int64_t num_bounds) {
  constexpr const char* op = "first_unsorted";
  LUMO_CHECK(num_bounds >= 0, op, "num_bounds >= 0", num_bounds);
  if (num_bounds < 2) {
    return -1;
  }
  LUMO_CHECK(bounds != nullptr, op, "a non-null bounds pointer for num_bounds > 0", "null");
  for (int64_t i = 0; i + 1 < num_bounds; ++i) {
    if (bounds[i] >= bounds[i + 1]) {
      return i;
    }
  }
  return -1;
}

}  // namespace cpu
}  // namespace lumo

// A persistent worker pool with dynamic item claiming, for the CPU kernels.
//
// Starting threads on every call (tens of microseconds each, plus fresh
// per-thread scratch that page-faults) dominated millisecond-sized kernels.
// The pool's workers sleep between calls; the calling thread always takes
// part. Items are claimed one at a time from a shared counter, so a worker
// that the OS has not scheduled yet (a busy shared machine) only means the
// others take more items: the caller never waits for a worker that has not
// started an item. Results must therefore not depend on which thread runs an
// item (each item writes only its own outputs, or combines in a fixed order).
#pragma once

#include <cstdint>
#include <functional>

namespace lumo {
namespace cpu {

// Runs fn(item) for every item in [0, items) on at most `threads` threads
// (the caller plus up to threads - 1 pool workers). Concurrent callers do not
// share the pool: a second one runs its items on its own thread. The first
// exception thrown by an item is rethrown here, after every started item ends.
void parallel_for_items(int64_t items, int64_t threads, const std::function<void(int64_t)>& fn);

}  // namespace cpu
}  // namespace lumo

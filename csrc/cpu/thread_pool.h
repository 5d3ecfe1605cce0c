// Persistent threads with dynamic item claiming, for the CPU kernels.
//
// Starting threads on every call (tens of microseconds each, plus fresh
// per-thread scratch that page-faults) dominated millisecond-sized kernels.
// With OpenMP (the usual build) the items run on the OpenMP team, which is
// torch's own when torch loaded libgomp first: its threads are warm and spin
// for a while after each torch op, so separate threads of ours would compete
// with them for the cores (measured: fwd+bwd interleaved with SDPA 1.5x
// slower). Without OpenMP, a pool of our own whose workers sleep between
// calls. The calling thread always takes part, and items are claimed one at
// a time from a shared counter, so a thread the OS has not scheduled yet
// only means the others take more items. Results must therefore not depend
// on which thread runs an item (each item writes only its own outputs, or
// combines them in an order-independent way).
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

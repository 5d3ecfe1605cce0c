// Threads for the CPU kernels: one persistent pool, and an item loop over it
// (or over the OpenMP team).
//
// Starting threads on every call (tens of microseconds each, plus fresh
// per-thread scratch that page-faults) dominated millisecond-sized kernels, so
// helpers persist. Work is always claimed from shared counters and the calling
// thread always takes part, so a thread the OS has not scheduled yet only
// means the others take more work. Results must therefore not depend on which
// thread runs what (each item writes only its own outputs, or combines them in
// an order-independent way).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <thread>

namespace lumo {
namespace cpu {

// The thread count a kernel uses for a requested `num_threads`: the request,
// or for 0 the hardware concurrency (at least 1). Kernels reject negative requests first.
inline int64_t resolve_threads(int64_t num_threads) {
  if (num_threads != 0) return num_threads;
  return std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
}

// Runs body(c) on the calling thread (c = 0) and on up to `helpers` threads of
// a persistent pool (c = 1, 2, ... in the order they join), and returns once
// every thread that joined has returned from body. "Join if free": right after
// a PyTorch op its OpenMP workers keep spinning for a few milliseconds, and on
// a small machine a helper we wake then waits for a core; a fixed split (or a
// barrier) would make the caller wait for it (Mimi's 31-stage RVQ: 7 ms alone,
// 15 ms right after a convolution). Here bodies take their work from shared
// counters and return when none is left, so the caller never waits for a
// helper that has not started. Bodies must not throw. When another call is
// using the pool, body(0) runs alone.
void run_parallel(int64_t helpers, const std::function<void(int64_t)>& body);

// Runs body(c) on up to `threads` threads (c = 0 the caller), for jobs whose
// threads wait for each other's results (a wavefront: predictive_code). With
// OpenMP (the usual build) they are the OpenMP team: torch's own threads,
// which keep spinning for a while after every torch op, so a pool helper
// would time-share a core with one of them, and every thread waiting on that
// helper's item would wait too (measured, an image's 63-diagonal encode on
// two vCPUs: 33 ms on the pool, 26 ms on the team). Without OpenMP,
// run_parallel. Bodies must take their work from shared counters (a thread
// may not join) and must not throw.
void run_team(int64_t threads, const std::function<void(int64_t)>& body);

// Runs fn(item) for every item in [0, items) on at most `threads` threads.
// With OpenMP (the usual build) the items run on the OpenMP team, which is
// torch's own when torch loaded libgomp first: its threads are warm, and
// separate threads of ours would compete with them for the cores (measured for
// the resampler attention: fwd+bwd interleaved with SDPA 1.5x slower).
// Without OpenMP they run on run_parallel's pool. The first exception thrown
// by an item is rethrown here, after every started item ends (the rest are
// skipped).
void parallel_for_items(int64_t items, int64_t threads, const std::function<void(int64_t)>& fn);

}  // namespace cpu
}  // namespace lumo

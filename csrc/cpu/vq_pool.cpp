// The worker pool of the CPU VQ kernels (run_parallel, vq_internal.h).
//
// Why a pool and not a std::thread per call: starting a thread costs tens of
// microseconds, and a VQ call on a few rows (N = 1..64, a 25-frame audio clip)
// is itself well under a millisecond. Why "join if free" rather than a fixed
// team: right after a PyTorch op its OpenMP workers keep spinning for a few
// milliseconds, and on a 2-core machine a thread we start or wake then waits
// for a core. A fixed split (or a barrier) made the caller wait for it
// (Mimi's 31-stage RVQ: 7 ms alone, 15 ms right after a convolution); here
// the caller takes work from the same counters and never waits for a helper
// that has not joined.
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>

#include "cpu/vq_internal.h"

namespace lumo {
namespace cpu {
namespace vqi {
namespace {

struct Pool {
  std::mutex m;  // guards job, wanted, joined; gen changes under it
  std::condition_variable cv;
  const std::function<void(int64_t)>* job = nullptr;
  int64_t wanted = 0;  // helpers the current job takes
  int64_t joined = 0;  // helpers that joined it
  std::atomic<uint64_t> gen{0};
  std::atomic<int64_t> active{0};  // helpers inside a body
  int64_t threads = 0;             // helpers started (only grows)
  std::mutex busy;                 // one job at a time
};

// Leaked on purpose: helpers are detached and live as long as the process.
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork;

// In a child after fork() the helpers do not exist (and a mutex may be held):
// start over with a fresh pool.
void reset_in_child() { g_pool.store(new Pool, std::memory_order_release); }

Pool* pool() {
  std::call_once(g_atfork, [] {
    g_pool.store(new Pool, std::memory_order_release);
    pthread_atfork(nullptr, nullptr, &reset_in_child);
  });
  return g_pool.load(std::memory_order_acquire);
}

void helper_loop(Pool* p) {
  uint64_t seen = p->gen.load(std::memory_order_acquire);
  for (;;) {
    // Spin a little first: RVQ publishes one job per stage, microseconds apart.
    for (int spin = 0; spin < 1000 && p->gen.load(std::memory_order_acquire) == seen; ++spin) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    std::unique_lock<std::mutex> lock(p->m);
    p->cv.wait(lock, [&] { return p->gen.load(std::memory_order_relaxed) != seen; });
    seen = p->gen.load(std::memory_order_relaxed);
    if (p->job == nullptr || p->joined >= p->wanted) continue;
    const std::function<void(int64_t)>* job = p->job;
    const int64_t c = ++p->joined;
    p->active.fetch_add(1, std::memory_order_relaxed);
    lock.unlock();
    (*job)(c);
    p->active.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace

void run_parallel(int64_t helpers, const std::function<void(int64_t)>& body) {
  if (helpers <= 0) {
    body(0);
    return;
  }
  Pool* p = pool();
  std::unique_lock<std::mutex> busy(p->busy, std::try_to_lock);
  if (!busy.owns_lock()) {  // another Python thread's call has the pool
    body(0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(p->m);
    try {
      for (; p->threads < helpers; ++p->threads) std::thread(helper_loop, p).detach();
    } catch (const std::system_error&) {  // fewer helpers: the caller does the rest
    }
    p->job = &body;
    p->wanted = helpers;
    p->joined = 0;
    p->gen.fetch_add(1, std::memory_order_release);
  }
  p->cv.notify_all();
  body(0);
  {
    // No helper joins from here on; wait for those inside body to return.
    std::lock_guard<std::mutex> lock(p->m);
    p->job = nullptr;
  }
  while (p->active.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

}  // namespace vqi
}  // namespace cpu
}  // namespace lumo

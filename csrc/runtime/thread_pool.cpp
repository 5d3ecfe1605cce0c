#include "runtime/thread_pool.h"

#include <pthread.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>

namespace lumo {
namespace cpu {
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

// fn(item) for items [0, items) claimed from a counter by whichever threads run
// `body`; the first exception is kept and the remaining items skipped.
struct ItemLoop {
  int64_t items;
  const std::function<void(int64_t)>& fn;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::exception_ptr error;

  void drain() {
    for (;;) {
      const int64_t it = next.fetch_add(1, std::memory_order_relaxed);
      if (it >= items) return;
      try {
        fn(it);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu);
        if (!error) error = std::current_exception();
        next.store(items, std::memory_order_relaxed);
      }
    }
  }
};

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

void parallel_for_items(int64_t items, int64_t threads, const std::function<void(int64_t)>& fn) {
  if (items <= 0) return;
  if (threads <= 1 || items == 1) {
    for (int64_t it = 0; it < items; ++it) fn(it);
    return;
  }
  ItemLoop loop{items, fn};
#if defined(_OPENMP)
#pragma omp parallel num_threads(static_cast<int>(std::min(threads, items)))
  loop.drain();
#else
  run_parallel(std::min(threads, items) - 1, [&](int64_t) { loop.drain(); });
#endif
  if (loop.error) std::rethrow_exception(loop.error);
}

}  // namespace cpu
}  // namespace lumo

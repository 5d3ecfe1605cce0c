#include "runtime/thread_pool.h"

#include <pthread.h>
#include <sched.h>

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
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

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
  std::vector<pthread_t> handles;  // of the helpers started
  std::mutex busy;                 // one job at a time
#if defined(__linux__)
  int steered_cpu = -1;            // the caller's CPU the helpers were last steered away from
  cpu_set_t steered_mask;          // the caller's allowed CPUs then
#endif
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

#if defined(__linux__)
bool steering_enabled() {
  const char* v = std::getenv("LUMO_POOL_STEER");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// Keeps sleeping helpers off the caller's CPU. On virtual machines the guest
// scheduler treats an idle vCPU that the host has descheduled as busy, so a
// helper woken after a pause (more than a few milliseconds idle) is queued on
// the waker's CPU and time-shares it with the caller for milliseconds while the
// other vCPU stays idle: measured on a 2-vCPU KVM guest, a 6 ms search took
// 11-13 ms in about half of the calls after a 20 ms pause, every time with both
// threads on one CPU. Restricting the helpers to the caller's allowed CPUs minus
// its current one makes the wake-up land elsewhere. The masks are set only
// when the caller's CPU or allowed set changes (one syscall per helper), and
// never to an empty set. LUMO_POOL_STEER=0 turns this off. Called with p->m held.
void steer_helpers(Pool* p) {
  if (p->handles.empty() || !steering_enabled()) return;
  const int cpu = sched_getcpu();
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (cpu < 0 || sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
  if (cpu == p->steered_cpu && CPU_EQUAL(&allowed, &p->steered_mask)) return;
  p->steered_cpu = cpu;
  p->steered_mask = allowed;
  cpu_set_t others = allowed;
  CPU_CLR(cpu, &others);
  const cpu_set_t& mask = CPU_COUNT(&others) > 0 ? others : allowed;
  for (pthread_t h : p->handles) pthread_setaffinity_np(h, sizeof(mask), &mask);
}
#endif

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
      for (; p->threads < helpers; ++p->threads) {
        std::thread t(helper_loop, p);
        p->handles.push_back(t.native_handle());
        t.detach();
      }
    } catch (const std::system_error&) {  // fewer helpers: the caller does the rest
    }
#if defined(__linux__)
    steer_helpers(p);
#endif
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

void run_team(int64_t threads, const std::function<void(int64_t)>& body) {
  if (threads <= 1) {
    body(0);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel num_threads(static_cast<int>(threads))
  body(omp_get_thread_num());
#else
  run_parallel(threads - 1, body);
#endif
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

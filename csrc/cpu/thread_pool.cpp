#include "cpu/thread_pool.h"

#include <unistd.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace lumo {
namespace cpu {
namespace {

#if !defined(_OPENMP)
class Pool {
 public:
  // One job at a time; a caller that finds the pool busy returns false.
  bool run(int64_t items, int64_t threads, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    const int64_t helpers = start_workers(std::min(threads, items) - 1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      items_ = items;
      next_.store(0, std::memory_order_relaxed);
      helpers_ = helpers;
      error_ = nullptr;
      ++gen_;
    }
    if (helpers > 0) work_cv_.notify_all();
    drain();
    std::unique_lock<std::mutex> lk(mu_);
    // Close the job: a worker that wakes from now on skips it. Only workers
    // already inside (each holding an item or about to find none) are waited for.
    helpers_ = 0;
    done_cv_.wait(lk, [this] { return active_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void drain() {
    for (;;) {
      const int64_t it = next_.fetch_add(1, std::memory_order_relaxed);
      if (it >= items_) return;
      try {
        (*fn_)(it);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(items_, std::memory_order_relaxed);  // skip the rest
      }
    }
  }

  // Makes sure `want` workers exist; returns how many do (a thread that cannot
  // start just means fewer helpers).
  int64_t start_workers(int64_t want) {
    while (static_cast<int64_t>(workers_.size()) < want) {
      try {
        workers_.emplace_back(&Pool::worker, this, static_cast<int64_t>(workers_.size()));
      } catch (const std::system_error&) {
        break;
      }
    }
    return std::max<int64_t>(0, std::min<int64_t>(want, static_cast<int64_t>(workers_.size())));
  }

  void worker(int64_t index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      work_cv_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      if (index >= helpers_) continue;  // not needed, or the job already closed
      ++active_;
      lk.unlock();
      drain();
      lk.lock();
      if (--active_ == 0) done_cv_.notify_all();
    }
  }

  std::mutex run_mu_;  // held by the caller for a whole job
  std::mutex mu_;      // guards the fields below
  std::condition_variable work_cv_, done_cv_;
  uint64_t gen_ = 0;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t items_ = 0, helpers_ = 0, active_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
  std::vector<std::thread> workers_;
};

// The process's pool, created on first use and never destroyed (workers sleep
// until exit; joining them from a static destructor can hang at interpreter
// shutdown). A forked child has none of the parent's threads: it gets its own.
Pool& pool() {
  static std::mutex mu;
  static Pool* p = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lk(mu);
  const pid_t pid = getpid();
  if (!p || owner != pid) {
    p = new Pool();  // a pre-fork pool is leaked: its threads and locks are not ours
    owner = pid;
  }
  return *p;
}
#endif  // !_OPENMP

#if defined(_OPENMP)
// The OpenMP team (torch's, when torch loaded libgomp first) claims items
// from a shared counter, as the pool does.
void run_openmp(int64_t items, int64_t threads, const std::function<void(int64_t)>& fn) {
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex mu;
#pragma omp parallel num_threads(static_cast<int>(std::min(threads, items)))
  {
    for (;;) {
      const int64_t it = next.fetch_add(1, std::memory_order_relaxed);
      if (it >= items) break;
      try {
        fn(it);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu);
        if (!error) error = std::current_exception();
        next.store(items, std::memory_order_relaxed);
      }
    }
  }
  if (error) std::rethrow_exception(error);
}
#endif

}  // namespace

void parallel_for_items(int64_t items, int64_t threads, const std::function<void(int64_t)>& fn) {
  if (items <= 0) return;
  if (threads <= 1 || items == 1) {
    for (int64_t it = 0; it < items; ++it) fn(it);
    return;
  }
#if defined(_OPENMP)
  run_openmp(items, threads, fn);
#else
  if (!pool().run(items, threads, fn)) {
    for (int64_t it = 0; it < items; ++it) fn(it);
  }
#endif
}

}  // namespace cpu
}  // namespace lumo

// A SIMT emulator that runs the CUDA kernels of csrc/ops/*/ as plain C++ on the CPU.
//
// Why: most sessions of this project have no GPU, yet the CUDA kernels must be
// right the first time one is lent. tests/simt_build.py compiles the real
// csrc/ops/*/cuda.cu files with the host compiler against this header (through the
// stand-in <cuda_runtime.h> next to it), links them with the real bindings into
// a module `_C_simt` with the API of `lumo_uti._C_cuda`, and the tests compare
// its results with the references. What is emulated:
//   - every CUDA thread of a block is a fiber (ucontext) on the calling OS
//     thread; blocks run one after another, so a kernel's `__shared__` arrays
//     (function statics here) are per-block shared memory;
//   - `__syncthreads`, `__syncwarp` and the `__shfl_*_sync` intrinsics are
//     barriers over the block or the warp (32 consecutive linear thread ids);
//     a thread that returns leaves every barrier, as on Volta and later;
//   - the schedule runs one thread until it reaches a barrier, then the next
//     (forward, reverse or seeded-random order), so a missing barrier after a
//     shared-memory write shows up as wrong results instead of a lucky race;
//   - dynamic shared memory sits between two guard zones, and a block that
//     wrote into one fails its launch;
//   - shared memory, static and dynamic, is filled with 0xFF bytes (NaN as
//     fp32/fp16/bf16, -1 as integers) before every block, so a read of a value
//     no thread of this block wrote poisons the result (static `__shared__`
//     arrays live in the ELF section `simt_shared`, found through the
//     linker's __start_/__stop_ symbols);
//   - launches are serialised by a mutex (the static shared arrays are global);
//   - launch configurations are checked as the driver does (block size <= 1024,
//     grid.y/z <= 65535, dynamic shared memory <= 48 KiB unless raised by
//     cudaFuncSetAttribute, up to 227 KiB), failing at the next
//     cudaGetLastError().
// What is not: timing, memory coalescing, the memory model between blocks (they
// run in order) and lock-step execution within a warp (code that relies on it
// without __syncwarp is wrong on Volta+ anyway, and fails here).
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace simt {

enum class Schedule : int { kForward = 0, kReverse = 1, kRandom = 2 };

// Settings the tests change through the `simt_*` bindings.
struct Settings {
  Schedule schedule = Schedule::kForward;
  uint64_t seed = 0;
  int sm_count = 132;  // an H100 SXM
  size_t stack_bytes = 128 * 1024;
};

inline Settings& settings() {
  static Settings s;
  return s;
}

struct Barrier {
  int expected = 0;
  int arrived = 0;
};

struct Thread {
  ucontext_t context;
  uint3 idx{0, 0, 0};
  int lane = 0;
  int warp = 0;
  bool done = false;
  Barrier* waiting_on = nullptr;
};

// The block being run. One at a time per OS thread.
struct Block {
  uint3 idx{0, 0, 0};
  dim3 dim;
  dim3 grid;
  std::vector<Thread> threads;
  std::vector<Barrier> warp_barriers;
  Barrier block_barrier;
  std::vector<uint64_t> shuffle;  // 32 slots per warp
  std::vector<unsigned char> dynamic_smem;  // guard | smem bytes | guard
  size_t smem_bytes = 0;
  ucontext_t scheduler;
  int current = -1;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  std::exception_ptr error;
};

inline thread_local Block* tl_block = nullptr;

inline Block& block() {
  if (tl_block == nullptr) throw std::logic_error("simt: a device builtin was used outside a kernel");
  return *tl_block;
}
inline Thread& self() { return block().threads[static_cast<size_t>(block().current)]; }

// Returns to the scheduler; comes back when the scheduler resumes this thread.
inline void yield_to_scheduler() {
  Block& b = block();
  swapcontext(&b.threads[static_cast<size_t>(b.current)].context, &b.scheduler);
}

inline void release(Block& b, Barrier& bar) {
  for (Thread& t : b.threads) {
    if (t.waiting_on == &bar) t.waiting_on = nullptr;
  }
  bar.arrived = 0;
}

// Arrive at `bar` and wait until every thread still running has arrived.
inline void arrive_and_wait(Barrier& bar) {
  Block& b = block();
  if (++bar.arrived >= bar.expected) {
    release(b, bar);
    return;
  }
  self().waiting_on = &bar;
  yield_to_scheduler();
}

// A finished thread leaves its barriers (and may complete them).
inline void leave(Block& b, Barrier& bar) {
  --bar.expected;
  if (bar.arrived > 0 && bar.arrived >= bar.expected) release(b, bar);
}

inline void thread_entry() {
  Block& b = block();
  try {
    b.body(b.body_arg);
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
  Thread& t = self();
  t.done = true;
  leave(b, b.warp_barriers[static_cast<size_t>(t.warp)]);
  leave(b, b.block_barrier);
  // Returning ends the context; uc_link resumes the scheduler.
}

struct Stacks {
  std::vector<std::unique_ptr<char[]>> stacks;
  size_t bytes = 0;
};

inline Stacks& stacks(size_t count, size_t bytes) {
  static thread_local Stacks s;
  if (s.bytes != bytes) {
    s.stacks.clear();
    s.bytes = bytes;
  }
  while (s.stacks.size() < count) s.stacks.emplace_back(new char[bytes]);
  return s;
}

// Runs every thread of one block to completion.
inline void run_block(Block& b) {
  const int n = static_cast<int>(b.threads.size());
  Stacks& st = stacks(static_cast<size_t>(n), settings().stack_bytes);
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[static_cast<size_t>(i)];
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = st.stacks[static_cast<size_t>(i)].get();
    t.context.uc_stack.ss_size = st.bytes;
    t.context.uc_link = &b.scheduler;
    makecontext(&t.context, &thread_entry, 0);
  }
  std::vector<int> order(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  const Settings& cfg = settings();
  if (cfg.schedule == Schedule::kReverse) {
    for (int i = 0; i < n; ++i) order[static_cast<size_t>(i)] = n - 1 - i;
  }
  std::mt19937_64 rng(cfg.seed ^ (uint64_t{b.idx.x} * 0x9E3779B97F4A7C15ull) ^
                      (uint64_t{b.idx.y} << 32) ^ b.idx.z);
  tl_block = &b;
  for (;;) {
    if (cfg.schedule == Schedule::kRandom) {
      for (int i = n - 1; i > 0; --i) {
        std::uniform_int_distribution<int> pick(0, i);
        std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(pick(rng))]);
      }
    }
    bool ran = false, waiting = false;
    for (int i : order) {
      Thread& t = b.threads[static_cast<size_t>(i)];
      if (t.done) continue;
      if (t.waiting_on != nullptr) {
        waiting = true;
        continue;
      }
      b.current = i;
      swapcontext(&b.scheduler, &t.context);
      ran = true;
    }
    if (!ran) {
      tl_block = nullptr;
      if (b.error) std::rethrow_exception(b.error);
      if (waiting) {
        throw std::runtime_error(
            "simt: deadlock: every live thread of block (" + std::to_string(b.idx.x) + "," +
            std::to_string(b.idx.y) + "," + std::to_string(b.idx.z) +
            ") waits at a barrier that the others never reach");
      }
      return;
    }
  }
}

// --- launch ------------------------------------------------------------------

}  // namespace simt

// Bounds of the section holding every static __shared__ array of this module.
extern "C" char __start_simt_shared[] __attribute__((weak));
extern "C" char __stop_simt_shared[] __attribute__((weak));

namespace simt {

inline void poison_static_smem() {
  char* begin = __start_simt_shared;
  char* end = __stop_simt_shared;
  if (begin != nullptr && end > begin) std::memset(begin, 0xFF, static_cast<size_t>(end - begin));
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline int& last_error() {
  static thread_local int err = 0;
  return err;
}

constexpr size_t kMaxDynamicSmem = 48 * 1024;   // without an opt-in
constexpr size_t kMaxOptInSmem = 227 * 1024;    // an H100's opt-in limit

// Per-kernel dynamic shared-memory limits raised by cudaFuncSetAttribute.
inline std::map<const void*, size_t>& smem_limits() {
  static std::map<const void*, size_t> limits;
  return limits;
}

constexpr size_t kSmemGuard = 4096;
constexpr unsigned char kCanary = 0xA5;

// A kernel that wrote outside its dynamic shared memory fails the launch
// (on a GPU it would corrupt another block's memory or fault).
inline void check_smem_guards(const Block& b) {
  const unsigned char* p = b.dynamic_smem.data();
  const size_t after = kSmemGuard + b.smem_bytes;
  for (size_t i = 0; i < kSmemGuard; ++i) {
    if (p[i] != kCanary || p[after + i] != kCanary) {
      throw std::runtime_error("simt: block (" + std::to_string(b.idx.x) + "," + std::to_string(b.idx.y) +
                               "," + std::to_string(b.idx.z) + ") wrote outside its " +
                               std::to_string(b.smem_bytes) + " bytes of dynamic shared memory");
    }
  }
}

template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid;
  dim3 block_dim;
  size_t smem;

  template <typename... Args>
  void operator()(Args&&... args) const {
    std::lock_guard<std::mutex> lock(launch_mutex());
    const uint64_t threads = uint64_t{block_dim.x} * block_dim.y * block_dim.z;
    if (threads == 0 || threads > 1024 || block_dim.z > 64 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
      last_error() = 9;  // cudaErrorInvalidConfiguration
      return;
    }
    const auto raised = smem_limits().find(reinterpret_cast<const void*>(kernel));
    const size_t limit = raised == smem_limits().end() ? kMaxDynamicSmem
                                                       : std::max(kMaxDynamicSmem, raised->second);
    if (smem > limit) {
      last_error() = 1;  // cudaErrorInvalidValue
      return;
    }
    // The parameters are copied, as the driver copies them at launch.
    using Tuple = std::tuple<std::decay_t<Params>...>;
    Tuple copied(static_cast<Params>(args)...);
    struct Call {
      void (*kernel)(Params...);
      Tuple* args;
      static void run(void* p) {
        auto* c = static_cast<Call*>(p);
        std::apply(c->kernel, *c->args);
      }
    } call{kernel, &copied};
    for (unsigned bz = 0; bz < grid.z; ++bz) {
      for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          Block b;
          b.idx = uint3{bx, by, bz};
          b.dim = block_dim;
          b.grid = grid;
          b.threads.resize(static_cast<size_t>(threads));
          const int warps = static_cast<int>((threads + 31) / 32);
          b.warp_barriers.resize(static_cast<size_t>(warps));
          b.shuffle.assign(static_cast<size_t>(warps) * 32, 0);
          b.block_barrier.expected = static_cast<int>(threads);
          for (uint64_t lin = 0; lin < threads; ++lin) {
            Thread& t = b.threads[static_cast<size_t>(lin)];
            t.idx = uint3{static_cast<unsigned>(lin % block_dim.x),
                          static_cast<unsigned>((lin / block_dim.x) % block_dim.y),
                          static_cast<unsigned>(lin / (uint64_t{block_dim.x} * block_dim.y))};
            t.lane = static_cast<int>(lin % 32);
            t.warp = static_cast<int>(lin / 32);
            ++b.warp_barriers[static_cast<size_t>(t.warp)].expected;
          }
          // NaN as fp32, bf16 and fp16, between two canary-filled guards.
          b.smem_bytes = smem;
          b.dynamic_smem.assign(smem + 2 * kSmemGuard, kCanary);
          std::memset(b.dynamic_smem.data() + kSmemGuard, 0xFF, smem);
          poison_static_smem();
          b.body = &Call::run;
          b.body_arg = &call;
          run_block(b);
          check_smem_guards(b);
        }
      }
    }
  }
};

// The stream is ignored: work runs at once, in launch order.
template <typename... Params, typename Stream>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block_dim, size_t smem,
                         Stream) {
  return Launch<Params...>{kernel, grid, block_dim, smem};
}

// --- device builtins -----------------------------------------------------------

template <typename T>
inline T* dynamic_smem() {
  return reinterpret_cast<T*>(block().dynamic_smem.data() + kSmemGuard);
}

inline void syncthreads() { arrive_and_wait(block().block_barrier); }

inline void syncwarp() {
  Block& b = block();
  arrive_and_wait(b.warp_barriers[static_cast<size_t>(self().warp)]);
}

// Every lane of the warp publishes `v`, then reads lane `src(lane)`'s value.
template <typename T, typename Src>
inline T exchange(T v, Src src) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "simt: shuffle of a type wider than 8 bytes");
  Block& b = block();
  Thread& t = self();
  Barrier& bar = b.warp_barriers[static_cast<size_t>(t.warp)];
  uint64_t* slots = b.shuffle.data() + static_cast<size_t>(t.warp) * 32;
  uint64_t word = 0;
  std::memcpy(&word, &v, sizeof(T));
  slots[t.lane] = word;
  arrive_and_wait(bar);
  const int from = src(t.lane);
  T out;
  std::memcpy(&out, &slots[from], sizeof(T));
  arrive_and_wait(bar);  // nobody overwrites a slot before everyone read
  return out;
}

inline void check_width(int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    throw std::invalid_argument("simt: shuffle width must be a power of two <= 32");
  }
}

template <typename T>
inline T shfl(unsigned, T v, int src_lane, int width = 32) {
  check_width(width);
  return exchange(v, [&](int lane) { return (lane / width) * width + (src_lane % width); });
}

template <typename T>
inline T shfl_xor(unsigned, T v, int lane_mask, int width = 32) {
  check_width(width);
  return exchange(v, [&](int lane) {
    const int src = lane ^ lane_mask;
    return src / width == lane / width ? src : lane;
  });
}

template <typename T>
inline T shfl_down(unsigned, T v, unsigned delta, int width = 32) {
  check_width(width);
  return exchange(v, [&](int lane) {
    const int src = lane + static_cast<int>(delta);
    return src / width == lane / width ? src : lane;
  });
}

template <typename T>
inline T shfl_up(unsigned, T v, unsigned delta, int width = 32) {
  check_width(width);
  return exchange(v, [&](int lane) {
    const int src = lane - static_cast<int>(delta);
    return src >= 0 && src / width == lane / width ? src : lane;
  });
}

}  // namespace simt

// --- the CUDA spellings ----------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ __attribute__((section("simt_shared"))) static

#define threadIdx (::simt::self().idx)
#define blockIdx (::simt::block().idx)
#define blockDim (::simt::block().dim)
#define gridDim (::simt::block().grid)

#define LUMO_LAUNCH(kernel, grid, block, smem, stream) ::simt::launch((kernel), (grid), (block), (smem), (stream))
#define LUMO_DYNAMIC_SMEM(T, name) T* name = ::simt::dynamic_smem<T>()

inline void __syncthreads() { ::simt::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::simt::syncwarp(); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return ::simt::shfl(mask, v, src_lane, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::simt::shfl_xor(mask, v, lane_mask, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::simt::shfl_down(mask, v, delta, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::simt::shfl_up(mask, v, delta, width);
}

// Rounded fp32 arithmetic: the emulator builds with -ffp-contract=off, so the
// plain operators are single IEEE operations, as the intrinsics are on a GPU.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }

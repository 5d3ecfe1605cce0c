// Kernels that check the SIMT emulator itself (tests/test_cuda_simt.py): it
// must give right answers for right code and catch the mistakes it exists for.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace {

// Sum of in[0, 256) by a shared-memory tree; `barrier` false drops the
// __syncthreads between the store and the tree (a classic race).
__global__ void block_sum(const float* in, float* out, bool barrier) {
  __shared__ float s[256];
  const int t = threadIdx.x;
  s[t] = in[t];
  if (barrier) __syncthreads();
  for (int half = 128; half > 0; half /= 2) {
    if (t < half) s[t] += s[t + half];
    __syncthreads();
  }
  if (t == 0) *out = s[0];
}

// After a common barrier, even threads wait at a second block barrier while
// odd ones wait at a warp barrier: neither can complete (a hang on a GPU).
// (Threads that exit count as arrived, as on Volta+, so divergence alone
// before a barrier is not a deadlock.)
__global__ void divergent_barrier(int* out) {
  __syncthreads();
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncwarp();
  }
  out[threadIdx.x] = 1;
}

// out[lane] = lane's value after an xor butterfly max over 16-lane halves,
// and after a down-shift by 3 over the full warp.
__global__ void shuffles(int* out_xor, int* out_down, int* out_bcast) {
  const int lane = threadIdx.x % 32;
  int v = (lane * 7) % 32;
  for (int off = 8; off >= 1; off /= 2) {
    const int o = __shfl_xor_sync(0xffffffffu, v, off, 16);
    v = o > v ? o : v;
  }
  out_xor[threadIdx.x] = v;
  out_down[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 3);
  out_bcast[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) * 10, 5);
}

// Threads of the last warp return early; the rest still meet at barriers.
__global__ void early_exit(int* out) {
  if (threadIdx.x >= 64) return;
  __shared__ int s[64];
  s[threadIdx.x] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[63 - threadIdx.x];
}

// Writes one float past its dynamic shared memory (n floats).
__global__ void smem_overrun(int n) {
  LUMO_DYNAMIC_SMEM(float, s);
  s[threadIdx.x] = 1.0f;
  if (threadIdx.x == 0) s[n] = 2.0f;
}

void check(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err));
}

}  // namespace

namespace simt_selftest {

float block_sum(const float* in, bool barrier) {
  float out = 0.0f;
  LUMO_LAUNCH(::block_sum, 1, 256, 0, nullptr)(in, &out, barrier);
  check("block_sum");
  return out;
}

void divergent_barrier(int* out) {
  LUMO_LAUNCH(::divergent_barrier, 1, 64, 0, nullptr)(out);
  check("divergent_barrier");
}

void shuffles(int* out_xor, int* out_down, int* out_bcast) {
  LUMO_LAUNCH(::shuffles, 1, 64, 0, nullptr)(out_xor, out_down, out_bcast);
  check("shuffles");
}

void early_exit(int* out) {
  LUMO_LAUNCH(::early_exit, 1, 96, 0, nullptr)(out);
  check("early_exit");
}

void smem_overrun() {
  LUMO_LAUNCH(::smem_overrun, 1, 32, 32 * sizeof(float), nullptr)(32);
  check("smem_overrun");
}

void oversized_block() {
  LUMO_LAUNCH(::early_exit, 1, 2048, 0, nullptr)(nullptr);
  check("oversized_block");
}

}  // namespace simt_selftest

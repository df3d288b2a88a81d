// Host shim: lets g++ compile kernels/*.cu as plain C++ so the tests can run the CUDA sources on
// the CPU. By default a launch is a single thread of a single block, which the kernels'
// grid-stride loops turn into a serial walk over every element; atomics become plain adds and
// shared memory static storage (the one thread is the whole block) with nothing to wait for at
// a barrier.
//
// The block simulator (cuproi_host_block, used by tests/host's `blocks`) runs the threads of a
// launch instead: the caller runs every block in turn, one OS thread per CUDA thread, and the
// shim lets exactly one of them run at a time. Each thread runs until its next __syncthreads or
// its end, then hands over to the next in this phase's order (ascending, descending or
// shuffled); a phase ends when every live thread has reached the barrier or exited. So shared
// memory is the block's, plain adds are safe, and a missing barrier (a thread reading what
// another writes in the same phase) or a sum that depends on the order of its threads shows as
// a result that changes with the order.
#pragma once
#include <algorithm>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <vector>

#define CUPROI_HOST_SHIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

struct cuproi_dim3 {
  unsigned int x, y, z;
};
inline thread_local cuproi_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
inline cuproi_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

namespace cuproi_host {

enum State : char { RUNNING, WAITING, EXITED };  // within the current phase

struct Block {
  std::mutex mutex;
  std::vector<std::condition_variable> wake;  // per thread: only the next one is woken
  bool active = false;
  int order = 0;  // 0: ascending thread index, 1: descending, else shuffled with rng
  std::mt19937 rng;
  std::vector<unsigned> phase;  // this phase's order of the threads
  std::vector<State> state;
  size_t at = 0;         // position in `phase` of the thread that runs
  unsigned turn = UINT_MAX;  // the thread that runs (UINT_MAX: none, the block is over)
};
inline Block block;

// Gives the turn to the next thread of this phase that still runs; when none is left, starts
// the next phase: the threads waiting at the barrier run again, in a new order. Called with the
// mutex held.
inline void hand_over() {
  Block& b = block;
  for (size_t i = b.at + 1; i < b.phase.size(); ++i) {
    if (b.state[b.phase[i]] == RUNNING) {
      b.at = i;
      b.turn = b.phase[i];
      b.wake[b.turn].notify_one();
      return;
    }
  }
  b.turn = UINT_MAX;
  b.at = 0;
  std::vector<unsigned> live;
  for (unsigned t = 0; t < b.state.size(); ++t) {
    if (b.state[t] == WAITING) b.state[t] = RUNNING;
    if (b.state[t] == RUNNING) live.push_back(t);
  }
  if (b.order == 1) std::reverse(live.begin(), live.end());
  if (b.order > 1) std::shuffle(live.begin(), live.end(), b.rng);
  b.phase = live;
  if (!live.empty()) {
    b.turn = live[0];
    b.wake[b.turn].notify_one();
  }
}

inline void wait_turn(std::unique_lock<std::mutex>& lock) {
  const unsigned me = threadIdx.x;
  block.wake[me].wait(lock, [me] { return block.turn == me; });
}

}  // namespace cuproi_host

// Simulator entry points, called from Python (ctypes releases the GIL around each).
// cuproi_host_grid: the launch's dimensions, or grid = 0 to go back to one serial thread.
extern "C" void cuproi_host_grid(unsigned grid, unsigned threads, int order, unsigned seed) {
  cuproi_host::Block& b = cuproi_host::block;
  b.active = grid > 0;
  gridDim = {b.active ? grid : 1u, 1, 1};
  blockDim = {b.active ? threads : 1u, 1, 1};
  b.order = order;
  b.rng.seed(seed);
  if (b.wake.size() < blockDim.x) b.wake = std::vector<std::condition_variable>(blockDim.x);
}
// cuproi_host_block: before the threads of a block start (none runs yet).
extern "C" void cuproi_host_block() {
  cuproi_host::Block& b = cuproi_host::block;
  b.phase.clear();
  b.state.assign(blockDim.x, cuproi_host::WAITING);
  cuproi_host::hand_over();
}
// cuproi_host_enter / cuproi_host_leave: around the kernel call of thread `thread` of block
// `index`, in the OS thread that makes it.
extern "C" void cuproi_host_enter(unsigned index, unsigned thread) {
  blockIdx = {index, 0, 0};
  threadIdx = {thread, 0, 0};
  std::unique_lock<std::mutex> lock(cuproi_host::block.mutex);
  cuproi_host::wait_turn(lock);
}
extern "C" void cuproi_host_leave() {
  std::lock_guard<std::mutex> lock(cuproi_host::block.mutex);
  cuproi_host::block.state[threadIdx.x] = cuproi_host::EXITED;
  cuproi_host::hand_over();
}

inline void __syncthreads() {
  if (!cuproi_host::block.active) return;
  std::unique_lock<std::mutex> lock(cuproi_host::block.mutex);
  cuproi_host::block.state[threadIdx.x] = cuproi_host::WAITING;
  cuproi_host::hand_over();
  cuproi_host::wait_turn(lock);
}
// CuPy compiles with -ftz=true: float32 arithmetic flushes subnormal inputs and results to zero.
// The CuPy stand-in (tests/cupy_standin) mirrors it around a float32 kernel with the SSE control
// bits FTZ and DAZ, which flush float64 too (kernels of float32 data rarely hold subnormal
// doubles); elsewhere these return 0 and nothing is flushed.
#if defined(__x86_64__)
#include <xmmintrin.h>
extern "C" unsigned cuproi_host_flush_subnormals(int on) {
  const unsigned before = _mm_getcsr();
  _mm_setcsr(on ? before | 0x8040u : before & ~0x8040u);
  return before;
}
#else
extern "C" unsigned cuproi_host_flush_subnormals(int) { return 0; }
#endif
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
using std::max;
using std::min;

// float16 conversions, round to nearest even (GCC >= 12 and Clang have _Float16 on x86-64 and
// aarch64).
inline float cuproi_host_half_to_float(unsigned short h) {
  _Float16 v;
  std::memcpy(&v, &h, sizeof v);
  return static_cast<float>(v);
}
inline unsigned short cuproi_host_float_to_half(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  unsigned short h;
  std::memcpy(&h, &v, sizeof h);
  return h;
}

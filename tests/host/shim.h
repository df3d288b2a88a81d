// Host shim: lets g++ compile kernels/*.cu as plain C++ so the tests can run the CUDA sources on
// the CPU. A launch becomes a single thread of a single block, which the kernels' grid-stride
// loops turn into a serial walk over every element; atomics become plain adds. Shared memory
// becomes static storage (the one thread is the whole block; the tests call one kernel at a
// time) and a barrier has nothing to wait for.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>

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
static const cuproi_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
static const cuproi_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

inline void __syncthreads() {}
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

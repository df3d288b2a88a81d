// SPDX-License-Identifier: Apache-2.0
//
// Device helpers shared by every cuproi kernel:
//   CUPROI_KERNEL_LOOP   grid-stride loop with a templated index type
//   cuproi::half         2-byte storage for float16 (no cuda_fp16.h: NVRTC header versions vary)
//   load / store         read a feature value as its compute type, write it back
//   output_index         (k, c, ph, pw) of a flat output index
//   Compute<T>           compute (and accumulation) type of a storage type
//   cfloor, cceil, ...   math overloads for float and double
#pragma once

// Grid-stride loop over [0, n). Any launch size covers any n, and the host test shim, which
// runs a kernel as one thread of one block, walks the very same loop.
#define CUPROI_KERNEL_LOOP(i, n, I)                                              \
  for (I i = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) +         \
             static_cast<I>(threadIdx.x);                                       \
       i < (n); i += static_cast<I>(blockDim.x) * static_cast<I>(gridDim.x))

namespace cuproi {

struct half {
  unsigned short bits;
};

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float half_to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short float_to_half(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#else
// Host builds (the test shim) provide cuproi_host_half_to_float / cuproi_host_float_to_half.
inline float half_to_float(unsigned short h) { return cuproi_host_half_to_float(h); }
inline unsigned short float_to_half(float f) { return cuproi_host_float_to_half(f); }
#endif

// float16 is stored as half and computed in float; float and double compute in themselves.
template <typename T> struct Compute { typedef T type; };
template <> struct Compute<half> { typedef float type; };

__device__ __forceinline__ float load(const half* p) { return half_to_float(__ldg(&p->bits)); }
__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load(const double* p) { return __ldg(p); }

__device__ __forceinline__ void store(half* p, float v) { p->bits = float_to_half(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }

__device__ __forceinline__ float cfloor(float v) { return floorf(v); }
__device__ __forceinline__ double cfloor(double v) { return floor(v); }
__device__ __forceinline__ float cceil(float v) { return ceilf(v); }
__device__ __forceinline__ double cceil(double v) { return ceil(v); }
__device__ __forceinline__ float cround(float v) { return roundf(v); }  // half away from zero
__device__ __forceinline__ double cround(double v) { return round(v); }
__device__ __forceinline__ float cabs(float v) { return fabsf(v); }
__device__ __forceinline__ double cabs(double v) { return fabs(v); }
template <typename C>
__device__ __forceinline__ C cmin(C a, C b) {
  return a < b ? a : b;
}
template <typename C>
__device__ __forceinline__ C cmax(C a, C b) {
  return a > b ? a : b;
}

template <typename C> __device__ __forceinline__ C epsilon();
template <> __device__ __forceinline__ float epsilon<float>() { return 1.1920929e-07f; }
template <> __device__ __forceinline__ double epsilon<double>() { return 2.220446049250313e-16; }

// Offset of plane (b, c) of an (N, C, H, W) array, computed in the index type.
template <typename I>
__device__ __forceinline__ I plane_offset(int b, int c, int channels, int height, int width) {
  return (static_cast<I>(b) * channels + c) * static_cast<I>(height) * width;
}

// Feature plane (b, c) of an (N, C, H, W) array.
template <typename T, typename I>
__device__ __forceinline__ T* plane(T* base, int b, int c, int channels, int height, int width) {
  return base + plane_offset<I>(b, c, channels, height, width);
}

// (k, c, ph, pw) of a flat index into a (K, C, PH, PW) array.
template <typename I>
struct OutputIndex {
  I k;
  int c, ph, pw;
};

template <typename I>
__device__ __forceinline__ OutputIndex<I> output_index(I index, int channels, int pooled_h,
                                                       int pooled_w) {
  OutputIndex<I> o;
  o.pw = static_cast<int>(index % pooled_w);
  o.ph = static_cast<int>((index / pooled_w) % pooled_h);
  o.c = static_cast<int>((index / pooled_w / pooled_h) % channels);
  o.k = index / pooled_w / pooled_h / channels;
  return o;
}

// Batch index of a box row; -1 when it does not name an image of the batch. The Python layer
// validates boxes before launch; this keeps a bad row from ever reading out of bounds.
template <typename C>
__device__ __forceinline__ int batch_of(const C* roi, int batch) {
  const C b = roi[0];
  return (b >= C(0) && b < C(batch)) ? static_cast<int>(b) : -1;
}

}  // namespace cuproi

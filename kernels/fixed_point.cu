// SPDX-License-Identifier: Apache-2.0
//
// The last step of a deterministic backward: fixed-point sums back to floating point (the
// accumulation itself is GradSum in common/grad_sum.cuh).
//
// Entry points (C = f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_fixed_point_finalize_<C>[_i64](I n, const u64* fixed, const int* exponent, C* value)
// fixed holds 2 words per element; value, the C buffer of the same sum, is overwritten with the
// result in place.
#include "common/grad_sum.cuh"

namespace cuproi {

template <typename C, typename I>
__device__ void fixed_point_finalize(I n, const u64* fixed, const int* exponent, C* value) {
  const int e = *exponent;
  CUPROI_KERNEL_LOOP(i, n, I) { value[i] = fixed_point_value(fixed + 2 * i, value + i, e); }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_FIXED_POINT(C, SFX, I, ISFX)                                               \
  extern "C" __global__ void cuproi_fixed_point_finalize_##SFX##ISFX(                            \
      I n, const cuproi::u64* fixed, const int* exponent, C* value) {                             \
    cuproi::fixed_point_finalize<C, I>(n, fixed, exponent, value);                                \
  }

CUPROI_EXPORT_FIXED_POINT(float, f32, int, )
CUPROI_EXPORT_FIXED_POINT(float, f32, long long, _i64)
CUPROI_EXPORT_FIXED_POINT(double, f64, int, )
CUPROI_EXPORT_FIXED_POINT(double, f64, long long, _i64)

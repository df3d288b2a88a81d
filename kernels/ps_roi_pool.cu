// SPDX-License-Identifier: Apache-2.0
//
// Position-sensitive RoI Pool (R-FCN), torchvision.ops.ps_roi_pool semantics with one clipping
// for forward and backward: forward and backward.
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_ps_roi_pool_forward_<T>[_i64](
//       I n, const T* input, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, T* output)
//   cuproi_ps_roi_pool_backward_<T>[_i64](
//       I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, C* grad_input, u64* grad_fixed,
//       const int* exponent, int deterministic)
// `channels` is the input's C, a multiple of pooled_h * pooled_w; the output has
// C / (pooled_h * pooled_w) channels, and bin (ph, pw) of output channel c averages input channel
// (c * pooled_h + ph) * pooled_w + pw over its cells; n = K * C (one thread per output element).
// Arrays contiguous; rois (K, 5) in C (float for f16 and f32, double for f64). grad_input is a
// zeroed C buffer and (grad_fixed, exponent, deterministic) select how overlapping bins are summed
// into it: see common/grad_sum.cuh.
//
// Bins (ps_bin): the box is rounded to whole cells (half away from zero), its size is
// max(end - start, 1) (no +1, unlike roi_pool), bin (ph, pw) covers rows
// [floor(ph * bin_h), ceil((ph + 1) * bin_h)) from the box start, clipped to [0, height], and
// likewise for columns. Forward and backward use these same cells. (torchvision's forward, CPU
// and CUDA, clips to [0, height - 1] but its backward to [0, height]: its forward never reads the
// last row and column, and its gradient is not the transpose of its forward there.)
#include "common/position_sensitive.cuh"
#include "common/grad_sum.cuh"

namespace cuproi {

// Cells [h0, h1) x [w0, w1) of bin (ph, pw) of a box; empty when h1 <= h0 or w1 <= w0.
struct PsBin {
  int h0, h1, w0, w1;
};

template <typename C>
__device__ __forceinline__ PsBin ps_bin(const C* roi, C spatial_scale, int ph, int pw,
                                        int pooled_h, int pooled_w, int height, int width) {
  // Coordinates are validated to lie within +-2**20 cells, so the int conversions are exact.
  const int x1 = static_cast<int>(cround(roi[1] * spatial_scale));
  const int y1 = static_cast<int>(cround(roi[2] * spatial_scale));
  const int x2 = static_cast<int>(cround(roi[3] * spatial_scale));
  const int y2 = static_cast<int>(cround(roi[4] * spatial_scale));
  const int roi_w = max(x2 - x1, 1);
  const int roi_h = max(y2 - y1, 1);
  const C bin_h = static_cast<C>(roi_h) / static_cast<C>(pooled_h);
  const C bin_w = static_cast<C>(roi_w) / static_cast<C>(pooled_w);
  PsBin r;
  r.h0 = min(max(static_cast<int>(cfloor(static_cast<C>(ph) * bin_h)) + y1, 0), height);
  r.h1 = min(max(static_cast<int>(cceil(static_cast<C>(ph + 1) * bin_h)) + y1, 0), height);
  r.w0 = min(max(static_cast<int>(cfloor(static_cast<C>(pw) * bin_w)) + x1, 0), width);
  r.w1 = min(max(static_cast<int>(cceil(static_cast<C>(pw + 1) * bin_w)) + x1, 0), width);
  return r;
}

template <typename T, typename C, typename I>
__device__ void ps_roi_pool_forward(I n, const T* input, const C* rois, C spatial_scale,
                                    int batch, int channels, int height, int width, int pooled_h,
                                    int pooled_w, T* output) {
  const int out_channels = channels / (pooled_h * pooled_w);
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, out_channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    const PsBin r = ps_bin(roi, spatial_scale, o.ph, o.pw, pooled_h, pooled_w, height, width);
    C sum = 0;
    if (b >= 0 && r.h0 < r.h1 && r.w0 < r.w1) {
      const int c_in = ps_channel(o.c, o.ph, o.pw, pooled_h, pooled_w);
      const T* p = plane<const T, I>(input, b, c_in, channels, height, width);
      for (int h = r.h0; h < r.h1; ++h)
        for (int w = r.w0; w < r.w1; ++w) sum += load(p + h * width + w);
      sum /= static_cast<C>(r.h1 - r.h0) * static_cast<C>(r.w1 - r.w0);
    }
    store(output + index, sum);
  }
}

template <typename T, typename C, typename I>
__device__ void ps_roi_pool_backward(I n, const T* grad_output, const C* rois, C spatial_scale,
                                     int batch, int channels, int height, int width, int pooled_h,
                                     int pooled_w, GradSum<C> grad_input) {
  const int out_channels = channels / (pooled_h * pooled_w);
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, out_channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const PsBin r = ps_bin(roi, spatial_scale, o.ph, o.pw, pooled_h, pooled_w, height, width);
    if (!(r.h0 < r.h1 && r.w0 < r.w1)) continue;
    const C grad = load(grad_output + index) /
                   (static_cast<C>(r.h1 - r.h0) * static_cast<C>(r.w1 - r.w0));
    if (grad == C(0)) continue;
    const int c_in = ps_channel(o.c, o.ph, o.pw, pooled_h, pooled_w);
    const GradSum<C> gp = grad_input.at(plane_offset<I>(b, c_in, channels, height, width));
    for (int h = r.h0; h < r.h1; ++h)
      for (int w = r.w0; w < r.w1; ++w) gp.add(h * width + w, grad);
  }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_PS_ROI_POOL(T, C, SFX, I, ISFX)                                            \
  extern "C" __global__ void cuproi_ps_roi_pool_forward_##SFX##ISFX(                             \
      I n, const T* input, const C* rois, C spatial_scale, int batch, int channels, int height,   \
      int width, int pooled_h, int pooled_w, T* output) {                                         \
    cuproi::ps_roi_pool_forward<T, C, I>(n, input, rois, spatial_scale, batch, channels, height, \
                                         width, pooled_h, pooled_w, output);                      \
  }                                                                                               \
  extern "C" __global__ void cuproi_ps_roi_pool_backward_##SFX##ISFX(                            \
      I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,         \
      int height, int width, int pooled_h, int pooled_w, C* grad_input, cuproi::u64* grad_fixed,  \
      const int* exponent, int deterministic) {                                                   \
    cuproi::ps_roi_pool_backward<T, C, I>(                                                        \
        n, grad_output, rois, spatial_scale, batch, channels, height, width, pooled_h, pooled_w,  \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));                       \
  }

CUPROI_EXPORT_PS_ROI_POOL(cuproi::half, float, f16, int, )
CUPROI_EXPORT_PS_ROI_POOL(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_PS_ROI_POOL(float, float, f32, int, )
CUPROI_EXPORT_PS_ROI_POOL(float, float, f32, long long, _i64)
CUPROI_EXPORT_PS_ROI_POOL(double, double, f64, int, )
CUPROI_EXPORT_PS_ROI_POOL(double, double, f64, long long, _i64)

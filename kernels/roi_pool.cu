// SPDX-License-Identifier: Apache-2.0
//
// RoI Pool (Fast R-CNN), torchvision.ops.roi_pool semantics, forward and backward.
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_roi_pool_forward_<T>[_i64](
//       I n, const T* input, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, T* output, int* argmax)
//   cuproi_roi_pool_backward_<T>[_i64](
//       I n, const T* grad_output, const C* rois, const int* argmax, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, C* grad_input, u64* grad_fixed,
//       const int* exponent, int deterministic)
// n = K * channels * pooled_h * pooled_w; arrays contiguous; rois (K, 5) in C (float for f16
// and f32, double for f64). argmax holds the flat index h * width + w of each bin's maximum in
// its (height, width) plane, or -1 for an empty bin. grad_input is a zeroed C buffer and
// (grad_fixed, exponent, deterministic) select how overlapping bins are summed into it: see
// common/grad_sum.cuh.
#include "common/grad_sum.cuh"

namespace cuproi {

template <typename T, typename C, typename I>
__device__ void roi_pool_forward(I n, const T* input, const C* rois, C spatial_scale, int batch,
                                 int channels, int height, int width, int pooled_h, int pooled_w,
                                 T* output, int* argmax) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const int ph = o.ph, pw = o.pw;
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    // Quantize the box to whole cells (round half away from zero), end inclusive. Coordinates
    // are validated to lie within +-2**20 cells, so the int conversions are exact.
    const int x1 = static_cast<int>(cround(roi[1] * spatial_scale));
    const int y1 = static_cast<int>(cround(roi[2] * spatial_scale));
    const int x2 = static_cast<int>(cround(roi[3] * spatial_scale));
    const int y2 = static_cast<int>(cround(roi[4] * spatial_scale));
    const int roi_w = max(x2 - x1 + 1, 1);
    const int roi_h = max(y2 - y1 + 1, 1);
    const C bin_h = static_cast<C>(roi_h) / static_cast<C>(pooled_h);
    const C bin_w = static_cast<C>(roi_w) / static_cast<C>(pooled_w);
    // Bins may overlap: floor of the start, ceil of the end, then clipped to the map.
    const int h0 = min(max(static_cast<int>(cfloor(static_cast<C>(ph) * bin_h)) + y1, 0), height);
    const int h1 = min(max(static_cast<int>(cceil(static_cast<C>(ph + 1) * bin_h)) + y1, 0), height);
    const int w0 = min(max(static_cast<int>(cfloor(static_cast<C>(pw) * bin_w)) + x1, 0), width);
    const int w1 = min(max(static_cast<int>(cceil(static_cast<C>(pw + 1) * bin_w)) + x1, 0), width);
    C best = 0;
    int best_at = -1;
    if (b >= 0 && h0 < h1 && w0 < w1) {
      const T* p = plane<const T, I>(input, b, o.c, channels, height, width);
      // Start from the bin's first cell so that every non-empty bin has an argmax (also when
      // all its values are -inf); strict > keeps the first maximum; a NaN, once met, is kept.
      best_at = h0 * width + w0;
      best = load(p + best_at);
      for (int h = h0; h < h1; ++h) {
        for (int w = w0; w < w1; ++w) {
          const int at = h * width + w;
          const C v = load(p + at);
          if (v > best || (v != v && best == best)) {
            best = v;
            best_at = at;
          }
        }
      }
    }
    store(output + index, best);
    argmax[index] = best_at;
  }
}

template <typename T, typename C, typename I>
__device__ void roi_pool_backward(I n, const T* grad_output, const C* rois, const int* argmax,
                                  int batch, int channels, int height, int width, int pooled_h,
                                  int pooled_w, GradSum<C> grad_input) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const int at = argmax[index];
    if (at < 0) continue;
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const int b = batch_of(rois + o.k * 5, batch);
    if (b < 0 || at >= height * width) continue;
    const I offset = plane_offset<I>(b, o.c, channels, height, width);
    grad_input.at(offset).add(at, load(grad_output + index));
  }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_ROI_POOL(T, C, SFX, I, ISFX)                                               \
  extern "C" __global__ void cuproi_roi_pool_forward_##SFX##ISFX(                                \
      I n, const T* input, const C* rois, C spatial_scale, int batch, int channels, int height,   \
      int width, int pooled_h, int pooled_w, T* output, int* argmax) {                            \
    cuproi::roi_pool_forward<T, C, I>(n, input, rois, spatial_scale, batch, channels, height,    \
                                      width, pooled_h, pooled_w, output, argmax);                 \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_pool_backward_##SFX##ISFX(                               \
      I n, const T* grad_output, const C* rois, const int* argmax, int batch, int channels,       \
      int height, int width, int pooled_h, int pooled_w, C* grad_input, cuproi::u64* grad_fixed,  \
      const int* exponent, int deterministic) {                                                   \
    cuproi::roi_pool_backward<T, C, I>(                                                           \
        n, grad_output, rois, argmax, batch, channels, height, width, pooled_h, pooled_w,         \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));                       \
  }

CUPROI_EXPORT_ROI_POOL(cuproi::half, float, f16, int, )
CUPROI_EXPORT_ROI_POOL(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_ROI_POOL(float, float, f32, int, )
CUPROI_EXPORT_ROI_POOL(float, float, f32, long long, _i64)
CUPROI_EXPORT_ROI_POOL(double, double, f64, int, )
CUPROI_EXPORT_ROI_POOL(double, double, f64, long long, _i64)

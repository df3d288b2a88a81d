// SPDX-License-Identifier: Apache-2.0
//
// Max-mode RoI Align, mmcv.ops.roi_align(pool_mode="max") semantics, forward and backward: the
// sampling grid of roi_align (torchvision's box conventions, `aligned` or legacy), but every bin
// keeps the maximum of its bilinear samples instead of their average. A sample outside
// [-1, H] x [-1, W] takes part with value 0 (as in mmcv); the first maximum in scan order (iy,
// then ix) wins ties; a NaN sample wins; a bin without samples gives 0 (mmcv: -FLT_MAX). The
// backward recomputes the winning sample from the features (no argmax is stored) and routes the
// gradient to its 4 bilinear neighbours, as mmcv does from its stored (argmax_y, argmax_x).
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_roi_align_max_forward_<T>[_i64](
//       I n, const T* input, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,
//       T* output)
//   cuproi_roi_align_max_backward_<T>[_i64](
//       I n, const T* grad_output, const T* input, const C* rois, C spatial_scale, int batch,
//       int channels, int height, int width, int pooled_h, int pooled_w, int sampling_ratio,
//       int aligned, C* grad_input, u64* grad_fixed, const int* exponent, int deterministic,
//       C* grad_rois, int wrt_boxes)
// n = K * channels * pooled_h * pooled_w; arrays contiguous NCHW; rois (K, 5) in C (float for
// f16 and f32, double for f64). wrt_boxes == 0: the input gradient into the zeroed C buffer
// grad_input, summed as (grad_fixed, exponent, deterministic) select (common/grad_sum.cuh).
// wrt_boxes != 0: the gradient with respect to the box coordinates (the winning sample's slope
// times the derivative of its position), into grad_rois as common/bilinear.cuh (BoxGrad) says.
#include "common/bilinear.cuh"

namespace cuproi {

template <typename T, typename C, typename I>
__device__ void roi_align_max_forward(I n, const T* input, const C* rois, C spatial_scale,
                                      int batch, int channels, int height, int width,
                                      int pooled_h, int pooled_w, int sampling_ratio, int aligned,
                                      T* output) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) {
      store(output + index, C(0));
      continue;
    }
    const Grid<C> g = make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                                aligned ? C(0.5) : C(0), !aligned);
    const T* p = plane<const T, I>(input, b, o.c, channels, height, width);
    int iy, ix;
    store(output + index, bin_max(p, height, width, g, o.ph, o.pw, iy, ix));
  }
}

template <typename T, typename C, typename I>
__device__ void roi_align_max_backward(I n, const T* grad_output, const T* input, const C* rois,
                                       C spatial_scale, int batch, int channels, int height,
                                       int width, int pooled_h, int pooled_w, int sampling_ratio,
                                       int aligned, GradSum<C> grad_input, BoxGrad<C> grad_rois,
                                       int wrt_boxes) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const C grad = load(grad_output + index);
    if (grad == C(0)) continue;
    const Grid<C> g = make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                                aligned ? C(0.5) : C(0), !aligned);
    const T* p = plane<const T, I>(input, b, o.c, channels, height, width);
    int iy, ix;
    bin_max(p, height, width, g, o.ph, o.pw, iy, ix);
    if (iy < 0) continue;  // the maximum is an out-of-range zero, or the bin is empty
    const C y = sample_at(g.start_y + o.ph * g.bin_h, iy, g.bin_h, g.grid_h);
    const C x = sample_at(g.start_x + o.pw * g.bin_w, ix, g.bin_w, g.grid_w);
    Taps<C> t;
    if (!taps(height, width, y, x, t)) continue;  // cannot happen: the winner is in range
    if (!wrt_boxes) {
      scatter(grad_input.at(plane_offset<I>(b, o.c, channels, height, width)), width, t, grad);
      continue;
    }
    C dx, dy;
    sample_slopes(p, width, t, dx, dy);
    const C u = (C(o.pw) + (C(ix) + C(0.5)) / C(g.grid_w)) / C(pooled_w);
    const C v = (C(o.ph) + (C(iy) + C(0.5)) / C(g.grid_h)) / C(pooled_h);
    add_box_terms(grad_rois, o.k, index, grad, spatial_scale, dx, u * dx, dy, v * dy, C(0), C(0),
                  aligned || g.width > C(1), aligned || g.height > C(1));
  }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_ROI_ALIGN_MAX(T, C, SFX, I, ISFX)                                          \
  extern "C" __global__ void cuproi_roi_align_max_forward_##SFX##ISFX(                           \
      I n, const T* input, const C* rois, C spatial_scale, int batch, int channels, int height,   \
      int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned, T* output) {        \
    cuproi::roi_align_max_forward<T, C, I>(n, input, rois, spatial_scale, batch, channels,       \
                                           height, width, pooled_h, pooled_w, sampling_ratio,     \
                                           aligned, output);                                      \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_max_backward_##SFX##ISFX(                          \
      I n, const T* grad_output, const T* input, const C* rois, C spatial_scale, int batch,       \
      int channels, int height, int width, int pooled_h, int pooled_w, int sampling_ratio,        \
      int aligned, C* grad_input, cuproi::u64* grad_fixed, const int* exponent,                   \
      int deterministic, C* grad_rois, int wrt_boxes) {                                           \
    const cuproi::BoxGrad<C> box = {grad_rois, deterministic != 0};                               \
    cuproi::roi_align_max_backward<T, C, I>(                                                      \
        n, grad_output, input, rois, spatial_scale, batch, channels, height, width, pooled_h,     \
        pooled_w, sampling_ratio, aligned,                                                        \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, wrt_boxes ? 0 : deterministic), box,  \
        wrt_boxes);                                                                               \
  }

CUPROI_EXPORT_ROI_ALIGN_MAX(cuproi::half, float, f16, int, )
CUPROI_EXPORT_ROI_ALIGN_MAX(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN_MAX(float, float, f32, int, )
CUPROI_EXPORT_ROI_ALIGN_MAX(float, float, f32, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN_MAX(double, double, f64, int, )
CUPROI_EXPORT_ROI_ALIGN_MAX(double, double, f64, long long, _i64)

// SPDX-License-Identifier: Apache-2.0
//
// Position-sensitive RoI Align (R-FCN), torchvision.ops.ps_roi_align semantics without its 0/0:
// forward and backward.
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_ps_roi_align_forward_<T>[_i64](
//       I n, const T* input, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio, T* output)
//   cuproi_ps_roi_align_backward_<T>[_i64](
//       I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio,
//       C* grad_input, u64* grad_fixed, const int* exponent, int deterministic)
// `channels` is the input's C, a multiple of pooled_h * pooled_w; the output has
// C / (pooled_h * pooled_w) channels and n = K * (C / (pooled_h * pooled_w)) * pooled_h *
// pooled_w = K * C elements (one thread each). Output channel c, bin (ph, pw) reads input channel
// (c * pooled_h + ph) * pooled_w + pw. input, output and grad_output are contiguous NCHW; rois
// is (K, 5) [batch_index, x1, y1, x2, y2] in C, the compute type (float for f16 and f32, double
// for f64). Sampling is RoI Align's (common/bilinear.cuh) with the half-pixel shift always on and
// no minimum box size; the divisor is max(grid_h * grid_w, 1), so a box of zero size with adaptive
// sampling gives 0 (torchvision divides by 0 there). grad_input is a zeroed C buffer and
// (grad_fixed, exponent, deterministic) select how it is summed: see common/grad_sum.cuh.
#include "common/bilinear.cuh"
#include "common/position_sensitive.cuh"

namespace cuproi {

template <typename T, typename C, typename I>
__device__ void ps_roi_align_forward(I n, const T* input, const C* rois, C spatial_scale,
                                     int batch, int channels, int height, int width, int pooled_h,
                                     int pooled_w, int sampling_ratio, T* output) {
  const int out_channels = channels / (pooled_h * pooled_w);
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, out_channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) {
      store(output + index, C(0));
      continue;
    }
    const Grid<C> g =
        make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, C(0.5), false);
    const int c_in = ps_channel(o.c, o.ph, o.pw, pooled_h, pooled_w);
    const T* p = plane<const T, I>(input, b, c_in, channels, height, width);
    store(output + index, bin_sum(p, height, width, g, o.ph, o.pw) / g.count);
  }
}

template <typename T, typename C, typename I>
__device__ void ps_roi_align_backward(I n, const T* grad_output, const C* rois, C spatial_scale,
                                      int batch, int channels, int height, int width,
                                      int pooled_h, int pooled_w, int sampling_ratio,
                                      GradSum<C> grad_input) {
  const int out_channels = channels / (pooled_h * pooled_w);
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, out_channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const Grid<C> g =
        make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, C(0.5), false);
    const C grad = load(grad_output + index) / g.count;
    if (grad == C(0)) continue;
    const int c_in = ps_channel(o.c, o.ph, o.pw, pooled_h, pooled_w);
    const GradSum<C> gp = grad_input.at(plane_offset<I>(b, c_in, channels, height, width));
    // The transpose of bin_sum (bin_backward without its position derivatives).
    const C y_start = g.start_y + o.ph * g.bin_h;
    const C x_start = g.start_x + o.pw * g.bin_w;
    int iy0, iy1, ix0, ix1;
    sample_range(y_start, g.bin_h, g.grid_h, height, iy0, iy1);
    sample_range(x_start, g.bin_w, g.grid_w, width, ix0, ix1);
    for (int iy = iy0; iy < iy1; ++iy) {
      const C y = sample_at(y_start, iy, g.bin_h, g.grid_h);
      for (int ix = ix0; ix < ix1; ++ix) {
        Taps<C> t;
        if (taps(height, width, y, sample_at(x_start, ix, g.bin_w, g.grid_w), t))
          scatter(gp, width, t, grad);
      }
    }
  }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_PS_ROI_ALIGN(T, C, SFX, I, ISFX)                                           \
  extern "C" __global__ void cuproi_ps_roi_align_forward_##SFX##ISFX(                            \
      I n, const T* input, const C* rois, C spatial_scale, int batch, int channels, int height,   \
      int width, int pooled_h, int pooled_w, int sampling_ratio, T* output) {                     \
    cuproi::ps_roi_align_forward<T, C, I>(n, input, rois, spatial_scale, batch, channels,        \
                                          height, width, pooled_h, pooled_w, sampling_ratio,      \
                                          output);                                                \
  }                                                                                               \
  extern "C" __global__ void cuproi_ps_roi_align_backward_##SFX##ISFX(                           \
      I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,         \
      int height, int width, int pooled_h, int pooled_w, int sampling_ratio, C* grad_input,       \
      cuproi::u64* grad_fixed, const int* exponent, int deterministic) {                          \
    cuproi::ps_roi_align_backward<T, C, I>(                                                       \
        n, grad_output, rois, spatial_scale, batch, channels, height, width, pooled_h, pooled_w,  \
        sampling_ratio, cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));       \
  }

CUPROI_EXPORT_PS_ROI_ALIGN(cuproi::half, float, f16, int, )
CUPROI_EXPORT_PS_ROI_ALIGN(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_PS_ROI_ALIGN(float, float, f32, int, )
CUPROI_EXPORT_PS_ROI_ALIGN(float, float, f32, long long, _i64)
CUPROI_EXPORT_PS_ROI_ALIGN(double, double, f64, int, )
CUPROI_EXPORT_PS_ROI_ALIGN(double, double, f64, long long, _i64)

// SPDX-License-Identifier: Apache-2.0
//
// Rotated RoI Align (detectron2's ROIAlignRotated, mmcv's RoIAlignRotated): forward and backward.
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_roi_align_rotated_forward_<T>[_i64](
//       I n, const T* input, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,
//       int clockwise, T* output)
//   cuproi_roi_align_rotated_backward_<T>[_i64](
//       I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,
//       int clockwise, C* grad_input, u64* grad_fixed, const int* exponent, int deterministic)
// n = K * channels * pooled_h * pooled_w (one thread per output element); input, output and
// grad_output are contiguous NCHW; rois is (K, 6) [batch_index, cx, cy, w, h, angle] in C, the
// compute type (float for f16 and f32, double for f64), the angle in degrees, counter-clockwise
// (negated when clockwise). grad_input is a zeroed C buffer and (grad_fixed, exponent,
// deterministic) select how it is summed: see common/grad_sum.cuh.
//
// Sampling: the centre is (cx, cy) * scale - 0.5 when aligned (else no shift), the size
// (w, h) * scale (at least 1 when not aligned). Bin (ph, pw) takes the samples
//   yy = -h/2 + ph * bin_h + (iy + 0.5) * bin_h / grid_h   (likewise xx along the width)
// in the box frame and rotates them about the centre:
//   y = (yy * cos - xx * sin) + cy,  x = (yy * sin + xx * cos) + cx,
// each product rounded on its own (no FMA contraction, so the host and the CPU backend give the
// same coordinates). cos and sin are computed in double from the angle reduced to [-45, 45]
// degrees around the nearest multiple of 90 (exact at multiples of 90 degrees), then rounded to C
// (rotation()). Each sample is bilinear as in roi_align (common/bilinear.cuh taps()), and the
// average divides by max(grid_h * grid_w, 1).
#include "common/bilinear.cuh"

namespace cuproi {

// Products that the compiler must not fuse into an FMA with a neighbouring addition.
__device__ __forceinline__ float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__device__ __forceinline__ double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// cos and sin of `angle` degrees (negated when clockwise), computed in double and rounded to C.
// The angle is reduced exactly: a = fmod(angle, 360), q = the nearest multiple of 90 degrees,
// r = a - 90 q in [-45, 45] degrees; cos and sin of r (in radians, r * (pi / 180)) are rotated
// by q quarter turns, so multiples of 90 degrees give exactly 0 and +-1.
template <typename C>
__device__ __forceinline__ void rotation(C angle, int clockwise, C& cos_t, C& sin_t) {
  double a = static_cast<double>(angle);
  if (clockwise) a = -a;
  a = fmod(a, 360.0);
  const double q = floor(a / 90.0 + 0.5);
  const double r = (a - 90.0 * q) * (3.14159265358979323846 / 180.0);
  const double c = cos(r), s = sin(r);
  const int quarter = ((static_cast<int>(q) % 4) + 4) % 4;
  double rc, rs;
  if (quarter == 0) {
    rc = c;
    rs = s;
  } else if (quarter == 1) {
    rc = -s;
    rs = c;
  } else if (quarter == 2) {
    rc = -c;
    rs = -s;
  } else {
    rc = s;
    rs = -c;
  }
  cos_t = static_cast<C>(rc);
  sin_t = static_cast<C>(rs);
}

// Sampling grid of one rotated box, and the box-frame extent of the sampled map area.
template <typename C>
struct RotatedGrid {
  C center_y, center_x;  // rotation centre in feature coordinates
  C start_y, start_x;    // top-left corner in the box frame: -height / 2, -width / 2
  C bin_h, bin_w;
  C cos_t, sin_t;
  int grid_h, grid_w;  // samples per bin along each axis; <= 0 means none
  C count;             // divisor of the average: max(grid_h * grid_w, 1)
  // Box-frame coordinates (yy, xx) of every point of [-1, H] x [-1, W] lie within these bounds
  // (widened by err for rounding): a sample outside them is outside the map.
  C lo_y, hi_y, lo_x, hi_x, err;
};

template <typename C>
__device__ __forceinline__ RotatedGrid<C> make_rotated_grid(const C* roi, C spatial_scale,
                                                            int pooled_h, int pooled_w,
                                                            int sampling_ratio, int aligned,
                                                            int clockwise, int height,
                                                            int width) {
  RotatedGrid<C> g;
  const C shift = aligned ? C(0.5) : C(0);
  g.center_x = roi[1] * spatial_scale - shift;
  g.center_y = roi[2] * spatial_scale - shift;
  C w = roi[3] * spatial_scale;
  C h = roi[4] * spatial_scale;
  if (!aligned) {  // mmcv's legacy minimum size
    w = w > C(1) ? w : C(1);
    h = h > C(1) ? h : C(1);
  }
  g.start_y = C(-0.5) * h;
  g.start_x = C(-0.5) * w;
  g.bin_h = h / C(pooled_h);
  g.bin_w = w / C(pooled_w);
  // Box sizes are validated within +-2**20 feature cells: these fit an int; a negative size
  // with adaptive sampling gives <= 0 (no samples).
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(cceil(h / C(pooled_h)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(cceil(w / C(pooled_w)));
  const C n = C(g.grid_h) * C(g.grid_w);
  g.count = n > C(1) ? n : C(1);
  rotation(roi[5], clockwise, g.cos_t, g.sin_t);
  // Corners of the map area relative to the centre, projected on the box axes:
  // yy = cos * dy + sin * dx, xx = cos * dx - sin * dy.
  const C dy0 = C(-1) - g.center_y, dy1 = C(height) - g.center_y;
  const C dx0 = C(-1) - g.center_x, dx1 = C(width) - g.center_x;
  const C cy0 = g.cos_t * dy0, cy1 = g.cos_t * dy1, sx0 = g.sin_t * dx0, sx1 = g.sin_t * dx1;
  const C cx0 = g.cos_t * dx0, cx1 = g.cos_t * dx1, sy0 = g.sin_t * dy0, sy1 = g.sin_t * dy1;
  g.lo_y = cmin(cy0, cy1) + cmin(sx0, sx1);
  g.hi_y = cmax(cy0, cy1) + cmax(sx0, sx1);
  g.lo_x = cmin(cx0, cx1) - cmax(sy0, sy1);
  g.hi_x = cmax(cx0, cx1) - cmin(sy0, sy1);
  g.err = C(32) * epsilon<C>() *
          (cabs(g.center_y) + cabs(g.center_x) + C(height) + C(width) + C(2) + cabs(h) +
           cabs(w));
  return g;
}

// Samples [lo, hi) of a bin along one box axis whose box-frame coordinate may lie within
// [lo_b - err, hi_b + err]: sample i sits at start + (i + 0.5) * bin / grid (sample_at). As in
// sample_range (common/bilinear.cuh), the interval is widened by 4 samples on each side; it
// contains every sample that can fall inside the map, and taps() decides exactly.
template <typename C>
__device__ __forceinline__ void rotated_range(C start, C bin, int grid, C lo_b, C hi_b, C err,
                                              int& lo, int& hi) {
  lo = 0;
  hi = grid > 0 ? grid : 0;
  if (hi == 0) return;
  const C step = bin / C(grid);
  const C e = err + C(8) * epsilon<C>() * (cabs(start) + cabs(bin));
  if (step == C(0)) {  // every sample at `start`
    if (!(start >= lo_b - e && start <= hi_b + e)) hi = 0;
    return;
  }
  C a = (lo_b - e - start) / step - C(0.5);
  C b = (hi_b + e - start) / step - C(0.5);
  if (step < C(0)) {
    const C t = a;
    a = b;
    b = t;
  }
  a = cfloor(a) - C(4);
  b = cfloor(b) + C(5);
  lo = a <= C(0) ? 0 : (a >= C(hi) ? hi : static_cast<int>(a));
  hi = b <= C(0) ? 0 : (b >= C(hi) ? hi : static_cast<int>(b));
  if (hi < lo) hi = lo;
}

// Calls visit(taps) for every sample of bin (ph, pw) that lies inside [-1, H] x [-1, W].
template <typename C, typename F>
__device__ __forceinline__ void for_each_sample(const RotatedGrid<C>& g, int height, int width,
                                                int ph, int pw, F visit) {
  const C y_start = g.start_y + mul_rn(C(ph), g.bin_h);
  const C x_start = g.start_x + mul_rn(C(pw), g.bin_w);
  int iy0, iy1, ix0, ix1;
  rotated_range(y_start, g.bin_h, g.grid_h, g.lo_y, g.hi_y, g.err, iy0, iy1);
  rotated_range(x_start, g.bin_w, g.grid_w, g.lo_x, g.hi_x, g.err, ix0, ix1);
  for (int iy = iy0; iy < iy1; ++iy) {
    const C yy = sample_at(y_start, iy, g.bin_h, g.grid_h);
    const C yc = mul_rn(yy, g.cos_t), ys = mul_rn(yy, g.sin_t);
    for (int ix = ix0; ix < ix1; ++ix) {
      const C xx = sample_at(x_start, ix, g.bin_w, g.grid_w);
      const C y = (yc - mul_rn(xx, g.sin_t)) + g.center_y;
      const C x = (ys + mul_rn(xx, g.cos_t)) + g.center_x;
      Taps<C> t;
      if (taps(height, width, y, x, t)) visit(t);
    }
  }
}

template <typename T, typename C, typename I>
__device__ void roi_align_rotated_forward(I n, const T* input, const C* rois, C spatial_scale,
                                          int batch, int channels, int height, int width,
                                          int pooled_h, int pooled_w, int sampling_ratio,
                                          int aligned, int clockwise, T* output) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 6;
    const int b = batch_of(roi, batch);
    if (b < 0) {
      store(output + index, C(0));
      continue;
    }
    const RotatedGrid<C> g = make_rotated_grid(roi, spatial_scale, pooled_h, pooled_w,
                                               sampling_ratio, aligned, clockwise, height, width);
    const T* p = plane<const T, I>(input, b, o.c, channels, height, width);
    C sum = 0;
    for_each_sample(g, height, width, o.ph, o.pw,
                    [&](const Taps<C>& t) { sum += interpolate(p, width, t); });
    store(output + index, sum / g.count);
  }
}

template <typename T, typename C, typename I>
__device__ void roi_align_rotated_backward(I n, const T* grad_output, const C* rois,
                                           C spatial_scale, int batch, int channels, int height,
                                           int width, int pooled_h, int pooled_w,
                                           int sampling_ratio, int aligned, int clockwise,
                                           GradSum<C> grad_input) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 6;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const RotatedGrid<C> g = make_rotated_grid(roi, spatial_scale, pooled_h, pooled_w,
                                               sampling_ratio, aligned, clockwise, height, width);
    const C grad = load(grad_output + index) / g.count;
    if (grad == C(0)) continue;
    const GradSum<C> gp = grad_input.at(plane_offset<I>(b, o.c, channels, height, width));
    for_each_sample(g, height, width, o.ph, o.pw,
                    [&](const Taps<C>& t) { scatter(gp, width, t, grad); });
  }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_ROI_ALIGN_ROTATED(T, C, SFX, I, ISFX)                                      \
  extern "C" __global__ void cuproi_roi_align_rotated_forward_##SFX##ISFX(                       \
      I n, const T* input, const C* rois, C spatial_scale, int batch, int channels, int height,   \
      int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned, int clockwise,      \
      T* output) {                                                                                \
    cuproi::roi_align_rotated_forward<T, C, I>(n, input, rois, spatial_scale, batch, channels,   \
                                               height, width, pooled_h, pooled_w,                 \
                                               sampling_ratio, aligned, clockwise, output);       \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_rotated_backward_##SFX##ISFX(                      \
      I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,         \
      int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,         \
      int clockwise, C* grad_input, cuproi::u64* grad_fixed, const int* exponent,                 \
      int deterministic) {                                                                        \
    cuproi::roi_align_rotated_backward<T, C, I>(                                                  \
        n, grad_output, rois, spatial_scale, batch, channels, height, width, pooled_h, pooled_w,  \
        sampling_ratio, aligned, clockwise,                                                       \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));                       \
  }

CUPROI_EXPORT_ROI_ALIGN_ROTATED(cuproi::half, float, f16, int, )
CUPROI_EXPORT_ROI_ALIGN_ROTATED(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN_ROTATED(float, float, f32, int, )
CUPROI_EXPORT_ROI_ALIGN_ROTATED(float, float, f32, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN_ROTATED(double, double, f64, int, )
CUPROI_EXPORT_ROI_ALIGN_ROTATED(double, double, f64, long long, _i64)

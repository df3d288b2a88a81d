// SPDX-License-Identifier: Apache-2.0
//
// Precise RoI Pooling (IoU-Net; mmcv's PrRoIPool): forward, and a backward for the features or
// for the box coordinates.
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_prroi_pool_forward_<T>[_i64](
//       I n, const T* input, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, T* output)
//   cuproi_prroi_pool_backward_<T>[_i64](
//       I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w,
//       C* grad_input, u64* grad_fixed, const int* exponent, int deterministic)
//   cuproi_prroi_pool_box_backward_<T>[_i64](
//       I n, const T* grad_output, const T* input, const C* rois, C spatial_scale, int batch,
//       int channels, int height, int width, int pooled_h, int pooled_w, C* grad_rois,
//       int deterministic)
// n = K * channels * pooled_h * pooled_w (one thread per output element); input, output and
// grad_output are contiguous NCHW; rois is (K, 5) [batch_index, x1, y1, x2, y2] in C, the
// compute type (float for f16 and f32, double for f64).
//
// The feature plane is the continuous surface f(y, x) = sum_{h,w} v[h,w] hat(y - h) hat(x - w),
// hat(t) = max(0, 1 - |t|): bilinear between pixel centres at integer coordinates (no half-pixel
// shift) and falling to zero one cell beyond the map. A bin [y0, y0 + bh] x [x0, x0 + bw] with
// y0 = y1 * s + ph * bh, bh = max(y2 * s - y1 * s, 0) / pooled_h (likewise x) outputs the exact
// integral of f over it divided by its area, 0 when the area is 0. The integral factors per
// cell: sum v[h,w] Wy[h] Wx[w] with Wy[h] = (1 / bh) * integral of hat(y - h) over [y0, y0 + bh]
// (hat_share), so a thread visits only the rows and columns whose hat meets its bin, at most
// ceil(bh) + 2 by ceil(bw) + 2 pixels, clipped to the map.
//
// The backward gives the input gradient, the transpose of the forward, into the zeroed C buffer
// grad_input summed as (grad_fixed, exponent, deterministic) select (common/grad_sum.cuh). The
// box backward gives the exact derivative with respect to the box coordinates, which reads the
// features `input`: d out / d y0 = (out - top) / bh and d out / d (y0 + bh) = (bottom - out) /
// bh, with top and bottom the averages of f along the bin's top and bottom edges (likewise x),
// computed per pixel without those differences (hat_share), chained to y1, y2 through the bin
// edges; a box of zero width or height gives 0 (its bins output the constant 0). Added with
// atomicAdd into the zeroed (K, 5) grad_rois by default, or, when deterministic, written per
// output element to a zeroed (n, 4) grad_rois that the caller sums per box (common/bilinear.cuh,
// BoxGrad).
#include "common/bilinear.cuh"

namespace cuproi {

// A pixel's share of a bin along one axis. With t = the bin's start - the pixel and z = its size
// (> 0): weight = (1 / z) * integral of hat over [t, t + z], and its derivatives with respect to
// the bin's start and end, (weight - hat(t)) / z and (hat(t + z) - weight) / z. All three come
// from the fractions f of [t, t + z] on the pieces of hat (below -1, rising on [-1, 0], falling
// on [0, 1], above 1) and hat's averages on them, at their midpoints, never from the differences
// (t + z) - t or weight - hat(t): those cancel when the bin is small (a box 1e-6 wide lost every
// digit of its gradient in float32; one 1e-200 wide gave 1e261 in float64), whereas a bin
// within one piece gets exactly all of it, hat's value at its centre from t and z, and slopes
// of +-1/2 or 0, whatever its size.
// Integrating hat's slopes over the pieces gives
//   start = f1^2 / 2 + f1 f2 - f2^2 / 2 + f3 (f1 - f2),
//   end   = f0 (f1 - f2) + f1^2 / 2 - f1 f2 - f2^2 / 2.
template <typename C>
struct HatShare {
  C weight, start, end;
};

template <typename C>
__device__ __forceinline__ HatShare<C> hat_share(C t, C z) {
  const C e = t + z;
  // [t, e] on the rising piece ([l1, r1]) and on the falling one ([l2, r2]).
  const C l1 = cmax(t, C(-1)), r1 = cmin(e, C(0)), l2 = cmax(t, C(0)), r2 = cmin(e, C(1));
  HatShare<C> s;
  C f0 = C(0), f1 = C(0), f2 = C(0), f3 = C(0);
  if (t >= C(-1) && e <= C(0)) {  // hat's average on the piece: at the bin's centre
    f1 = C(1);
    s.weight = (t + C(1)) + C(0.5) * z;
  } else if (t >= C(0) && e <= C(1)) {
    f2 = C(1);
    s.weight = (C(1) - t) - C(0.5) * z;
  } else if (e <= C(-1)) {
    f0 = C(1);
    s.weight = C(0);
  } else if (t >= C(1)) {
    f3 = C(1);
    s.weight = C(0);
  } else {  // divided one by one: 1 / z overflows for a subnormal z (float32 below 2.9e-39)
    f0 = cmax(cmin(e, C(-1)) - t, C(0)) / z;
    f1 = cmax(r1 - l1, C(0)) / z;
    f2 = cmax(r2 - l2, C(0)) / z;
    f3 = cmax(e - cmax(t, C(1)), C(0)) / z;
    s.weight = f1 * (C(1) + C(0.5) * (l1 + r1)) + f2 * (C(1) - C(0.5) * (l2 + r2));
  }
  const C rise = C(0.5) * f1 * f1, fall = C(0.5) * f2 * f2, both = f1 * f2;
  s.start = ((rise + both) - fall) + f3 * (f1 - f2);
  s.end = f0 * (f1 - f2) + ((rise - both) - fall);
  return s;
}

// One axis of a bin: its start, size, and the pixels [lo, hi] whose hat meets it (empty when
// hi < lo: a zero size, or a bin wholly beyond the band [-1, size] where f vanishes; NaN-safe).
template <typename C>
struct PrAxis {
  C start, size;
  int lo, hi;
};

template <typename C>
__device__ __forceinline__ PrAxis<C> prroi_axis(C a, C b, C scale, int pooled, int p, int size) {
  PrAxis<C> r;
  const C begin = a * scale;
  const C extent = b * scale - begin;
  r.size = (extent > C(0) ? extent : C(0)) / C(pooled);
  r.start = begin + C(p) * r.size;
  r.lo = 0;
  r.hi = -1;
  const C end = r.start + r.size;
  if (r.size > C(0) && end > C(-1) && r.start < C(size)) {
    r.lo = r.start <= C(0) ? 0 : static_cast<int>(cfloor(r.start));
    r.hi = end >= C(size - 1) ? size - 1 : static_cast<int>(cceil(end));
  }
  return r;
}

// Pixel i's share of a bin along an axis (hat_share).
template <typename C>
__device__ __forceinline__ HatShare<C> prroi_share(const PrAxis<C>& ax, int i) {
  return hat_share(ax.start - C(i), ax.size);
}

template <typename T, typename C, typename I>
__device__ void prroi_pool_forward(I n, const T* input, const C* rois, C spatial_scale,
                                   int batch, int channels, int height, int width, int pooled_h,
                                   int pooled_w, T* output) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    C sum = C(0);
    if (b >= 0) {
      const PrAxis<C> ay = prroi_axis(roi[2], roi[4], spatial_scale, pooled_h, o.ph, height);
      const PrAxis<C> ax = prroi_axis(roi[1], roi[3], spatial_scale, pooled_w, o.pw, width);
      const T* p = plane<const T, I>(input, b, o.c, channels, height, width);
      for (int h = ay.lo; h <= ay.hi; ++h) {
        C row = C(0);
        for (int w = ax.lo; w <= ax.hi; ++w)
          row += prroi_share(ax, w).weight * load(p + h * width + w);
        sum += prroi_share(ay, h).weight * row;
      }
    }
    store(output + index, sum);
  }
}

template <typename T, typename C, typename I>
__device__ void prroi_pool_backward(I n, const T* grad_output, const C* rois, C spatial_scale,
                                    int batch, int channels, int height, int width,
                                    int pooled_h, int pooled_w, GradSum<C> grad_input) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const C grad = load(grad_output + index);
    if (grad == C(0)) continue;
    const PrAxis<C> ay = prroi_axis(roi[2], roi[4], spatial_scale, pooled_h, o.ph, height);
    const PrAxis<C> ax = prroi_axis(roi[1], roi[3], spatial_scale, pooled_w, o.pw, width);
    const GradSum<C> gp = grad_input.at(plane_offset<I>(b, o.c, channels, height, width));
    for (int h = ay.lo; h <= ay.hi; ++h) {
      const C gy = grad * prroi_share(ay, h).weight;
      for (int w = ax.lo; w <= ax.hi; ++w) gp.add(h * width + w, gy * prroi_share(ax, w).weight);
    }
  }
}

template <typename T, typename C, typename I>
__device__ void prroi_pool_box_backward(I n, const T* grad_output, const T* input, const C* rois,
                                        C spatial_scale, int batch, int channels, int height,
                                        int width, int pooled_h, int pooled_w,
                                        BoxGrad<C> grad_rois) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const C grad = load(grad_output + index);
    if (grad == C(0)) continue;
    const PrAxis<C> ay = prroi_axis(roi[2], roi[4], spatial_scale, pooled_h, o.ph, height);
    const PrAxis<C> ax = prroi_axis(roi[1], roi[3], spatial_scale, pooled_w, o.pw, width);
    if (ay.hi < ay.lo || ax.hi < ax.lo) continue;  // the bin's output is 0 around these boxes
    // d out / d (bin start) and d out / d (bin end), per axis.
    C dy0 = C(0), dy1 = C(0), dx0 = C(0), dx1 = C(0);
    const T* p = plane<const T, I>(input, b, o.c, channels, height, width);
    for (int h = ay.lo; h <= ay.hi; ++h) {
      const HatShare<C> sy = prroi_share(ay, h);
      C row = C(0), row0 = C(0), row1 = C(0);
      for (int w = ax.lo; w <= ax.hi; ++w) {
        const HatShare<C> sx = prroi_share(ax, w);
        const C v = load(p + h * width + w);
        row += sx.weight * v;
        row0 += sx.start * v;
        row1 += sx.end * v;
      }
      dy0 += sy.start * row;
      dy1 += sy.end * row;
      dx0 += sy.weight * row0;
      dx1 += sy.weight * row1;
    }
    // start = a * s + p * (b - a) * s / P, end = a * s + (p + 1) * (b - a) * s / P.
    const C uy0 = C(o.ph) / C(pooled_h), uy1 = C(o.ph + 1) / C(pooled_h);
    const C ux0 = C(o.pw) / C(pooled_w), ux1 = C(o.pw + 1) / C(pooled_w);
    const C f = grad * spatial_scale;
    grad_rois.add(o.k, index, f * (dx0 * (C(1) - ux0) + dx1 * (C(1) - ux1)),
                  f * (dy0 * (C(1) - uy0) + dy1 * (C(1) - uy1)), f * (dx0 * ux0 + dx1 * ux1),
                  f * (dy0 * uy0 + dy1 * uy1));
  }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_PRROI_POOL(T, C, SFX, I, ISFX)                                             \
  extern "C" __global__ void cuproi_prroi_pool_forward_##SFX##ISFX(                              \
      I n, const T* input, const C* rois, C spatial_scale, int batch, int channels, int height,   \
      int width, int pooled_h, int pooled_w, T* output) {                                         \
    cuproi::prroi_pool_forward<T, C, I>(n, input, rois, spatial_scale, batch, channels, height,  \
                                        width, pooled_h, pooled_w, output);                       \
  }                                                                                               \
  extern "C" __global__ void cuproi_prroi_pool_backward_##SFX##ISFX(                             \
      I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,         \
      int height, int width, int pooled_h, int pooled_w, C* grad_input, cuproi::u64* grad_fixed,  \
      const int* exponent, int deterministic) {                                                   \
    cuproi::prroi_pool_backward<T, C, I>(                                                         \
        n, grad_output, rois, spatial_scale, batch, channels, height, width, pooled_h, pooled_w,  \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));                       \
  }                                                                                               \
  extern "C" __global__ void cuproi_prroi_pool_box_backward_##SFX##ISFX(                         \
      I n, const T* grad_output, const T* input, const C* rois, C spatial_scale, int batch,       \
      int channels, int height, int width, int pooled_h, int pooled_w, C* grad_rois,              \
      int deterministic) {                                                                        \
    const cuproi::BoxGrad<C> box = {grad_rois, deterministic != 0};                               \
    cuproi::prroi_pool_box_backward<T, C, I>(n, grad_output, input, rois, spatial_scale, batch,  \
                                             channels, height, width, pooled_h, pooled_w, box);   \
  }

CUPROI_EXPORT_PRROI_POOL(cuproi::half, float, f16, int, )
CUPROI_EXPORT_PRROI_POOL(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_PRROI_POOL(float, float, f32, int, )
CUPROI_EXPORT_PRROI_POOL(float, float, f32, long long, _i64)
CUPROI_EXPORT_PRROI_POOL(double, double, f64, int, )
CUPROI_EXPORT_PRROI_POOL(double, double, f64, long long, _i64)

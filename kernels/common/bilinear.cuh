// SPDX-License-Identifier: Apache-2.0
//
// Bilinear sampling shared by roi_align and deform_roi_pool (the Caffe2/Detectron kernel that
// torchvision and mmcv both use):
//   Grid          the sampling grid of one box: bin sizes, samples per bin, divisor
//   taps          the 4 neighbours and weights of one sample, edge replication in the bands
//   sample_range  the samples of one bin row/column that can fall inside the map
//   bin_sum       sum of the interpolated samples of one bin (forward)
//   bin_backward  its transpose, and its derivative with respect to the bin's position
//   bin_slopes    derivatives of bin_sum with respect to the bin's position and extent (boxes)
//   bin_max       the first maximum of a bin's samples in scan order (max mode)
//   BoxGrad       where a box gradient goes: atomics into (K, 5), or per-element terms
#pragma once

#include "common/grad_sum.cuh"

namespace cuproi {

// Sampling grid of one box. `shift` is 0.5 for the half-pixel (aligned) convention; `min_one`
// is torchvision's legacy "force a malformed box to 1x1" when not aligned.
template <typename C>
struct Grid {
  C start_y, start_x;  // top-left corner in feature coordinates
  C height, width;     // box size (after the legacy clamp)
  C bin_h, bin_w;
  int grid_h, grid_w;  // samples per bin along each axis; <= 0 means none
  C count;             // divisor of the average: max(grid_h * grid_w, 1)
};

template <typename C>
__device__ __forceinline__ Grid<C> make_grid(const C* roi, C spatial_scale, int pooled_h,
                                             int pooled_w, int sampling_ratio, C shift,
                                             bool min_one) {
  Grid<C> g;
  g.start_x = roi[1] * spatial_scale - shift;
  g.start_y = roi[2] * spatial_scale - shift;
  g.width = (roi[3] * spatial_scale - shift) - g.start_x;
  g.height = (roi[4] * spatial_scale - shift) - g.start_y;
  if (min_one) {
    g.width = g.width > C(1) ? g.width : C(1);
    g.height = g.height > C(1) ? g.height : C(1);
  }
  g.bin_h = g.height / C(pooled_h);
  g.bin_w = g.width / C(pooled_w);
  // Adaptive grid: ceil(box / pooled) samples per bin. Box coordinates are validated to lie
  // within +-2**20 feature cells, so these fit an int; a flipped box gives <= 0 (no samples).
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(cceil(g.height / C(pooled_h)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(cceil(g.width / C(pooled_w)));
  // In C, not int: grid_h * grid_w may exceed 2**31 for a huge box.
  const C n = C(g.grid_h) * C(g.grid_w);
  g.count = n > C(1) ? n : C(1);
  return g;
}

// Position of sample i of a bin that starts at `start` (bin size `bin`, `grid` samples), in
// exactly the operation order of the reference kernels so that float32 results agree.
template <typename C>
__device__ __forceinline__ C sample_at(C start, int i, C bin, int grid) {
  return start + static_cast<C>(i + .5f) * bin / static_cast<C>(grid);
}

// Samples [lo, hi) of a bin along one axis that may lie inside [-1, size]. Samples outside add
// zero, so skipping them changes nothing; it bounds the work of a huge box (adaptive sampling
// puts ceil(box / pooled) samples in a bin) by the map instead of by the box. The interval is
// widened by a bound on the rounding of sample_at, so it always contains every in-range sample;
// the exact per-sample test in taps() still decides.
template <typename C>
__device__ __forceinline__ void sample_range(C start, C bin, int grid, int size, int& lo,
                                             int& hi) {
  lo = 0;
  hi = grid > 0 ? grid : 0;
  if (hi == 0) return;
  if (!(cabs(start) <= C(1e30))) {  // NaN or infinite start (from an offset): nothing in range
    hi = 0;
    return;
  }
  const C step = bin / C(grid);
  const C err = C(8) * epsilon<C>() * (cabs(start) + cabs(bin) + C(size) + C(1));
  if (step == C(0)) {  // every sample at `start`
    if (!(start >= C(-1) - err && start <= C(size) + err)) hi = 0;
    return;
  }
  C a = (C(-1) - err - start) / step - C(0.5);
  C b = (C(size) + err - start) / step - C(0.5);
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

// The 2 neighbours of a coordinate along one axis of `size` cells and their weights: `l` at i1,
// `h` = 1 - l at i0. Outside [-1, size] the sample is zero (it still counts in the divisor):
// returns false. In the bands [-1, 0) and (size-1, size] the edge cell is replicated. The range
// test is written as !(inside) so that NaN takes the zero branch before any int conversion.
// `free` says whether the value moves with the coordinate at this point (false in the bands,
// where it is flattened): the right derivative is zero there.
template <typename C>
struct AxisTap {
  int i0, i1;
  C l, h;
  bool free;
};

template <typename C>
__device__ __forceinline__ bool axis_tap(int size, C pos, AxisTap<C>& a) {
  if (!(pos >= C(-1) && pos <= C(size))) return false;
  a.free = pos >= C(0);
  if (pos <= C(0)) pos = C(0);
  a.i0 = static_cast<int>(pos);
  if (a.i0 >= size - 1) {
    a.i0 = a.i1 = size - 1;
    pos = static_cast<C>(a.i0);
    a.free = false;
  } else {
    a.i1 = a.i0 + 1;
  }
  a.l = pos - a.i0;
  a.h = C(1) - a.l;
  return true;
}

// The 4 neighbours of a sample and their weights: the taps of its two axes (axis_tap); false
// when the sample is outside [-1, H] x [-1, W].
template <typename C>
struct Taps {
  int y0, y1, x0, x1;
  C ly, lx, hy, hx;
  bool y_free, x_free;
};

template <typename C>
__device__ __forceinline__ Taps<C> combine(const AxisTap<C>& y, const AxisTap<C>& x) {
  return Taps<C>{y.i0, y.i1, x.i0, x.i1, y.l, x.l, y.h, x.h, y.free, x.free};
}

template <typename C>
__device__ __forceinline__ bool taps(int height, int width, C y, C x, Taps<C>& t) {
  AxisTap<C> ty, tx;
  if (!axis_tap(height, y, ty) || !axis_tap(width, x, tx)) return false;
  t = combine(ty, tx);
  return true;
}

// Interpolated value at the taps of a (height, width) plane whose cells lie `step` elements
// apart (1 for NCHW, the channel count for NHWC).
template <typename T, typename C, typename I = int>
__device__ __forceinline__ C interpolate(const T* p, int width, const Taps<C>& t, I step = 1) {
  const C v00 = load(p + static_cast<I>(t.y0 * width + t.x0) * step);
  const C v01 = load(p + static_cast<I>(t.y0 * width + t.x1) * step);
  const C v10 = load(p + static_cast<I>(t.y1 * width + t.x0) * step);
  const C v11 = load(p + static_cast<I>(t.y1 * width + t.x1) * step);
  return t.hy * t.hx * v00 + t.hy * t.lx * v01 + t.ly * t.hx * v10 + t.ly * t.lx * v11;
}

// Adds g times the weights of the taps to a (height, width) gradient plane (cells `step` apart).
template <typename C, typename I = int>
__device__ __forceinline__ void scatter(const GradSum<C>& p, int width, const Taps<C>& t, C g,
                                        I step = 1) {
  p.add(static_cast<I>(t.y0 * width + t.x0) * step, g * t.hy * t.hx);
  p.add(static_cast<I>(t.y0 * width + t.x1) * step, g * t.hy * t.lx);
  p.add(static_cast<I>(t.y1 * width + t.x0) * step, g * t.ly * t.hx);
  p.add(static_cast<I>(t.y1 * width + t.x1) * step, g * t.ly * t.lx);
}

// Sum of the interpolated samples of bin (ph, pw) of grid g over a (height, width) plane.
template <typename T, typename C>
__device__ __forceinline__ C bin_sum(const T* p, int height, int width, const Grid<C>& g, int ph,
                                     int pw) {
  const C y_start = g.start_y + ph * g.bin_h;
  const C x_start = g.start_x + pw * g.bin_w;
  int iy0, iy1, ix0, ix1;
  sample_range(y_start, g.bin_h, g.grid_h, height, iy0, iy1);
  sample_range(x_start, g.bin_w, g.grid_w, width, ix0, ix1);
  C sum = 0;
  for (int iy = iy0; iy < iy1; ++iy) {
    const C y = sample_at(y_start, iy, g.bin_h, g.grid_h);
    for (int ix = ix0; ix < ix1; ++ix) {
      Taps<C> t;
      if (taps(height, width, y, sample_at(x_start, ix, g.bin_w, g.grid_w), t))
        sum += interpolate(p, width, t);
    }
  }
  return sum;
}

// One sample of bin_backward: adds grad times its weights to the gradient plane gp and, when the
// feature plane p is given, its slopes and value to dx, dy and value (cells `step` apart).
template <typename T, typename C, typename I = int>
__device__ __forceinline__ void sample_backward(const GradSum<C>& gp, const T* p, int width,
                                                const Taps<C>& t, C grad, C& dx, C& dy,
                                                C& value, I step = 1) {
  scatter(gp, width, t, grad, step);
  if (p == nullptr) return;
  const C v00 = load(p + static_cast<I>(t.y0 * width + t.x0) * step);
  const C v01 = load(p + static_cast<I>(t.y0 * width + t.x1) * step);
  const C v10 = load(p + static_cast<I>(t.y1 * width + t.x0) * step);
  const C v11 = load(p + static_cast<I>(t.y1 * width + t.x1) * step);
  if (t.x_free) dx += t.hy * (v01 - v00) + t.ly * (v11 - v10);
  if (t.y_free) dy += t.hx * (v10 - v00) + t.lx * (v11 - v01);
  value += t.hy * t.hx * v00 + t.hy * t.lx * v01 + t.ly * t.hx * v10 + t.ly * t.lx * v11;
}

// Backward of bin_sum: adds grad times the weights of every sample to the gradient plane gp. When
// the feature plane p is given, also sums the derivatives of the samples' values with respect to
// x and y into dx and dy (the right derivative, zero in the bands where taps() flattens) and the
// samples' values into `value` (bin_sum, for the gradient of a mask that multiplies it).
template <typename T, typename C>
__device__ __forceinline__ void bin_backward(const GradSum<C>& gp, const T* p, int height, int width,
                                             const Grid<C>& g, int ph, int pw, C grad, C& dx,
                                             C& dy, C& value) {
  const C y_start = g.start_y + ph * g.bin_h;
  const C x_start = g.start_x + pw * g.bin_w;
  int iy0, iy1, ix0, ix1;
  sample_range(y_start, g.bin_h, g.grid_h, height, iy0, iy1);
  sample_range(x_start, g.bin_w, g.grid_w, width, ix0, ix1);
  dx = dy = value = 0;
  for (int iy = iy0; iy < iy1; ++iy) {
    const C y = sample_at(y_start, iy, g.bin_h, g.grid_h);
    for (int ix = ix0; ix < ix1; ++ix) {
      Taps<C> t;
      if (taps(height, width, y, sample_at(x_start, ix, g.bin_w, g.grid_w), t))
        sample_backward(gp, p, width, t, grad, dx, dy, value);
    }
  }
}

// Slopes of the value of one sample along x and y: the right derivative (the taps' upper
// neighbour minus the lower one), zero along an axis that taps() flattens (edge bands).
template <typename T, typename C>
__device__ __forceinline__ void sample_slopes(const T* p, int width, const Taps<C>& t, C& dx,
                                              C& dy) {
  const C v00 = load(p + t.y0 * width + t.x0), v01 = load(p + t.y0 * width + t.x1);
  const C v10 = load(p + t.y1 * width + t.x0), v11 = load(p + t.y1 * width + t.x1);
  dx = t.x_free ? t.hy * (v01 - v00) + t.ly * (v11 - v10) : C(0);
  dy = t.y_free ? t.hx * (v10 - v00) + t.lx * (v11 - v01) : C(0);
}

// Derivatives of bin_sum over plane p with respect to where the bin's samples sit. Sample
// (iy, ix) of bin (ph, pw) lies at fraction u = (pw + (ix + 0.5) / grid_w) / pooled_w of the
// box width from its start (likewise v along y). Returns sx = sum of d value / dx over the
// samples, ux = sum of u * d value / dx, and sy, uy along y: a box gradient needs no more
// (x = start_x + u * width, so d x / d start_x = 1 and d x / d width = u).
template <typename T, typename C>
__device__ __forceinline__ void bin_slopes(const T* p, int height, int width, const Grid<C>& g,
                                           int ph, int pw, int pooled_h, int pooled_w, C& sx,
                                           C& ux, C& sy, C& uy) {
  const C y_start = g.start_y + ph * g.bin_h;
  const C x_start = g.start_x + pw * g.bin_w;
  int iy0, iy1, ix0, ix1;
  sample_range(y_start, g.bin_h, g.grid_h, height, iy0, iy1);
  sample_range(x_start, g.bin_w, g.grid_w, width, ix0, ix1);
  // Accumulate sample indices times slopes; the fractions u, v follow from them at the end.
  sx = ux = sy = uy = 0;
  for (int iy = iy0; iy < iy1; ++iy) {
    const C y = sample_at(y_start, iy, g.bin_h, g.grid_h);
    for (int ix = ix0; ix < ix1; ++ix) {
      Taps<C> t;
      if (!taps(height, width, y, sample_at(x_start, ix, g.bin_w, g.grid_w), t)) continue;
      C dx, dy;
      sample_slopes(p, width, t, dx, dy);
      sx += dx;
      ux += C(ix) * dx;
      sy += dy;
      uy += C(iy) * dy;
    }
  }
  if (iy0 >= iy1 || ix0 >= ix1) return;  // no samples (also an empty grid: no 0 / 0 below)
  ux = (C(pw) * sx + (ux + C(0.5) * sx) / C(g.grid_w)) / C(pooled_w);
  uy = (C(ph) * sy + (uy + C(0.5) * sy) / C(g.grid_h)) / C(pooled_h);
}

// The maximum of the samples of bin (ph, pw), mmcv's pool_mode="max": a sample outside
// [-1, H] x [-1, W] takes part with value 0, the first maximum in scan order (iy, then ix)
// wins ties, a NaN wins (the first one met) and an empty grid gives 0. iy and ix name the
// winning sample, or are -1 when the winner is an out-of-range zero or the grid is empty
// (nothing to differentiate). Samples skipped by sample_range are out of range: the first of
// them in scan order is found from the range bounds, so huge boxes stay cheap.
template <typename T, typename C>
__device__ __forceinline__ C bin_max(const T* p, int height, int width, const Grid<C>& g, int ph,
                                     int pw, int& win_y, int& win_x) {
  win_y = win_x = -1;
  if (g.grid_h <= 0 || g.grid_w <= 0) return C(0);
  const C y_start = g.start_y + ph * g.bin_h;
  const C x_start = g.start_x + pw * g.bin_w;
  int iy0, iy1, ix0, ix1;
  sample_range(y_start, g.bin_h, g.grid_h, height, iy0, iy1);
  sample_range(x_start, g.bin_w, g.grid_w, width, ix0, ix1);
  if (iy0 >= iy1 || ix0 >= ix1) return C(0);  // every sample is an out-of-range zero
  // Scan index of the first out-of-range sample (-1: none) among those outside the range.
  long long first_out;
  if (iy0 > 0 || ix0 > 0) first_out = 0;
  else if (ix1 < g.grid_w) first_out = ix1;
  else if (iy1 < g.grid_h) first_out = static_cast<long long>(iy1) * g.grid_w;
  else first_out = -1;
  C best = 0;
  long long best_at = -1;
  for (int iy = iy0; iy < iy1; ++iy) {
    const C y = sample_at(y_start, iy, g.bin_h, g.grid_h);
    for (int ix = ix0; ix < ix1; ++ix) {
      const long long at = static_cast<long long>(iy) * g.grid_w + ix;
      Taps<C> t;
      if (!taps(height, width, y, sample_at(x_start, ix, g.bin_w, g.grid_w), t)) {
        if (first_out < 0 || at < first_out) first_out = at;
        continue;
      }
      const C v = interpolate(p, width, t);
      if (best_at < 0 || v > best || (v != v && best == best)) {
        best = v;
        best_at = at;
        win_y = iy;
        win_x = ix;
      }
    }
  }
  if (best_at < 0) return C(0);
  // An out-of-range zero competes: it wins when larger, or equal and earlier (NaN never loses).
  if (first_out >= 0 && best == best && (best < C(0) || (best == C(0) && first_out < best_at))) {
    win_y = win_x = -1;
    return C(0);
  }
  return best;
}

// Where a box gradient goes. By default every output element adds its (x1, y1, x2, y2) terms to
// row k of the zeroed (K, 5) gradient with atomicAdd (column 0, the batch index, stays 0); when
// deterministic, element `index` writes its 4 terms to row `index` of a zeroed (n, 4) array,
// which the caller sums per box in a fixed order.
template <typename C>
struct BoxGrad {
  C* value;
  bool deterministic;

  template <typename I>
  __device__ __forceinline__ void add(I k, I index, C x1, C y1, C x2, C y2) const {
    if (deterministic) {
      C* t = value + index * 4;
      t[0] = x1;
      t[1] = y1;
      t[2] = x2;
      t[3] = y2;
    } else {
      C* t = value + k * 5;
      atomicAdd(t + 1, x1);
      atomicAdd(t + 2, y1);
      atomicAdd(t + 3, x2);
      atomicAdd(t + 4, y2);
    }
  }
};

// Adds the box gradient of one output element: `grad` (already divided by the bin's count)
// times the derivatives of its samples' positions. Along x a sample sits at
// x1 * scale - shift + (a + u) * box_w with box_w = (x2 - x1) * scale, so d x / d x1 =
// scale * (1 - a - u) and d x / d x2 = scale * (a + u); `a` is a shift of the bin in box widths
// (deform_roi_pool's gamma * offset), sx and ux come from bin_slopes (or one sample). When the
// box width is held by torchvision's legacy minimum (free_w false) it does not move: only the
// start does. Likewise along y.
template <typename C, typename I>
__device__ __forceinline__ void add_box_terms(const BoxGrad<C>& out, I k, I index, C grad,
                                              C scale, C sx, C ux, C sy, C uy, C ax, C ay,
                                              bool free_w, bool free_h) {
  const C px = free_w ? ax * sx + ux : C(0);
  const C py = free_h ? ay * sy + uy : C(0);
  const C f = grad * scale;
  out.add(k, index, f * (sx - px), f * (sy - py), f * px, f * py);
}

}  // namespace cuproi

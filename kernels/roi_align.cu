// SPDX-License-Identifier: Apache-2.0
//
// RoI Align (Mask R-CNN), torchvision.ops.roi_align semantics, forward and backward, and its max
// mode (mmcv.ops.roi_align(pool_mode="max")): the same sampling grid, but every bin keeps the
// maximum of its bilinear samples instead of their average (see the max-mode section below).
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_roi_align_forward_<T>[_i64](
//       I n, const T* input, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,
//       T* output)
//   cuproi_roi_align_backward_<T>[_i64](
//       I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,
//       C* grad_input, u64* grad_fixed, const int* exponent, int deterministic)
//   cuproi_roi_align_box_backward_<T>[_i64](
//       I n, const T* grad_output, const T* input, const C* rois, C spatial_scale, int batch,
//       int channels, int height, int width, int pooled_h, int pooled_w, int sampling_ratio,
//       int aligned, C* grad_rois, int deterministic)
// n = K * channels * pooled_h * pooled_w (one thread per output element); input, output and
// grad_output are contiguous NCHW; rois is (K, 5) [batch_index, x1, y1, x2, y2] in C, the
// compute type (float for f16 and f32, double for f64). grad_input is a zeroed C buffer (float16
// therefore accumulates in float32) and (grad_fixed, exponent, deterministic) select how it is
// summed: see common/grad_sum.cuh. The box backward gives the gradient with respect to the box
// coordinates, which reads the features `input`: added with atomicAdd into the zeroed (K, 5)
// grad_rois by default, or, when deterministic, written per output element to a zeroed (n, 4)
// grad_rois that the caller sums per box (common/bilinear.cuh, BoxGrad).
//   cuproi_roi_align_forward_nhwc_<T>[_i64](
//       I items, const T* input, ... as the forward ..., T* output)
//   cuproi_roi_align_backward_nhwc_<T>[_i64](
//       I items, const T* grad_output, ... as the backward ...)
// The _nhwc variants read channels-last (N, H, W, C) features, respectively add into a
// channels-last gradient, and take items = K * ceil(channels / 32): one block per box and tile of
// 32 channels (see the channels-last section below); they compute the same sums in the same
// order as the others, so the results are the same bits.
//   cuproi_roi_align_forward_max_<T>[_i64](... as the forward ...)
//   cuproi_roi_align_backward_max_<T>[_i64](
//       I n, const T* grad_output, const T* input, const C* rois, ... as the backward ...)
//   cuproi_roi_align_box_backward_max_<T>[_i64](... as the box backward ...)
// The max mode, NCHW only: its backward reads the features too, to find every bin's winner.
#include "common/channels_last.cuh"

namespace cuproi {

template <typename T, typename C, typename I>
__device__ void roi_align_forward(I n, const T* input, const C* rois, C spatial_scale, int batch,
                                  int channels, int height, int width, int pooled_h,
                                  int pooled_w, int sampling_ratio, int aligned, T* output) {
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
    store(output + index, bin_sum(p, height, width, g, o.ph, o.pw) / g.count);
  }
}

template <typename T, typename C, typename I>
__device__ void roi_align_backward(I n, const T* grad_output, const C* rois, C spatial_scale,
                                   int batch, int channels, int height, int width, int pooled_h,
                                   int pooled_w, int sampling_ratio, int aligned,
                                   GradSum<C> grad_input) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const Grid<C> g = make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                                aligned ? C(0.5) : C(0), !aligned);
    const C grad = load(grad_output + index) / g.count;
    if (grad == C(0)) continue;
    C unused_dx, unused_dy, unused_value;
    bin_backward(grad_input.at(plane_offset<I>(b, o.c, channels, height, width)),
                 static_cast<const T*>(nullptr), height, width, g, o.ph, o.pw, grad, unused_dx,
                 unused_dy, unused_value);
  }
}

template <typename T, typename C, typename I>
__device__ void roi_align_box_backward(I n, const T* grad_output, const T* input, const C* rois,
                                       C spatial_scale, int batch, int channels, int height,
                                       int width, int pooled_h, int pooled_w, int sampling_ratio,
                                       int aligned, BoxGrad<C> grad_rois) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const Grid<C> g = make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                                aligned ? C(0.5) : C(0), !aligned);
    const C grad = load(grad_output + index) / g.count;
    if (grad == C(0)) continue;
    // The sample grid count is piecewise constant: its derivative is 0.
    C sx, ux, sy, uy;
    bin_slopes(plane<const T, I>(input, b, o.c, channels, height, width), height, width, g, o.ph,
               o.pw, pooled_h, pooled_w, sx, ux, sy, uy);
    add_box_terms(grad_rois, o.k, index, grad, spatial_scale, sx, ux, sy, uy, C(0), C(0),
                  aligned || g.width > C(1), aligned || g.height > C(1));
  }
}

// ---- channels-last kernels (common/channels_last.cuh) ---------------------------------------

constexpr int BIN_CHUNK = 64;  // bins staged in shared memory at a time

template <typename T, typename C, typename I>
__device__ void roi_align_forward_nhwc(I items, const T* input, const C* rois, C spatial_scale,
                                       int batch, int channels, int height, int width,
                                       int pooled_h, int pooled_w, int sampling_ratio,
                                       int aligned, T* output) {
  __shared__ AxisTap<C> ys[TABLE], xs[TABLE];
  __shared__ C stage[CHANNEL_TILE][BIN_CHUNK + 1];  // + 1: a column of it spans the banks
  const int bins = pooled_h * pooled_w;
  for (I item = blockIdx.x; item < items; item += gridDim.x) {
    const BoxTile<C, I> t =
        box_tile(item, rois, spatial_scale, batch, channels, height, width, pooled_h, pooled_w,
                 sampling_ratio, aligned ? C(0.5) : C(0), !aligned, ys, xs);
    for (int b0 = 0; b0 < bins; b0 += BIN_CHUNK) {
      const int chunk = min(BIN_CHUNK, bins - b0);
      for (int e = threadIdx.x; e < CHANNEL_TILE * chunk; e += blockDim.x) {
        const int lane = e % CHANNEL_TILE, j = e / CHANNEL_TILE, c = t.c0 + lane;
        C sum = 0;
        if (t.b >= 0 && c < channels) {
          const T* p = input + channels_last_offset<I>(t.b, c, channels, height, width);
          each_sample(t.g, t.ys, t.xs, height, width, (b0 + j) / pooled_w, (b0 + j) % pooled_w,
                      [&](const Taps<C>& taps) {
                        sum += interpolate(p, width, taps, static_cast<I>(channels));
                      });
        }
        stage[lane][j] = sum / t.g.count;
      }
      stage_out(output, stage, t, channels, bins, b0, chunk);
    }
  }
}

template <typename T, typename C, typename I>
__device__ void roi_align_backward_nhwc(I items, const T* grad_output, const C* rois,
                                        C spatial_scale, int batch, int channels, int height,
                                        int width, int pooled_h, int pooled_w,
                                        int sampling_ratio, int aligned, GradSum<C> grad_input) {
  __shared__ AxisTap<C> ys[TABLE], xs[TABLE];
  __shared__ C stage[CHANNEL_TILE][BIN_CHUNK + 1];
  const int bins = pooled_h * pooled_w;
  for (I item = blockIdx.x; item < items; item += gridDim.x) {
    const BoxTile<C, I> t =
        box_tile(item, rois, spatial_scale, batch, channels, height, width, pooled_h, pooled_w,
                 sampling_ratio, aligned ? C(0.5) : C(0), !aligned, ys, xs);
    if (t.b < 0) continue;  // uniform over the block: box_tile's barrier is behind everyone
    for (int b0 = 0; b0 < bins; b0 += BIN_CHUNK) {
      const int chunk = min(BIN_CHUNK, bins - b0);
      stage_in(stage, grad_output, t, channels, bins, b0, chunk);
      for (int e = threadIdx.x; e < CHANNEL_TILE * chunk; e += blockDim.x) {
        const int lane = e % CHANNEL_TILE, j = e / CHANNEL_TILE, c = t.c0 + lane;
        if (c >= channels) continue;
        const C grad = stage[lane][j] / t.g.count;
        if (grad == C(0)) continue;
        const GradSum<C> gp =
            grad_input.at(channels_last_offset<I>(t.b, c, channels, height, width));
        each_sample(t.g, t.ys, t.xs, height, width, (b0 + j) / pooled_w, (b0 + j) % pooled_w,
                    [&](const Taps<C>& taps) {
                      scatter(gp, width, taps, grad, static_cast<I>(channels));
                    });
      }
      __syncthreads();
    }
  }
}

// ---- max mode -------------------------------------------------------------------------------
//
// mmcv.ops.roi_align(pool_mode="max") semantics: the sampling grid of roi_align (torchvision's
// box conventions, `aligned` or legacy), but every bin keeps the maximum of its bilinear samples
// instead of their average. A sample outside [-1, H] x [-1, W] takes part with value 0 (as in
// mmcv); the first maximum in scan order (iy, then ix) wins ties; a NaN sample wins; a bin
// without samples gives 0 (mmcv: -FLT_MAX). The backwards recompute the winning sample from the
// features (no argmax is stored): the input gradient goes to its 4 bilinear neighbours, as mmcv
// routes it from its stored (argmax_y, argmax_x); the box gradient is the winner's slope times
// the derivative of its position.

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

// The winning sample of output element `index` and its taps, with what the gradients need of it
// (Visit(o, b, g, p, iy, ix, taps, grad)); elements without a winner in range are skipped. Both
// max-mode backwards go through it, so they see the same winners.
template <typename T, typename C, typename I, typename Visit>
__device__ __forceinline__ void each_max_winner(I n, const T* grad_output, const T* input,
                                                const C* rois, C spatial_scale, int batch,
                                                int channels, int height, int width,
                                                int pooled_h, int pooled_w, int sampling_ratio,
                                                int aligned, Visit visit) {
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
    visit(index, o, b, g, p, iy, ix, t, grad);
  }
}

template <typename T, typename C, typename I>
__device__ void roi_align_max_backward(I n, const T* grad_output, const T* input, const C* rois,
                                       C spatial_scale, int batch, int channels, int height,
                                       int width, int pooled_h, int pooled_w, int sampling_ratio,
                                       int aligned, GradSum<C> grad_input) {
  each_max_winner(n, grad_output, input, rois, spatial_scale, batch, channels, height, width,
                  pooled_h, pooled_w, sampling_ratio, aligned,
                  [&](I, const OutputIndex<I>& o, int b, const Grid<C>&, const T*, int, int,
                      const Taps<C>& t, C grad) {
                    scatter(grad_input.at(plane_offset<I>(b, o.c, channels, height, width)),
                            width, t, grad);
                  });
}

template <typename T, typename C, typename I>
__device__ void roi_align_max_box_backward(I n, const T* grad_output, const T* input,
                                           const C* rois, C spatial_scale, int batch,
                                           int channels, int height, int width, int pooled_h,
                                           int pooled_w, int sampling_ratio, int aligned,
                                           BoxGrad<C> grad_rois) {
  each_max_winner(n, grad_output, input, rois, spatial_scale, batch, channels, height, width,
                  pooled_h, pooled_w, sampling_ratio, aligned,
                  [&](I index, const OutputIndex<I>& o, int, const Grid<C>& g, const T* p, int iy,
                      int ix, const Taps<C>& t, C grad) {
                    C dx, dy;
                    sample_slopes(p, width, t, dx, dy);
                    const C u = (C(o.pw) + (C(ix) + C(0.5)) / C(g.grid_w)) / C(pooled_w);
                    const C v = (C(o.ph) + (C(iy) + C(0.5)) / C(g.grid_h)) / C(pooled_h);
                    add_box_terms(grad_rois, o.k, index, grad, spatial_scale, dx, u * dx, dy,
                                  v * dy, C(0), C(0), aligned || g.width > C(1),
                                  aligned || g.height > C(1));
                  });
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

// The parameters of every kernel from the boxes to `aligned`, and the same names passed on.
#define CUPROI_ROI_ALIGN_PARAMS(C)                                                               \
  const C* rois, C spatial_scale, int batch, int channels, int height, int width, int pooled_h,   \
      int pooled_w, int sampling_ratio, int aligned
#define CUPROI_ROI_ALIGN_ARGS                                                                    \
  rois, spatial_scale, batch, channels, height, width, pooled_h, pooled_w, sampling_ratio, aligned

#define CUPROI_EXPORT_ROI_ALIGN(T, C, SFX, I, ISFX)                                              \
  extern "C" __global__ void cuproi_roi_align_forward_##SFX##ISFX(                               \
      I n, const T* input, CUPROI_ROI_ALIGN_PARAMS(C), T* output) {                               \
    cuproi::roi_align_forward<T, C, I>(n, input, CUPROI_ROI_ALIGN_ARGS, output);                 \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_backward_##SFX##ISFX(                              \
      I n, const T* grad_output, CUPROI_ROI_ALIGN_PARAMS(C), C* grad_input,                       \
      cuproi::u64* grad_fixed, const int* exponent, int deterministic) {                          \
    cuproi::roi_align_backward<T, C, I>(                                                          \
        n, grad_output, CUPROI_ROI_ALIGN_ARGS,                                                    \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));                       \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_box_backward_##SFX##ISFX(                          \
      I n, const T* grad_output, const T* input, CUPROI_ROI_ALIGN_PARAMS(C), C* grad_rois,        \
      int deterministic) {                                                                        \
    const cuproi::BoxGrad<C> box = {grad_rois, deterministic != 0};                               \
    cuproi::roi_align_box_backward<T, C, I>(n, grad_output, input, CUPROI_ROI_ALIGN_ARGS, box);  \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_forward_max_##SFX##ISFX(                           \
      I n, const T* input, CUPROI_ROI_ALIGN_PARAMS(C), T* output) {                               \
    cuproi::roi_align_max_forward<T, C, I>(n, input, CUPROI_ROI_ALIGN_ARGS, output);             \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_backward_max_##SFX##ISFX(                          \
      I n, const T* grad_output, const T* input, CUPROI_ROI_ALIGN_PARAMS(C), C* grad_input,       \
      cuproi::u64* grad_fixed, const int* exponent, int deterministic) {                          \
    cuproi::roi_align_max_backward<T, C, I>(                                                      \
        n, grad_output, input, CUPROI_ROI_ALIGN_ARGS,                                             \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));                       \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_box_backward_max_##SFX##ISFX(                      \
      I n, const T* grad_output, const T* input, CUPROI_ROI_ALIGN_PARAMS(C), C* grad_rois,        \
      int deterministic) {                                                                        \
    const cuproi::BoxGrad<C> box = {grad_rois, deterministic != 0};                               \
    cuproi::roi_align_max_box_backward<T, C, I>(n, grad_output, input, CUPROI_ROI_ALIGN_ARGS,     \
                                                box);                                             \
  }

#define CUPROI_EXPORT_ROI_ALIGN_NHWC(T, C, SFX, I, ISFX)                                         \
  extern "C" __global__ void cuproi_roi_align_forward_nhwc_##SFX##ISFX(                          \
      I items, const T* input, const C* rois, C spatial_scale, int batch, int channels,           \
      int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,         \
      T* output) {                                                                                \
    cuproi::roi_align_forward_nhwc<T, C, I>(items, input, rois, spatial_scale, batch, channels,  \
                                            height, width, pooled_h, pooled_w, sampling_ratio,    \
                                            aligned, output);                                     \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_backward_nhwc_##SFX##ISFX(                         \
      I items, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,     \
      int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,         \
      C* grad_input, cuproi::u64* grad_fixed, const int* exponent, int deterministic) {           \
    cuproi::roi_align_backward_nhwc<T, C, I>(                                                     \
        items, grad_output, rois, spatial_scale, batch, channels, height, width, pooled_h,        \
        pooled_w, sampling_ratio, aligned,                                                        \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));                       \
  }

CUPROI_EXPORT_ROI_ALIGN(cuproi::half, float, f16, int, )
CUPROI_EXPORT_ROI_ALIGN(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN(float, float, f32, int, )
CUPROI_EXPORT_ROI_ALIGN(float, float, f32, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN(double, double, f64, int, )
CUPROI_EXPORT_ROI_ALIGN(double, double, f64, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN_NHWC(cuproi::half, float, f16, int, )
CUPROI_EXPORT_ROI_ALIGN_NHWC(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN_NHWC(float, float, f32, int, )
CUPROI_EXPORT_ROI_ALIGN_NHWC(float, float, f32, long long, _i64)
CUPROI_EXPORT_ROI_ALIGN_NHWC(double, double, f64, int, )
CUPROI_EXPORT_ROI_ALIGN_NHWC(double, double, f64, long long, _i64)

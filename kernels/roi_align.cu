// SPDX-License-Identifier: Apache-2.0
//
// RoI Align (Mask R-CNN), torchvision.ops.roi_align semantics, forward and backward.
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_roi_align_forward_<T>[_i64](
//       I n, const T* input, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,
//       T* output)
//   cuproi_roi_align_backward_<T>[_i64](
//       I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,
//       C* grad_input, u64* grad_fixed, const int* exponent, int deterministic,
//       const T* input, C* grad_rois, int wrt_boxes)
// n = K * channels * pooled_h * pooled_w (one thread per output element); input, output and
// grad_output are contiguous NCHW; rois is (K, 5) [batch_index, x1, y1, x2, y2] in C, the
// compute type (float for f16 and f32, double for f64). grad_input is a zeroed C buffer (float16
// therefore accumulates in float32) and (grad_fixed, exponent, deterministic) select how it is
// summed: see common/grad_sum.cuh.
//   cuproi_roi_align_forward_nhwc_<T>[_i64](
//       I items, const T* input, ... as the forward ..., T* output)
//   cuproi_roi_align_backward_nhwc_<T>[_i64](
//       I items, const T* grad_output, ... as the backward up to aligned ...,
//       C* grad_input, u64* grad_fixed, const int* exponent, int deterministic)
// The _nhwc variants read channels-last (N, H, W, C) features, respectively add into a
// channels-last gradient, and take items = K * ceil(channels / 32): one block per box and tile of
// 32 channels (see the channels-last section below); they compute the same sums in the same
// order as the others, so the results are the same bits.
// The backward computes one of two gradients. wrt_boxes == 0: the input gradient (input and
// grad_rois are not read). wrt_boxes != 0: the gradient with respect to the box coordinates,
// which reads the features `input` and leaves grad_input alone: added with atomicAdd into the
// zeroed (K, 5) grad_rois by default, or, when deterministic, written per output element to a
// zeroed (n, 4) grad_rois that the caller sums per box (common/bilinear.cuh, BoxGrad).
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
                                   GradSum<C> grad_input, const T* input, BoxGrad<C> grad_rois,
                                   int wrt_boxes) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const Grid<C> g = make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                                aligned ? C(0.5) : C(0), !aligned);
    const C grad = load(grad_output + index) / g.count;
    if (grad == C(0)) continue;
    if (wrt_boxes) {  // the sample grid count is piecewise constant: its derivative is 0
      C sx, ux, sy, uy;
      bin_slopes(plane<const T, I>(input, b, o.c, channels, height, width), height, width, g,
                 o.ph, o.pw, pooled_h, pooled_w, sx, ux, sy, uy);
      add_box_terms(grad_rois, o.k, index, grad, spatial_scale, sx, ux, sy, uy, C(0), C(0),
                    aligned || g.width > C(1), aligned || g.height > C(1));
      continue;
    }
    C unused_dx, unused_dy, unused_value;
    bin_backward(grad_input.at(plane_offset<I>(b, o.c, channels, height, width)),
                 static_cast<const T*>(nullptr), height, width, g, o.ph, o.pw, grad, unused_dx,
                 unused_dy, unused_value);
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

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_ROI_ALIGN(T, C, SFX, I, ISFX)                                              \
  extern "C" __global__ void cuproi_roi_align_forward_##SFX##ISFX(                               \
      I n, const T* input, const C* rois, C spatial_scale, int batch, int channels, int height,   \
      int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned, T* output) {        \
    cuproi::roi_align_forward<T, C, I>(n, input, rois, spatial_scale, batch, channels, height,   \
                                       width, pooled_h, pooled_w, sampling_ratio, aligned,        \
                                       output);                                                   \
  }                                                                                               \
  extern "C" __global__ void cuproi_roi_align_backward_##SFX##ISFX(                              \
      I n, const T* grad_output, const C* rois, C spatial_scale, int batch, int channels,         \
      int height, int width, int pooled_h, int pooled_w, int sampling_ratio, int aligned,         \
      C* grad_input, cuproi::u64* grad_fixed, const int* exponent, int deterministic,             \
      const T* input, C* grad_rois, int wrt_boxes) {                                              \
    const cuproi::BoxGrad<C> box = {grad_rois, deterministic != 0};                               \
    cuproi::roi_align_backward<T, C, I>(                                                          \
        n, grad_output, rois, spatial_scale, batch, channels, height, width, pooled_h, pooled_w,  \
        sampling_ratio, aligned,                                                                  \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, wrt_boxes ? 0 : deterministic), input, \
        box, wrt_boxes);                                                                          \
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

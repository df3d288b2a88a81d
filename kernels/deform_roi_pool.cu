// SPDX-License-Identifier: Apache-2.0
//
// Deformable RoI Pooling (Deformable ConvNets), mmcv.ops.deform_roi_pool forward semantics:
// an aligned RoI Align average without the legacy minimum size, in which the start of every bin
// moves by (gamma * box_width * offset_x, gamma * box_height * offset_y). The backward gives the
// true derivatives of that forward, also in the edge bands where mmcv's offset gradient is wrong.
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices):
//   cuproi_deform_roi_pool_forward_<T>[_i64](
//       I n, const T* input, const C* rois, const C* offset, int has_offset, const C* mask,
//       int has_mask, C spatial_scale, int sampling_ratio, C gamma, int batch, int channels,
//       int height, int width, int pooled_h, int pooled_w, T* output)
//   cuproi_deform_roi_pool_backward_<T>[_i64](
//       I n, const T* grad_output, const T* input, const C* rois, const C* offset,
//       int has_offset, const C* mask, int has_mask, C spatial_scale, int sampling_ratio,
//       C gamma, int batch, int channels, int height, int width, int pooled_h, int pooled_w,
//       C* grad_input, u64* grad_fixed, const int* exponent, int deterministic, C* grad_offset,
//       C* grad_mask)
//   cuproi_deform_roi_pool_box_backward_<T>[_i64](
//       I n, const T* grad_output, const T* input, const C* rois, const C* offset,
//       int has_offset, const C* mask, int has_mask, C spatial_scale, int sampling_ratio,
//       C gamma, int batch, int channels, int height, int width, int pooled_h, int pooled_w,
//       C* grad_rois, int deterministic)
// n = K * channels * pooled_h * pooled_w; arrays contiguous; rois (K, 5), offset
// (K, 2, pooled_h, pooled_w) and mask (K, 1, pooled_h, pooled_w) in C (float for f16 and f32,
// double for f64). When has_offset (has_mask) is 0 the offset (mask) pointer is never read and
// grad_offset (grad_mask) never written. The mask modulates the pooled value of every bin
// (DCNv2, mmcv's ModulatedDeformRoIPoolPack): output = mask * average, in the same pass.
// The backward gives the input gradient, a zeroed C buffer summed as (grad_fixed, exponent,
// deterministic) select (common/grad_sum.cuh), and the offset and mask gradients, zeroed too: by
// default the (K, 2, pooled_h, pooled_w) and (K, 1, pooled_h, pooled_w) gradients, to which
// every channel adds with atomicAdd; in deterministic mode (K, channels, 2, pooled_h, pooled_w)
// and (K, channels, pooled_h, pooled_w) arrays of per-channel terms, which the caller sums over
// the channels in a fixed order. It reads the features `input` only for the offset and mask
// gradients. The box backward gives the gradient with respect to the box coordinates, into
// grad_rois as common/bilinear.cuh (BoxGrad) describes.
#include "common/channels_last.cuh"

namespace cuproi {

// The sampling grid of bin (ph, pw) of box k: the box's grid g with the bin's learned shift.
template <typename C, typename I>
__device__ __forceinline__ Grid<C> shifted(Grid<C> g, const C* offset, int has_offset, I k,
                                           int ph, int pw, C gamma, int pooled_h, int pooled_w) {
  if (has_offset) {
    const C* o = offset + k * 2 * pooled_h * pooled_w + ph * pooled_w + pw;
    g.start_x += gamma * g.width * o[0];
    g.start_y += gamma * g.height * o[pooled_h * pooled_w];
  }
  return g;
}

template <typename C, typename I>
__device__ __forceinline__ Grid<C> deformed_grid(const C* roi, const C* offset, int has_offset,
                                                 I k, int ph, int pw, C spatial_scale,
                                                 int sampling_ratio, C gamma, int pooled_h,
                                                 int pooled_w) {
  const Grid<C> g =
      make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, C(0.5), false);
  return shifted(g, offset, has_offset, k, ph, pw, gamma, pooled_h, pooled_w);
}

template <typename T, typename C, typename I>
__device__ void deform_roi_pool_forward(I n, const T* input, const C* rois, const C* offset,
                                        int has_offset, const C* mask, int has_mask,
                                        C spatial_scale, int sampling_ratio, C gamma, int batch,
                                        int channels, int height, int width, int pooled_h,
                                        int pooled_w, T* output) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) {
      store(output + index, C(0));
      continue;
    }
    const Grid<C> g = deformed_grid(roi, offset, has_offset, o.k, o.ph, o.pw, spatial_scale,
                                    sampling_ratio, gamma, pooled_h, pooled_w);
    const T* p = plane<const T, I>(input, b, o.c, channels, height, width);
    const C value = bin_sum(p, height, width, g, o.ph, o.pw) / g.count;
    store(output + index,
          has_mask ? mask[o.k * pooled_h * pooled_w + o.ph * pooled_w + o.pw] * value : value);
  }
}

template <typename T, typename C, typename I>
__device__ void deform_roi_pool_backward(I n, const T* grad_output, const T* input,
                                         const C* rois, const C* offset, int has_offset,
                                         const C* mask, int has_mask, C spatial_scale,
                                         int sampling_ratio, C gamma, int batch, int channels,
                                         int height, int width, int pooled_h, int pooled_w,
                                         GradSum<C> grad_input, C* grad_offset, C* grad_mask) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const Grid<C> g = deformed_grid(roi, offset, has_offset, o.k, o.ph, o.pw, spatial_scale,
                                    sampling_ratio, gamma, pooled_h, pooled_w);
    const C grad = load(grad_output + index) / g.count;
    if (grad == C(0)) continue;
    const int bins = pooled_h * pooled_w, bin = o.ph * pooled_w + o.pw;
    const C m = has_mask ? mask[o.k * bins + bin] : C(1);
    // The features are read for the offset and mask gradients only.
    const bool reads = has_offset || has_mask;
    const T* p = reads ? plane<const T, I>(input, b, o.c, channels, height, width) : nullptr;
    // The bin's start moves by gamma * width per unit of offset_x (gamma * height for y).
    C dx, dy, value;
    bin_backward(grad_input.at(plane_offset<I>(b, o.c, channels, height, width)), p, height,
                 width, g, o.ph, o.pw, grad * m, dx, dy, value);
    if (has_mask) {  // d (mask * average) / d mask = average
      if (grad_input.deterministic)
        grad_mask[index] = grad * value;
      else
        atomicAdd(grad_mask + o.k * bins + bin, grad * value);
    }
    if (!has_offset) continue;
    const C gx = gamma * g.width * grad * m * dx, gy = gamma * g.height * grad * m * dy;
    if (grad_input.deterministic) {
      C* go = grad_offset + (o.k * channels + o.c) * 2 * bins + bin;
      go[0] = gx;
      go[bins] = gy;
    } else {
      C* go = grad_offset + o.k * 2 * bins + bin;
      atomicAdd(go, gx);
      atomicAdd(go + bins, gy);
    }
  }
}

template <typename T, typename C, typename I>
__device__ void deform_roi_pool_box_backward(I n, const T* grad_output, const T* input,
                                             const C* rois, const C* offset, int has_offset,
                                             const C* mask, int has_mask, C spatial_scale,
                                             int sampling_ratio, C gamma, int batch,
                                             int channels, int height, int width, int pooled_h,
                                             int pooled_w, BoxGrad<C> grad_rois) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const Grid<C> g = deformed_grid(roi, offset, has_offset, o.k, o.ph, o.pw, spatial_scale,
                                    sampling_ratio, gamma, pooled_h, pooled_w);
    const C grad = load(grad_output + index) / g.count;
    if (grad == C(0)) continue;
    const int bins = pooled_h * pooled_w, bin = o.ph * pooled_w + o.pw;
    const C m = has_mask ? mask[o.k * bins + bin] : C(1);
    // The bin moves with the box: its start, its size and the offset's shift.
    C sx, ux, sy, uy;
    bin_slopes(plane<const T, I>(input, b, o.c, channels, height, width), height, width, g, o.ph,
               o.pw, pooled_h, pooled_w, sx, ux, sy, uy);
    const C* shift = offset + o.k * 2 * bins + bin;
    add_box_terms(grad_rois, o.k, index, grad * m, spatial_scale, sx, ux, sy, uy,
                  has_offset ? gamma * shift[0] : C(0), has_offset ? gamma * shift[bins] : C(0),
                  true, true);
  }
}

// ---- channels-last kernels (common/channels_last.cuh) ---------------------------------------
//
// Without offsets every bin of a box samples the box's grid, whose taps the block tables once;
// with them each bin's grid moves, and its taps are computed on the fly. The backward sums the
// offset and mask gradients of the block's channels in shared memory, in lane order, then adds
// one term per bin and tile: with atomicAdd into (K, 2, PH, PW) and (K, 1, PH, PW) by default, or
// written to (K, tiles, 2, PH, PW) and (K, tiles, 1, PH, PW), which the caller sums over the
// tiles in a fixed order, when deterministic.

constexpr int DEFORM_BIN_CHUNK = 16;  // bins staged at a time (four arrays of them in shared)

template <typename T, typename C, typename I>
__device__ void deform_roi_pool_forward_nhwc(I items, const T* input, const C* rois,
                                             const C* offset, int has_offset, const C* mask,
                                             int has_mask, C spatial_scale, int sampling_ratio,
                                             C gamma, int batch, int channels, int height,
                                             int width, int pooled_h, int pooled_w, T* output) {
  __shared__ AxisTap<C> ys[TABLE], xs[TABLE];
  __shared__ C stage[CHANNEL_TILE][DEFORM_BIN_CHUNK + 1];
  const int bins = pooled_h * pooled_w;
  for (I item = blockIdx.x; item < items; item += gridDim.x) {
    const BoxTile<C, I> t = box_tile(item, rois, spatial_scale, batch, channels, height, width,
                                     pooled_h, pooled_w, sampling_ratio, C(0.5), false,
                                     has_offset ? nullptr : ys, has_offset ? nullptr : xs);
    for (int b0 = 0; b0 < bins; b0 += DEFORM_BIN_CHUNK) {
      const int chunk = min(DEFORM_BIN_CHUNK, bins - b0);
      for (int e = threadIdx.x; e < CHANNEL_TILE * chunk; e += blockDim.x) {
        const int lane = e % CHANNEL_TILE, j = e / CHANNEL_TILE, c = t.c0 + lane;
        const int ph = (b0 + j) / pooled_w, pw = (b0 + j) % pooled_w;
        C value = 0;
        if (t.b >= 0 && c < channels) {
          const Grid<C> g =
              shifted(t.g, offset, has_offset, t.k, ph, pw, gamma, pooled_h, pooled_w);
          const T* p = input + channels_last_offset<I>(t.b, c, channels, height, width);
          C sum = 0;
          each_sample(g, t.ys, t.xs, height, width, ph, pw, [&](const Taps<C>& taps) {
            sum += interpolate(p, width, taps, static_cast<I>(channels));
          });
          value = sum / g.count;
          if (has_mask) value = mask[t.k * bins + b0 + j] * value;
        }
        stage[lane][j] = value;
      }
      stage_out(output, stage, t, channels, bins, b0, chunk);
    }
  }
}

template <typename T, typename C, typename I>
__device__ void deform_roi_pool_backward_nhwc(I items, const T* grad_output, const T* input,
                                              const C* rois, const C* offset, int has_offset,
                                              const C* mask, int has_mask, C spatial_scale,
                                              int sampling_ratio, C gamma, int batch,
                                              int channels, int height, int width, int pooled_h,
                                              int pooled_w, GradSum<C> grad_input,
                                              C* grad_offset, C* grad_mask) {
  __shared__ AxisTap<C> ys[TABLE], xs[TABLE];
  // The gradient staged in, then each lane's offset (x, y) and mask terms.
  __shared__ C stage[4][CHANNEL_TILE][DEFORM_BIN_CHUNK + 1];
  const int bins = pooled_h * pooled_w;
  const int tiles = (channels + CHANNEL_TILE - 1) / CHANNEL_TILE;
  for (I item = blockIdx.x; item < items; item += gridDim.x) {
    const BoxTile<C, I> t = box_tile(item, rois, spatial_scale, batch, channels, height, width,
                                     pooled_h, pooled_w, sampling_ratio, C(0.5), false,
                                     has_offset ? nullptr : ys, has_offset ? nullptr : xs);
    if (t.b < 0) continue;  // uniform over the block: box_tile's barrier is behind everyone
    for (int b0 = 0; b0 < bins; b0 += DEFORM_BIN_CHUNK) {
      const int chunk = min(DEFORM_BIN_CHUNK, bins - b0);
      stage_in(stage[0], grad_output, t, channels, bins, b0, chunk);
      for (int e = threadIdx.x; e < CHANNEL_TILE * chunk; e += blockDim.x) {
        const int lane = e % CHANNEL_TILE, j = e / CHANNEL_TILE, c = t.c0 + lane;
        const int ph = (b0 + j) / pooled_w, pw = (b0 + j) % pooled_w;
        C gx = 0, gy = 0, gm = 0;
        const Grid<C> g =
            shifted(t.g, offset, has_offset, t.k, ph, pw, gamma, pooled_h, pooled_w);
        const C grad = c < channels ? stage[0][lane][j] / g.count : C(0);
        if (grad != C(0)) {
          const C m = has_mask ? mask[t.k * bins + b0 + j] : C(1);
          const I at = channels_last_offset<I>(t.b, c, channels, height, width);
          const GradSum<C> gp = grad_input.at(at);
          const T* p = has_offset || has_mask ? input + at : nullptr;
          C dx = 0, dy = 0, value = 0;
          each_sample(g, t.ys, t.xs, height, width, ph, pw, [&](const Taps<C>& taps) {
            sample_backward(gp, p, width, taps, grad * m, dx, dy, value,
                            static_cast<I>(channels));
          });
          gm = grad * value;  // d (mask * average) / d mask = average
          gx = gamma * g.width * grad * m * dx;
          gy = gamma * g.height * grad * m * dy;
        }
        stage[1][lane][j] = gx;
        stage[2][lane][j] = gy;
        stage[3][lane][j] = gm;
      }
      __syncthreads();
      for (int e = threadIdx.x; e < 3 * chunk; e += blockDim.x) {
        const int which = 1 + e / chunk, j = e % chunk;
        if (!(which == 3 ? has_mask : has_offset)) continue;
        C sum = 0;
        for (int lane = 0; lane < CHANNEL_TILE; ++lane) sum += stage[which][lane][j];
        // (K, 2, PH, PW) and (K, 1, PH, PW), or per tile (K, tiles, 2 | 1, PH, PW).
        const I row = grad_input.deterministic ? t.k * tiles + t.c0 / CHANNEL_TILE : t.k;
        C* out = which == 3 ? grad_mask + row * bins : grad_offset + (row * 2 + which - 1) * bins;
        if (grad_input.deterministic)
          out[b0 + j] = sum;
        else
          atomicAdd(out + b0 + j, sum);
      }
      // No barrier: stage[1..3] is next written after the barrier that ends the next chunk's
      // (or the next item's) stage_in or box_tile, which every thread reaches after this loop.
    }
  }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_DEFORM_ROI_POOL(T, C, SFX, I, ISFX)                                        \
  extern "C" __global__ void cuproi_deform_roi_pool_forward_##SFX##ISFX(                         \
      I n, const T* input, const C* rois, const C* offset, int has_offset, const C* mask,         \
      int has_mask, C spatial_scale, int sampling_ratio, C gamma, int batch, int channels,        \
      int height, int width, int pooled_h, int pooled_w, T* output) {                             \
    cuproi::deform_roi_pool_forward<T, C, I>(n, input, rois, offset, has_offset, mask, has_mask, \
                                             spatial_scale, sampling_ratio, gamma, batch,         \
                                             channels, height, width, pooled_h, pooled_w,         \
                                             output);                                             \
  }                                                                                               \
  extern "C" __global__ void cuproi_deform_roi_pool_backward_##SFX##ISFX(                        \
      I n, const T* grad_output, const T* input, const C* rois, const C* offset, int has_offset,  \
      const C* mask, int has_mask, C spatial_scale, int sampling_ratio, C gamma, int batch,       \
      int channels, int height, int width, int pooled_h, int pooled_w, C* grad_input,             \
      cuproi::u64* grad_fixed, const int* exponent, int deterministic, C* grad_offset,            \
      C* grad_mask) {                                                                             \
    cuproi::deform_roi_pool_backward<T, C, I>(                                                    \
        n, grad_output, input, rois, offset, has_offset, mask, has_mask, spatial_scale,           \
        sampling_ratio, gamma, batch, channels, height, width, pooled_h, pooled_w,                \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic), grad_offset,           \
        grad_mask);                                                                               \
  }                                                                                               \
  extern "C" __global__ void cuproi_deform_roi_pool_box_backward_##SFX##ISFX(                    \
      I n, const T* grad_output, const T* input, const C* rois, const C* offset, int has_offset,  \
      const C* mask, int has_mask, C spatial_scale, int sampling_ratio, C gamma, int batch,       \
      int channels, int height, int width, int pooled_h, int pooled_w, C* grad_rois,              \
      int deterministic) {                                                                        \
    const cuproi::BoxGrad<C> box = {grad_rois, deterministic != 0};                               \
    cuproi::deform_roi_pool_box_backward<T, C, I>(                                                \
        n, grad_output, input, rois, offset, has_offset, mask, has_mask, spatial_scale,           \
        sampling_ratio, gamma, batch, channels, height, width, pooled_h, pooled_w, box);          \
  }

CUPROI_EXPORT_DEFORM_ROI_POOL(cuproi::half, float, f16, int, )
CUPROI_EXPORT_DEFORM_ROI_POOL(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_DEFORM_ROI_POOL(float, float, f32, int, )
CUPROI_EXPORT_DEFORM_ROI_POOL(float, float, f32, long long, _i64)
CUPROI_EXPORT_DEFORM_ROI_POOL(double, double, f64, int, )
CUPROI_EXPORT_DEFORM_ROI_POOL(double, double, f64, long long, _i64)

#define CUPROI_EXPORT_DEFORM_ROI_POOL_NHWC(T, C, SFX, I, ISFX)                                   \
  extern "C" __global__ void cuproi_deform_roi_pool_forward_nhwc_##SFX##ISFX(                    \
      I items, const T* input, const C* rois, const C* offset, int has_offset, const C* mask,     \
      int has_mask, C spatial_scale, int sampling_ratio, C gamma, int batch, int channels,        \
      int height, int width, int pooled_h, int pooled_w, T* output) {                             \
    cuproi::deform_roi_pool_forward_nhwc<T, C, I>(                                                \
        items, input, rois, offset, has_offset, mask, has_mask, spatial_scale, sampling_ratio,    \
        gamma, batch, channels, height, width, pooled_h, pooled_w, output);                       \
  }                                                                                               \
  extern "C" __global__ void cuproi_deform_roi_pool_backward_nhwc_##SFX##ISFX(                   \
      I items, const T* grad_output, const T* input, const C* rois, const C* offset,              \
      int has_offset, const C* mask, int has_mask, C spatial_scale, int sampling_ratio, C gamma,  \
      int batch, int channels, int height, int width, int pooled_h, int pooled_w,                 \
      C* grad_input, cuproi::u64* grad_fixed, const int* exponent, int deterministic,             \
      C* grad_offset, C* grad_mask) {                                                             \
    cuproi::deform_roi_pool_backward_nhwc<T, C, I>(                                               \
        items, grad_output, input, rois, offset, has_offset, mask, has_mask, spatial_scale,       \
        sampling_ratio, gamma, batch, channels, height, width, pooled_h, pooled_w,                \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic), grad_offset,           \
        grad_mask);                                                                               \
  }

CUPROI_EXPORT_DEFORM_ROI_POOL_NHWC(cuproi::half, float, f16, int, )
CUPROI_EXPORT_DEFORM_ROI_POOL_NHWC(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_DEFORM_ROI_POOL_NHWC(float, float, f32, int, )
CUPROI_EXPORT_DEFORM_ROI_POOL_NHWC(float, float, f32, long long, _i64)
CUPROI_EXPORT_DEFORM_ROI_POOL_NHWC(double, double, f64, int, )
CUPROI_EXPORT_DEFORM_ROI_POOL_NHWC(double, double, f64, long long, _i64)

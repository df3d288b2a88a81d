// SPDX-License-Identifier: Apache-2.0
//
// Multi-level (FPN) RoI Align, torchvision.ops.MultiScaleRoIAlign semantics, forward and
// backward, every level in one launch.
//
// Each box is pooled from one level of a feature pyramid (up to 8 levels, finest first). Its
// level is the number of thresholds t1..t7 that the box area (x2 - x1) * (y2 - y1), computed in
// double from the box coordinates, reaches: t_j = (canonical_scale * 2**(k_min + j -
// canonical_level - 1e-6))**2, precomputed on the host, is where torchvision's LevelMapper
// floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6) steps up to level j; unused
// thresholds are +inf. No log2 is evaluated, so the CPU backend, which makes the same double
// comparisons, assigns every box to the same level bit for bit. The chosen level is then sampled
// exactly as kernels/roi_align.cu does (common/bilinear.cuh).
//
// Entry points (T = f16 | f32 | f64, optional _i64 for 64-bit flat indices; L = 0..7):
//   cuproi_multi_scale_roi_align_forward_<T>[_i64](
//       I n, const T* f0 .. f7, const C* rois, int batch, int channels, int pooled_h,
//       int pooled_w, int sampling_ratio, int aligned, int h0 .. h7, int w0 .. w7,
//       C s0 .. s7, double t1 .. t7, T* output)
//   cuproi_multi_scale_roi_align_backward_<T>[_i64](
//       I n, const T* grad_output, const C* rois, int batch, int channels, int pooled_h,
//       int pooled_w, int sampling_ratio, int aligned, int h0 .. h7, int w0 .. w7,
//       C s0 .. s7, double t1 .. t7, I o0 .. o7,
//       C* grad_input, u64* grad_fixed, const int* exponent, int deterministic)
// n = K * channels * pooled_h * pooled_w (one thread per output element). fL is level L's
// contiguous (batch, channels, hL, wL) features (unused levels repeat f0, never read), sL its
// spatial scale. rois is (K, 5) [batch_index, x1, y1, x2, y2] in C, the compute type. The
// backward sums every level's gradient into one zeroed C buffer (float16 therefore accumulates
// in float32), level L starting at element oL; (grad_fixed, exponent, deterministic) select how
// it is summed: see common/grad_sum.cuh.
#include "common/bilinear.cuh"

#define CUPROI_MS_LEVELS 8
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define CUPROI_MS_UNROLL _Pragma("unroll")
#else  // the host test shim: g++ warns about the unknown pragma
#define CUPROI_MS_UNROLL
#endif

namespace cuproi {

// The pyramid as the kernels see it, built from the scalar arguments of an entry point.
template <typename T, typename C, typename I>
struct Pyramid {
  const T* data[CUPROI_MS_LEVELS];
  int height[CUPROI_MS_LEVELS], width[CUPROI_MS_LEVELS];
  C scale[CUPROI_MS_LEVELS];
  double threshold[CUPROI_MS_LEVELS - 1];  // area from which level j + 1 is chosen
  I offset[CUPROI_MS_LEVELS];              // backward: start of level L in the gradient buffer
};

// One level of the pyramid, picked with constant indices only (no local-memory array).
template <typename T, typename C, typename I>
struct Level {
  const T* data;
  int height, width;
  C scale;
  I offset;
};

template <typename T, typename C, typename I>
__device__ __forceinline__ Level<T, C, I> level_of(const C* roi, const Pyramid<T, C, I>& p) {
  const double area = (static_cast<double>(roi[3]) - static_cast<double>(roi[1])) *
                      (static_cast<double>(roi[4]) - static_cast<double>(roi[2]));
  int l = 0;
  CUPROI_MS_UNROLL
  for (int j = 0; j < CUPROI_MS_LEVELS - 1; ++j) l += area >= p.threshold[j] ? 1 : 0;
  Level<T, C, I> v;
  v.data = p.data[0];
  v.height = p.height[0];
  v.width = p.width[0];
  v.scale = p.scale[0];
  v.offset = p.offset[0];
  CUPROI_MS_UNROLL
  for (int j = 1; j < CUPROI_MS_LEVELS; ++j) {
    if (l == j) {
      v.data = p.data[j];
      v.height = p.height[j];
      v.width = p.width[j];
      v.scale = p.scale[j];
      v.offset = p.offset[j];
    }
  }
  return v;
}

// Transpose of bin_sum (common/bilinear.cuh): adds grad times the weight of every sample of bin
// (ph, pw) of grid g to the (height, width) gradient plane gp.
template <typename C>
__device__ __forceinline__ void bin_scatter(const GradSum<C>& gp, int height, int width,
                                            const Grid<C>& g, int ph, int pw, C grad) {
  const C y_start = g.start_y + ph * g.bin_h;
  const C x_start = g.start_x + pw * g.bin_w;
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

template <typename T, typename C, typename I>
__device__ void multi_scale_roi_align_forward(I n, const Pyramid<T, C, I>& pyramid,
                                              const C* rois, int batch, int channels,
                                              int pooled_h, int pooled_w, int sampling_ratio,
                                              int aligned, T* output) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) {
      store(output + index, C(0));
      continue;
    }
    const Level<T, C, I> v = level_of(roi, pyramid);
    const Grid<C> g = make_grid(roi, v.scale, pooled_h, pooled_w, sampling_ratio,
                                aligned ? C(0.5) : C(0), !aligned);
    const T* p = plane<const T, I>(v.data, b, o.c, channels, v.height, v.width);
    store(output + index, bin_sum(p, v.height, v.width, g, o.ph, o.pw) / g.count);
  }
}

template <typename T, typename C, typename I>
__device__ void multi_scale_roi_align_backward(I n, const T* grad_output,
                                               const Pyramid<T, C, I>& pyramid, const C* rois,
                                               int batch, int channels, int pooled_h,
                                               int pooled_w, int sampling_ratio, int aligned,
                                               GradSum<C> grad_input) {
  CUPROI_KERNEL_LOOP(index, n, I) {
    const OutputIndex<I> o = output_index(index, channels, pooled_h, pooled_w);
    const C* roi = rois + o.k * 5;
    const int b = batch_of(roi, batch);
    if (b < 0) continue;
    const Level<T, C, I> v = level_of(roi, pyramid);
    const Grid<C> g = make_grid(roi, v.scale, pooled_h, pooled_w, sampling_ratio,
                                aligned ? C(0.5) : C(0), !aligned);
    const C grad = load(grad_output + index) / g.count;
    if (grad == C(0)) continue;
    bin_scatter(grad_input.at(v.offset + plane_offset<I>(b, o.c, channels, v.height, v.width)),
                v.height, v.width, g, o.ph, o.pw, grad);
  }
}

template <typename T, typename C, typename I>
__device__ __forceinline__ Pyramid<T, C, I> pyramid(
    const T* f0, const T* f1, const T* f2, const T* f3, const T* f4, const T* f5, const T* f6,
    const T* f7, int h0, int h1, int h2, int h3, int h4, int h5, int h6, int h7, int w0, int w1,
    int w2, int w3, int w4, int w5, int w6, int w7, C s0, C s1, C s2, C s3, C s4, C s5, C s6,
    C s7, double t1, double t2, double t3, double t4, double t5, double t6, double t7, I o0,
    I o1, I o2, I o3, I o4, I o5, I o6, I o7) {
  Pyramid<T, C, I> p = {{f0, f1, f2, f3, f4, f5, f6, f7},
                        {h0, h1, h2, h3, h4, h5, h6, h7},
                        {w0, w1, w2, w3, w4, w5, w6, w7},
                        {s0, s1, s2, s3, s4, s5, s6, s7},
                        {t1, t2, t3, t4, t5, t6, t7},
                        {o0, o1, o2, o3, o4, o5, o6, o7}};
  return p;
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_MS_GEOMETRY(C)                                                                     \
  int h0, int h1, int h2, int h3, int h4, int h5, int h6, int h7, int w0, int w1, int w2, int w3, \
      int w4, int w5, int w6, int w7, C s0, C s1, C s2, C s3, C s4, C s5, C s6, C s7, double t1,  \
      double t2, double t3, double t4, double t5, double t6, double t7
#define CUPROI_MS_GEOMETRY_ARGS                                                                  \
  h0, h1, h2, h3, h4, h5, h6, h7, w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3, s4, s5, s6, s7, \
      t1, t2, t3, t4, t5, t6, t7

#define CUPROI_EXPORT_MULTI_SCALE_ROI_ALIGN(T, C, SFX, I, ISFX)                                  \
  extern "C" __global__ void cuproi_multi_scale_roi_align_forward_##SFX##ISFX(                   \
      I n, const T* f0, const T* f1, const T* f2, const T* f3, const T* f4, const T* f5,          \
      const T* f6, const T* f7, const C* rois, int batch, int channels, int pooled_h,             \
      int pooled_w, int sampling_ratio, int aligned, CUPROI_MS_GEOMETRY(C), T* output) {          \
    cuproi::multi_scale_roi_align_forward<T, C, I>(                                               \
        n,                                                                                        \
        cuproi::pyramid<T, C, I>(f0, f1, f2, f3, f4, f5, f6, f7, CUPROI_MS_GEOMETRY_ARGS, 0, 0,   \
                                 0, 0, 0, 0, 0, 0),                                               \
        rois, batch, channels, pooled_h, pooled_w, sampling_ratio, aligned, output);              \
  }                                                                                               \
  extern "C" __global__ void cuproi_multi_scale_roi_align_backward_##SFX##ISFX(                  \
      I n, const T* grad_output, const C* rois, int batch, int channels, int pooled_h,            \
      int pooled_w, int sampling_ratio, int aligned, CUPROI_MS_GEOMETRY(C), I o0, I o1, I o2,     \
      I o3, I o4, I o5, I o6, I o7, C* grad_input, cuproi::u64* grad_fixed, const int* exponent,  \
      int deterministic) {                                                                        \
    const T* none = nullptr;                                                                      \
    cuproi::multi_scale_roi_align_backward<T, C, I>(                                              \
        n, grad_output,                                                                           \
        cuproi::pyramid<T, C, I>(none, none, none, none, none, none, none, none,                  \
                                 CUPROI_MS_GEOMETRY_ARGS, o0, o1, o2, o3, o4, o5, o6, o7),        \
        rois, batch, channels, pooled_h, pooled_w, sampling_ratio, aligned,                       \
        cuproi::grad_sum(grad_input, grad_fixed, exponent, deterministic));                       \
  }

CUPROI_EXPORT_MULTI_SCALE_ROI_ALIGN(cuproi::half, float, f16, int, )
CUPROI_EXPORT_MULTI_SCALE_ROI_ALIGN(cuproi::half, float, f16, long long, _i64)
CUPROI_EXPORT_MULTI_SCALE_ROI_ALIGN(float, float, f32, int, )
CUPROI_EXPORT_MULTI_SCALE_ROI_ALIGN(float, float, f32, long long, _i64)
CUPROI_EXPORT_MULTI_SCALE_ROI_ALIGN(double, double, f64, int, )
CUPROI_EXPORT_MULTI_SCALE_ROI_ALIGN(double, double, f64, long long, _i64)

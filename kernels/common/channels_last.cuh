// SPDX-License-Identifier: Apache-2.0
//
// The channels-last (NHWC) kernels of roi_align and deform_roi_pool.
//
// In NCHW every output element reads its own plane: the samples' coordinates and weights are
// computed once per channel, and the 32 loads of a warp hit 32 scattered addresses. In NHWC the
// 32 lanes of a warp take 32 consecutive channels of one bin: each tap is one coalesced load (or
// atomic add), and a box's taps along y and x are computed once per block into shared memory
// (the grid is separable: a sample's y depends on its bin row only, its x on its bin column
// only). The kernels stage the (K, C, PH, PW) outputs and output gradients in shared memory, so
// that those are read and written in contiguous runs. A box whose grid has more samples per axis
// than the tables hold (adaptive sampling on a huge box), or whose bins move (deformable
// offsets), computes its taps on the fly instead, in the same operations.
//   BoxTile      the work of one block: a box, a tile of channels, the box's taps
//   box_tile     sets one up (a barrier: every thread of the block must call it)
//   each_sample  visits the in-range samples of a bin in bin_sum's order
//   stage_in, stage_out  move a chunk of bins of the block's channels between a (K, C, PH, PW)
//                array and shared memory, in contiguous runs (barriers: the whole block calls)
#pragma once

#include "common/bilinear.cuh"

namespace cuproi {

constexpr int CHANNEL_TILE = 32;  // channels of a block: one per lane of a warp
constexpr int TABLE = 128;        // samples per axis (pooled * grid) kept in shared memory

// The block's share of the work: box k, channels [c0, c0 + CHANNEL_TILE), the box's grid and
// its taps along y and x (nullptr: compute them on the fly).
template <typename C, typename I>
struct BoxTile {
  I k;
  int c0, b;  // b: the image, -1 for a box that names none (zeros, no gradient)
  Grid<C> g;
  const AxisTap<C>* ys;
  const AxisTap<C>* xs;
};

// Taps of the samples of every bin row (column) of a box along one axis: entry p * grid + i is
// sample i of bin p, with i0 = -1 where the sample is out of range. Filled by the whole block.
template <typename C>
__device__ __forceinline__ void fill_axis(AxisTap<C>* table, C start, C bin, int grid,
                                          int pooled, int size) {
  for (int e = threadIdx.x; e < pooled * grid; e += blockDim.x) {
    const int p = e / grid;
    if (!axis_tap(size, sample_at(start + p * bin, e % grid, bin, grid), table[e]))
      table[e].i0 = -1;
  }
}

// Work item `item` of K * ceil(channels / CHANNEL_TILE): its box and channels, its grid
// (make_grid's shift and min_one) and, when `ys` and `xs` (shared, TABLE entries each) are given
// and the grid fits, its taps in them. Ends with a barrier, after which the tables are ready.
template <typename C, typename I>
__device__ __forceinline__ BoxTile<C, I> box_tile(I item, const C* rois, C spatial_scale,
                                                  int batch, int channels, int height, int width,
                                                  int pooled_h, int pooled_w, int sampling_ratio,
                                                  C shift, bool min_one, AxisTap<C>* ys,
                                                  AxisTap<C>* xs) {
  const int tiles = (channels + CHANNEL_TILE - 1) / CHANNEL_TILE;
  BoxTile<C, I> t;
  t.k = item / tiles;
  t.c0 = static_cast<int>(item % tiles) * CHANNEL_TILE;
  const C* roi = rois + t.k * 5;
  t.b = batch_of(roi, batch);
  t.g = make_grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, shift, min_one);
  const bool fits = ys != nullptr && t.g.grid_h > 0 && t.g.grid_w > 0 &&
                    pooled_h * t.g.grid_h <= TABLE && pooled_w * t.g.grid_w <= TABLE;
  t.ys = fits ? ys : nullptr;
  t.xs = fits ? xs : nullptr;
  if (t.b >= 0 && fits) {
    fill_axis(ys, t.g.start_y, t.g.bin_h, t.g.grid_h, pooled_h, height);
    fill_axis(xs, t.g.start_x, t.g.bin_w, t.g.grid_w, pooled_w, width);
  }
  __syncthreads();
  return t;
}

// Sample i of bin p along one axis: from the box's table, or computed (table == nullptr).
template <typename C>
__device__ __forceinline__ bool sample_tap(const AxisTap<C>* table, int p, int i, C start,
                                           C bin, int grid, int size, AxisTap<C>& a) {
  if (table != nullptr) {
    a = table[p * grid + i];
    return a.i0 >= 0;
  }
  return axis_tap(size, sample_at(start + p * bin, i, bin, grid), a);
}

// Calls visit(taps) for every in-range sample of bin (ph, pw) of grid g, in bin_sum's order:
// from the tables ys and xs (made from g), or on the fly when they are nullptr.
template <typename C, typename Visit>
__device__ __forceinline__ void each_sample(const Grid<C>& g, const AxisTap<C>* ys,
                                            const AxisTap<C>* xs, int height, int width, int ph,
                                            int pw, Visit visit) {
  int iy0 = 0, iy1 = g.grid_h, ix0 = 0, ix1 = g.grid_w;
  if (ys == nullptr) {  // maybe a huge grid: only the samples that can be in range (bin_sum)
    sample_range(g.start_y + ph * g.bin_h, g.bin_h, g.grid_h, height, iy0, iy1);
    sample_range(g.start_x + pw * g.bin_w, g.bin_w, g.grid_w, width, ix0, ix1);
  }
  for (int iy = iy0; iy < iy1; ++iy) {
    AxisTap<C> ty;
    if (!sample_tap(ys, ph, iy, g.start_y, g.bin_h, g.grid_h, height, ty)) continue;
    for (int ix = ix0; ix < ix1; ++ix) {
      AxisTap<C> tx;
      if (sample_tap(xs, pw, ix, g.start_x, g.bin_w, g.grid_w, width, tx)) visit(combine(ty, tx));
    }
  }
}

// stage[lane][j] = a[k, c0 + lane, bin b0 + j] for the chunk's bins of the block's channels of
// a (K, C, PH, PW) array with `bins` bins, then a barrier.
template <typename T, typename C, typename I, int N>
__device__ __forceinline__ void stage_in(C (*stage)[N], const T* a, const BoxTile<C, I>& t,
                                         int channels, int bins, int b0, int chunk) {
  for (int e = threadIdx.x; e < CHANNEL_TILE * chunk; e += blockDim.x) {
    const int lane = e / chunk, j = e % chunk, c = t.c0 + lane;
    if (c < channels) stage[lane][j] = load(a + (t.k * channels + c) * bins + b0 + j);
  }
  __syncthreads();
}

// The inverse of stage_in, between two barriers (the first: stage is complete; the second: it
// may be refilled).
template <typename T, typename C, typename I, int N>
__device__ __forceinline__ void stage_out(T* a, const C (*stage)[N], const BoxTile<C, I>& t,
                                          int channels, int bins, int b0, int chunk) {
  __syncthreads();
  for (int e = threadIdx.x; e < CHANNEL_TILE * chunk; e += blockDim.x) {
    const int lane = e / chunk, j = e % chunk, c = t.c0 + lane;
    if (c < channels) store(a + (t.k * channels + c) * bins + b0 + j, stage[lane][j]);
  }
  __syncthreads();
}

// Offset of channel c of pixel (0, 0) of image b in an (N, H, W, C) array.
template <typename I>
__device__ __forceinline__ I channels_last_offset(int b, int c, int channels, int height,
                                                  int width) {
  return static_cast<I>(b) * height * width * channels + c;
}

}  // namespace cuproi

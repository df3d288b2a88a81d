// SPDX-License-Identifier: Apache-2.0
//
// Layout changes for the channels-last kernels: NCHW features to NHWC and NHWC gradients back.
// Both are the transpose of the last two axes of a (batch, rows, cols) array, done through
// 32 x 32 tiles in shared memory so that a warp reads 32 consecutive elements and writes 32
// consecutive elements (a plain copy of a transposed view makes one of the two strided).
//
// Entry points (T = f16 | f32 | f64 storage, optional _i64 for 64-bit flat indices):
//   cuproi_layout_transpose_<T>[_i64](I tiles, const T* in, int batch, int rows, int cols,
//                                     T* out)
// out[b, s, r] = in[b, r, s]; tiles = batch * ceil(rows / 32) * ceil(cols / 32), one block per
// tile in a block-stride loop (the host shim walks them all with its one thread). NCHW -> NHWC is
// (rows, cols) = (C, H*W); NHWC -> NCHW is (H*W, C).
#include "common/helpers.cuh"

namespace cuproi {

constexpr int TILE = 32;

template <typename T, typename I>
__device__ void layout_transpose(I tiles, const T* in, int batch, int rows, int cols, T* out) {
  __shared__ T tile[TILE][TILE + 1];  // + 1: the 32 elements of a tile column in 32 banks
  const int tile_rows = (rows + TILE - 1) / TILE, tile_cols = (cols + TILE - 1) / TILE;
  const I per_image = static_cast<I>(tile_rows) * tile_cols;
  for (I t = blockIdx.x; t < tiles; t += gridDim.x) {
    const I b = t / per_image;
    const int r0 = static_cast<int>((t % per_image) / tile_cols) * TILE;
    const int s0 = static_cast<int>(t % tile_cols) * TILE;
    const T* src = in + b * rows * cols;
    T* dst = out + b * rows * cols;
    for (int e = threadIdx.x; e < TILE * TILE; e += blockDim.x) {
      const int r = r0 + e / TILE, s = s0 + e % TILE;
      if (r < rows && s < cols) tile[e / TILE][e % TILE] = src[static_cast<I>(r) * cols + s];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < TILE * TILE; e += blockDim.x) {
      const int s = s0 + e / TILE, r = r0 + e % TILE;
      if (r < rows && s < cols) dst[static_cast<I>(s) * rows + r] = tile[e % TILE][e / TILE];
    }
    __syncthreads();  // the tile is refilled by the next iteration
  }
}

}  // namespace cuproi

// ---- exported entry points -------------------------------------------------------------------

#define CUPROI_EXPORT_LAYOUT(T, SFX, I, ISFX)                                                    \
  extern "C" __global__ void cuproi_layout_transpose_##SFX##ISFX(                                \
      I tiles, const T* in, int batch, int rows, int cols, T* out) {                              \
    cuproi::layout_transpose<T, I>(tiles, in, batch, rows, cols, out);                            \
  }

CUPROI_EXPORT_LAYOUT(cuproi::half, f16, int, )
CUPROI_EXPORT_LAYOUT(cuproi::half, f16, long long, _i64)
CUPROI_EXPORT_LAYOUT(float, f32, int, )
CUPROI_EXPORT_LAYOUT(float, f32, long long, _i64)
CUPROI_EXPORT_LAYOUT(double, f64, int, )
CUPROI_EXPORT_LAYOUT(double, f64, long long, _i64)

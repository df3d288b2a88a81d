"""Where the bins of every op lie: the geometry the CPU ops and cuproi.viz's pictures share.

The sampling grid of RoI Align and its relatives (``make_grid``, as kernels/common/bilinear.cuh
computes it), the per-bin sampling rows and columns of a box, shifted by Deformable RoI
Pooling's offsets (``bin_axes``), and RoI Pool's quantized cell ranges (``pool_bins``), all in
the compute dtype and the kernels' operation order, so that the pictures show the very bins
the ops pool.
"""

from typing import NamedTuple

import numpy as np


class Grid(NamedTuple):
    """Sampling grid of every box, shapes (K,): see kernels/common/bilinear.cuh (make_grid)."""

    start_y: np.ndarray
    start_x: np.ndarray
    height: np.ndarray
    width: np.ndarray
    bin_h: np.ndarray
    bin_w: np.ndarray
    grid_h: np.ndarray  # int64; <= 0 means no samples
    grid_w: np.ndarray
    count: np.ndarray  # divisor of the average, max(grid_h * grid_w, 1)


def make_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, shift, min_one):
    """Sampling grid of ``rois`` (K, 5) in their (compute) dtype.

    ``shift`` is 0.5 for the half-pixel convention; ``min_one`` applies torchvision's legacy
    clamp of the box size to at least 1 when not aligned.
    """
    ct = rois.dtype.type
    scale, shift = ct(spatial_scale), ct(shift)
    start_x = rois[:, 1] * scale - shift
    start_y = rois[:, 2] * scale - shift
    width = (rois[:, 3] * scale - shift) - start_x
    height = (rois[:, 4] * scale - shift) - start_y
    if min_one:
        width = np.maximum(width, ct(1))
        height = np.maximum(height, ct(1))
    bin_h = height / ct(pooled_h)
    bin_w = width / ct(pooled_w)
    return Grid(
        start_y,
        start_x,
        height,
        width,
        bin_h,
        bin_w,
        *samples_per_bin(bin_h, bin_w, sampling_ratio),
    )


def samples_per_bin(bin_h, bin_w, sampling_ratio):
    """``(grid_h, grid_w, count)`` of bins of sizes ``bin_h`` x ``bin_w`` (K,) each.

    ``sampling_ratio`` samples per axis, or where it is 0 or less as many as the bin is cells
    (rounded up, the adaptive grid); ``count``, the divisor of a bin's average, is at least 1.
    """
    ct = bin_h.dtype.type
    if sampling_ratio > 0:
        grid_h = np.full(len(bin_h), sampling_ratio, np.int64)
        grid_w = grid_h
    else:
        grid_h = np.ceil(bin_h).astype(np.int64)
        grid_w = np.ceil(bin_w).astype(np.int64)
    count = np.maximum(grid_h.astype(ct) * grid_w.astype(ct), ct(1))
    return grid_h, grid_w, count


def roi_align_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """Sampling grid of RoI Align (torchvision's).

    Half-pixel shift when ``aligned``, else boxes of at least one cell.
    """
    shift = 0.5 if aligned else 0.0
    return make_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, shift, not aligned)


def deform_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    """Sampling grid of Deformable RoI Pooling (mmcv's): half-pixel shift, no minimum box size."""
    return make_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, 0.5, False)


def bin_rows(g, pooled_h, pooled_w):
    """(start, bin size, samples) of every bin row along y (K, PH) and column along x (K, PW).

    Every bin of a box row shares its row's y axis and every bin of a column its x axis: the
    separable plan of RoI Align and of its position-sensitive variant.
    """
    ct = g.start_y.dtype.type
    y = (
        g.start_y[:, None] + np.arange(pooled_h, dtype=ct) * g.bin_h[:, None],
        np.repeat(g.bin_h[:, None], pooled_h, 1),
        np.repeat(g.grid_h[:, None], pooled_h, 1),
    )
    x = (
        g.start_x[:, None] + np.arange(pooled_w, dtype=ct) * g.bin_w[:, None],
        np.repeat(g.bin_w[:, None], pooled_w, 1),
        np.repeat(g.grid_w[:, None], pooled_w, 1),
    )
    return y, x


def bin_axes(g, offset, pooled, gamma):
    """(start, bin size, samples) of every bin along y and along x, each (K, PH, PW).

    Bin ``(ph, pw)`` of grid ``g`` starts at the box corner shifted by
    ``gamma * box size * offset[:, (x, y), ph, pw]`` (unshifted if ``offset`` is None), plus
    ``ph`` (``pw``) bin sizes. cuproi.viz draws the bins from this.
    """
    pooled_h, pooled_w = pooled
    bins = (len(g.start_y), pooled_h, pooled_w)
    ct = g.start_y.dtype.type
    start_y = g.start_y[:, None, None]
    start_x = g.start_x[:, None, None]
    if offset is not None:  # same operation order as deformed_grid() in the kernel
        start_x = start_x + (ct(gamma) * g.width)[:, None, None] * offset[:, 0]
        start_y = start_y + (ct(gamma) * g.height)[:, None, None] * offset[:, 1]
    y = [
        start_y + np.arange(pooled_h, dtype=ct)[:, None] * g.bin_h[:, None, None],
        g.bin_h[:, None, None],
        g.grid_h[:, None, None],
    ]
    x = [
        start_x + np.arange(pooled_w, dtype=ct) * g.bin_w[:, None, None],
        g.bin_w[:, None, None],
        g.grid_w[:, None, None],
    ]
    return [np.broadcast_to(a, bins) for a in y], [np.broadcast_to(a, bins) for a in x]


def c_round(v):
    """C round(): half away from zero (numpy.round rounds half to even).

    Exact: ``floor(|v| + 0.5)`` is not, it rounds 0.49999997 (float32) up to 1.
    """
    a = np.abs(v)
    r = np.floor(a)
    return np.copysign(r + (a - r >= v.dtype.type(0.5)), v)


def pool_bins(rois, spatial_scale, pooled_h, pooled_w, height, width, inclusive=True):
    """Clipped cell ranges [h0, h1) x [w0, w1) of every bin: (K, PH) and (K, PW) arrays.

    The box is rounded to cells; its size is ``end - start + 1`` cells (RoI Pool's inclusive
    end) or, with ``inclusive=False``, ``end - start`` (position-sensitive RoI Pool); at least 1.
    """
    ct = rois.dtype.type
    scale = ct(spatial_scale)
    x1, y1, x2, y2 = (c_round(rois[:, i] * scale).astype(np.int64) for i in (1, 2, 3, 4))
    bin_h = np.maximum(y2 - y1 + inclusive, 1).astype(ct) / ct(pooled_h)
    bin_w = np.maximum(x2 - x1 + inclusive, 1).astype(ct) / ct(pooled_w)

    def edges(first, bin_size, pooled, size):
        p = np.arange(pooled + 1, dtype=ct)
        lo = np.floor(p[:-1] * bin_size[:, None]).astype(np.int64) + first[:, None]
        hi = np.ceil(p[1:] * bin_size[:, None]).astype(np.int64) + first[:, None]
        lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
        return lo, np.maximum(hi, lo)  # an empty range, not a negative one

    return edges(y1, bin_h, pooled_h, height) + edges(x1, bin_w, pooled_w, width)

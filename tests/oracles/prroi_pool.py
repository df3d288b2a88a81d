"""Float64 loop oracle of Precise RoI Pooling, written from the published semantics.

PreciseRoIPooling (vacancy/PreciseRoIPooling, mmcv's PrRoIPool) integrates, cell by cell, the
bilinear interpolation of the four pixels at the corners of each unit cell, a pixel outside the
map reading zero. On one cell the surface is bilinear, and the integral of a bilinear function
over a rectangle is the rectangle's area times the function's value at its centre; so every bin
is clipped to every cell it meets and contributes ``area * f(centre)``. The bin edges follow the
original: ``start = x1 * s + pw * bw``, ``bw = max(x2 * s - x1 * s, 0) / PW``, computed in the
coordinate dtype of the backend under test; the rest is float64. The output is the integral
divided by the bin area, 0 when the area is 0. This oracle does not use the 1-D hat integrals
of the implementations.
"""

import math

import numpy as np

from oracles.sampling import gather, scatter


def _edges(a, b, scale, pooled, p, coord):
    begin = coord(a) * coord(scale)
    extent = coord(b) * coord(scale) - begin
    size = max(extent, coord(0)) / coord(pooled)
    start = begin + coord(p) * size
    return float(start), float(start + size), float(size)


def _cells(lo, hi, size):
    """Unit cells [i, i + 1] meeting [lo, hi], as (i, clipped lo, clipped hi); i in [-1, size)."""
    out = []
    for i in range(max(math.floor(lo), -1), min(math.ceil(hi), size)):
        a, b = max(lo, i), min(hi, i + 1)
        if b > a:
            out.append((i, a, b))
    return out


def _corners(i, j, yc, xc, h, w):
    """The four (row, column, bilinear weight) of the cell (i, j) at (yc, xc), inside the map."""
    dy, dx = yc - i, xc - j
    taps = [
        (i, j, (1 - dy) * (1 - dx)),
        (i, j + 1, (1 - dy) * dx),
        (i + 1, j, dy * (1 - dx)),
        (i + 1, j + 1, dy * dx),
    ]
    return [(r, c, wt) for r, c, wt in taps if 0 <= r < h and 0 <= c < w]


def _bin_weights(roi, scale, pooled, ph, pw, h, w, coord):
    """Every (row, column, weight) of one bin's output, the weights summed per cell."""
    y0, y1, bh = _edges(roi[2], roi[4], scale, pooled[0], ph, coord)
    x0, x1, bw = _edges(roi[1], roi[3], scale, pooled[1], pw, coord)
    area = bh * bw
    if area == 0:
        return []
    out = []
    for i, ya, yb in _cells(y0, y1, h):
        for j, xa, xb in _cells(x0, x1, w):
            part = (yb - ya) * (xb - xa) / area
            for r, c, wt in _corners(i, j, (ya + yb) / 2, (xa + xb) / 2, h, w):
                out.append((r, c, part * wt))
    return out


def _bins(boxes, input_shape, output_size, spatial_scale, coord_dtype):
    """Yield (k, b, ph, pw, weights, 1) of every bin: the output is the weighted sum itself."""
    h, w = input_shape[-2:]
    for k, roi in enumerate(np.asarray(boxes, np.float64)):
        for ph, pw in np.ndindex(*output_size):
            weights = _bin_weights(roi, spatial_scale, output_size, ph, pw, h, w, coord_dtype)
            yield k, int(roi[0]), ph, pw, weights, 1


def prroi_pool(x, boxes, output_size, spatial_scale=1.0, coord_dtype=np.float64):
    """Forward: (K, C, PH, PW) float64."""
    bins = _bins(boxes, np.shape(x), output_size, spatial_scale, coord_dtype)
    return gather(x, bins, (len(boxes), np.shape(x)[1], *output_size))


def prroi_pool_backward(
    g, boxes, input_shape, output_size, spatial_scale=1.0, coord_dtype=np.float64
):
    """Input gradient: (N, C, H, W) float64."""
    return scatter(
        g, _bins(boxes, input_shape, output_size, spatial_scale, coord_dtype), input_shape
    )

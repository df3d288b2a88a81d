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


def _line(x, b, at, lo, hi, along_x):
    """(C,) integral of image ``b``'s surface along a segment of a grid line, float64.

    Along x at height ``at`` from ``lo`` to ``hi`` (``along_x``), else along y at abscissa
    ``at``. The surface is 0 beyond [-1, H] x [-1, W]; on each unit cell it is linear along the
    segment, so a piece integrates to its length times the value at its middle.
    """
    h, w = x.shape[-2:]
    total = np.zeros(x.shape[1])
    if not -1 <= at <= (h if along_x else w):
        return total
    across = min(math.floor(at), (h if along_x else w) - 1)  # the cell the line lies in
    for j, a, c in _cells(lo, hi, w if along_x else h):
        mid = (a + c) / 2
        cell, point = ((across, j), (at, mid)) if along_x else ((j, across), (mid, at))
        for r, col, wt in _corners(*cell, *point, h, w):
            total += (c - a) * wt * x[b, :, r, col]
    return total


def prroi_pool_box_backward(g, x, boxes, output_size, spatial_scale=1.0):
    """Box gradient (K, 5) float64 by the Leibniz rule, with no difference of the forward.

    A bin's output is ``I / A``: ``I`` the integral of the surface over the bin, ``A`` its area.
    Its edges are affine in the box: the top edge of bin row ``ph`` is ``s * y1 + ph * bh``,
    ``bh = s * (y2 - y1) / PH``, so it moves by ``s * (1 - ph / PH)`` with ``y1`` and by
    ``s * ph / PH`` with ``y2`` (the bottom edge likewise with ``ph + 1``; the columns with x).
    An edge moving outwards by ``d`` adds ``d`` times the integral along it to ``I`` and ``d``
    times its length to ``A``. A box of zero or negative extent has no area and no gradient.
    """
    x = np.asarray(x, np.float64)
    g = np.asarray(g, np.float64)
    h, w = x.shape[-2:]
    pooled_h, pooled_w = output_size
    s = float(spatial_scale)
    out = np.zeros((len(boxes), 5))
    for k, roi in enumerate(np.asarray(boxes, np.float64)):
        b = int(roi[0])
        bh, bw = s * (roi[4] - roi[2]) / pooled_h, s * (roi[3] - roi[1]) / pooled_w
        if bh <= 0 or bw <= 0:
            continue
        for ph, pw in np.ndindex(pooled_h, pooled_w):
            top, left = s * roi[2] + ph * bh, s * roi[1] + pw * bw
            bottom, right = top + bh, left + bw
            integral = np.zeros(x.shape[1])
            for i, ya, yb in _cells(top, bottom, h):
                for j, xa, xb in _cells(left, right, w):
                    for r, c, wt in _corners(i, j, (ya + yb) / 2, (xa + xb) / 2, h, w):
                        integral += (yb - ya) * (xb - xa) * wt * x[b, :, r, c]
            area = bh * bw
            # Each edge: outwards (+1) or inwards (-1) as its coordinate grows, the integral
            # along it, its length, and its motion with (the first, the second) box coordinate.
            edges = (
                (-1, _line(x, b, top, left, right, True), bw, (2, 4), ph / pooled_h),
                (1, _line(x, b, bottom, left, right, True), bw, (2, 4), (ph + 1) / pooled_h),
                (-1, _line(x, b, left, top, bottom, False), bh, (1, 3), pw / pooled_w),
                (1, _line(x, b, right, top, bottom, False), bh, (1, 3), (pw + 1) / pooled_w),
            )
            for outwards, line, length, (first, second), share in edges:
                # d(I / A) per unit of the edge's motion.
                rate = outwards * (line * area - integral * length) / area**2
                value = np.dot(g[k, :, ph, pw], rate)
                out[k, first] += s * (1 - share) * value
                out[k, second] += s * share * value
    return out

"""Precise RoI Pooling on the CPU: a separable sparse operator, chunked over boxes.

The surface ``f(y, x) = sum v[h, w] hat(y - h) hat(x - w)`` integrates over a bin as
``sum v[h, w] Wy[h] Wx[w]``, with ``Wy[h]`` the integral of ``hat(y - h)`` over the bin's rows
divided by its height (likewise ``Wx``): the outer product of two short vectors per bin, the
structure of RoI Align's sampling operator (``_sampling.AxisTaps`` and ``operator``), whose
rows here are exact 1-D integrals instead of summed bilinear weights. The taps' slopes are the
derivatives of those weights with respect to one edge of the bin, which gives the box gradient.
Same coordinates, operation order and pixel ranges as kernels/prroi_pool.cu.
"""

from typing import NamedTuple

import numpy as np

from cuproi import _results
from cuproi._cpu import _cells, _sampling, _scratch


class Axes(NamedTuple):
    """One axis of every bin, shapes (K, P): start, size, first pixel and pixel count."""

    start: np.ndarray
    size: np.ndarray
    lo: np.ndarray
    count: np.ndarray


def _axes(a, b, spatial_scale, pooled, size):
    """Bins of the boxes' edges ``a``, ``b`` (K,) along an axis of ``size`` pixels."""
    ct = a.dtype.type
    scale = ct(spatial_scale)
    begin = a * scale
    extent = b * scale - begin
    bin_size = np.maximum(extent, ct(0)) / ct(pooled)
    start = begin[:, None] + np.arange(pooled, dtype=ct) * bin_size[:, None]
    bin_size = np.repeat(bin_size[:, None], pooled, 1)
    end = start + bin_size
    # Pixels whose hat meets the bin; none when it has no size or lies beyond [-1, size].
    valid = (bin_size > 0) & (end > ct(-1)) & (start < ct(size))
    lo = np.clip(np.floor(start), 0, size - 1).astype(np.int64)
    hi = np.clip(np.ceil(end), 0, size - 1).astype(np.int64)
    count = np.where(valid, hi - lo + 1, 0)
    return Axes(start, bin_size, np.where(valid, lo, 0), count)


def hat_share(t, z):
    """A pixel's share of a bin along an axis, ``(weight, start, end)``.

    With ``t`` = the bin's start - the pixel and ``z`` = its size (> 0), ``weight`` is
    ``(1 / z) * integral of hat over [t, t + z]``, ``start`` and ``end`` its derivatives with
    respect to the bin's start and end, from the fractions of ``[t, t + z]`` on the pieces of
    ``hat``: the operations of hat_share in kernels/prroi_pool.cu, which says why.
    """
    ct = t.dtype.type
    one, zero, half = ct(1), ct(0), ct(0.5)

    def most(a, b):  # the kernels' cmax and cmin
        return np.where(a > b, a, b)

    def least(a, b):
        return np.where(a < b, a, b)

    e = t + z
    l1, r1, l2, r2 = most(t, -one), least(e, zero), most(t, zero), least(e, one)
    # Divided one by one: 1 / z overflows for a subnormal z (float32 below 2.9e-39). Lanes
    # within one piece divide too (their fractions are replaced below): no warnings from those.
    with np.errstate(divide="ignore", invalid="ignore"):
        clipped = [
            most(least(e, -one) - t, zero) / z,
            most(r1 - l1, zero) / z,
            most(r2 - l2, zero) / z,
            most(e - most(t, one), zero) / z,
        ]
    # Within a piece: all of it ((t + z) - t may round away from z); the kernel's order of tests.
    piece = np.select(
        [(t >= -one) & (e <= zero), (t >= zero) & (e <= one), e <= -one, t >= one], [1, 2, 0, 3], -1
    )
    f0, f1, f2, f3 = (
        np.where(piece < 0, f, (piece == j).astype(ct)) for j, f in enumerate(clipped)
    )
    rise, fall, both = half * f1 * f1, half * f2 * f2, f1 * f2
    weight = np.select(
        [piece == 1, piece == 2, piece >= 0],
        [(t + one) + half * z, (one - t) - half * z, zero],
        f1 * (one + half * (l1 + r1)) + f2 * (one - half * (l2 + r2)),
    )
    start = ((rise + both) - fall) + f3 * (f1 - f2)
    end = f0 * (f1 - f2) + ((rise - both) - fall)
    return weight, start, end


def _plan(rois, shape, spatial_scale, pooled_h, pooled_w):
    """The y (K, PH) and x (K, PW) axes of every bin and a bound on each box's entries."""
    _, h, w = shape
    y = _axes(rois[:, 2], rois[:, 4], spatial_scale, pooled_h, h)
    x = _axes(rois[:, 1], rois[:, 3], spatial_scale, pooled_w, w)
    return y, x, y.count.sum(1) * x.count.sum(1)


def _bins(rois, plan):
    """``(rois, plan)`` with every bin a box of its own (_sampling.every_bin_a_box)."""
    y, x, _ = plan
    bins = y.start.shape[1] * x.start.shape[1]
    y, x = (Axes(*a) for a in _sampling.every_bin_a_box(y, x))
    return np.repeat(rois, bins, axis=0), (y, x, y.count[:, 0] * x.count[:, 0])


def _reach(rois, plan):
    """The cells that the bins of every box integrate over (_cells.Cells)."""
    y, x, _ = plan

    def axis(a):
        some = a.count > 0  # a box without such bins gets an empty range (lo > hi)
        lo = np.where(some, a.lo, np.iinfo(np.int64).max).min(1)
        return lo, np.where(some, a.lo + a.count, 0).max(1)

    return _cells.Cells(rois[:, 0].astype(np.int64), *axis(y), *axis(x))


def _taps(axes, k0, k1, edge=None):
    """AxisTaps of the bins of boxes ``k0:k1`` (rows (box, p) in C order).

    ``weight`` is the normalized integral of every pixel's hat over the bin; ``slope`` its
    derivative with respect to the bin's start (``edge=0``) or end (``edge=1``).
    """
    start, size, lo, count = (a[k0:k1].ravel() for a in axes)
    first = np.cumsum(count) - count
    row = np.repeat(np.arange(len(count)), count)
    index = lo[row] + (np.arange(row.size) - first[row])
    ct = start.dtype.type
    s, z = start[row], size[row]
    t = s - index.astype(ct)
    weight, *slopes = hat_share(t, z)
    slope = np.zeros_like(weight) if edge is None else slopes[edge]
    ptr = np.concatenate([[0], np.cumsum(count)])
    return _sampling.AxisTaps(ptr, index, weight, slope)


def _operator(rois, plan, shape, k0, k1, edge=None, pixels=None):
    """Sparse operator of boxes ``k0:k1``, one row per bin in (box, ph, pw) order.

    With ``edge`` also the derivatives with respect to the bins' x and y start (0) or end (1).
    Its columns are every pixel, or the rows of ``pixels`` (_sampling.pixels_read, reached).
    """
    y, x, _ = plan
    pooled_h, pooled_w = y.start.shape[1], x.start.shape[1]
    k = k1 - k0
    box = np.repeat(np.arange(k), pooled_h * pooled_w)
    ph, pw = np.meshgrid(np.arange(pooled_h), np.arange(pooled_w), indexing="ij")
    return _sampling.operator(
        _taps(y, k0, k1, edge),
        _taps(x, k0, k1, edge),
        y_of_bin=box * pooled_h + np.tile(ph.ravel(), k),
        x_of_bin=box * pooled_w + np.tile(pw.ravel(), k),
        image_of_bin=rois[k0:k1, 0].astype(np.int64)[box],
        count_of_bin=np.ones(len(box)),
        shape=shape,
        dtype=rois.dtype,
        slopes=edge is not None,
        pixels=pixels,
    )


def prroi_pool(input, rois, output_size, spatial_scale):
    pooled_h, pooled_w = output_size
    n, c, h, w = input.shape
    shape = (n, h, w)
    out = _results.empty(np, (len(rois), c, pooled_h, pooled_w), rois.dtype)
    plan = _plan(rois, shape, spatial_scale, pooled_h, pooled_w)
    # float16 is computed in float32, converted as it is copied.
    pixels = _sampling.pixels_read(input, _reach(rois, plan), rois.dtype)
    target = out
    if _sampling.too_large(plan[-1]):  # every bin a box: (K * PH * PW, C, 1, 1)
        rois, plan = _bins(rois, plan)
        target = np.empty((len(rois), c, 1, 1), rois.dtype)

    def operator(k0, k1):
        return _operator(rois, plan, shape, k0, k1, pixels=pixels)

    parts = _sampling.parts(plan[-1], _sampling.work_per_entry(c))
    _sampling.forward(parts, operator, pixels, target, out)
    return out.astype(input.dtype, copy=False)


def _box_gradient(grad_output, input, rois, spatial_scale):
    """(K, 5) gradient with respect to ``rois``: see kernels/prroi_pool.cu."""
    n, c, h, w = input.shape
    k, _, pooled_h, pooled_w = grad_output.shape
    shape = (n, h, w)
    ct = rois.dtype.type
    g_rows = _sampling.BinRows(grad_output, ct)
    bins = pooled_h * pooled_w
    plan = _plan(rois, shape, spatial_scale, pooled_h, pooled_w)
    pixels = _sampling.pixels_read(input, _reach(rois, plan), ct)
    if _sampling.too_large(plan[-1]):  # every bin a box: bins of one row each
        rois, plan = _bins(rois, plan)
        bins = 1
    # d out / d (x start, y start, x end, y end) of every bin, dotted with g, in (box, ph, pw)
    # order; chunks of boxes (or of bins) fill their rows.
    d = np.empty((4, len(g_rows)), np.float64)
    for k0, k1 in _sampling.chunks(plan[-1]):
        rows = slice(k0 * bins, k1 * bins)
        g_chunk = g_rows(rows.start, rows.stop)
        for edge in (0, 1):
            _, mx, my = _operator(rois, plan, shape, k0, k1, edge, pixels)
            for axis, m in enumerate((mx, my)):
                terms = m @ pixels.rows
                d[2 * edge + axis, rows] = np.einsum("bc,bc->b", terms, g_chunk, dtype=np.float64)
    dx0, dy0, dx1, dy1 = d.reshape(4, k, pooled_h, pooled_w)
    # Fractions of the box at the start (u0) and end (u1) of every bin row and column.
    uy0 = (np.arange(pooled_h) / pooled_h)[:, None]
    uy1 = (np.arange(1, pooled_h + 1) / pooled_h)[:, None]
    ux0 = np.arange(pooled_w) / pooled_w
    ux1 = np.arange(1, pooled_w + 1) / pooled_w
    out = np.zeros((k, 5), np.float64)
    out[:, 1] = (dx0 * (1 - ux0) + dx1 * (1 - ux1)).sum((1, 2))
    out[:, 2] = (dy0 * (1 - uy0) + dy1 * (1 - uy1)).sum((1, 2))
    out[:, 3] = (dx0 * ux0 + dx1 * ux1).sum((1, 2))
    out[:, 4] = (dy0 * uy0 + dy1 * uy1).sum((1, 2))
    _scratch.give(pixels.rows)
    out[:, 1:] *= float(ct(spatial_scale))
    return out.astype(ct)


def prroi_pool_backward(grad_output, rois, input_shape, spatial_scale, *, deterministic=False):
    n, c, h, w = input_shape
    shape = (n, h, w)
    _, _, pooled_h, pooled_w = grad_output.shape
    g_rows = _sampling.BinRows(grad_output, rois.dtype)
    plan = _plan(rois, shape, spatial_scale, pooled_h, pooled_w)
    pixels = _sampling.pixels_reached(_reach(rois, plan), shape, c)
    bins = pooled_h * pooled_w
    if _sampling.too_large(plan[-1]):  # every bin a box, in the order of the gradient's rows
        rois, plan = _bins(rois, plan)
        bins = 1
    return _sampling.input_gradient(
        input_shape,
        grad_output.dtype,
        bins,
        _sampling.parts(plan[-1], _sampling.work_per_entry(c)),
        lambda k0, k1: _operator(rois, plan, shape, k0, k1, pixels=pixels),
        g_rows,
        pixels,
    )


def prroi_pool_box_backward(grad_output, input, rois, spatial_scale, *, deterministic=False):
    """The (K, 5) gradient with respect to the boxes, which reads the features ``input``."""
    return _box_gradient(grad_output, input, rois, spatial_scale)

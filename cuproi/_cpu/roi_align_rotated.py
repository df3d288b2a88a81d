"""Rotated RoI Align on the CPU: a sparse operator built from the 4 taps of every sample.

Rotation couples the axes, so the separable operator of ``_sampling.operator`` does not apply:
every sample of every bin is enumerated (only those that can fall inside the map, see
``_range``), rotated, and contributes its 4 bilinear taps to its bin's row of a sparse matrix
``A`` (bins x pixels). Forward is ``A @ X``, the input gradient ``A.T @ G``. Boxes are processed
in chunks that bound the operator's memory (``_sampling.chunks``), split again into ranges for
the backend's threads (``_parallel``). Coordinates are computed in the compute dtype in the
operation order of kernels/roi_align_rotated.cu, so both backends take the same samples. The
forward copies only the tiles of the features that the rotated boxes may read (``_reach``,
``_sampling.pixels_read``).
"""

import numpy as np
import scipy.sparse

from cuproi import _results
from cuproi._cpu import _geometry, _parallel, _sampling, _scratch


def rotation(angle, clockwise, ct):
    """Cosine and sine of ``angle`` degrees (negated when clockwise) in double, rounded to ``ct``.

    As ``rotation()`` in kernels/roi_align_rotated.cu: the angle is reduced exactly to
    ``r = a - 90 q`` in [-45, 45] degrees with ``a = fmod(angle, 360)`` and ``q`` the nearest
    multiple of 90, and cos/sin of ``r * (pi / 180)`` are turned by ``q`` quarter turns, so that
    multiples of 90 degrees are exact.
    """
    a = np.asarray(angle, np.float64)
    if clockwise:
        a = -a
    a = np.fmod(a, 360.0)
    q = np.floor(a / 90.0 + 0.5)
    r = (a - 90.0 * q) * (np.pi / 180.0)
    c, s = np.cos(r), np.sin(r)
    quarter = np.mod(q.astype(np.int64), 4)
    cos_t = np.choose(quarter, [c, -s, -c, s])
    sin_t = np.choose(quarter, [s, c, -s, -c])
    return cos_t.astype(ct), sin_t.astype(ct)


def _range(start, bin_size, grid, lo_b, hi_b, err):
    """Samples ``[lo, hi)`` of each bin whose box-frame coordinate may lie in ``[lo_b, hi_b]``.

    Mirrors ``rotated_range`` of the kernel: a superset of the samples that can fall inside the
    map (widened by ``err`` and 4 samples each side); the exact per-sample test decides.
    """
    ct = start.dtype.type
    hi = np.maximum(grid, 0)
    with np.errstate(all="ignore"):
        step = bin_size / grid.astype(ct)
        e = err + ct(8 * np.finfo(ct).eps) * (np.abs(start) + np.abs(bin_size))
        a = (lo_b - e - start) / step - ct(0.5)
        b = (hi_b + e - start) / step - ct(0.5)
        a, b = np.where(step < 0, b, a), np.where(step < 0, a, b)
        lo = np.clip(np.nan_to_num(np.floor(a) - 4), 0, hi).astype(np.int64)
        up = np.clip(np.nan_to_num(np.floor(b) + 5), 0, hi).astype(np.int64)
        at_start = (start >= lo_b - e) & (start <= hi_b + e)
        zero = step == 0
    lo = np.where(zero, 0, lo)
    up = np.where(zero, np.where(at_start, hi, 0), up)
    return lo, np.maximum(up, lo)


def _plan(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise):
    """Everything the operators of any range of boxes need, and each box's cost."""
    _, h, w = shape
    ct = rois.dtype.type
    scale = ct(spatial_scale)
    shift = ct(0.5) if aligned else ct(0)
    center_x = rois[:, 1] * scale - shift
    center_y = rois[:, 2] * scale - shift
    width = rois[:, 3] * scale
    height = rois[:, 4] * scale
    if not aligned:  # mmcv's legacy minimum size
        width = np.maximum(width, ct(1))
        height = np.maximum(height, ct(1))
    bin_h = height / ct(pooled_h)
    bin_w = width / ct(pooled_w)
    grid_h, grid_w, count = _geometry.samples_per_bin(bin_h, bin_w, sampling_ratio)
    cos_t, sin_t = rotation(rois[:, 5], clockwise, ct)
    # Box-frame bounds of the map area [-1, H] x [-1, W]: yy = cos dy + sin dx, xx = cos dx -
    # sin dy for its corners (dy, dx) relative to the centre.
    dy = np.stack([ct(-1) - center_y, ct(h) - center_y])
    dx = np.stack([ct(-1) - center_x, ct(w) - center_x])
    cy, sx, cx, sy = cos_t * dy, sin_t * dx, cos_t * dx, sin_t * dy
    lo_y, hi_y = cy.min(0) + sx.min(0), cy.max(0) + sx.max(0)
    lo_x, hi_x = cx.min(0) - sy.max(0), cx.max(0) - sy.min(0)
    err = ct(32 * np.finfo(ct).eps) * (
        np.abs(center_y) + np.abs(center_x) + ct(h) + ct(w) + ct(2) + np.abs(height) + np.abs(width)
    )
    start_y = ct(-0.5) * height
    start_x = ct(-0.5) * width
    y_start = start_y[:, None] + np.arange(pooled_h).astype(ct) * bin_h[:, None]  # (K, PH)
    x_start = start_x[:, None] + np.arange(pooled_w).astype(ct) * bin_w[:, None]  # (K, PW)
    iy = _range(
        y_start, bin_h[:, None], grid_h[:, None], lo_y[:, None], hi_y[:, None], err[:, None]
    )
    ix = _range(
        x_start, bin_w[:, None], grid_w[:, None], lo_x[:, None], hi_x[:, None], err[:, None]
    )
    cost = 4 * (iy[1] - iy[0]).sum(1) * (ix[1] - ix[0]).sum(1)
    return {
        "rois": rois,
        "size": (height, width),
        "shape": shape,
        "center": (center_y, center_x),
        "bin": (bin_h, bin_w),
        "grid": (grid_h, grid_w),
        "count": count,
        "rotation": (cos_t, sin_t),
        "start": (y_start, x_start),
        "range": (iy, ix),
        "cost": cost,
    }


def _reach(plan):
    """The cells every rotated box's samples may read (``_sampling.reach``).

    Every sample lies in its box, so within the box's axis-aligned bounding box: the centre
    plus or minus ``|cos| h / 2 + |sin| w / 2`` along y and ``|sin| h / 2 + |cos| w / 2`` along
    x, in double; reach() widens it by a cell and by far more than the rounding of positions
    computed in float32, and a NaN box reaches the whole map.
    """
    rois = plan["rois"]
    center_y, center_x = (a.astype(np.float64) for a in plan["center"])
    half_h, half_w = (np.abs(a.astype(np.float64)) / 2 for a in plan["size"])
    cos_t, sin_t = (np.abs(a.astype(np.float64)) for a in plan["rotation"])
    extent_y = cos_t * half_h + sin_t * half_w
    extent_x = sin_t * half_h + cos_t * half_w
    y = ((center_y - extent_y)[:, None], (2 * extent_y)[:, None])
    x = ((center_x - extent_x)[:, None], (2 * extent_x)[:, None])
    return _sampling.reach(rois[:, 0], y, x, plan["shape"])


def _operator(plan, k0, k1, pixels=None):
    """Sparse operator of boxes ``k0:k1``: one row per bin, (box, ph, pw) in C order.

    The samples are enumerated in pieces of at most ``_sampling.BUDGET / 4`` (each gives 4
    entries), whose matrices are summed: memory stays bounded even for one box with a huge
    fixed ``sampling_ratio`` (up to 1024**2 samples per bin), while the result holds one entry
    per (bin, pixel) pair. Its columns are every pixel, or the rows of ``pixels``
    (_sampling.pixels_read): those are renumbered last, so that every row keeps its entries in
    pixel order and a product sums them in the same order either way.
    """
    n, h, w = plan["shape"]
    ct = plan["rois"].dtype.type
    (iy0, iy1), (ix0, ix1) = ((r[0][k0:k1], r[1][k0:k1]) for r in plan["range"])
    pooled_h, pooled_w = plan["start"][0].shape[1], plan["start"][1].shape[1]
    kk = k1 - k0
    bins = kk * pooled_h * pooled_w
    box = np.repeat(np.arange(kk), pooled_h * pooled_w)
    ph = np.tile(np.repeat(np.arange(pooled_h), pooled_w), kk)
    pw = np.tile(np.arange(pooled_w), kk * pooled_h)
    nx = (ix1 - ix0)[box, pw]
    counts = (iy1 - iy0)[box, ph] * nx
    ends = np.cumsum(counts)
    starts = ends - counts
    total = int(ends[-1]) if bins else 0
    piece = max(_sampling.BUDGET // 4, 1)
    a = None
    for s0 in range(0, max(total, 1), piece):
        samples = np.arange(s0, min(s0 + piece, total))
        entry_bin = np.searchsorted(ends, samples, side="right")
        local = samples - starts[entry_bin]
        part = _samples_matrix(plan, k0, box, ph, pw, nx, entry_bin, local, bins)
        a = part if a is None else a + part
    a.sum_duplicates()
    a.eliminate_zeros()
    a = a.astype(ct)
    if pixels is None:
        return a
    columns = pixels.index(a.indices)
    return scipy.sparse.csr_matrix((a.data, columns, a.indptr), shape=(bins, pixels.size))


def _samples_matrix(plan, k0, box, ph, pw, nx, entry_bin, local, bins):
    """(bins x pixels) matrix of the given samples: ``local`` is each one's index in its bin."""
    n, h, w = plan["shape"]
    rois = plan["rois"]
    eb, ep, eq = box[entry_bin], ph[entry_bin], pw[entry_bin]
    width = nx[entry_bin]
    sy = plan["range"][0][0][k0 + eb, ep] + local // width
    sx = plan["range"][1][0][k0 + eb, eq] + local % width
    k = k0 + eb
    bin_h, bin_w = (a[k] for a in plan["bin"])
    grid_h, grid_w = (a[k] for a in plan["grid"])
    yy = _sampling.sample_positions(plan["start"][0][k, ep], bin_h, grid_h, sy)
    xx = _sampling.sample_positions(plan["start"][1][k, eq], bin_w, grid_w, sx)
    cos_t, sin_t = (a[k] for a in plan["rotation"])
    center_y, center_x = (a[k] for a in plan["center"])
    y = (yy * cos_t - xx * sin_t) + center_y
    x = (yy * sin_t + xx * cos_t) + center_x
    inside = _sampling.in_range(y, h) & _sampling.in_range(x, w)
    entry_bin, k, y, x = entry_bin[inside], k[inside], y[inside], x[inside]
    y0, y1, ly, _ = _sampling.edge_taps(y, h)
    x0, x1, lx, _ = _sampling.edge_taps(x, w)
    ly, lx = ly.astype(np.float64), lx.astype(np.float64)
    hy, hx = 1.0 - ly, 1.0 - lx
    base = rois[k, 0].astype(np.int64) * h
    rows = np.tile(entry_bin, 4)
    columns = np.concatenate(
        [(base + y0) * w + x0, (base + y0) * w + x1, (base + y1) * w + x0, (base + y1) * w + x1]
    )
    inverse_count = 1.0 / plan["count"][k].astype(np.float64)
    values = np.concatenate([hy * hx, hy * lx, ly * hx, ly * lx]) * np.tile(inverse_count, 4)
    return scipy.sparse.csr_matrix((values, (rows, columns)), shape=(bins, n * h * w))


def roi_align_rotated(input, rois, output_size, spatial_scale, sampling_ratio, aligned, clockwise):
    pooled_h, pooled_w = output_size
    n, c, h, w = input.shape
    out = _results.empty(np, (len(rois), c, pooled_h, pooled_w), rois.dtype)
    plan = _plan(
        rois, (n, h, w), spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise
    )
    # float16 is computed in float32, converted as it is copied.
    pixels = _sampling.pixels_read(input, _reach(plan), rois.dtype)

    def run(k0, k1):  # every bin is one row of A @ X: no range depends on another
        _sampling.apply(_operator(plan, k0, k1, pixels), pixels.rows, out[k0:k1])

    for parts in _sampling.parts(plan["cost"], _sampling.work_per_entry(c)):
        _parallel.map_ordered(lambda r: run(*r), parts)
    _scratch.give(pixels.rows)
    return out.astype(input.dtype, copy=False)


def roi_align_rotated_backward(
    grad_output,
    rois,
    input_shape,
    spatial_scale,
    sampling_ratio,
    aligned,
    clockwise,
    *,
    deterministic=False,
):
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    g_rows = _sampling.BinRows(grad_output, rois.dtype)
    plan = _plan(
        rois, (n, h, w), spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise
    )
    pixels = _sampling.pixels_reached(_reach(plan), (n, h, w), c)
    return _sampling.input_gradient(
        input_shape,
        grad_output.dtype,
        pooled_h * pooled_w,
        _sampling.parts(plan["cost"], _sampling.work_per_entry(c)),
        lambda k0, k1: _operator(plan, k0, k1, pixels),
        g_rows,
        pixels,
    )

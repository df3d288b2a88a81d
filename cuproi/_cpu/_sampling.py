"""Bilinear sampling of RoI bins as a sparse linear operator.

RoI Align and Deformable RoI Pooling average the bilinear interpolation of a grid of samples in
every bin. Within one bin the grid is a tensor product (a sample's y depends on its row only,
its x on its column only) and the bilinear weights factor as ``w(y, x) = wy(y) * wx(x)``, with
the out-of-range test and the edge clamping applied to each axis on its own. So the weights of a
whole bin are the outer product of two short vectors: the y-weights of its sample rows summed
per feature row, and likewise for x. This module builds those vectors for many bins at once,
then the sparse matrix ``A`` (bins x pixels) whose rows are the outer products divided by the
sample count. Forward is ``A @ X`` with ``X`` the features as (pixels, channels); the input
gradient is ``A.T @ G``.

Coordinates are computed in the compute dtype (float32 for float32 features, float64 for
float64) in the same operation order as the CUDA kernels, so both backends agree on which
samples fall inside the map.
"""

import functools
from typing import NamedTuple

import numpy as np
import scipy.sparse

from cuproi import _results
from cuproi._cpu import _cells, _parallel, _scratch

# Entries of the sparse operator built at once; boxes are processed in chunks below this.
BUDGET = 1 << 21

# Values of a gradient's bin rows copied at once (BinRows.groups): 8 MiB of float32.
ROWS = 1 << 21

# Products of small_product at most (slots x bins x channels): 256 KiB of float32.
SMALL = 1 << 16


def sample_range(start, bin_size, grid, size):
    """Samples ``[lo, hi)`` of each bin that may fall inside ``[-1, size]``.

    Sample ``i`` of a bin is at ``start + (i + 0.5) * bin_size / grid``. Samples outside the map
    add zero, so only this range is visited: the work of a huge box is bounded by the map. The
    range is widened by a bound on rounding, so it contains every in-range sample; the exact
    test is applied per sample afterwards. Mirrors ``sample_range`` in kernels/common.
    """
    ct = start.dtype.type
    # size may be an array, which ct(size) would turn into a scalar where it holds one value
    # (NumPy 1.x, with a DeprecationWarning).
    end, wide = np.asarray(size, ct), np.asarray(np.add(size, 1), ct)
    hi = np.maximum(grid, 0)
    with np.errstate(all="ignore"):
        step = bin_size / grid.astype(ct)
        err = ct(8 * np.finfo(ct).eps) * (np.abs(start) + np.abs(bin_size) + wide)
        a = (ct(-1) - err - start) / step - ct(0.5)
        b = (end + err - start) / step - ct(0.5)
        a, b = np.where(step < 0, b, a), np.where(step < 0, a, b)
        # Clipped to [0, hi]: infinities to the ends, NaN to 0 (fmax takes the number).
        lo = np.fmax(np.minimum(np.floor(a) - 4, hi), 0).astype(np.int64)
        up = np.fmax(np.minimum(np.floor(b) + 5, hi), 0).astype(np.int64)
        # A zero-size bin puts every sample at `start`: all in range or none.
        at_start = (start >= ct(-1) - err) & (start <= end + err)
        zero = step == 0
    lo = np.where(zero, 0, lo)
    up = np.where(zero, np.where(at_start, hi, 0), up)
    up = np.where(np.abs(start) <= ct(1e30), up, 0)  # NaN or infinite start: nothing
    return lo, np.maximum(up, lo)


def samples_bound(start, bin_size, grid, size):
    """Upper bound on the number of distinct taps of each bin along one axis."""
    lo, hi = sample_range(start, bin_size, grid, size)
    return np.minimum(2 * (hi - lo), size)


class AxisTaps(NamedTuple):
    """Summed weights of each bin's samples along one axis, as ragged rows.

    Row ``r`` is ``index[ptr[r]:ptr[r + 1]]`` (sorted feature rows or columns) with ``weight``,
    the summed bilinear weights, and ``slope``, the summed derivative of those weights with
    respect to the bin's position (zero in the clamped edge bands).
    """

    ptr: np.ndarray
    index: np.ndarray
    weight: np.ndarray
    slope: np.ndarray


def sample_positions(start, bin_size, grid, i):
    """Position of sample ``i`` of each bin, ``start + (i + 0.5) * bin_size / grid``.

    In the dtype of ``start`` and the operation order of sample_at() in the kernels; the
    arguments broadcast. Shared by axis_taps and cuproi.viz, which draws these very points.
    """
    ct = start.dtype.type
    return start + (np.asarray(i).astype(ct) + ct(0.5)) * bin_size / np.asarray(grid).astype(ct)


def in_range(pos, size):
    """Samples that count: inside ``[-1, size]`` (NaN is outside); the others add zero."""
    ct = pos.dtype.type
    return (pos >= ct(-1)) & (pos <= np.asarray(size, ct))


def edge_taps(pos, size):
    """The two taps of samples at ``pos`` (in range) along an axis of ``size`` cells.

    Returns ``(low, high, frac, free)``: the weights are ``1 - frac`` at ``low`` and ``frac``
    at ``high``. A sample in the band below 0 is clamped to 0, one at or past the last cell to
    it (edge replication); ``free`` is False there, where the weights do not move with it.
    """
    ct = pos.dtype.type
    free = pos >= 0
    pos = np.maximum(pos, ct(0))
    low = pos.astype(np.int64)
    top = low >= size - 1
    high = np.where(top, size - 1, low + 1)
    low = np.where(top, size - 1, low)
    pos = np.where(top, low.astype(ct), pos)
    free &= ~top
    return low, high, pos - low.astype(ct), free


def axis_taps(start, bin_size, grid, size):
    """Taps of the samples ``start + (i + 0.5) * bin_size / grid`` of each bin (row).

    ``size`` is the length of the axis, or one per row (see :func:`taps`).
    """
    ct = start.dtype.type
    rows = len(start)
    size = np.full(rows, size) if np.ndim(size) == 0 else size
    lo, hi = sample_range(start, bin_size, grid, size)
    n = hi - lo
    first = np.cumsum(n) - n
    row = np.repeat(np.arange(rows), n)
    i = lo[row] + (np.arange(row.size) - first[row])
    pos = sample_positions(start[row], bin_size[row], grid[row], i)
    inside = in_range(pos, size[row])
    row, pos = row[inside], pos[inside]
    low, high, frac, free = edge_taps(pos, size[row])
    # Merge the two taps of every sample into one sorted entry per (row, index).
    stride = max(int(size.max(initial=1)), 1)
    keys = np.concatenate([row * stride + low, row * stride + high])
    unique, inverse = _unique(keys)
    weight = np.bincount(inverse, np.concatenate([ct(1) - frac, frac]), len(unique))
    sign = free.astype(np.float64)
    slope = np.bincount(inverse, np.concatenate([-sign, sign]), len(unique))
    keep = (weight != 0) | (slope != 0)
    unique, weight, slope = unique[keep], weight[keep], slope[keep]
    ptr = np.searchsorted(unique // stride, np.arange(rows + 1))
    return AxisTaps(ptr, unique % stride, weight, slope)


def _unique(keys):
    """``np.unique(keys, return_inverse=True)`` of a 1-D integer array, in a few calls.

    NumPy's checks and options cost more than the sort on the small arrays of a few boxes.
    """
    order = np.argsort(keys)
    ordered = keys[order]
    new = np.empty(len(keys), bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    inverse = np.empty(len(keys), np.intp)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


def taps(y, x, h, w):
    """:func:`axis_taps` of the bin rows ``y`` along H and ``x`` along W, in one pass.

    ``y`` and ``x`` are (start, bin size, grid) 1-D arrays. The rows are independent, so the
    taps are those of two calls; one call halves the fixed cost that dominates small problems.
    Returns ``(ys, xs)``, two AxisTaps that share their index arrays.
    """
    rows = len(y[0])
    size = np.concatenate([np.full(rows, h), np.full(len(x[0]), w)])
    t = axis_taps(*(np.concatenate(pair) for pair in zip(y, x, strict=True)), size)
    return t._replace(ptr=t.ptr[: rows + 1]), t._replace(ptr=t.ptr[rows:])


def operator(
    ys, xs, y_of_bin, x_of_bin, image_of_bin, count_of_bin, shape, dtype, slopes=False, pixels=None
):
    """Sparse (bins x N*H*W) matrix of the bins' averaged bilinear weights.

    ``ys``/``xs`` are AxisTaps; bin ``j`` uses y-row ``y_of_bin[j]`` and x-row ``x_of_bin[j]``
    of image ``image_of_bin[j]`` and divides by ``count_of_bin[j]``. With ``slopes`` also
    returns the matrices of the derivatives with respect to the bin's x and y position. With
    ``pixels`` (:func:`pixels_read`, :func:`pixels_reached`), the columns are their rows
    instead of all N*H*W pixels.
    """
    n, h, w = shape
    bins = len(y_of_bin)
    my = np.diff(ys.ptr)[y_of_bin]
    mx = np.diff(xs.ptr)[x_of_bin]
    indptr = np.concatenate([[0], np.cumsum(my * mx)])
    # A bin's entries are its y taps, each followed by the run of its x taps: built per
    # (bin, y tap) pair, then repeated along the runs (no division of entry numbers).
    pair_bin = np.repeat(np.arange(bins), my)
    jy = ys.ptr[y_of_bin][pair_bin] + (np.arange(pair_bin.size) - (np.cumsum(my) - my)[pair_bin])
    run = mx[pair_bin]
    jx = np.repeat(xs.ptr[x_of_bin][pair_bin] - (np.cumsum(run) - run), run)
    jx += np.arange(jx.size)
    if pixels is None or pixels.runs is None:
        row = (image_of_bin[pair_bin] * h + ys.index[jy]) * w
        columns = np.repeat(row, run) + xs.index[jx]
    else:
        image, y = (np.repeat(a, run) for a in (image_of_bin[pair_bin], ys.index[jy]))
        columns = pixels.at(image, y, xs.index[jx])
    size = n * h * w if pixels is None else pixels.size
    inverse_count = (1.0 / count_of_bin.astype(np.float64))[pair_bin]

    def matrix(y_values, x_values):
        values = np.repeat(y_values[jy] * inverse_count, run) * x_values[jx]
        return scipy.sparse.csr_matrix((values.astype(dtype), columns, indptr), shape=(bins, size))

    a = matrix(ys.weight, xs.weight)
    if not slopes:
        return a
    return a, matrix(ys.weight, xs.slope), matrix(ys.slope, xs.weight)


def too_large(cost):
    """Whether a box's operator outgrows a chunk (``cost`` (K,) bounds each box's entries).

    A chunk holds one box at least, so such a box (one over a whole 4096^2 map with adaptive
    sampling: 17M entries, three times the map in memory) would be built whole. The ops then
    make every bin a box of its own (:func:`every_bin_a_box`), built a few bins at a time: each
    bin's operator row, and so its value, is the same.
    """
    return len(cost) > 0 and cost.max() > BUDGET


def every_bin_a_box(y, x):
    """Separable bin axes as (K * PH * PW, 1) ones: every bin a box of its own.

    ``y`` and ``x`` are sequences of (K, PH) and (K, PW) arrays (per bin row and column); the
    boxes of the result are the bins in (box, ph, pw) order, the rows of a (K, C, PH, PW)
    gradient's :class:`BinRows`.
    """
    pooled_h, pooled_w = y[0].shape[1], x[0].shape[1]
    return (
        [np.repeat(a, pooled_w, axis=1).reshape(-1, 1) for a in y],
        [np.tile(a, (1, pooled_h)).reshape(-1, 1) for a in x],
    )


def bins_to_boxes(rows, out):
    """``out`` (K, C, PH, PW) from ``rows`` (K * PH * PW, C, ...): every bin's values, as a box."""
    k, c, ph, pw = out.shape
    out[...] = rows.reshape(k, ph, pw, c).transpose(0, 3, 1, 2)


def chunks(cost, budget=None):
    """Consecutive ranges of boxes whose summed ``cost`` stays within ``budget`` (BUDGET).

    Every range holds at least one box, whatever its cost.
    """
    budget = BUDGET if budget is None else budget
    total = np.cumsum(cost)
    start, k = 0, len(cost)
    while start < k:
        base = total[start - 1] if start else 0
        stop = max(int(np.searchsorted(total, base + budget, side="right")), start + 1)
        yield start, stop
        start = stop


def parts(cost, work_per_cost, budget=None):
    """Yield, for every chunk of boxes (see :func:`chunks`), its ranges for the threads.

    Each item is a list of consecutive ``(first box, last box + 1)`` ranges covering one chunk,
    of about equal cost (``_parallel.ranges``), for as many threads as the chunk's work (its
    cost times ``work_per_cost``, in ``_parallel.PRODUCT_GRAIN``'s units) is worth.
    """
    for k0, k1 in chunks(cost, budget):
        work = float(cost[k0:k1].sum()) * work_per_cost
        workers = _parallel.workers(work, _parallel.PRODUCT_GRAIN)
        yield [(k0 + a, k0 + b) for a, b in _parallel.ranges(cost[k0:k1], workers)]


def work_per_entry(channels, bound=False):
    """Work of an operator entry in a product with ``channels`` columns, building it included.

    With ``bound``, per unit of a bound on the entries (:func:`samples_bound`'s products, about
    twice as many as there turn out to be).
    """
    return (channels + 16) / (2 if bound else 1)


class Pixels(NamedTuple):
    """Pixels of an (N, H, W) map as the rows of the products: see :func:`pixels_read`.

    ``rows`` is the (P, C) matrix (None where only the layout is needed: a backward), ``runs``
    the _cells.Runs the rows hold, or None for every pixel in NCHW order.
    """

    rows: np.ndarray | None
    runs: _cells.Runs | None
    shape: tuple

    @property
    def size(self):
        """P, the number of rows."""
        return int(np.prod(self.shape)) if self.runs is None else self.runs.size

    def at(self, image, y, x):
        """The rows of the pixels ``(image, y, x)`` (broadcast int64 arrays)."""
        if self.runs is None:
            _, h, w = self.shape
            return (image * h + y) * w + x
        return self.runs.rows_of(image, y, x)

    def index(self, flat):
        """The rows of the pixels of flat (N*H*W) indices ``flat``."""
        if self.runs is None:
            return flat
        _, h, w = self.shape
        image, rest = np.divmod(flat, h * w)
        return self.runs.rows_of(image, *np.divmod(rest, w))


def pixels_read(x, cells, dtype=None):
    """The pixels of (N, C, H, W) ``x`` that ``cells`` (:func:`reach`) cover, as Pixels.

    The rows are a C-contiguous matrix of ``dtype``: the runs of tiles the cells overlap
    (_cells), or every pixel when they cover most of the map (``_cells.channels_last``).
    Copying a large NCHW map channels last costs more than a few boxes' products on it: this
    copies what they read. Even features stored channels last, which the products could read
    in place, are copied then: a backward's layout (the same Pixels) then stays as small.
    A copy is taken from _scratch: give ``rows`` back to it when done.
    """
    n, _, h, w = x.shape
    runs = _cells.runs(cells, n, h, w, x.shape[1])
    if runs is None:  # a view of features stored channels last, else a copy
        return Pixels(_cells.channels_last(x, dtype, _scratch.take), None, (n, h, w))
    return Pixels(_cells.copy_rows(x, runs, dtype, _scratch.take), runs, (n, h, w))


def pixels_reached(cells, shape, channels):
    """The layout of :func:`pixels_read` for an (N, H, W) map, without rows: for a backward.

    ``channels`` is the number the gradient has (see _cells.runs).
    """
    return Pixels(None, _cells.runs(cells, *shape, channels), tuple(shape))


def reach(image, y, x, shape):
    """The cells that the samples of every box's bins may read, as ``_cells.Cells``.

    ``y`` and ``x`` are the (start, size) of each box's bins along the axis, arrays of shape
    (K, ...) in feature coordinates (a size may be negative); a bin's samples lie between its
    start and its end. A sample reads the cell at the floor of its position and the next,
    clamped to the map; the bounds are widened by a cell and a relative 1e-5 for the rounding
    of positions computed in float32, NaN bounds reach the whole axis, and the cells are
    clipped to the (N, H, W) ``shape``.
    """
    _, h, w = shape

    def axis(start, size, length):
        start = np.asarray(start, np.float64)
        end = start + size
        every = tuple(range(1, start.ndim))
        lo = np.fmin.reduce(np.fmin(start, end), axis=every)
        hi = np.fmax.reduce(np.fmax(start, end), axis=every)
        slack = 1 + 1e-5 * (np.abs(lo) + np.abs(hi))
        with np.errstate(invalid="ignore"):  # clipped to [0, length], NaN to the whole axis
            first = np.fmax(np.minimum(np.floor(lo - slack), length), 0)
            stop = np.fmin(np.maximum(np.floor(hi + slack) + 2, 0), length)
        return first.astype(np.int64), stop.astype(np.int64)

    return _cells.Cells(np.asarray(image).astype(np.int64), *axis(*y, h), *axis(*x, w))


def forward(parts, operator, pixels, target, out):
    """``out`` (K, C, PH, PW) = ``A @ X``, chunk after chunk: the forward of the chunked paths.

    ``parts`` are the chunks' ranges of boxes for the threads (:func:`parts`), ``operator(k0,
    k1)`` builds the operator of boxes ``k0:k1`` on the rows of ``pixels``
    (:func:`pixels_read`), which are given back to the scratch memory once read. ``target`` is
    ``out``, or ``out``'s bins as boxes of their own (K * PH * PW, C, 1, 1) where every bin was
    made a box (:func:`every_bin_a_box`).
    """

    def run(k0, k1):  # every bin is one row of A @ X: no range depends on another
        apply(operator(k0, k1), pixels.rows, target[k0:k1])

    for ranges in parts:
        _parallel.map_ordered(lambda r: run(*r), ranges)
    _scratch.give(pixels.rows)
    if target is not out:
        bins_to_boxes(target, out)


# Values of a product with the features computed at a time (8 MiB of float32: 160 boxes of 256
# channels at 7x7). A range's whole product, as large as its part of the output, was held
# beside it until transposed into it: 4096 boxes' forward peaked at 273 MB, by pieces at 250
# MB, in the same time (the box head's forwards alternated on a 2-core VM, within its noise);
# Deformable RoI Pool's backward with offset gradients, by pieces, about 5 % less on 1 thread.
APPLY = 1 << 21


def apply(a, x_rows, out):
    """``out[...] = A @ X`` with ``out`` (K, C, PH, PW) and ``A``'s rows its bins in C order.

    Computed by pieces of boxes (APPLY values), each transposed into ``out`` as it is made.
    """
    k, c, ph, pw = out.shape
    bins = ph * pw
    for k0, k1 in chunks(np.full(k, bins * c), APPLY):
        piece = a if k1 - k0 == k else a[k0 * bins : k1 * bins]
        bins_to_boxes(piece @ x_rows, out[k0:k1])


def _padded(t):
    """AxisTaps ``t`` as (rows, M) arrays ``(index, weight, valid)``: row r's taps, then 0s."""
    n = np.diff(t.ptr)
    valid = np.arange(n.max(initial=0)) < n[:, None]
    at = np.where(valid, t.ptr[:-1, None] + np.arange(valid.shape[1]), 0)
    return np.where(valid, t.index[at], 0), np.where(valid, t.weight[at], 0), valid


def small_product(x, ys, xs, y_of_bin, x_of_bin, image_of_bin, count_of_bin, dtype):
    """``A @ X`` of :func:`operator`'s ``A`` for a small problem, without building ``A``.

    ``x`` is the (N, C, H, W) features, the other arguments :func:`operator`'s. Returns the
    (bins, C) sums of ``dtype``. A bin's entries (its y taps, each followed by its x taps)
    are slots of a dense (My x Mx, bins, C) array of products, 0 where a bin has fewer taps,
    summed slot after slot in place (``np.add.accumulate``: in order, as SciPy's product
    adds its entries; ``np.sum`` would sum in pairs). Adding 0 changes no sum, and a sum
    that starts at its first product is the product's sum from 0 but for the sign of a
    zero, which the final ``+ 0`` settles: the bits of ``A @ X``, in a few NumPy calls where
    building ``A`` costs more than its product (one box of one channel).
    """
    (iy, wy, vy), (ix, wx, vx) = (_padded(ys), _padded(xs))
    # (My, 1, bins) against (1, Mx, bins): every bin's slots, y taps first.
    iy, wy, vy = (a[y_of_bin].T[:, None] for a in (iy, wy, vy))
    ix, wx, vx = (a[x_of_bin].T[None] for a in (ix, wx, vx))
    values = (wy * (1.0 / count_of_bin.astype(np.float64)) * wx).astype(dtype)
    rows = x.transpose(0, 2, 3, 1)[image_of_bin, iy, ix].astype(dtype, copy=False)
    products = np.where((vy & vx)[..., None], values[..., None] * rows, dtype.type(0))
    products = products.reshape(len(vy) * vx.shape[1], len(y_of_bin), x.shape[1])
    if len(products) == 0:  # no bin has a tap
        return np.zeros(products.shape[1:], dtype)
    return np.add.accumulate(products, out=products)[-1] + dtype.type(0)


class DenseTaps(NamedTuple):
    """The taps of each row (bin row or column) as a dense window of cells: see dense_taps.

    Row ``r`` taps cells ``base[r] + u`` for ``u < U`` where ``keep[r, u]``, with the summed
    weights ``weight[r, u]`` (float64): the entries of :func:`axis_taps`, in the same order.
    """

    base: np.ndarray
    weight: np.ndarray
    keep: np.ndarray


# Samples of a row, and cells of its window, at most in dense_taps.
DENSE = 64


def dense_taps(start, bin_size, grid, size):
    """:func:`axis_taps` of rows of few samples as a window of cells each, or None.

    ``start``, ``bin_size``, ``grid`` and ``size`` are 1-D arrays, one per row. For a few
    bins, the ragged lists of axis_taps (a range of samples per row, a sort to merge the taps)
    cost more NumPy calls than the work; here every row has the same ``max(grid)`` samples,
    the missing ones weighing 0, and its taps are the cells of a window from its first tap,
    summed by ``np.bincount`` in axis_taps' order (a row's low taps by sample, then its high
    ones; an added 0 changes no sum of these non-negative weights). A sample counts where
    axis_taps' would: in ``[-1, size]`` and, as sample_range decides, of a finite start within
    1e30. None when a row has more than DENSE samples or spans more than DENSE cells.
    """
    ct = start.dtype.type
    samples = int(grid.max(initial=0))
    if not 0 < samples <= DENSE:
        return None
    i = np.arange(samples)
    grid = np.where(np.abs(start) <= ct(1e30), grid, 0)[:, None]  # as sample_range decides
    size = size[:, None]
    with np.errstate(all="ignore"):  # NaN and infinite bins: no sample counts
        pos = sample_positions(start[:, None], bin_size[:, None], grid, i)
    valid = (i < grid) & in_range(pos, size)
    low, high, frac, free = edge_taps(np.where(valid, pos, ct(0)), size)
    base = np.where(valid, low, size).min(1, keepdims=True)  # no sample: past the map
    taps = np.stack([low, high]) - base
    cells = int(np.where(valid, taps[1], 0).max()) + 1
    if cells > DENSE:
        return None
    # One bincount sums the weights and, past them, the slopes, which decide with the weights
    # which taps axis_taps keeps: (low, high) weights, then (low, high) slopes, by sample.
    rows = len(start)
    keys = np.where(valid, taps, 0) + np.arange(rows)[:, None] * cells
    keys = np.concatenate([keys, keys + rows * cells])
    sign = free.astype(np.float64)
    values = np.where(valid, np.stack([ct(1) - frac, frac, -sign, sign]), 0)
    sums = np.bincount(keys.ravel(), values.ravel(), 2 * rows * cells).reshape(2, rows, cells)
    return DenseTaps(base, sums[0], (sums != 0).any(0))


class DenseSlots(NamedTuple):
    """Few bins' entries as dense slots: see :func:`dense_slots`.

    ``values`` (K, PH, PW, Uy, Ux) are the entries' values, ``keep`` where there is an entry
    (elsewhere a slot adds nothing), ``rows`` (K, PH, Uy) and ``cols`` (K, PW, Ux) their cells.
    """

    values: np.ndarray
    keep: np.ndarray
    rows: np.ndarray
    cols: np.ndarray


def dense_slots(ys, xs, count, dtype, h, w):
    """The operator's entries of few boxes' bins as dense slots, from their :func:`dense_taps`.

    ``ys`` and ``xs`` are the dense taps of the boxes' (K * PH) bin rows and (K * PW) bin
    columns on an H x W map, ``count`` (K,) each box's divisor. A bin's slots are its window's
    cells, y first, as :func:`operator` orders a bin's entries; each holds the entry's value,
    ``(wy / count) * wx`` rounded to ``dtype``, where both taps are kept.
    """
    k = len(count)
    (by, wy, ky), (bx, wx, kx) = ((a.reshape(k, -1, *a.shape[1:]) for a in t) for t in (ys, xs))
    inverse = 1.0 / count.astype(np.float64)
    values = (wy * inverse[:, None, None])[:, :, None, :, None] * wx[:, None, :, None, :]
    keep = ky[:, :, None, :, None] & kx[:, None, :, None, :]
    # Slots past a row's last tap hold no entry; their cells are clipped to the map.
    rows = np.minimum(by + np.arange(wy.shape[2]), h - 1)
    cols = np.minimum(bx + np.arange(wx.shape[2]), w - 1)
    return DenseSlots(values.astype(dtype), keep, rows, cols)


def dense_product(x, slots, image):
    """``A @ X`` of few bins (:func:`dense_slots`) as their (K, C, PH, PW) averages.

    The bits of the operator's product, as :func:`small_product` sums it: every slot's
    product, 0 where it holds no entry, added slot after slot (``np.add.accumulate``), then
    ``+ 0`` for the sign of a zero sum.
    """
    dtype = slots.values.dtype
    *_, uy, ux = slots.values.shape
    # Every (box, channel, bin, slot)'s pixel: (K, C, PH, PW, Uy, Ux).
    pixels = x[
        image[:, None, None, None, None, None],
        np.arange(x.shape[1])[:, None, None, None, None],
        slots.rows[:, None, :, None, :, None],
        slots.cols[:, None, None, :, None, :],
    ].astype(dtype, copy=False)
    products = np.where(slots.keep[:, None], slots.values[:, None] * pixels, dtype.type(0))
    products = products.reshape(*products.shape[:4], uy * ux)
    if uy * ux == 0:
        return np.zeros(products.shape[:4], dtype)
    return np.add.accumulate(products, axis=-1)[..., -1] + dtype.type(0)


def dense_transpose(grad, slots, image, g):
    """``grad += A.T @ G`` of few bins (:func:`dense_slots`), ``g`` their (K, C, PH, PW) gradient.

    ``grad`` is a zeroed (N, C, H, W) array, C-contiguous NCHW or channels last (its memory
    raveled is a view). ``np.add.at`` adds the entries one after another, each channel's in
    (box, bin) order: each pixel sums its bins in order, from 0, as the product with the
    transposed operator does (a pixel is one entry of a bin at most). A ``grad`` narrower than
    the compute dtype (float16) gets each pixel's sum rounded once: the pixels read are summed
    apart, no wide gradient of the whole map.
    """
    dtype = slots.values.dtype
    n_step, c_step, h_step, w_step = (step // grad.itemsize for step in grad.strides)
    keep = slots.keep
    # Every entry's pixel, as its place in grad's memory (either layout), and its terms (C, E).
    place = image[:, None, None, None, None] * n_step + slots.rows[:, :, None, :, None] * h_step
    place = (place + slots.cols[:, None, :, None, :] * w_step)[keep]
    g = g.astype(dtype, copy=False).transpose(1, 0, 2, 3)[..., None, None]
    terms = np.broadcast_to(g, (len(g), *keep.shape))[:, keep] * slots.values[keep]
    channel = np.arange(len(g))[:, None]
    memory = grad.ravel(order="K")  # a view
    if grad.dtype == dtype:
        np.add.at(memory, place + channel * c_step, terms)
        return
    pixels, inverse = _unique(place)
    sums = np.zeros((len(g), len(pixels)), dtype)
    np.add.at(sums, (channel, inverse), terms)
    memory[pixels + channel * c_step] = sums


def _columns_read(a):
    """The sorted columns that sparse ``a`` has entries in, and each entry's place among them.

    A byte per column marks them where there are at most 32 columns an entry (cheaper than a
    sort); else they are sorted, and no array of every column is made (one small box on a
    huge map).
    """
    if a.shape[1] <= 32 * a.nnz:
        read = np.zeros(a.shape[1], bool)
        read[a.indices] = True
        columns = np.flatnonzero(read)
        return columns, np.searchsorted(columns, a.indices)
    return np.unique(a.indices, return_inverse=True)


def tapped(x, a, dtype):
    """Operator ``a`` on the pixels it reads only, and those pixels of ``x`` as its rows.

    ``a``'s columns are every pixel of the (N, C, H, W) features ``x`` (:func:`operator`
    without ``pixels``). Returns ``(a', rows)``: ``rows`` is the C-contiguous (P, C) matrix
    of ``dtype`` of the P pixels that ``a`` reads, gathered from ``x`` in either layout, and
    ``a'`` is ``a`` with its columns renumbered to them. Its entries keep their order, so its
    products keep their bits. A few boxes on a large map read a small part of it: copying the
    pixels their samples tap costs less than the tiles they reach (:func:`pixels_read`).
    """
    n, _, h, w = x.shape
    pixel, column = _columns_read(a)
    image, at = np.divmod(pixel, h * w)
    rows = x.transpose(0, 2, 3, 1)[(image, *np.divmod(at, w))].astype(dtype, copy=False)
    return scipy.sparse.csr_matrix((a.data, column, a.indptr), (a.shape[0], len(pixel))), rows


def zeros(shape, dtype, channels_last=False):
    """A zeroed (N, C, H, W) gradient for :func:`add_transposed`, NCHW or stored channels last."""
    if not channels_last:
        return _results.zeros(np, shape, dtype)
    n, c, h, w = shape
    return np.zeros((n, h, w, c), dtype).transpose(0, 3, 1, 2)


# Elements rounded at once by narrow(): 256 KiB of float32.
_NARROW = 1 << 16


def narrow(grad, dtype):
    """The gradient ``grad`` (summed in float32) as ``dtype`` (float16), in its own memory.

    Returns ``grad`` itself when it has ``dtype`` already. Else each element is rounded once,
    in memory order, into the first half of ``grad``'s buffer, whose end is then given back
    (``ndarray.resize``: a realloc), so a float16 gradient summed in float32 costs its
    float32 sums, 1x the gradient beyond it, and no second array. ``grad`` must be an
    (N, C, H, W) view (NCHW or channels last) of a C-contiguous array that nothing else
    refers to, and is not to be used afterwards: its memory moves.
    """
    if grad.dtype == dtype:
        return grad
    owner = grad
    while owner.base is not None:
        owner = owner.base
    shape, layout = grad.shape, grad.strides  # grad may be owner, whose shape resize changes
    size = owner.size
    wide, half = owner.reshape(-1), owner.reshape(-1).view(dtype)
    for i in range(0, size, _NARROW):  # floats [i, j) land at or before where they were
        j = min(i + _NARROW, size)
        half[i:j] = wide[i:j]  # NumPy buffers the one overlapping copy, the first
    del wide, half
    ratio = owner.itemsize // np.dtype(dtype).itemsize
    owner.resize(-(-size // ratio), refcheck=False)  # the caller's views die with the old memory
    strides = tuple(s // ratio for s in layout)
    return np.lib.stride_tricks.as_strided(owner.view(dtype)[:size], shape, strides)


def input_gradient(shape, dtype, bins, parts, operator, g_rows, pixels=None, channels_last=False):
    """The (N, C, H, W) input gradient ``A.T @ G`` of ``dtype``, summed over chunks of boxes.

    ``parts`` are the chunks' ranges of boxes for the threads (:func:`parts`), ``operator(k0,
    k1)`` builds the operator of boxes ``k0:k1`` (``bins`` rows per box; its columns the rows of
    ``pixels``, or every pixel) and ``g_rows`` (:class:`BinRows`) makes the bins' gradients in
    the compute dtype, a chunk and a group of channels at a time. float16 is summed in float32:
    with one chunk each pixel's sum is rounded once, as it is written, so no float32 gradient
    is allocated; with several it is, and rounded at the end in its own memory (:func:`narrow`).
    """
    parts = list(parts)
    grad = zeros(shape, dtype if len(parts) <= 1 else g_rows.dtype, channels_last)
    for ranges in parts:
        ops = _parallel.map_ordered(lambda r: operator(*r), ranges)
        k0, k1 = ranges[0][0], ranges[-1][1]
        add_transposed(grad, ops, g_rows.groups(k0 * bins, k1 * bins), pixels)
    return narrow(grad, dtype)


def _blocks(n, h, w, pixels):
    """Blocks of ``pixels``' rows: an int64 array of ``[first row, last row + 1, image, *where]``.

    ``where`` is ``(y0, y1, x0, x1)`` for a run of tiles, or ``(s0, s1)`` for a range of
    ``_cells.BLOCK`` pixels of an image in NCHW order (no runs: every pixel).
    """
    if pixels is not None and pixels.runs is not None:
        return pixels.runs.blocks()
    per_image = -(-(h * w) // _cells.BLOCK)
    image = np.repeat(np.arange(n), per_image)
    s0 = np.tile(np.arange(per_image) * _cells.BLOCK, n)
    s1 = np.minimum(s0 + _cells.BLOCK, h * w)
    return np.column_stack([image * h * w + s0, image * h * w + s1, image, s0, s1])


# Elements of A.T @ G computed at once (1 MiB of float32): a span of consecutive blocks, whose
# product stays in cache until its blocks are added to the gradient. One product per block
# cost the runs of a few boxes (ps_roi_align's two output channels: thousands of runs a row)
# more in SciPy's slicing than in the products.
_SPAN = 1 << 18


def _spans(blocks, channels):
    """Ranges of ``blocks`` of consecutive rows and at most _SPAN elements (one block at least).

    A span ends where the next block does not start at its last row (blocks without entries
    are left out of ``blocks``), so that its product holds no rows but its blocks'.
    """
    sizes = (blocks[:, 1] - blocks[:, 0]) * max(channels, 1)
    breaks = np.flatnonzero(blocks[1:, 0] != blocks[:-1, 1]) + 1
    spans = []
    for s0, s1 in zip([0, *breaks], [*breaks, len(blocks)], strict=True):
        total, start = np.cumsum(sizes[s0:s1]), 0
        while start < s1 - s0:
            base = total[start - 1] if start else 0
            stop = max(int(np.searchsorted(total, base + _SPAN, side="right")), start + 1)
            spans.append((s0 + start, s0 + stop))
            start = stop
    return spans


def add_transposed(grad, operators, groups, pixels=None):
    """``grad += A.T @ G`` for ``A`` the row blocks ``operators`` stacked, in parallel.

    ``grad`` is an (N, C, H, W) array, NCHW or channels last, or a sequence of N (C, H, W)
    arrays with contiguous planes; ``A``'s columns are the rows of ``pixels`` (every pixel when
    None). ``groups`` yields ``(c0, c1, G[:, c0:c1])`` for groups of channels covering them all
    (:meth:`BinRows.groups`), one held at a time. ``A.T`` is built as a CSR matrix (one row per
    pixel, its entries in bin order) and cut into spans of blocks of pixels (:func:`_blocks`,
    :func:`_spans`) that stay in cache, each computed and added straight into its cells of
    ``grad``: no (pixels, C) gradient is allocated and transposed afterwards. The spans are
    spread over the threads; every pixel's sum runs over its bins in the same order whatever
    the split of the spans or the channels, so the result does not depend on the number of
    threads. ``operators``, a list, is emptied once ``A.T`` is built, so that ``A`` is not held
    beside it while the products run (4096 boxes at 7x7: 11 MB each).
    """
    a = operators[0] if len(operators) == 1 else scipy.sparse.vstack(operators, format="csr")
    if a.nnz == 0:
        return
    n, (c, h, w) = len(grad), grad[0].shape
    if isinstance(grad, np.ndarray) and 8 * a.nnz < a.shape[1]:
        _add_few_pixels(grad, a, groups, pixels)
        return
    t = a.T.tocsr()
    operators.clear()
    del a
    blocks = _blocks(n, h, w, pixels)
    blocks = blocks[t.indptr[blocks[:, 1]] > t.indptr[blocks[:, 0]]]  # those with entries
    spans = edges = cost = None

    def run(start, stop, group):
        c0, c1, g_rows = group
        for b0, b1 in spans[start:stop]:
            first, last = blocks[b0, 0], blocks[b1 - 1, 1]
            product = t[first:last] @ g_rows
            for q0, q1, image, *where in blocks[b0:b1].tolist():
                if len(where) == 2:
                    cells = grad[image].reshape(c, h * w)[c0:c1, where[0] : where[1]]  # a view
                else:
                    y0, y1, x0, x1 = where
                    cells = grad[image][c0:c1, y0:y1, x0:x1]
                cells += product[q0 - first : q1 - first].T.reshape(cells.shape)

    for group in groups:
        width = group[1] - group[0]
        if spans is None:  # the spans of the first group's width serve every group
            spans = _spans(blocks, width)
            edges = np.array(spans, np.int64).reshape(-1, 2)
            cost = t.indptr[blocks[edges[:, 1] - 1, 1]] - t.indptr[blocks[edges[:, 0], 0]]
        work = t.nnz * width  # multiply-adds: the operator is built already
        run_group = functools.partial(run, group=group)
        _parallel.for_ranges(run_group, cost, _parallel.workers(work, _parallel.PRODUCT_GRAIN))
        del group, run_group  # before the next group is made


def _add_few_pixels(grad, a, groups, pixels):
    """``grad += A.T @ G`` for an operator ``A`` with entries in few of the map's pixels.

    A chunk of the bins of a box too large for one chunk (roi_align's _bins) reads a part of
    a huge map: transposed over every pixel, each chunk would cost arrays of the whole map
    (the backward of one box over a 4096^2 map took twice its memory beyond the gradient).
    The pixels it reads are numbered afresh, A.T is built over them, and each pixel's sum (its
    bins in order) is added once, to its cells.
    """
    n, c, h, w = grad.shape
    rows, columns = _columns_read(a)
    compact = scipy.sparse.csr_matrix((a.data, columns, a.indptr), shape=(a.shape[0], len(rows)))
    t = compact.T.tocsr()
    if pixels is not None and pixels.runs is not None:
        runs = pixels.runs
        j = np.searchsorted(runs.first, rows, side="right") - 1
        y, x = np.divmod(rows - runs.first[j], runs.x1[j] - runs.x0[j])
        image, y, x = runs.image[j], runs.y0[j] + y, runs.x0[j] + x
    else:
        image, rest = np.divmod(rows, h * w)
        y, x = np.divmod(rest, w)
    for c0, c1, g_rows in groups:
        grad[image, c0:c1, y, x] += t @ g_rows  # distinct pixels, each (c1 - c0,)
        del g_rows  # before the next group is made


class BinRows:
    """A (K, C, PH, PW) gradient's bins as the rows ``box * PH * PW + bin`` of its channels.

    The products read the gradient as (K * PH * PW, C) rows, a transposed copy. Made whole, it
    outweighed the input gradient (a box head's 512 boxes of 256 channels: 26 MB for a 7 MB
    gradient), so it is made on demand, for a range of rows and of channels, in the compute
    ``dtype`` and, with ``scale`` (one value per bin, e.g. a modulation mask), times it.
    """

    def __init__(self, grad_output, dtype, scale=None):
        k, c, pooled_h, pooled_w = grad_output.shape
        self.bins, self.channels = pooled_h * pooled_w, c
        self.dtype = np.dtype(dtype)
        self._g = grad_output.reshape(k, c, self.bins)
        self._scale = None if scale is None else scale.reshape(-1)

    def __len__(self):
        return len(self._g) * self.bins

    def __call__(self, r0, r1, c0=0, c1=None):
        """Rows ``r0:r1``, channels ``c0:c1`` (all by default): a C-contiguous array."""
        c1 = self.channels if c1 is None else c1
        k0, k1 = r0 // self.bins, -(-r1 // self.bins)
        rows = np.empty((k1 - k0, self.bins, c1 - c0), self.dtype)
        rows[...] = self._g[k0:k1, c0:c1].transpose(0, 2, 1)  # cast and transposed at once
        first = r0 - k0 * self.bins
        rows = rows.reshape((k1 - k0) * self.bins, c1 - c0)[first : first + r1 - r0]
        if self._scale is not None:
            rows *= self._scale[r0:r1, None]
        return rows

    def take(self, rows, channels=slice(None)):
        """Rows ``rows`` (an index array) as (len(rows), C), or one channel each (``channels``)."""
        box, b = np.divmod(rows, self.bins)
        values = self._g[box, channels, b].astype(self.dtype, copy=False)
        if self._scale is not None:
            values *= self._scale[rows] if values.ndim == 1 else self._scale[rows, None]
        return values

    def groups(self, r0, r1):
        """``(c0, c1, rows)`` of rows ``r0:r1`` by groups of channels of ROWS values at most."""
        count = max(-(-(r1 - r0) * self.channels // ROWS), 1)
        size = max(-(-self.channels // count), 1)  # no group for no channels
        for c0 in range(0, self.channels, size):
            c1 = min(c0 + size, self.channels)
            yield c0, c1, self(r0, r1, c0, c1)

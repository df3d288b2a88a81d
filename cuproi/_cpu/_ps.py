"""Position-sensitive pooling on the CPU: one sparse operator per row of bins, in parallel.

Bin ``(ph, pw)`` of output channel ``c`` reads input channel ``(c * PH + ph) * PW + pw`` only:
the input's channels form ``C_out`` groups of ``PH * PW`` score maps. So every bin row ``ph``
is a problem of its own: the sparse operator of the row's bins of every box times the row's
``PW`` maps of every group, each laid out as a (pixels x ``C_out``) matrix and stacked, the
operator's bins at position ``pw`` reading the ``pw``-th block of the stack only. The rows run
on the backend's threads, each building its operators (small enough to stay in cache, which
makes them faster to build than one operator for every bin), copying its maps and writing its
slice of the result. The gradient is the transposed product. Every product is the work the GPU
kernel does (the operator's entries times ``C_out``), chunks of boxes bound the memory, and
every sum runs in a fixed order (forward, a bin's entries in row order; backward, a pixel's
contributions in the order of the boxes, then of the chunks): results are deterministic,
whatever the number of threads.
"""

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse

from cuproi import _results
from cuproi._cpu import _cells, _parallel, _sampling, _scratch


class Ranges(NamedTuple):
    """The cells ``[lo, hi)`` of every row of bins along one axis, each of weight 1.

    The taps of position-sensitive RoI Pool, whose bins average their cells.
    """

    lo: np.ndarray
    hi: np.ndarray


class Plan(NamedTuple):
    """What the operators of a position-sensitive op are built from.

    ``ys`` and ``xs`` are the AxisTaps (or Ranges) of the rows ``box * PH + ph`` and
    ``box * PW + pw``; ``count`` (K, PH, PW) divides every bin; ``cost`` (K,) bounds the
    entries of each box's bins at one position; ``shape`` is ``(N, H, W)`` and ``dtype`` the
    compute dtype.
    """

    ys: _sampling.AxisTaps | Ranges
    xs: _sampling.AxisTaps | Ranges
    image: np.ndarray
    count: np.ndarray
    cost: np.ndarray
    shape: tuple
    dtype: np.dtype


def _operator(plan, k0, k1, ph, pixels):
    """Sparse operator of bin row ``ph`` of boxes ``k0:k1`` on the stack of the row's maps.

    Its rows are ordered ``(pw, box)``, and row block ``pw`` reads the ``pw``-th map of the
    row: bin ``(ph, pw)`` reads map ``ph * PW + pw`` only, so a single product with the stack
    of the row's maps does the work of PW products. The stack is an (PW*N, H, W) map whose
    image ``pw * N + i`` is map ``pw`` of image ``i``; the columns are the rows of ``pixels``
    on it (:func:`_pixels`).
    """
    n, h, w = plan.shape
    _, pooled_h, pooled_w = plan.count.shape
    box = np.tile(np.arange(k0, k1), pooled_w)
    pw = np.repeat(np.arange(pooled_w), k1 - k0)
    build = _rectangles if isinstance(plan.ys, Ranges) else _sampling.operator
    return build(
        plan.ys,
        plan.xs,
        y_of_bin=box * pooled_h + ph,
        x_of_bin=box * pooled_w + pw,
        image_of_bin=plan.image[box] + pw * n,
        count_of_bin=plan.count[box, ph, pw],
        shape=(pooled_w * n, h, w),
        dtype=plan.dtype,
        pixels=pixels,
    )


def _rectangles(ys, xs, y_of_bin, x_of_bin, image_of_bin, count_of_bin, shape, dtype, pixels):
    """:func:`_sampling.operator` of Ranges: the same matrix, entries and order, without taps.

    A bin's entries are its rows of cells, each the run of its columns, all ``1 / count``,
    built from the first cell of every row (in the whole map) and in int32 where the pixels
    allow (SciPy checks and copies int64 indices): a row of R-FCN's box head took 0.8 ms, where
    the taps of every cell took 1.2.
    """
    n, h, w = shape
    y0, x0 = ys.lo[y_of_bin], xs.lo[x_of_bin]
    rows, runs = ys.hi[y_of_bin] - y0, xs.hi[x_of_bin] - x0
    entries = rows * runs
    index = np.int32 if max(pixels.size, entries.sum()) < 2**31 else np.int64
    indptr = np.concatenate([[0], np.cumsum(entries)]).astype(index)
    # Every (bin, row) pair, its first cell, then its run of columns.
    pair_bin = np.repeat(np.arange(len(rows)), rows)
    y = y0[pair_bin] + (np.arange(len(pair_bin)) - (np.cumsum(rows) - rows)[pair_bin])
    run = runs[pair_bin]
    starts = np.cumsum(run) - run
    if pixels.runs is None:
        first = ((image_of_bin[pair_bin] * h + y) * w + x0[pair_bin]).astype(index)
        columns = np.repeat(first - starts.astype(index), run)
        columns += np.arange(indptr[-1], dtype=index)
    else:  # a row of cells may cross from one run of tiles to the next
        x = np.repeat(x0[pair_bin] - starts, run) + np.arange(indptr[-1])
        image, y = (np.repeat(a, run) for a in (image_of_bin[pair_bin], y))
        columns = pixels.at(image, y, x).astype(index)
    values = np.repeat((1.0 / count_of_bin.astype(np.float64)).astype(dtype), entries)
    return scipy.sparse.csr_matrix((values, columns, indptr), shape=(len(rows), pixels.size))


def _extent(taps, rows):
    """``[first, last + 1)`` of the indices of every tap row in ``rows``; ``[0, 0)`` if none."""
    if isinstance(taps, Ranges):
        lo, hi = taps.lo[rows], taps.hi[rows]
        some = hi > lo
        return np.where(some, lo, 0), np.where(some, hi, 0)
    lo, hi = taps.ptr[rows], taps.ptr[rows + 1]
    if len(taps.index) == 0:
        return np.zeros_like(lo), np.zeros_like(hi)
    some = hi > lo
    first = taps.index[np.minimum(lo, len(taps.index) - 1)]
    last = taps.index[np.maximum(hi - 1, 0)] + 1
    return np.where(some, first, 0), np.where(some, last, 0)


def _reach(plan, ph):
    """The cells that bin row ``ph`` of every box reads on the stack of the row's maps."""
    n = plan.shape[0]
    k, pooled_h, pooled_w = plan.count.shape
    y0, y1 = _extent(plan.ys, np.arange(k) * pooled_h + ph)
    x0, x1 = _extent(plan.xs, np.arange(k)[:, None] * pooled_w + np.arange(pooled_w))
    image = plan.image[:, None] + np.arange(pooled_w) * n
    y0, y1 = (np.repeat(a, pooled_w) for a in (y0, y1))
    return _cells.Cells(image.ravel(), y0, y1, x0.ravel(), x1.ravel())


def _whole(plan, channels):
    """Whether the rows take their whole stacks: as the middle row does (a guess).

    Finding a row's runs costs about a millisecond (the box head's thousand boxes); the rows
    of one call read alike, so the middle row decides for all. Either way gives the same bits.
    """
    return _pixels(plan, plan.count.shape[1] // 2, channels).runs is None


def _pixels(plan, ph, channels, x=None, whole=False):
    """The pixels that bin row ``ph`` reads on the stack of the row's maps (_sampling.Pixels).

    ``channels`` is the number of output channels, which a pixel's row holds. With ``x``, the
    (N, C_out, PH, PW, H, W) score maps, their rows too, in the compute dtype: the runs of
    tiles read (_cells), or every pixel of the stack, copied at once, when they are most of it
    or with ``whole`` (:func:`_whole`).
    """
    n, h, w = plan.shape
    shape = (plan.count.shape[2] * n, h, w)
    runs = None if whole else _cells.runs(_reach(plan, ph), *shape, channels)
    if x is None:
        return _sampling.Pixels(None, runs, shape)
    if runs is None:  # (PW, N, H, W, C_out): the stack, channels last
        rows = np.ascontiguousarray(x[:, :, ph].transpose(2, 0, 3, 4, 1), plan.dtype)
        return _sampling.Pixels(rows.reshape(math.prod(shape), channels), None, shape)
    rows = _cells.copy_rows(_maps(x, ph), runs, plan.dtype, _scratch.take)
    return _sampling.Pixels(rows, runs, shape)


def _chunks(plan):
    """The chunks of boxes of every row of bins."""
    return list(_sampling.chunks(plan.cost * plan.count.shape[2]))  # bounds a row's entries


def _threads(plan, channels):
    """The threads that the rows run on: as many as their products or their maps are worth.

    ``channels`` is the number of output channels, the columns of every product. Each row
    multiplies its operators and copies (or writes) its maps.
    """
    n, h, w = plan.shape
    _, pooled_h, pooled_w = plan.count.shape
    products = float(plan.cost.sum()) * pooled_w * pooled_h
    products *= _sampling.work_per_entry(channels, bound=True)
    maps = n * channels * pooled_h * pooled_w * h * w
    return max(
        _parallel.workers(products, _parallel.PRODUCT_GRAIN),
        _parallel.workers(maps, _parallel.COPY_GRAIN),
    )


def _each_row(plan, channels, task, chunks=None):
    """``task(ph, chunks)`` for every bin row ``ph``, on the threads its work is worth."""
    chunks = _chunks(plan) if chunks is None else chunks

    def run(p0, p1):
        for ph in range(p0, p1):
            task(ph, chunks)

    _parallel.for_ranges(run, np.ones(plan.count.shape[1]), _threads(plan, channels))


def _maps(x, ph):
    """The stack of bin row ``ph``'s maps of (N, C_out, PH, PW, H, W) ``x``: (C_out, H, W) views.

    Map ``pw * N + i`` is position ``pw``'s map of image ``i``.
    """
    n, _, _, pooled_w = x.shape[:4]
    return [x[i, :, ph, pw] for pw in range(pooled_w) for i in range(n)]


def forward(input, plan):
    """(K, C_out, PH, PW) output on (N, C, H, W) score maps."""
    n, c, h, w = input.shape
    k, pooled_h, pooled_w = plan.count.shape
    c_out = c // (pooled_h * pooled_w)
    x = input.reshape(n, c_out, pooled_h, pooled_w, h, w)
    out = _results.empty(np, (k, c_out, pooled_h, pooled_w), input.dtype)

    def task(ph, chunks):
        pixels = _pixels(plan, ph, c_out, x, whole)
        for k0, k1 in chunks:
            part = (_operator(plan, k0, k1, ph, pixels) @ pixels.rows).reshape(
                pooled_w, k1 - k0, c_out
            )
            out[k0:k1, :, ph] = part.transpose(1, 2, 0)
        _scratch.give(pixels.rows)

    whole = _whole(plan, c_out)
    _each_row(plan, c_out, task)
    return out


def _stacks_fit(plan, channels, dtype, several):
    """Whether the rows' gradients summed whole fit in the input gradient's size.

    A row summed whole is a float32 (the compute dtype) stack of 1 / PH of the gradient, held
    by every thread at once, beside each chunk's product when there are several chunks, whose
    float16 sums are a float32 gradient too. The backward may take 1x its gradient beyond it
    (docs/internals.md); where these take more, the rows are added into the gradient pixel
    block by pixel block instead, which is slower (2 x 2 bins over most of the maps).
    """
    _, pooled_h, _ = plan.count.shape
    compute, given = np.dtype(plan.dtype).itemsize, np.dtype(dtype).itemsize
    rows = min(_threads(plan, channels), pooled_h) * (2 if several else 1)
    sums = compute - given if several else 0
    return rows * compute / pooled_h + sums <= given


def backward(grad_output, plan, input_shape):
    """(N, C, H, W) input gradient: the transposed operators of every bin row.

    A row scatters its gradient to the runs its bins read (a few boxes on a large map), or
    sums it whole over the stack of its maps (most of it read) and copies it. float16 is
    summed in float32 and rounded once: as it is written when the boxes make one chunk, else
    in a float32 gradient rounded in its own memory (_sampling.narrow).
    """
    n, c, h, w = input_shape
    k, c_out, pooled_h, pooled_w = grad_output.shape
    chunks = _chunks(plan)
    several = len(chunks) > 1
    grad = _results.zeros(
        np, (n, c_out, pooled_h, pooled_w, h, w), plan.dtype if several else grad_output.dtype
    )

    def task(ph, chunks):
        pixels = _pixels(plan, ph, c_out, whole=whole)
        stack = None
        for k0, k1 in chunks:
            # The chunk's gradient rows in the operator's (pw, box) order.
            g_rows = np.ascontiguousarray(grad_output[k0:k1, :, ph].transpose(2, 0, 1), plan.dtype)
            g_rows = g_rows.reshape(pooled_w * (k1 - k0), c_out)
            operator = _operator(plan, k0, k1, ph, pixels)
            if pixels.runs is not None or not stacks:  # scattered to the runs or the pixels
                groups = [(0, c_out, g_rows)]
                _sampling.add_transposed(_maps(grad, ph), [operator], groups, pixels)
                continue
            part = operator.T @ g_rows  # most of the stack: its gradient whole, then copied
            stack = part if stack is None else np.add(stack, part, out=stack)
        if stack is not None:
            # In runs of pixels whose rows of the stack stay in cache: copied whole, the
            # transpose read the stack once per output channel, and took 2.7 times as long.
            planes = stack.reshape(pooled_w, n, h * w, c_out).transpose(1, 3, 0, 2)
            row = grad.reshape(n, c_out, pooled_h, pooled_w, h * w)[:, :, ph]
            for p0 in range(0, h * w, _cells.BLOCK):
                row[..., p0 : p0 + _cells.BLOCK] = planes[..., p0 : p0 + _cells.BLOCK]

    whole = _whole(plan, c_out)
    stacks = _stacks_fit(plan, c_out, grad_output.dtype, several)
    _each_row(plan, c_out, task, chunks)
    return _sampling.narrow(grad.reshape(input_shape), grad_output.dtype)

"""RoI Pool on the CPU: the maximum of every bin and the first cell (in scan order) holding it.

A bin's maximum is separable: the maximum over each bin's rows for every column of the box,
then over the bin's columns, on a channels-last copy of the features so that NumPy's inner loops
run along the channels. Without an argmax the copy holds the values themselves. With one,
float16 and float32 features become int64 keys, the value mapped to an order-preserving int32
in the high half and the flat index complemented in the low half, so that a plain integer
maximum finds the largest value and, among equal values, the first cell (NaN ranks above
everything, so the first NaN wins); float64 features (no room for a 64-bit value and an index
in one key) use the keys of a float32 proxy, checked against their exact maxima, and a gather
formulation for the boxes the proxy cannot decide. The backward adds every gradient to its
argmax cell, a few channels at a time, as a sparse product.
"""

import math

import numpy as np
import scipy.sparse

from cuproi import _layout, _results
from cuproi._cpu import _cells, _geometry, _parallel, _sampling, _scratch


def _reach(rois, bins):
    """The cells of every box's bins (_cells.Cells): its first bin's start to its last's end."""
    h0, h1, w0, w1 = bins
    return _cells.Cells(rois[:, 0].astype(np.int64), h0[:, 0], h1[:, -1], w0[:, 0], w1[:, -1])


def _few(input, bins, argmax):
    """Whether the boxes' bins hold so few cells that gathering them beats building a table.

    The table holds the whole map channels last (int64 keys with an argmax): for a few boxes
    on a large map, gathering the cells of their bins from the runs of tiles they read
    (_forward_gather) costs what they read instead. A gathered cell and its share of the
    reductions cost about 16 cells of a table of values, 8 of keys (256 channels on this
    project's 2-core VM: 16 boxes of 2 to 8 cells on a 100x152 map, 4 to 64 on 200x304).
    """
    n, _, h, w = input.shape
    h0, h1, w0, w1 = bins
    cells = ((h1 - h0)[:, :, None] * (w1 - w0)[:, None, :]).sum()
    return cells * (8 if argmax else 16) <= n * h * w


def roi_pool(input, rois, output_size, spatial_scale, return_argmax=False):
    """RoI Pool's output, and with ``return_argmax`` its argmax: ``(out, argmax)``."""
    out, argmax = _forward(input, rois, output_size, spatial_scale, return_argmax)
    return (out, argmax) if return_argmax else out


def _forward(input, rois, output_size, spatial_scale, argmax):
    """(out, argmax); ``argmax`` is None when not asked for (``argmax=False``)."""
    n, _, h, w = input.shape
    bins = _geometry.pool_bins(rois, spatial_scale, *output_size, h, w)
    if _few(input, bins, argmax):
        out, index = _forward_gather(input, rois, bins)
        return out, (index if argmax else None)
    runs = _cells.runs(_reach(rois, bins), n, h, w)  # None: most of the map is read
    table = n * h * w if runs is None else runs.size
    if input.dtype.itemsize <= 4 and _windowed(bins, table):
        # Without an argmax too: the windows cost about what a table of values does, or less
        # (16 boxes on 2x256x200x304: 20 ms against 26), and a -0.0 among the cells read
        # costs them nothing.
        pooled = _forward_windows(input, rois, bins)
        if pooled is not None:  # None: a NaN, which the paths below write as they always have
            return pooled[0], (pooled[1] if argmax else None)
    if not argmax:
        table, negative_zero, _ = _table(input, keys=False, runs=runs)
        out = _forward_values(table, rois, bins, input.dtype)
        _scratch.give(table)
        # A maximum of NaNs may be any of them: the argmax paths take the first.
        if not np.isnan(out).any() and (not negative_zero or _first_zeros(input, rois, bins, out)):
            return out, None
    forward = _forward_keys if input.dtype.itemsize <= 4 else _forward_proxy
    out, index = forward(input, rois, bins, runs)
    return out, (index if argmax else None)


def _first_zeros(input, rois, bins, out):
    """Give every zero maximum of ``out`` the sign of its bin's first zero; False if costly.

    A maximum of -0.0 and +0.0 may be either: where the cells read hold a -0.0, the boxes with
    a zero maximum are gathered again (_forward_gather finds the first cell of a maximum), as
    long as they are few (_few); else False, and ``out`` is left to the keys.
    """
    empty = _empty(bins)[:, None]  # +0.0 whatever they read
    boxes = np.flatnonzero(((out == 0) & ~empty).any(axis=(1, 2, 3)))
    if boxes.size == 0:
        return True
    some = tuple(edge[boxes] for edge in bins)
    if not _few(input, some, True):  # as with an argmax
        return False
    again, _ = _forward_gather(input, rois[boxes], some)
    out[boxes] = np.where(out[boxes] == 0, again, out[boxes])
    return True


_INT32_MIN, _INT32_MAX = np.int32(-(2**31)), np.int32(2**31 - 1)
_HIGH = 1 if np.little_endian else 0  # the int32 half of an int64 that holds its high bits
_GROUP = 16  # boxes pooled together (see _pool)
_SLAB = 8  # channels whose gradients are added together
_INT32_TARGETS = 2**31  # the backward's indices are int32 below this (cells, entries per slab)
# The box loop and the backward's slabs make one short NumPy call after another, so how many
# threads the GIL lets them keep busy depends on each call's length, not on the total: one
# thread per this many channels of the loop (64: two threads were always slower, 256: faster
# with an argmax), and per this many entries of a slab (K = 128 boxes of 7x7 bins: slower,
# 256: faster). Measured on a 2-core VM (docs/benchmarks.md, "Threads on small problems").
_LOOP_CHANNELS = 128
_SLAB_ENTRIES = 50_000


def _table(x, keys, runs=None):
    """Channels-last (N, H, W, C) table of (N, C, H, W) features, and what it holds.

    Returns ``(table, negative_zero, nan)``: whether any value is -0.0 and, with ``keys``,
    whether any is NaN (False without).

    With ``keys``, every value becomes its int64 key ``ordered(value) << 32 | ~(h * W + w)``,
    whose two int32 halves are written directly. ``ordered`` maps float32 to int32
    monotonically: negative floats have their magnitude bits flipped and move up by one, so
    that -0.0 meets +0.0 at 0 (the two compare equal: the first one must win), and every NaN
    becomes the int32 maximum (above +inf, all equal: the first NaN wins). Without, the table
    holds the values (float16 as float32, whose maximum NumPy computes several times faster,
    exactly): a view of features stored channels last, else a copy, taken from _scratch (give
    it back when done). Built in blocks of rows, in parallel, so each block's passes stay in
    cache. With ``runs`` (_cells.Runs), only their cells are written (and looked at for -0.0):
    the rest of the table is left as it was, for boxes that read a part of the map.
    """
    n, c, h, w = x.shape
    dtype = np.int64 if keys else np.promote_types(x.dtype, np.float32)
    in_place = x.dtype == dtype and _layout.channels_last(x)
    table = x.transpose(0, 2, 3, 1) if in_place else _scratch.take((n, h, w, c), dtype)
    if table.size == 0:
        return table, False, False
    halves = table.view(np.int32).reshape(n, h, w, c, 2) if keys else None
    low = ~np.arange(h * w, dtype=np.int32).reshape(h, w, 1)
    if runs is None:
        rows = max(_cells.BLOCK // max(w, 1), 1)
        blocks = [(i, r, min(r + rows, h), 0, w) for i in range(n) for r in range(0, h, rows)]
    else:
        blocks = runs.blocks()[:, 2:].tolist()

    def build(start, stop):
        # Each block is first copied channels last, so that the passes that order its bits
        # run on contiguous memory and the halves are written without a transpose; into
        # buffers of this range's largest block, taken once (a fresh temporary per block
        # would fault in its pages again at every block).
        size = max((r1 - r0) * (c1 - c0) for _, r0, r1, c0, c1 in blocks[start:stop]) * c
        bits, sign, mask = np.empty((3, size), np.int32) if keys else (None,) * 3
        negative_zero = any_nan = False
        for i, r0, r1, c0, c1 in blocks[start:stop]:
            block = x[i, :, r0:r1, c0:c1]
            if not keys:
                if not negative_zero and (block == 0).any():
                    negative_zero = bool(np.signbit(block[block == 0]).any())
                if not in_place:
                    table[i, r0:r1, c0:c1] = block.transpose(1, 2, 0)
                continue
            shape = (r1 - r0, c1 - c0, c)
            b = bits[: math.prod(shape)].reshape(shape)
            s, m = (a[: b.size].reshape(shape) for a in (sign, mask))
            b.view(np.float32)[...] = block.transpose(1, 2, 0)
            nan = np.isnan(b.view(np.float32).max())
            negative_zero |= bool(b.min() == _INT32_MIN)  # the bits of -0.0
            if nan:
                any_nan = True
                b[np.isnan(b.view(np.float32))] = _INT32_MAX
            np.right_shift(b, 31, out=s)
            np.bitwise_and(s, _INT32_MAX, out=m)
            np.bitwise_xor(b, m, out=b)
            np.subtract(b, s, out=b)
            halves[i, r0:r1, c0:c1, :, _HIGH] = b
            halves[i, r0:r1, c0:c1, :, 1 - _HIGH] = low[r0:r1, c0:c1]
        return negative_zero, any_nan

    # A key costs a few passes over its value: two threads won from about 1.2M of them (2.5M
    # elements of a plain copy).
    cells = n * h * w if runs is None else runs.size
    work = cells * c * (2 if keys else 1)
    threads = _parallel.workers(work, _parallel.COPY_GRAIN)
    found = _parallel.for_ranges(build, np.ones(len(blocks)), threads)
    return table, any(z for z, _ in found), any(nan for _, nan in found)


def _decode(keys, spare):
    """(value bits, flat index) of int64 keys, as int32: the inverse of _table's.

    Written into ``spare``, an int64 buffer of the keys' size (the value bits in its first half,
    the index in its second), read from the keys' halves without a temporary.
    """
    halves = keys.view(np.int32).reshape(*keys.shape, 2)
    high, low = halves[..., _HIGH], halves[..., 1 - _HIGH]
    bits, sign = spare.view(np.int32)[: 2 * keys.size].reshape(2, *keys.shape)
    np.right_shift(high, 31, out=sign)
    np.add(high, sign, out=bits)
    np.bitwise_and(sign, _INT32_MAX, out=sign)
    np.bitwise_xor(bits, sign, out=bits)
    return bits, np.invert(low, out=sign)


def _windows(rois, bins):
    """The boxes' windows and bins, as Python lists for the loops, and the empty bins.

    Per box: ``[image, top, bottom, left, right]`` of its window, and its bins' ``[start, stop)``
    rows and columns relative to the window; then the (K, PH, PW) mask of empty bins.
    """
    h0, h1, w0, w1 = bins
    top, left = h0[:, :1], w0[:, :1]
    box = np.column_stack([rois[:, 0].astype(np.int64), top, h1[:, -1:], left, w1[:, -1:]])
    rows = np.stack([h0 - top, h1 - top], 2)
    cols = np.stack([w0 - left, w1 - left], 2)
    return box.tolist(), rows.tolist(), cols.tolist(), _empty(bins)


def _empty(bins):
    """The (K, PH, PW) mask of the empty bins (no row or no column of the map)."""
    h0, h1, w0, w1 = bins
    return (h1 <= h0)[:, :, None] | (w1 <= w0)[:, None, :]


def _box_maxima(table, box, rows, cols, out, work):
    """``out`` (PW, PH, C) = the maxima of one box's bins in ``table`` (N, H, W, C).

    Separable: the maximum over each bin's rows for every column of the box, then over the
    bin's columns, reading each cell about once per bin row it belongs to. Both reductions run
    over the first axis of a C-contiguous block, NumPy's fastest order (a middle axis makes its
    inner loop the short one), hence the transposed copy in between and the transposed ``out``.
    Both blocks lie in ``work``, a flat buffer of the table's dtype that holds two (PH, width,
    C) blocks. Empty bins are left as they were.
    """
    i, y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        return  # every bin is empty
    window = table[i, y0:y1, x0:x1]
    shape = (len(rows), x1 - x0, table.shape[3])
    size = math.prod(shape)
    per_row = work[:size].reshape(shape)
    for p, (a, b) in enumerate(rows):
        if b > a:
            np.maximum.reduce(window[a:b], axis=0, out=per_row[p])
    per_col = work[size : 2 * size].reshape(shape[1], shape[0], shape[2])
    np.copyto(per_col, per_row.transpose(1, 0, 2))
    for q, (a, b) in enumerate(cols):
        if b > a:
            np.maximum.reduce(per_col[a:b], axis=0, out=out[q])


def _pool(table, rois, bins, finish):
    """The maxima of every box's bins, in groups of _GROUP boxes small enough to stay in cache.

    ``finish(g0, g1, best, empty, spare)`` takes each group's maxima ``best`` (G, PW, PH, C),
    its empty bins (G, PW, PH), which ``best`` holds garbage for, and a flat buffer ``spare``
    of best's size and dtype to work in. The groups are spread over one thread per
    _LOOP_CHANNELS channels: the box loop alone gains nothing from threads (its dozen NumPy
    calls per box last a few microseconds each, and threads queue for the GIL around every
    one: the box head's loop took 47 ms on two threads, 31 ms on one), but the ``finish``
    copies and decoding of wide channels are long enough calls to gain. Every buffer is taken
    once per thread: fresh ones per box or group fault in their pages again each time.
    """
    box, rows, cols, empty = _windows(rois, bins)
    empty = empty.transpose(0, 2, 1)
    pooled_w, pooled_h = empty.shape[1:]
    c = table.shape[3]
    h0, h1, w0, w1 = bins
    width = np.maximum(w1[:, -1] - w0[:, 0], 0)

    def run(start, stop):
        groups = min(_GROUP, stop - start)
        best = np.empty((groups, pooled_w, pooled_h, c), table.dtype)
        spare = np.empty(best.size, table.dtype)
        work = np.empty(2 * pooled_h * int(width[start:stop].max(initial=0)) * c, table.dtype)
        for g0 in range(start, stop, _GROUP):
            g1 = min(g0 + _GROUP, stop)
            for j in range(g0, g1):
                _box_maxima(table, box[j], rows[j], cols[j], best[j - g0], work)
            finish(g0, g1, best[: g1 - g0], empty[g0:g1], spare)

    cost = (h1[:, -1] - h0[:, 0] + pooled_h) * (w1[:, -1] - w0[:, 0]) + 1
    _parallel.for_ranges(run, cost, _parallel.workers(c, _LOOP_CHANNELS))


def _forward_values(table, rois, bins, dtype):
    """The maxima alone, from a table of values: no argmax to find, so no keys to build."""
    k, c = len(rois), table.shape[3]
    out = _results.empty(np, (k, c, bins[0].shape[1], bins[2].shape[1]), dtype)

    def finish(g0, g1, best, empty, spare):
        best[empty] = 0
        out[g0:g1] = best.transpose(0, 3, 2, 1)

    _pool(table, rois, bins, finish)
    return out


def _forward_keys(input, rois, bins, runs=None):
    """(out, argmax) from a table of keys (_table), of the ``runs`` it reads, if given."""
    n, c, h, w = input.shape
    k = len(rois)
    keys, negative_zero, nan = _table(input, keys=True, runs=runs)
    out = _results.empty(np, (k, c, bins[0].shape[1], bins[2].shape[1]), input.dtype)
    argmax = _results.empty(np, out.shape, np.int32)

    def finish(g0, g1, best, empty, spare):
        bits, index = _decode(best, spare)
        bits[empty] = 0  # the bits of +0.0
        index[empty] = -1
        out[g0:g1] = bits.view(np.float32).transpose(0, 3, 2, 1)
        argmax[g0:g1] = index.transpose(0, 3, 2, 1)

    _pool(keys, rois, bins, finish)
    _scratch.give(keys)
    # The keys hold +0.0 for -0.0 and one NaN for every NaN: such a maximum is its first cell's
    # own value (its sign, its payload), as the other paths and the GPU kernel write it.
    if negative_zero or nan:
        own = np.flatnonzero(((out == 0) | np.isnan(out)) & (argmax >= 0))  # few: flat indices
        box, channel, _, _ = np.unravel_index(own, out.shape)
        at = argmax.reshape(-1)[own]
        image = rois[:, 0].astype(np.int64)[box]
        out.reshape(-1)[own] = input[image, channel, at // w, at % w]
    return out, argmax


# Ranks of a cell among its bin's rows and columns of a window that the int32 low half of
# _forward_windows' keys holds: ``rank << 16 | (_COLUMNS - 1 - column)``.
_RANKS = 2**15
_COLUMNS = 2**16
# Python and NumPy calls of a box on its window (about 50), in cells of 256 channels.
_WINDOW_CALLS = 64
# Window values per thread: the calls are short, and threads queue for the GIL around each
# (2-core VM, 16 boxes of 256 channels: on 100x152 maps, 1.2M values, 10.6 ms on one thread and
# 12.1 on two; on 200x304, 4.7M, 19.6 and 18.2).
_WINDOW_GRAIN = 2_000_000


def _windowed(bins, table):
    """Whether pooling box by box on copies of their windows beats a table of ``table`` cells.

    A window costs a copy and a few passes over its cells (_forward_windows), the table of
    keys about nine over the table's: the windows win while their cells, counted once per box
    with _WINDOW_CALLS for its calls, are fewer than the table's (16 boxes on 2x100x152 maps:
    4621 cells against 9152 in the runs of tiles; the box head's 512 boxes read 3 times the
    map). The keys bound a bin's rows and a window's columns.
    """
    h0, h1, w0, w1 = bins
    height = np.maximum(h1[:, -1] - h0[:, 0], 0)
    width = np.maximum(w1[:, -1] - w0[:, 0], 0)
    cells = int((height * width).sum()) + _WINDOW_CALLS * len(height)
    fits = (h1 - h0).max(initial=0) <= _RANKS and width.max(initial=0) <= _COLUMNS
    return bool(fits) and cells <= table


class _Work:
    """Buffers of one thread of _forward_windows.

    For windows of up to ``cells`` cells and ``width`` columns, of ``pooled_h`` bin rows of
    up to ``rows`` rows, and ``c`` channels of ``dtype``.
    """

    def __init__(self, cells, width, pooled_h, rows, c, dtype):
        rank = np.uint8 if rows <= 256 else np.uint16
        self.window = np.empty(cells * c, dtype)
        self.hits = np.empty(cells * c, rank)
        self.maxima = np.empty(pooled_h * width * c, dtype)
        self.ranks = np.empty(pooled_h * width * c, rank)
        self.low = np.empty(pooled_h * width * c, np.int32)
        self.keys = np.empty(pooled_h * width * c, np.int64)
        self.weights = np.arange(max(rows - 1, 0), 0, -1, dtype=rank)[:, None, None]
        self.columns = (_COLUMNS - 1 - np.arange(width, dtype=np.int32))[:, None]


def _box_keys(input, box, rows, cols, keys, work):
    """``keys`` (PW, PH, C): int64 keys of one box's bins' maxima and first cells in scan order.

    The window is copied channels last a bin row at a time, each row once, and pooled while
    in cache. The rows: the maximum of each column over the bin's rows, and where in them it
    first lies, as a rank (rows - 1 - first: larger is earlier) found by equality, without a
    key per cell. The columns: the maximum over the bin's columns of keys
    ``ordered(maximum) << 32 | rank << 16 | (_COLUMNS - 1 - column)`` (the order of _table's
    keys, so the largest is the first cell of the maximum in scan order). Returns False when
    the window holds a NaN (equality cannot find it): the caller takes another path.
    """
    i, y0, y1, x0, x1 = box
    height, width, c = y1 - y0, x1 - x0, input.shape[1]
    if height <= 0 or width <= 0:
        return True  # every bin is empty
    shape = (len(rows), width, c)
    window = work.window[: height * width * c].reshape(height, width, c)
    maxima = work.maxima[: math.prod(shape)].reshape(shape)
    ranks = work.ranks[: maxima.size].reshape(shape)
    copied = 0
    for p, (a, b) in enumerate(rows):
        if b <= a:  # an empty bin row (a box past the map): any finite key will do
            maxima[p] = 0
            ranks[p] = 0
            continue
        if b > copied:
            window[copied:b] = input[i, :, y0 + copied : y0 + b, x0:x1].transpose(1, 2, 0)
            copied = b
        np.maximum.reduce(window[a:b], axis=0, out=maxima[p])
        if b - a == 1:
            ranks[p] = 0
        elif b - a == 2:
            np.equal(window[a], maxima[p], out=ranks[p].view(bool))
        else:
            hits = work.hits[: (b - a - 1) * width * c].reshape(b - a - 1, width, c)
            np.equal(window[a : b - 1], maxima[p], out=hits.view(bool))
            np.multiply(hits, work.weights[a - b + 1 :], out=hits)
            np.maximum.reduce(hits, axis=0, out=ranks[p])
    if np.isnan(maxima.max()):
        return False
    # The keys' halves are built contiguous and copied in (a ufunc writing a half, or mixing
    # dtypes, runs several times slower), transposed so that the reductions over columns run
    # over the first axis (over a middle one, NumPy's inner loop is the short one).
    np.add(maxima, 0, out=maxima)  # -0.0 + 0 is +0.0: equal zeros get equal keys
    bits, low = maxima.view(np.int32), work.low[: maxima.size].reshape(shape)
    np.right_shift(bits, 31, out=low)
    np.bitwise_and(low, _INT32_MAX, out=low)
    np.bitwise_xor(bits, low, out=bits)
    key = work.keys[: maxima.size].reshape(width, len(rows), c)
    halves = key.view(np.int32).reshape(*key.shape, 2)
    np.copyto(halves[..., _HIGH], bits.transpose(1, 0, 2))
    np.copyto(low, ranks)
    np.left_shift(low, 16, out=low)
    np.add(low, work.columns[:width], out=low)
    np.copyto(halves[..., 1 - _HIGH], low.transpose(1, 0, 2))
    for q, (a, b) in enumerate(cols):
        if b > a:
            np.maximum.reduce(key[a:b], axis=0, out=keys[q])
    return True


def _forward_windows(input, rois, bins):
    """(out, argmax) of float16 or float32 features box by box (_box_keys), or None on a NaN.

    The bits of _forward_keys: the same maxima, first cells and zeros' signs (taken from the
    input). For a few boxes on a large map, whose windows are fewer cells than the tiles they
    reach: a window costs a copy and a few passes over its cells, a table of keys nine.
    """
    c = input.shape[1]
    box, rows, cols, empty = _windows(rois, bins)
    h0, h1, w0, w1 = bins
    pooled_h, pooled_w = h0.shape[1], w0.shape[1]
    keys = np.empty((len(box), pooled_w, pooled_h, c), np.int64)
    height = np.maximum(h1[:, -1] - h0[:, 0], 0)
    width = np.maximum(w1[:, -1] - w0[:, 0], 0)
    dtype = np.promote_types(input.dtype, np.float32)

    def run(start, stop):
        span = slice(start, stop)
        cells = int((height[span] * width[span]).max(initial=0))
        most = int((h1[span] - h0[span]).max(initial=0))
        work = _Work(cells, int(width[span].max(initial=0)), pooled_h, most, c, dtype)
        boxes = range(start, stop)
        return all(_box_keys(input, box[j], rows[j], cols[j], keys[j], work) for j in boxes)

    cost = height * width + _WINDOW_CALLS
    threads = _parallel.workers(int(cost.sum()) * c, _WINDOW_GRAIN)
    if not all(_parallel.for_ranges(run, cost, threads)):
        return None
    return _decode_windows(input, rois, bins, keys, empty.transpose(0, 2, 1))


def _decode_windows(input, rois, bins, keys, empty):
    """(out, argmax) of _box_keys' keys (K, PW, PH, C), whose empty bins are ``empty``."""
    n, c, h, w = input.shape
    h0, h1, w0, w1 = bins
    halves = keys.view(np.int32).reshape(*keys.shape, 2)
    values = np.copy(halves[..., _HIGH])  # contiguous: the passes below run several times faster
    low = np.copy(halves[..., 1 - _HIGH])
    sign = np.right_shift(values, 31)
    np.bitwise_and(sign, _INT32_MAX, out=sign)
    np.bitwise_xor(values, sign, out=values)
    values = values.view(np.float32)
    # The cell: row h1 - 1 - rank of the bin's rows, column _COLUMNS - 1 - low of the window,
    # in int32 modulo 2**32 (a corner past int32's range wraps: the index itself fits).
    index = np.right_shift(low, 16, out=sign)
    index *= w
    index += np.bitwise_and(low, _COLUMNS - 1, out=low)
    corner = ((h1 - 1) * w + w0[:, :1] + (_COLUMNS - 1)).astype(np.int32)
    np.subtract(corner[:, None, :, None], index, out=index)
    # Equal zeros got the keys of +0.0: the first one's sign is the input's.
    zero = values == 0
    zero[empty] = False
    if zero.any():
        box, _, _, channel = np.nonzero(zero)
        at = index[zero]
        image = rois[:, 0].astype(np.int64)[box]
        values[zero] = input[image, channel, at // w, at % w]
    values[empty] = 0
    index[empty] = -1
    shape = (len(keys), c, h0.shape[1], w0.shape[1])
    out = _results.empty(np, shape, input.dtype)
    argmax = _results.empty(np, shape, np.int32)
    out[...] = values.transpose(0, 3, 2, 1)
    argmax[...] = index.transpose(0, 3, 2, 1)
    return out, argmax


def _forward_proxy(input, rois, bins, runs=None):
    """float64: the keys of a float32 proxy of the values, checked against the exact maxima.

    Rounding to float32 keeps the order (x <= y gives proxy(x) <= proxy(y)), NaN and the sign
    of zero, so the first cell that holds a bin's largest proxy comes no later than the first
    that holds its largest value, and is that cell when its value is the bin's maximum. Where it
    is not (two values the proxy cannot tell apart), the box takes the gather formulation.
    """
    n, c, h, w = input.shape
    with np.errstate(over="ignore"):  # values past float32's range become its infinities
        proxy = input.astype(np.float32)
    _, argmax = _forward_keys(proxy, rois, bins, runs)
    table = _table(input, keys=False, runs=runs)[0]
    best = _forward_values(table, rois, bins, input.dtype)
    _scratch.give(table)
    plane = (rois[:, 0].astype(np.int64)[:, None] * c + np.arange(c)) * (h * w)
    out = input.reshape(-1)[plane[:, :, None, None] + np.maximum(argmax, 0)]
    out[argmax < 0] = 0
    wrong = out != best
    if wrong.any():
        wrong &= ~(np.isnan(out) & np.isnan(best))  # NaN != NaN
    boxes = np.flatnonzero(wrong.any(axis=(1, 2, 3)))
    if boxes.size:
        out[boxes], argmax[boxes] = _forward_gather(
            input, rois[boxes], tuple(edge[boxes] for edge in bins)
        )
    return out, argmax


def _forward_gather(input, rois, bins):
    """Gather every bin's cells, then segmented max and first argmax (any dtype)."""
    n, c, h, w = input.shape
    k = len(rois)
    h0, h1, w0, w1 = bins
    pooled_h, pooled_w = h0.shape[1], w0.shape[1]
    rows = np.maximum(h1 - h0, 0)[:, :, None]
    cols = np.maximum(w1 - w0, 0)[:, None, :]
    cells = (rows * cols).reshape(k, pooled_h * pooled_w)  # 0 for an empty bin
    # Bins as rows: (K * PH * PW, C).
    out = np.zeros((k * pooled_h * pooled_w, c), input.dtype)
    argmax = np.full((k * pooled_h * pooled_w, c), -1, np.int32)
    pixels = _sampling.pixels_read(input, _reach(rois, bins))
    image = rois[:, 0].astype(np.int64)
    for k0, k1 in _sampling.chunks(cells.sum(1) * max(c, 1)):
        # Every (bin, cell) pair of the chunk, bins in order, cells in scan order (h, then w).
        bins = cells[k0:k1].ravel()
        full = np.flatnonzero(bins)
        if full.size == 0:
            continue
        first = np.cumsum(bins) - bins
        entry_bin = np.repeat(np.arange(bins.size), bins)
        local = np.arange(entry_bin.size) - first[entry_bin]
        box, ph, pw = np.unravel_index(entry_bin, (k1 - k0, pooled_h, pooled_w))
        box += k0
        hh = h0[box, ph] + local // cols[box, 0, pw]
        ww = w0[box, pw] + local % cols[box, 0, pw]
        values = pixels.rows[pixels.at(image[box], hh, ww)]  # (entries, C)
        starts = first[full]
        best = np.maximum.reduceat(values, starts, axis=0)  # NaN propagates
        seg = np.repeat(np.arange(full.size), bins[full])
        hit = values == best[seg]
        if np.isnan(best).any():
            hit |= np.isnan(values) & np.isnan(best[seg])
        # First hit in scan order: the smallest entry index among the hits of each segment.
        order = np.where(hit, np.arange(values.shape[0], dtype=np.int64)[:, None], values.shape[0])
        winner = np.minimum.reduceat(order, starts, axis=0)
        # The winner's own value: the maximum, with the sign of a zero that ties -0.0.
        out[k0 * pooled_h * pooled_w + full] = np.take_along_axis(values, winner, axis=0)
        argmax[k0 * pooled_h * pooled_w + full] = (hh * w + ww)[winner]
    _scratch.give(pixels.rows)
    out = out.reshape(k, pooled_h, pooled_w, c).transpose(0, 3, 1, 2)
    argmax = argmax.reshape(k, pooled_h, pooled_w, c).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out), np.ascontiguousarray(argmax)


_FEW_ENTRIES = 0.01


def _named(image, argmax, shape):
    """The runs of tiles (_cells.Runs) holding the cells that each box's argmax names, or None.

    None when they are most of the map, or when the (box, channel, bin) entries are more than
    _FEW_ENTRIES per cell of the map: the slabs of :func:`roi_pool_backward`, which cover the
    map, are several times faster per entry (2-core VM, 256 channels, 7x7 bins: 16 boxes on
    2x200x304 maps, 0.006 entries per cell, took 55 ms on the runs, 75 on the slabs; 100
    boxes, 0.04, 219 against 80; the box head, 1.6, 372 against 122).
    """
    n, c, h, w = shape
    if argmax.size > _FEW_ENTRIES * n * c * h * w:
        return None
    won = argmax >= 0
    y, x = np.divmod(argmax, w)
    box = (1, 2, 3)
    cells = _cells.Cells(
        image,
        np.where(won, y, h).min(box, initial=h),
        np.where(won, y + 1, 0).max(box, initial=0),
        np.where(won, x, w).min(box, initial=w),
        np.where(won, x + 1, 0).max(box, initial=0),
    )
    return _cells.runs(cells, n, h, w, c)


def _backward_runs(grad_output, image, argmax, shape, dtype, runs):
    """The gradient summed over the runs of cells the argmax names (:func:`_named`).

    The same sums, in the same order, as the slabs of :func:`roi_pool_backward` (a sparse
    product whose columns are the (box, channel, bin) entries in order), on the runs' cells
    instead of every cell of the map: a few boxes on a large map touch a few of them. Empty
    bins (argmax -1) add to one more row, left out.
    """
    n, c, h, w = shape
    grad = _results.zeros(np, shape, grad_output.dtype)
    if runs.size == 0:  # no bin has a cell (or no box)
        return grad
    y, x = np.divmod(argmax, argmax.dtype.type(w))
    empty = argmax < 0
    somewhere = (runs.image[0], runs.y0[0], runs.x0[0])  # a cell of the runs, for the empty
    named = (image[:, None, None, None], y, x)
    rows = runs.rows_of(*(np.where(empty, a, b) for a, b in zip(somewhere, named, strict=True)))
    target = np.where(empty, runs.size, rows) * c + np.arange(c)[:, None, None]
    e = target.size
    scatter = scipy.sparse.csc_matrix(
        (grad_output.astype(dtype, copy=False).ravel(), target.ravel(), np.arange(e + 1)),
        shape=((runs.size + 1) * c, e),
    )
    sums = (scatter @ np.ones(e, dtype)).reshape(runs.size + 1, c)
    for p, q, i, y0, y1, x0, x1 in runs.blocks().tolist():
        grad[i, :, y0:y1, x0:x1] = sums[p:q].T.reshape(c, y1 - y0, x1 - x0)
    return grad


_ADDED_ENTRIES = 0.1
# Bytes of the result zeroed at a time, just before their gradients are added (_backward_added):
# zeroing the whole result, then adding to it, reads it back from memory (16 boxes of 256
# channels on 2x100x152 maps: 6.9 ms; by 2 MB, which the 2-core VM's L3 holds: 5.9 ms).
_ADDED_BLOCK = 1 << 21


def _backward_added(grad_output, image, argmax, shape):
    """The gradient summed by ``np.add.at``, into the result itself (float32 and float64).

    ``np.add.at`` adds its values one after another, in order: every cell sums its
    contributions in the order of the boxes and bins, from 0, as the products of the slabs
    and the runs do, so the bits are theirs. It costs about 15 ns an entry (2-core VM) against
    the slabs' few passes over the whole gradient, so it serves up to _ADDED_ENTRIES
    (box, channel, bin) entries per cell of the map (16 boxes of 256 channels on 2x100x152
    maps: 0.03); above, the slabs are faster and run on threads (``np.add.at`` holds the GIL).
    The result is zeroed and added to a few channels of one image at a time (_ADDED_BLOCK),
    each with its entries in their order.
    """
    n, c, h, w = shape
    k = len(image)
    grad = _results.empty(np, shape, grad_output.dtype)
    entries = argmax.shape[2] * argmax.shape[3]  # per box and channel
    plane = (image[:, None] * c + np.arange(c)) * (h * w)
    target = (plane[:, :, None, None] + argmax).reshape(k, c * entries)
    values = grad_output.reshape(k, c * entries)
    won = (argmax >= 0).reshape(k, c * entries)
    flat = grad.reshape(-1)
    step = max(_ADDED_BLOCK // max(h * w * grad.itemsize, 1), 1)
    for i in range(n):
        boxes = np.flatnonzero(image == i)
        for c0 in range(0, c, step):
            c1 = min(c0 + step, c)
            grad[i, c0:c1] = 0
            span = slice(c0 * entries, c1 * entries)
            hit = won[boxes, span]
            np.add.at(flat, target[boxes, span][hit], values[boxes, span][hit])
    return grad


def roi_pool_backward(grad_output, rois, argmax, input_shape, *, deterministic=False):
    n, c, h, w = input_shape
    k = len(rois)
    image = rois[:, 0].astype(np.int64)
    bins = argmax.shape[2] * argmax.shape[3]
    dtype = np.promote_types(grad_output.dtype, np.float32)  # float16 accumulates in float32
    runs = _named(image, argmax, input_shape)
    if runs is not None:
        return _backward_runs(grad_output, image, argmax, input_shape, dtype, runs)
    if dtype == grad_output.dtype and argmax.size <= _ADDED_ENTRIES * n * c * h * w:
        return _backward_added(grad_output, image, argmax, input_shape)
    at = argmax.reshape(k, c, bins)
    g = grad_output.reshape(k, c, bins)
    grad = _results.empty(np, (n, c, h * w), grad_output.dtype)
    entries = k * _SLAB * bins
    # A slab's targets (cells of a few channels' planes) and its entries fit int32 (half the
    # traffic of int64) but on giant maps or batches of boxes.
    fits = max(n * _SLAB * (h * w + 1), entries + 1) < _INT32_TARGETS
    index = np.int32 if fits else np.int64
    columns = np.arange(entries + 1, dtype=index)
    ones = np.ones(entries, dtype)

    def run(c0, c1):
        # A few channels at a time, whose cells stay in cache while their gradients are added.
        # Every plane of cells starts with one more, where the empty bins (argmax -1) add.
        for s0 in range(c0, c1, _SLAB):
            s1 = min(s0 + _SLAB, c1)
            first = (image[:, None] * (s1 - s0) + np.arange(s1 - s0)) * (h * w + 1) + 1
            target = (at[:, s0:s1] + first[:, :, None].astype(index)).ravel()
            # The scatter as a product with a sparse matrix of one entry per column: SciPy
            # adds the columns in order (each cell sums its contributions in the order of the
            # boxes and bins, deterministic whatever the threads) and releases the GIL, which
            # np.add.at does not.
            e = target.size
            scatter = scipy.sparse.csc_matrix(
                (g[:, s0:s1].astype(dtype).ravel(), target, columns[: e + 1]),
                shape=(n * (s1 - s0) * (h * w + 1), e),
            )
            planes = (scatter @ ones[:e]).reshape(n, s1 - s0, h * w + 1)
            grad[:, s0:s1] = planes[:, :, 1:]

    _parallel.for_ranges(run, np.full(c, k), _parallel.workers(entries, _SLAB_ENTRIES))
    return grad.reshape(input_shape)
